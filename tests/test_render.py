"""`apollo render`: real audio through FluidSynth with pretty_midi's bundled TimGM6mb SoundFont."""

from __future__ import annotations

import subprocess
import sys
import time
import wave
from pathlib import Path

import mido
import numpy as np
import pytest
from apollo.cli.main import cli
from click.testing import CliRunner

from apollo import render as render_module
from apollo.errors import ApolloError, MidiError
from apollo.render import PEAK_DBFS, TAIL_MAX_SECONDS, find_soundfont, render

RATE = 22050  # half the default rate: the same checks, half the synthesis time
TIMGM = render_module._bundled_timgm()


def write_midi(path: Path, notes, *, program: int = 0, channel: int = 0, bpm: float = 120, tpq: int = 480,
               end_beats: float | None = None, drums=()) -> Path:
    """A type-1 MIDI file: notes (pitch, start beat, beats) on ``channel``, drum hits on channel 9."""
    meta = mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(bpm), time=0)])
    tracks = [meta]
    for part_channel, part, part_program in ((channel, notes, program), (9, drums, None)):
        if not part:
            continue
        events = []
        for pitch, start, beats in part:
            events.append((round(start * tpq), 1, mido.Message("note_on", channel=part_channel, note=pitch, velocity=90)))
            events.append((round((start + beats) * tpq), 0, mido.Message("note_off", channel=part_channel, note=pitch)))
        track = mido.MidiTrack()
        if part_program is not None:
            track.append(mido.Message("program_change", channel=part_channel, program=part_program, time=0))
        now = 0
        for tick, _, message in sorted(events, key=lambda e: (e[0], e[1])):
            track.append(message.copy(time=tick - now))
            now = tick
        tracks.append(track)
    if end_beats is not None:
        meta.append(mido.MetaMessage("end_of_track", time=round(end_beats * tpq)))
    mido.MidiFile(type=1, ticks_per_beat=tpq, tracks=tracks).save(path)
    return path


SCALE = [(60 + step, i * 0.5, 0.5) for i, step in enumerate([0, 2, 4, 5, 7, 9, 11, 12])]  # 2 s at 120 BPM


def read_wav(path: Path) -> tuple[np.ndarray, int, int, int]:
    """Samples [frames, channels] (int16), channels, sample width, rate."""
    with wave.open(str(path)) as wav:
        frames = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
        return frames.reshape(-1, wav.getnchannels()), wav.getnchannels(), wav.getsampwidth(), wav.getframerate()


def spectrum(samples: np.ndarray) -> np.ndarray:
    """Normalized magnitude spectrum of the mono mix (timbre fingerprint)."""
    mono = samples.astype(np.float64).mean(axis=1)
    magnitude = np.abs(np.fft.rfft(mono * np.hanning(len(mono))))
    return magnitude / np.linalg.norm(magnitude)


@pytest.fixture
def scale_midi(tmp_path) -> Path:
    return write_midi(tmp_path / "scale.mid", SCALE, program=0)


def test_render_real_audio(scale_midi, tmp_path):
    info = render(scale_midi, tmp_path / "scale.wav", soundfont=TIMGM, sample_rate=RATE)
    samples, channels, width, rate = read_wav(info.wav_path)
    assert (channels, width, rate) == (2, 2, RATE)  # stereo 16-bit at the asked rate

    # Duration: the MIDI's length plus a kept, bounded release tail.
    midi_seconds = mido.MidiFile(scale_midi).length
    seconds = len(samples) / RATE
    assert info.midi_seconds == pytest.approx(midi_seconds)
    assert midi_seconds + 0.05 <= seconds <= midi_seconds + TAIL_MAX_SECONDS + 0.06
    assert info.seconds == pytest.approx(seconds)
    after_end = samples[round(midi_seconds * RATE) : round((midi_seconds + 0.05) * RATE)]
    assert np.abs(after_end).max() > 300, "the last note's release tail was cut off"

    # Not silent, and peak-normalized to -1 dBFS without clipping.
    assert np.sqrt(np.mean(samples.astype(np.float64) ** 2)) > 500
    peak = int(np.abs(samples.astype(np.int32)).max())
    assert peak < 32767
    assert 20 * np.log10(peak / 32768) == pytest.approx(PEAK_DBFS, abs=0.05)
    assert info.peak_dbfs == pytest.approx(PEAK_DBFS, abs=0.05)

    assert info.n_notes == len(SCALE)
    assert info.programs == {0: [0]}
    assert info.soundfont.path == TIMGM
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scale.mid", "scale.wav"]  # no temporary left


def test_same_file_same_bytes(scale_midi, tmp_path):
    for name in ("a.wav", "b.wav"):
        render(scale_midi, tmp_path / name, soundfont=TIMGM, sample_rate=RATE)
    assert (tmp_path / "a.wav").read_bytes() == (tmp_path / "b.wav").read_bytes()


