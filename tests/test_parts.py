"""Parts a real player can play (apollo.parts): voices, ranges, ensembles, multi-track MIDI, the CLI."""

from __future__ import annotations

import io
from pathlib import Path

import mido
import numpy as np
import pytest
import symusic
from apollo.cli.main import cli
from click.testing import CliRunner

from apollo import render as render_module
from apollo.errors import ApolloError
from apollo.generate import find_model, load_model, noise_tape, write_piece
from apollo.parts import (
    BASS_LINE,
    ENSEMBLES,
    PLAYABLE,
    Arrangement,
    Part,
    arrange,
    find_ensemble,
    polyphony,
    voices,
    write_arrangement,
)
from apollo.roll import Grid, PianoRoll

N_GENERATED = 30


@pytest.fixture(scope="module")
def generated() -> list[PianoRoll]:
    """30 pieces of 16 bars from the bundled model, seeds 0..29 (one batch through the generator)."""
    import torch

    generator, spec = load_model(find_model("bundled"))
    width = generator.config.noise_shape[2]
    tapes = torch.stack([noise_tape(generator, width, seed) for seed in range(N_GENERATED)])
    with torch.inference_mode():
        probabilities = generator(tapes).numpy()
    return [spec.decoding.decode(p, spec.encoding, spec.grid, spec.tempo) for p in probabilities]


@pytest.fixture(scope="module")
def chorales(chorale_dir) -> list[PianoRoll]:
    return [PianoRoll.from_midi(path) for path in sorted(chorale_dir.glob("*.mid"))]


def read_tracks(data: bytes) -> list[dict]:
    """Each track of a MIDI file as symusic reads it: name, program, notes (pitch, start and end tick)."""
    tracks = []
    for track in symusic.Score.from_midi(data).tracks:
        notes = track.notes.numpy()
        tracks.append({"name": track.name, "program": track.program, "pitch": notes["pitch"].astype(int),
                       "start": notes["time"].astype(int), "end": (notes["time"] + notes["duration"]).astype(int)})
    return tracks


def channels(data: bytes) -> list[set[int]]:
    """The channels each track's messages use."""
    return [{m.channel for m in track if not m.is_meta} for track in mido.MidiFile(file=io.BytesIO(data)).tracks]


def overlaps(start: np.ndarray, end: np.ndarray) -> int:
    """How many notes begin before the one before them has ended."""
    order = np.argsort(start, kind="stable")
    return int((start[order][1:] < end[order][:-1]).sum())


def roll_of(notes: list[tuple[int, int, int]], n_steps: int = 32) -> PianoRoll:
    pitch, start, end = (np.array(x) for x in zip(*notes))
    return PianoRoll.from_notes(pitch, start, end, Grid(), 100, n_steps)


# -- voices -------------------------------------------------------------------------------------


def test_voices_are_lines_of_single_notes_highest_first():
    # A held chord under a moving melody, then a five-note chord for four voices.
    texture = roll_of([(72, 0, 4), (74, 4, 8), (76, 8, 16), (60, 0, 16), (64, 0, 8), (65, 8, 16), (48, 0, 16),
                       (79, 16, 32), (72, 16, 32), (67, 16, 32), (64, 16, 32), (48, 16, 32)])
    lines = voices(texture, 4)
    # Each voice moves least: the five-note chord's 72 is the note left out (the others each move a step).
    assert [v.notes()[0].tolist() for v in lines] == [[72, 74, 76, 79], [64, 65, 67], [60, 64], [48, 48]]
    for line in lines:
        assert (line.cells > 0).sum(axis=0).max() <= 1
    assert texture.n_notes - sum(v.n_notes for v in lines) == 1
    assert sum(v.n_notes for v in voices(texture, polyphony(texture))) == texture.n_notes  # enough voices: all kept
    with pytest.raises(ValueError):
        voices(texture, 0)


def test_a_held_note_gives_way_to_the_next_chord_rather_than_losing_its_notes():
    # The first chord's top note is held one step into the second chord: three voices, four sounding.
    texture = roll_of([(72, 0, 9), (67, 0, 8), (60, 0, 8), (71, 8, 16), (65, 8, 16), (62, 8, 16)], 16)
    lines = voices(texture, 3)
    assert sum(v.n_notes for v in lines) == 6
    assert (72, 0, 8) in set(zip(*(x.tolist() for x in lines[0].notes())))  # cut where its voice moves on


