"""MIDI to WAV through FluidSynth and a SoundFont, sample-accurate and loudness-safe.

Apollo drives the synthesizer itself instead of FluidSynth's realtime MIDI player: the file is
parsed with mido, every event is sent at its exact sample, and the audio between two events is
synthesized in one ``fluid_synth_write_float`` call straight into a float buffer. That is faster
than the ``fluidsynth`` command line and never clips while synthesizing; the finished buffer is
peak-normalized to -1 dBFS and written as stereo 16-bit PCM.

Which SoundFont (the first that exists):

1. the ``soundfont`` argument (``--soundfont``),
2. the ``APOLLO_SOUNDFONT`` environment variable,
3. a ``.sf2``/``.sf3`` file in the ``soundfonts/`` folder of an Apollo checkout, then in the user
   data folder (``$XDG_DATA_HOME/apollo/soundfonts``, by default ``~/.local/share/apollo/soundfonts``),
   the first by name in each,
4. pretty_midi's bundled ``TimGM6mb.sf2`` (small, General MIDI, installed with Apollo),
5. the system's ``FluidR3_GM.sf2`` (Debian/Ubuntu: ``apt-get install fluid-soundfont-gm``).

This module does not import torch.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import io
import math
import os
import tempfile
import wave
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from apollo.errors import ApolloError, MidiError
from apollo.instruments import instrument_program
from apollo.io import FoundFile, atomic_path

__all__ = [
    "MAX_SECONDS",
    "PEAK_DBFS",
    "RenderInfo",
    "SoundFont",
    "find_soundfont",
    "midi_events",
    "render",
    "soundfont_dirs",
]

MAX_SECONDS = 3600.0  # longest MIDI rendered by default; longer files are refused before synthesis
PEAK_DBFS = -1.0  # level of the loudest sample after normalization
TAIL_MAX_SECONDS = 5.0  # release and reverb tails are kept up to this long after the last event
TAIL_FLOOR_DB = -60.0  # ... and stop earlier once they fall this far below the piece's peak
TAIL_BLOCK_SECONDS = 0.05  # the tail is checked against the floor in blocks of this length
# FluidSynth's reverb leaves noise near 1e-8 in silence (about -150 dB below its notes); a buffer whose
# peak stays under this floor is silence, written as zeros rather than amplified to -1 dBFS.
SILENCE = 1e-6
DRUM_CHANNEL = 9  # General MIDI channel 10 (counted from 0): percussion, never overridden
IN_MEMORY_BYTES = 256 << 20  # a longer float buffer lives in a temporary file instead of RAM
SAMPLE_RATES = (8000, 96000)  # what FluidSynth accepts
CPU_CORES = min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)

INSTALL_FLUIDSYNTH = (
    "the FluidSynth library is missing: install it with `apt-get install libfluidsynth3` "
    "(Debian/Ubuntu) or `brew install fluid-synth` (macOS)"
)


# -- SoundFonts ----------------------------------------------------------------------------------


SoundFont = FoundFile  # a SoundFont file, and where it was found


def soundfont_dirs() -> list[Path]:
    """Folders searched for a SoundFont: a checkout's ``soundfonts/``, then the user data folder."""
    checkout = Path(__file__).resolve().parent.parent / "soundfonts"
    data_home = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return [checkout, data_home / "apollo" / "soundfonts"]


def _bundled_timgm() -> Path | None:
    """pretty_midi's TimGM6mb.sf2, found without importing pretty_midi."""
    spec = importlib.util.find_spec("pretty_midi")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "TimGM6mb.sf2"


SYSTEM_SOUNDFONTS = (
    Path("/usr/share/sounds/sf2/FluidR3_GM.sf2"),  # Debian, Ubuntu
    Path("/usr/share/soundfonts/FluidR3_GM.sf2"),  # Fedora, Arch
)