def test_the_number_of_cpu_cores_does_not_change_the_sound(tmp_path, monkeypatch):
    chords = [(pitch, beat / 2, 2) for beat in range(8) for pitch in (48 + beat, 55 + beat, 64 + beat, 72 + beat)]
    midi = write_midi(tmp_path / "chords.mid", chords, program=48)
    for cores in (1, 3):
        monkeypatch.setattr(render_module, "CPU_CORES", cores)
        render(midi, tmp_path / f"{cores}.wav", soundfont=TIMGM, sample_rate=RATE)
    assert (tmp_path / "1.wav").read_bytes() == (tmp_path / "3.wav").read_bytes()


def test_long_renders_buffer_in_a_temporary_file_with_the_same_result(scale_midi, tmp_path, monkeypatch):
    render(scale_midi, tmp_path / "memory.wav", soundfont=TIMGM, sample_rate=RATE)
    monkeypatch.setattr(render_module, "IN_MEMORY_BYTES", 0)  # as if the piece were very long
    render(scale_midi, tmp_path / "file.wav", soundfont=TIMGM, sample_rate=RATE)
    assert (tmp_path / "memory.wav").read_bytes() == (tmp_path / "file.wav").read_bytes()


def test_program_from_the_file_is_played(tmp_path):
    midi = write_midi(tmp_path / "flute.mid", SCALE, program=73)
    info = render(midi, tmp_path / "flute.wav", soundfont=TIMGM, sample_rate=RATE)
    assert info.programs == {0: [73]}


def test_instrument_override_changes_the_sound_but_not_the_drums(tmp_path):
    drums = [(36, i * 0.5, 0.25) for i in range(4)]
    midi = write_midi(tmp_path / "band.mid", SCALE, program=0, drums=drums)
    piano = render(midi, tmp_path / "piano.wav", soundfont=TIMGM, sample_rate=RATE)
    flute = render(midi, tmp_path / "flute.wav", soundfont=TIMGM, sample_rate=RATE, instrument="flute")
    # The synth itself reports which program each channel played; drums (channel 9) are untouched.
    assert piano.programs == {0: [0], 9: [0]}
    assert flute.programs == {0: [73], 9: [0]}
    # And it sounds different: the spectra of the two renderings are far apart.
    a, b = (read_wav(info.wav_path)[0] for info in (piano, flute))
    n = min(len(a), len(b))
    assert float(spectrum(a[:n]) @ spectrum(b[:n])) < 0.9
    # The MIDI file is not modified.
    assert [m.program for m in mido.MidiFile(midi).tracks[1] if m.type == "program_change"] == [0]


def test_override_ignores_program_changes_in_the_file(tmp_path):
    midi = write_midi(tmp_path / "organ.mid", SCALE, program=19)
    info = render(midi, tmp_path / "violin.wav", soundfont=TIMGM, sample_rate=RATE, instrument=40)
    assert info.programs == {0: [40]}


def test_held_notes_are_released_at_the_end(tmp_path):
    # A note-on with no note-off (a common defect) must not ring on for the whole tail cap:
    # an organ (program 19) sounds for as long as its key is held.
    midi = tmp_path / "held.mid"
    track = mido.MidiTrack([
        mido.Message("program_change", program=19, time=0),
        mido.Message("note_on", note=60, velocity=90, time=0),
        mido.MetaMessage("end_of_track", time=480),
    ])
    mido.MidiFile(type=0, ticks_per_beat=480, tracks=[track]).save(midi)
    info = render(midi, tmp_path / "held.wav", soundfont=TIMGM, sample_rate=RATE)
    assert info.seconds < info.midi_seconds + TAIL_MAX_SECONDS / 2


def test_hours_long_midi_is_refused_before_rendering(tmp_path):
    # One note, then the track ends three hours later: tiny file, absurd length.
    midi = write_midi(tmp_path / "long.mid", [(60, 0, 1)], bpm=120, end_beats=3 * 3600 * 2)
    start = time.perf_counter()
    with pytest.raises(MidiError, match=r"lasts 3 h 00 min.*limit") as error:
        render(midi, tmp_path / "long.wav", soundfont=TIMGM)
    assert time.perf_counter() - start < 2.0
    assert str(midi) in str(error.value)
    assert not (tmp_path / "long.wav").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long.mid"]  # no temporary left either


def test_max_seconds_is_configurable(scale_midi, tmp_path):
    with pytest.raises(MidiError, match="longer than the limit of 1.0 s"):
        render(scale_midi, tmp_path / "x.wav", soundfont=TIMGM, max_seconds=1.0)