def test_four_voices_of_real_chorales_are_bachs_parts(chorale_dir):
    """On real chorales the voices are Bach's soprano, alto, tenor and bass (notes sounding in
    unison merge in a piano roll, so 100 % is out of reach); measured 96 % on 60 chorales."""
    agree = total = 0
    for path in sorted(chorale_dir.glob("*.mid")):
        score = symusic.Score.from_midi(path.read_bytes())
        parts = [t.notes.numpy() for t in score.tracks if len(t.notes)]
        if len(parts) != 4:
            continue
        to_step = 4 / score.ticks_per_quarter
        lines = voices(PianoRoll.from_midi(path, Grid(0, 128)), 4)
        for line, bach in zip(lines, parts):
            pitch, start, _ = line.notes()
            found = set(zip(pitch.tolist(), start.tolist()))
            wanted = set(zip(bach["pitch"].tolist(), np.rint(bach["time"] * to_step).astype(int).tolist()))
            agree, total = agree + len(found & wanted), total + len(wanted)
    assert total > 1000 and agree / total > 0.9


# -- arranging: every ensemble and instrument, real and generated music --------------------------


def test_every_part_of_every_ensemble_is_playable_over_many_pieces(generated, chorales):
    """100 % of notes in range and 100 % of monophonic parts monophonic, read back from the MIDI file."""
    checked = 0
    for roll in generated + chorales:
        for ensemble, specs in ENSEMBLES.items():
            arrangement = arrange(roll, ensemble=ensemble)
            tracks = read_tracks(write_arrangement(arrangement, None))
            assert [t["name"] for t in tracks] == [spec.name for spec in specs]
            assert [t["program"] for t in tracks] == [spec.program for spec in specs]
            for track, spec in zip(tracks, specs):
                assert ((track["pitch"] >= spec.low) & (track["pitch"] <= spec.high)).all(), (ensemble, spec.name)
                if spec.monophonic:
                    assert overlaps(track["start"], track["end"]) == 0, (ensemble, spec.name)
                checked += len(track["pitch"])
            if all(spec.monophonic for spec in specs):  # no note lost without being counted
                assert arrangement.n_notes + arrangement.left_out == roll.n_notes
    assert checked > 50_000


def test_every_instrument_plays_in_its_range_and_monophonic_ones_one_line(generated, chorales):
    for roll in generated[:2] + chorales[:1]:
        for program, playable in enumerate(PLAYABLE):
            arrangement = arrange(roll, instrument=program)
            (part,) = arrangement.parts
            pitch, start, end = part.roll.notes()
            assert ((pitch >= playable.low) & (pitch <= playable.high)).all(), program
            assert part.monophonic == playable.monophonic
            if playable.monophonic:
                assert (part.roll.cells > 0).sum(axis=0).max() == 1, program
                assert "plays one note at a time" in arrangement.message
            else:  # the whole texture: every onset kept, in its pitch class (folding may stack two on one pitch)
                texture_pitch, texture_start, _ = roll.notes()
                assert arrangement.left_out == 0
                assert set(zip(pitch % 12, start)) == set(zip(texture_pitch % 12, texture_start)), program


def test_a_solo_line_is_the_top_voice_or_for_a_bass_the_bottom_one(generated):
    roll = generated[0]
    violin, tuba = arrange(roll, instrument="violin"), arrange(roll, instrument="tuba")
    top, bottom = violin.parts[0].roll.notes()[0], tuba.parts[0].roll.notes()[0]
    assert 58 in BASS_LINE and 40 not in BASS_LINE
    assert np.median(top - violin.parts[0].move) > np.median(bottom - tuba.parts[0].move) + 12
    assert "wrote the top voice" in violin.message and "wrote the bottom voice" in tuba.message
    assert violin.n_notes + violin.left_out == roll.n_notes
    high_tuba = arrange(roll, instrument="tuba", line="top")
    assert np.median(high_tuba.parts[0].roll.notes()[0] - high_tuba.parts[0].move) == np.median(top - violin.parts[0].move)
    piano_melody = arrange(roll, instrument="piano", line="top")  # a polyphonic instrument plays one line when asked
    assert piano_melody.parts[0].monophonic and piano_melody.n_notes == violin.n_notes