def find_soundfont(soundfont: str | Path | None = None, *, dirs: Sequence[Path] | None = None) -> SoundFont:
    """The SoundFont to render with, by the order in the module doc. Raises ApolloError if none."""
    if soundfont is not None:
        path = Path(soundfont)
        if not path.is_file():
            raise ApolloError(f"{path}: no such SoundFont file")
        return SoundFont(path, "--soundfont")
    env = os.environ.get("APOLLO_SOUNDFONT")
    if env:
        path = Path(env)
        if not path.is_file():
            raise ApolloError(f"{path}: no such SoundFont file (from APOLLO_SOUNDFONT)")
        return SoundFont(path, "APOLLO_SOUNDFONT")
    for folder in soundfont_dirs() if dirs is None else dirs:
        if folder.is_dir():
            found = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".sf2", ".sf3") and p.is_file())
            if found:
                return SoundFont(found[0], f"first SoundFont in {folder}")
    timgm = _bundled_timgm()
    if timgm is not None and timgm.is_file():
        return SoundFont(timgm, "pretty_midi's bundled TimGM6mb")
    for path in SYSTEM_SOUNDFONTS:
        if path.is_file():
            return SoundFont(path, "system FluidR3_GM")
    raise ApolloError(
        "no SoundFont found: pass --soundfont FILE.sf2, set APOLLO_SOUNDFONT, or put a .sf2 file "
        "in soundfonts/ (see soundfonts/README.md)"
    )


# -- MIDI events ---------------------------------------------------------------------------------


@dataclass
class MidiEvents:
    """A MIDI file flattened to channel messages at absolute times in seconds."""

    times: list[float]
    messages: list  # mido.Message, channel messages only
    seconds: float  # time of the file's last event (its end-of-track), as players measure length
    n_notes: int


def midi_events(path: str | Path) -> MidiEvents:
    """All channel messages of a MIDI file, timed in seconds by its tempo map. Raises MidiError."""
    import mido

    from apollo.midi import check_structure, read_bytes, unwrap_rmid

    path = Path(path)
    # The same guards as every MIDI reader in Apollo: size limit, RMID unwrapped, chunk structure.
    data = check_structure(unwrap_rmid(read_bytes(path), path), path)
    try:
        midi = mido.MidiFile(file=io.BytesIO(data), clip=True)  # format 2 was refused above
        times, messages, now, n_notes = [], [], 0.0, 0
        for message in midi:  # merges the tracks and converts ticks to seconds through the tempo map
            now += message.time
            if not message.is_meta and message.type != "sysex":
                times.append(now)
                messages.append(message)
                n_notes += message.type == "note_on" and message.velocity > 0
    except Exception as error:  # noqa: BLE001 (mido raises many kinds; its message names the defect)
        raise MidiError(f"{path}: not a readable MIDI file ({error})") from None
    return MidiEvents(times, messages, now, n_notes)


# -- rendering -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RenderInfo:
    """What :func:`render` wrote and how."""

    wav_path: Path
    soundfont: SoundFont
    sample_rate: int
    seconds: float  # length of the WAV
    midi_seconds: float  # length of the MIDI (the WAV adds the release tail)
    n_notes: int
    peak_dbfs: float  # level of the loudest sample written (-inf for silence)
    programs: dict[int, list[int]] = field(default_factory=dict)  # channel -> programs the synth played


def _load_fluidsynth():
    """The pyfluidsynth module, or ApolloError saying how to install the library it wraps."""
    try:
        import fluidsynth
    except ModuleNotFoundError as error:
        if error.name != "fluidsynth":
            raise
        raise ApolloError("pyfluidsynth is missing: pip install pyfluidsynth") from None
    except ImportError:  # pyfluidsynth raises this when it cannot find libfluidsynth
        raise ApolloError(INSTALL_FLUIDSYNTH) from None
    except OSError:  # found a library file but could not load it
        raise ApolloError(INSTALL_FLUIDSYNTH) from None
    return fluidsynth