def test_missing_and_unreadable_files_fail_with_one_line(scale_midi, tmp_path):
    cases = [
        ({"midi_path": tmp_path / "nope.mid"}, "nope.mid: no such MIDI file"),
        ({"midi_path": tmp_path / "text.mid"}, "text.mid: not a MIDI file"),
        ({"soundfont": tmp_path / "missing.sf2"}, "missing.sf2: no such SoundFont file"),
        ({"soundfont": tmp_path / "text.mid"}, "text.mid: not a readable SoundFont"),
    ]
    (tmp_path / "text.mid").write_text("not music\n")
    (tmp_path / "blocker").write_text("a file where a folder should be")
    cases.append(({"wav_path": tmp_path / "blocker" / "out.wav"}, "out.wav: cannot write"))
    cases.append(({"wav_path": tmp_path}, f"{tmp_path}: is a folder"))
    for kwargs, message in cases:
        kwargs = {"midi_path": scale_midi, "wav_path": tmp_path / "out.wav", "soundfont": TIMGM, **kwargs}
        with pytest.raises(ApolloError) as error:
            render(kwargs.pop("midi_path"), kwargs.pop("wav_path"), sample_rate=RATE, **kwargs)
        assert message in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "out.wav").exists()


def test_soundfont_resolution_order(tmp_path, monkeypatch):
    monkeypatch.delenv("APOLLO_SOUNDFONT", raising=False)
    folder = tmp_path / "soundfonts"
    folder.mkdir()
    # Nothing in the folders: pretty_midi's bundled TimGM6mb.
    assert find_soundfont(dirs=[folder]).path == TIMGM
    assert "TimGM6mb" in find_soundfont(dirs=[folder]).source
    # A SoundFont in a searched folder wins over it (the first by name).
    (folder / "b.sf2").symlink_to(TIMGM)
    (folder / "a.SF3").symlink_to(TIMGM)
    (folder / "notes.txt").write_text("not a SoundFont")
    assert find_soundfont(dirs=[tmp_path / "absent", folder]).path == folder / "a.SF3"
    # The environment variable wins over the folders, the argument over everything.
    monkeypatch.setenv("APOLLO_SOUNDFONT", str(folder / "b.sf2"))
    assert find_soundfont(dirs=[folder]) == render_module.SoundFont(folder / "b.sf2", "APOLLO_SOUNDFONT")
    assert find_soundfont(TIMGM, dirs=[folder]).source == "--soundfont"
    monkeypatch.setenv("APOLLO_SOUNDFONT", str(tmp_path / "gone.sf2"))
    with pytest.raises(ApolloError, match="gone.sf2: no such SoundFont file \\(from APOLLO_SOUNDFONT\\)"):
        find_soundfont(dirs=[folder])


def test_no_soundfont_anywhere(tmp_path, monkeypatch):
    monkeypatch.delenv("APOLLO_SOUNDFONT", raising=False)
    monkeypatch.setattr(render_module, "_bundled_timgm", lambda: None)
    monkeypatch.setattr(render_module, "SYSTEM_SOUNDFONTS", ())
    with pytest.raises(ApolloError, match="no SoundFont found: pass --soundfont"):
        find_soundfont(dirs=[tmp_path])


class _NoLibrary:
    """An import hook that makes `import fluidsynth` fail as pyfluidsynth does without libfluidsynth."""

    def find_spec(self, name, path=None, target=None):
        if name == "fluidsynth":
            raise ImportError("Couldn't find the FluidSynth library.")


def test_missing_libfluidsynth_says_how_to_install_it(scale_midi, tmp_path, monkeypatch):
    monkeypatch.delitem(sys.modules, "fluidsynth", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_NoLibrary(), *sys.meta_path])
    with pytest.raises(ApolloError, match="apt-get install libfluidsynth3.*brew install fluid-synth"):
        render(scale_midi, tmp_path / "x.wav", soundfont=TIMGM)


def test_render_command(scale_midi, tmp_path):
    result = CliRunner().invoke(cli, ["render", str(scale_midi), str(tmp_path / "out.wav"), "--instrument", "flute",
                                      "--soundfont", str(TIMGM), "--sample-rate", "16000"])
    assert result.exit_code == 0, result.output
    assert "out.wav" in result.output and "Flute" in result.output and "TimGM6mb.sf2 (--soundfont)" in result.output
    assert read_wav(tmp_path / "out.wav")[3] == 16000


def test_render_command_errors_are_one_line(scale_midi, tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["render", str(scale_midi), str(tmp_path / "o.wav"), "--instrument", "violn"])
    assert result.exit_code == 2 and "did you mean: Violin" in result.output
    result = runner.invoke(cli, ["render", str(scale_midi), str(tmp_path / "o.wav"), "--soundfont", str(tmp_path / "x.sf2")])
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: {tmp_path / 'x.sf2'}: no such SoundFont file"


def test_commands_without_torch_do_not_import_it(scale_midi, tmp_path):
    code = f"""
import sys
from click.testing import CliRunner
from apollo.cli.main import cli
runner = CliRunner()
for args in (["--help"], ["instruments"], ["render", {str(scale_midi)!r}, {str(tmp_path / 'x.wav')!r}, "--sample-rate", "8000"],
             ["render", "--help"], ["generate", "--help"]):
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, (args, result.output)
assert "torch" not in sys.modules, "torch was imported"
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