def test_a_part_moves_by_whole_octaves_only_for_more_than_a_few_strays():
    low_line = roll_of([(40 + i, 2 * i, 2 * i + 2) for i in range(12)])  # E2..D#3: below a violin
    arrangement = arrange(low_line, instrument="violin")
    (part,) = arrangement.parts
    assert part.move == 24 and part.folded == 0
    assert "Violin moved up two octaves to fit its range (G3..E7)" in arrangement.message
    # A line around C5 with one F3 among 20 notes: the line stays, the F3 is folded up an octave.
    melody = roll_of([(72 + i % 5, 2 * i, 2 * i + 2) for i in range(19)] + [(53, 38, 40)], 40)
    part = arrange(melody, instrument="violin").parts[0]
    assert part.move == 0 and part.folded == 1 and 65 in part.roll.notes()[0]


def test_given_moves_are_kept_and_the_notes_still_fit():
    low_line = roll_of([(40 + i, 2 * i, 2 * i + 2) for i in range(12)])  # alone it would move up two octaves
    part = arrange(low_line, instrument="violin", moves=[12]).parts[0]
    pitch = part.roll.notes()[0]
    assert part.move == 12 and part.folded > 0 and pitch.min() >= part.low and pitch.max() <= part.high
    quartet = arrange(low_line, ensemble="string quartet", moves=[0, 0, 0, -12])
    assert [p.move for p in quartet.parts] == [0, 0, 0, -12]


def test_ensemble_names_are_matched_forgivingly_and_unknown_ones_name_the_known():
    assert find_ensemble("String-Quartet")[0] == "string quartet"
    assert find_ensemble("SATB")[0] == "choir" and find_ensemble("sax quartet")[0] == "saxophone quartet"
    with pytest.raises(ApolloError, match="choose from: string quartet, brass quartet") as error:
        find_ensemble("gamelan")
    assert "\n" not in str(error.value)
    texture = roll_of([(60, 0, 4)])
    for bad in (dict(instrument="violin", ensemble="choir"), dict(ensemble="choir", line="top"), dict(line="middle")):
        with pytest.raises(ApolloError):
            arrange(texture, **bad)


def test_the_ranges_cover_all_128_programs_with_real_instruments_ranges():
    assert len(PLAYABLE) == 128 and all(p.high - p.low >= 12 for p in PLAYABLE)
    spans = {40: (55, 100), 41: (48, 84), 42: (36, 76), 43: (28, 60), 73: (60, 96), 68: (58, 91), 71: (50, 91),
             70: (34, 75), 56: (54, 82), 57: (40, 72), 58: (28, 58), 60: (34, 77), 0: (21, 108), 24: (40, 88),
             46: (24, 103)}
    for program, span in spans.items():
        assert (PLAYABLE[program].low, PLAYABLE[program].high) == span, program
    mono = {p for p, playable in enumerate(PLAYABLE) if playable.monophonic}
    assert mono == {*range(32, 44), *range(56, 61), *range(64, 88), 106, 109, 110, 111}
    assert [(s.low, s.high) for s in ENSEMBLES["choir"]] == [(60, 81), (53, 74), (48, 69), (40, 64)]


# -- MIDI files ----------------------------------------------------------------------------------


def test_each_part_gets_its_own_channel_never_the_drum_channel(generated):
    roll = generated[1]
    part = arrange(roll, instrument="flute").parts[0]
    many = Arrangement([Part(f"Flute {i + 1}", 73, part.roll, 60, 96, True) for i in range(12)], 0, "")
    assert channels(write_arrangement(many, None)) == [{c} for c in (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12)]
    with pytest.raises(ApolloError, match="channels"):
        write_arrangement(Arrangement(many.parts * 2, 0, ""), None)