def render(
    midi_path: str | Path,
    wav_path: str | Path,
    *,
    soundfont: str | Path | None = None,
    instrument: int | str | None = None,
    sample_rate: int = 44100,
    max_seconds: float = MAX_SECONDS,
) -> RenderInfo:
    """Render a MIDI file to a stereo 16-bit WAV peak-normalized to -1 dBFS (written atomically).

    ``instrument`` (a General MIDI name, alias or program; see :mod:`apollo.instruments`)
    replaces the program of every channel except the drum channel. A file longer than
    ``max_seconds`` is refused before any audio is made. Raises ApolloError (MidiError for the
    MIDI file) with a one-line message.
    """
    if not SAMPLE_RATES[0] <= sample_rate <= SAMPLE_RATES[1]:
        raise ApolloError(f"sample rate {sample_rate} Hz is outside {SAMPLE_RATES[0]}..{SAMPLE_RATES[1]}")
    if instrument is not None:
        instrument = instrument_program(instrument)
    midi_path, wav_path = Path(midi_path), Path(wav_path)
    if not midi_path.is_file():
        raise MidiError(f"{midi_path}: no such MIDI file")
    if wav_path.is_dir():
        raise ApolloError(f"{wav_path}: is a folder; give the WAV file's name")
    font = find_soundfont(soundfont)
    events = midi_events(midi_path)
    if events.seconds > max_seconds:
        raise MidiError(
            f"{midi_path}: lasts {_duration(events.seconds)}, longer than the limit of "
            f"{_duration(max_seconds)}; refusing to render it"
        )
    fluidsynth = _load_fluidsynth()

    n_frames = round(events.seconds * sample_rate)
    tail_frames = round(TAIL_MAX_SECONDS * sample_rate)
    with _float_buffer(n_frames + tail_frames) as audio, _synth(fluidsynth, font, sample_rate) as synth:
        programs = _play(synth, events, audio, sample_rate, instrument)
        tail, peak = _tail(synth, audio, n_frames, sample_rate)
        used = n_frames + tail
        peak_dbfs = _write_wav(wav_path, audio[:used], sample_rate, peak)
    return RenderInfo(
        wav_path=wav_path,
        soundfont=font,
        sample_rate=sample_rate,
        seconds=used / sample_rate,
        midi_seconds=events.seconds,
        n_notes=events.n_notes,
        peak_dbfs=peak_dbfs,
        programs=programs,
    )


class _Synth:
    """A FluidSynth instance with the raw C calls the render loop needs, bound once."""

    def __init__(self, fluidsynth, sample_rate: int) -> None:
        lib = fluidsynth._fl  # pyfluidsynth's handle on libfluidsynth
        # Warnings (e.g. "no preset found") would be printed once per note; Apollo reports its own.
        lib.fluid_set_log_function.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
        for level in (2, 3, 4):  # FLUID_WARN, FLUID_INFO, FLUID_DBG
            lib.fluid_set_log_function(level, None, None)
        # 16 channels: the same synthesis the fluidsynth command line does by default, except that
        # only the samples of the presets a piece uses are loaded (5x faster start-up with a large
        # General MIDI SoundFont such as FluidR3_GM), and the voices are shared among CPU cores
        # (the mix is the same, sample for sample, with any number of cores: a test checks it).
        settings = {"synth.dynamic-sample-loading": 1, "synth.cpu-cores": CPU_CORES}
        self.py = fluidsynth.Synth(gain=0.2, samplerate=float(sample_rate), channels=16, **settings)
        self.handle = ctypes.c_void_p(self.py.synth)
        self.sfid = -1
        self.write_float = lib.fluid_synth_write_float
        self.write_float.argtypes = [ctypes.c_void_p, ctypes.c_int] + [ctypes.c_void_p, ctypes.c_int, ctypes.c_int] * 2
        self.write_float.restype = ctypes.c_int
        self.channel_pressure = lib.fluid_synth_channel_pressure
        self.key_pressure = lib.fluid_synth_key_pressure
        for function, n_ints in ((self.channel_pressure, 2), (self.key_pressure, 3)):
            function.argtypes = [ctypes.c_void_p] + [ctypes.c_int] * n_ints
            function.restype = ctypes.c_int

    def synthesize(self, audio: np.ndarray, start: int, stop: int) -> None:
        """Fill frames ``start:stop`` of an interleaved float32 [frames, 2] buffer."""
        if stop > start:
            base = audio.ctypes.data
            self.write_float(self.handle, stop - start, base, 2 * start, 2, base, 2 * start + 1, 2)


@contextlib.contextmanager
def _synth(fluidsynth, font: SoundFont, sample_rate: int) -> Iterator[_Synth]:
    synth = _Synth(fluidsynth, sample_rate)
    try:
        synth.sfid = synth.py.sfload(str(font.path), update_midi_preset=1)
        if synth.sfid < 0:
            raise ApolloError(f"{font.path}: not a readable SoundFont")
        yield synth
    finally:
        synth.py.delete()


@contextlib.contextmanager
def _float_buffer(n_frames: int) -> Iterator[np.ndarray]:
    """A zeroed float32 [n_frames, 2] buffer: in memory, or in a temporary file when it is large."""
    if n_frames * 8 <= IN_MEMORY_BYTES:
        yield np.zeros((n_frames, 2), dtype=np.float32)
        return
    with tempfile.TemporaryFile() as file:
        yield np.memmap(file, dtype=np.float32, mode="w+", shape=(n_frames, 2))


def _play(synth: _Synth, events: MidiEvents, audio: np.ndarray, sample_rate: int, instrument: int | None) -> dict[int, list[int]]:
    """Send every event at its sample, synthesizing the audio in between. Returns channel -> programs."""
    py, sfid = synth.py, synth.sfid
    if instrument is not None:
        for channel in range(16):
            if channel != DRUM_CHANNEL:
                py.program_select(channel, sfid, 0, instrument)
    programs: dict[int, list[int]] = {}
    unchecked = set(range(16))  # channels whose program may have changed since their last note
    frame = 0
    for time, message in zip(events.times, events.messages):
        at = min(round(time * sample_rate), len(audio))
        synth.synthesize(audio, frame, at)
        frame = at
        kind, channel = message.type, message.channel
        overridden = instrument is not None and channel != DRUM_CHANNEL
        if kind == "note_on":
            if message.velocity and channel in unchecked:
                # Ask the synth (not our own bookkeeping) which program this note really uses.
                unchecked.discard(channel)
                _, _, program = py.program_info(channel)
                used = programs.setdefault(channel, [])
                if program not in used:
                    used.append(program)
            py.noteon(channel, message.note, message.velocity)
        elif kind == "note_off":
            py.noteoff(channel, message.note)
        elif kind == "control_change":
            if not (overridden and message.control in (0, 32)):  # bank select would undo the override
                py.cc(channel, message.control, message.value)
        elif kind == "program_change":
            if not overridden:
                py.program_change(channel, message.program)
                unchecked.add(channel)
        elif kind == "pitchwheel":
            py.pitch_bend(channel, message.pitch)
        elif kind == "aftertouch":
            synth.channel_pressure(synth.handle, channel, message.value)
        elif kind == "polytouch":
            synth.key_pressure(synth.handle, channel, message.note, message.value)
    end = round(events.seconds * sample_rate)
    synth.synthesize(audio, frame, end)
    for channel in range(16):
        # Release whatever the file left held (sustain pedal, missing note-offs) so the tail decays.
        py.cc(channel, 64, 0)
        py.cc(channel, 123, 0)
    return programs


def _tail(synth: _Synth, audio: np.ndarray, start: int, sample_rate: int) -> tuple[int, float]:
    """Synthesize the release tail after frame ``start``.

    Returns the tail's length in frames and the peak (absolute sample value) of everything
    synthesized, which the normalization needs anyway.
    """
    block = max(1, round(TAIL_BLOCK_SECONDS * sample_rate))
    peak = _peak(audio[:start])
    frame = start
    while frame < len(audio):
        stop = min(frame + block, len(audio))
        synth.synthesize(audio, frame, stop)
        block_peak = _peak(audio[frame:stop])
        frame = stop
        # Stop once the tail is inaudible next to the loudest moment of the piece (or truly silent).
        if block_peak <= max(peak * 10 ** (TAIL_FLOOR_DB / 20), SILENCE):
            break
        peak = max(peak, block_peak)
    return frame - start, peak


def _peak(audio: np.ndarray, chunk: int = 1 << 20) -> float:
    """Largest absolute sample, in chunks so that a file-backed buffer is never copied whole."""
    return max((float(np.abs(audio[i : i + chunk]).max()) for i in range(0, len(audio), chunk)), default=0.0)


def _write_wav(path: Path, audio: np.ndarray, sample_rate: int, peak: float, chunk: int = 1 << 20) -> float:
    """Scale float frames whose peak is ``peak`` to PEAK_DBFS and write 16-bit stereo PCM.

    Returns the level of the loudest sample written, in dBFS.
    """
    # Scale so the loudest sample lands on PEAK_DBFS; below full scale, rounding can never clip.
    gain = 10 ** (PEAK_DBFS / 20) * 32767 / peak if peak > SILENCE else 0.0
    top = 0
    try:
        with atomic_path(path) as tmp, wave.open(str(tmp), "wb") as wav:
            wav.setnchannels(2)
            wav.setsampwidth(2)
            wav.setframerate(sample_rate)
            for i in range(0, len(audio), chunk):
                pcm = np.rint(audio[i : i + chunk] * gain).astype("<i2")
                top = max(top, int(np.abs(pcm.astype(np.int32)).max(initial=0)))
                wav.writeframes(pcm.tobytes())
    except OSError as error:
        raise ApolloError(f"{path}: cannot write ({error.strerror or error})") from None
    return 20 * math.log10(top / 32768) if top else -math.inf


def _duration(seconds: float) -> str:
    """'2 h 05 min', '12 min 30 s' or '42.0 s'."""
    if seconds >= 3600:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"
    if seconds >= 60:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{seconds:.1f} s"