def test_write_piece_writes_one_track_per_part_and_renders_each_with_its_program(generated, tmp_path):
    roll = generated[2].slice(0, 32)  # two bars: rendering stays quick
    piece = write_piece(roll, tmp_path / "quartet.mid", ensemble="string quartet", wav=True, png=True,
                        soundfont=render_module._bundled_timgm(), sample_rate=22050)
    midi = mido.MidiFile(piece.midi)
    assert midi.type == 1 and [t.name for t in midi.tracks] == ["Violin I", "Violin II", "Viola", "Cello"]
    assert piece.program is None and [p.name for p in piece.parts] == [t.name for t in midi.tracks]
    assert piece.render_info.programs == {0: [40], 1: [40], 2: [41], 3: [42]}
    assert piece.png.is_file() and piece.seed is None and piece.bars == 2
    assert midi.length == pytest.approx(roll.seconds)
    with pytest.raises(ApolloError, match="not both"):
        write_piece(roll, tmp_path / "x.mid", instrument="violin", ensemble="choir")
    assert not (tmp_path / "x.mid").exists()


# -- the command line ----------------------------------------------------------------------------


def generate_command(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["generate", "--checkpoint", "bundled", "--seed", "3", "--bars", "4", *args])
    return result.exit_code, result.output


def test_generate_for_a_string_quartet(tmp_path):
    out = tmp_path / "quartet.mid"
    code, output = generate_command("--ensemble", "String Quartet", str(out))
    assert code == 0, output
    assert "string quartet (Violin I, Violin II, Viola, Cello)" in output
    tracks = read_tracks(out.read_bytes())
    assert [t["program"] for t in tracks] == [40, 40, 41, 42] and channels(out.read_bytes()) == [{0}, {1}, {2}, {3}]
    assert all(len(t["pitch"]) and overlaps(t["start"], t["end"]) == 0 for t in tracks)


def test_generate_for_a_violin_writes_one_line_and_says_so(tmp_path):
    out = tmp_path / "violin.mid"
    code, output = generate_command("--instrument", "violin", str(out))
    assert code == 0, output
    assert "Violin plays one note at a time: wrote the top voice" in output
    (track,) = read_tracks(out.read_bytes())
    assert track["program"] == 40 and len(track["pitch"]) > 10 and overlaps(track["start"], track["end"]) == 0
    assert ((track["pitch"] >= 55) & (track["pitch"] <= 100)).all()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--ensemble", "gamelan"], "unknown ensemble 'gamelan'; choose from: string quartet"),
        (["--ensemble", "choir", "--instrument", "violin"], "give --instrument or --ensemble, not both"),
        (["--ensemble", "choir", "--line", "top"], "an ensemble plays every voice"),
        (["--line", "middle"], "'middle' is not one of 'top', 'bottom'"),
    ],
)
def test_bad_arrangement_options_are_usage_errors(args, message, tmp_path):
    code, output = generate_command(*args, str(tmp_path / "x.mid"))
    assert code == 2 and message in output
    assert [line for line in output.splitlines() if line.startswith("Error:")] == [next(
        line for line in output.splitlines() if message in line)]
    assert not Path(tmp_path / "x.mid").exists()


def test_a_tune_played_legato_stays_one_line_for_a_solo_instrument():
    # A folk tune's notes often ring a step into the next one. That is one line, not two voices:
    # the violin plays every note (each cut where the next begins), and a double stop keeps one.
    rng = np.random.default_rng(0)
    pitch = 67 + np.cumsum(rng.choice([-2, -1, 1, 2], size=48))  # a line that wanders by steps
    start = np.arange(48) * 2
    end = start + 3  # each note held one step into the next
    pitch, start, end = np.append(pitch, pitch[10] - 4), np.append(start, start[10]), np.append(end, end[10])
    order = np.lexsort((pitch, start))
    roll = PianoRoll.from_notes(pitch[order], start[order], end[order], Grid(), 100.0, 128)
    violin = arrange(roll, instrument="violin")
    notes = violin.parts[0].roll.notes()
    assert violin.n_notes == 48 and violin.left_out == 1 and polyphony(violin.parts[0].roll) == 1
    assert "48 of 49 notes" in violin.message
    assert (notes[2] - notes[1] == 2)[:-1].all() and notes[2][-1] - notes[1][-1] == 3  # each note lasts until the next begins
