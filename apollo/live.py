"""Endless music, played live to a MIDI port.

The piece is the one :func:`apollo.generate.sample_probabilities` makes, read from the same noise
tape with the same chaining, but without end: :func:`endless_probabilities` runs the generator one
window at a time and hands on each hop of steps (8 bars) as soon as no later window can change it,
so for one seed the endless piece's first bars *are* a long piece's first bars (a test checks it).
:func:`endless_rolls` decodes them with the model's decoding, keeping ``min_length`` steps of
context on each side, so the cells equal those of decoding the whole piece at once.

:class:`Stream` arranges each hop for the instrument or ensemble (:func:`apollo.parts.arrange`,
one MIDI channel per part, never the drum channel) and turns it into timed note-on and note-off
messages. A hop is arranged on its own, each part kept at the octave move the first hop chose for
it (a part that changed octave between hops would jump), so at its start a note held across the
boundary is matched to the previous hop: a part's note that ends at the boundary and the same part's note of
the same pitch that begins there are **one note** (no note-off, no new note-on) when the texture
holds that pitch class across the boundary; otherwise the first ends and the second starts there.

:class:`Player` plays a stream to any mido output port: a background thread generates ahead of
playback (a queue of hops), the calling thread sends each message at its time (sleeping until
shortly before it, then spinning). :meth:`Player.stop`, Ctrl-C or the end of ``bars`` ends it
cleanly: every sounding note gets its note-off, then all-notes-off (CC 123) on every channel used.
"""

from __future__ import annotations

import math
import os
import queue
import signal
import sys
import threading
import time
from array import array
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import mido
import numpy as np

from apollo.decoding import Decoding
from apollo.errors import ApolloError
from apollo.generate import Chaining, ModelSpec, noise_columns
from apollo.midi import DRUM_CHANNEL, NoteTrack, write_tracks
from apollo.parts import arrange, check_choice
from apollo.roll import HELD, ONSET, PianoRoll, fold_pitches

if TYPE_CHECKING:
    from apollo.model import Generator

__all__ = [
    "VIRTUAL_PORT",
    "Event",
    "PlayResult",
    "Player",
    "RecordingPort",
    "Stream",
    "endless_probabilities",
    "endless_rolls",
    "open_port",
    "output_names",
    "play",
]

VIRTUAL_PORT = "Apollo"  # the virtual output port's name, where the system allows one
ALL_NOTES_OFF = 123  # the control change that silences a channel
SPIN_SECONDS = 0.002  # sleep until this close to an event's time, then spin
CHANNELS = [c for c in range(16) if c != DRUM_CHANNEL]


# -- the endless piece ---------------------------------------------------------------------------


def endless_probabilities(generator: Generator, seed: int, *, batch: int = 1) -> Iterator[np.ndarray]:
    """The endless piece's probabilities ``[planes, pitches, hop]``, one hop at a time, for ever.

    Window ``k`` reads tape columns ``k * hop_columns .. + width`` exactly as
    :func:`~apollo.generate.sample_probabilities` does (its key and style from the first window's
    noise) and is weighted the same, and the weighted
    windows are summed in the same order; a hop is handed on once the next window's fade-in
    cannot reach it. ``batch`` windows go through the generator at once (faster when no one is
    listening, as in the soak test). Memory stays flat: only one window's tail is kept.
    """
    import torch

    chain = Chaining.of(generator)
    weight = [chain.weight(first=True, last=False), chain.weight(first=False, last=False)]
    columns = noise_columns(generator, seed)
    tape = [next(columns) for _ in range(chain.width)]  # from the current window's first column
    whole = torch.stack(tape, dim=-1)[None]  # the first window's noise: the piece's key and style
    tail = None  # the summed weighted windows over the current window's first `overlap` steps
    k = 0
    while True:
        need = chain.width + (batch - 1) * chain.hop_columns
        tape += [next(columns) for _ in range(need - len(tape))]
        stacked = torch.stack(tape, dim=-1)
        windows = torch.stack([stacked[..., i * chain.hop_columns : i * chain.hop_columns + chain.width]
                               for i in range(batch)])
        with torch.inference_mode():
            probs = generator(windows, whole.expand_as(windows)).numpy()
        for p in probs:
            if tail is None:
                tail = np.zeros((*p.shape[:2], chain.overlap), dtype=np.float32)
            summed = np.concatenate([tail, np.zeros((*p.shape[:2], chain.hop), np.float32)], axis=-1)
            summed += p * weight[k > 0]
            tail = summed[..., chain.hop :]
            k += 1
            yield summed[..., : chain.hop]
        del tape[: batch * chain.hop_columns]


def endless_rolls(generator: Generator, spec: ModelSpec, seed: int, *, decoding: Decoding | None = None,
                  tempo: float | None = None, transpose: int = 0, batch: int = 1) -> Iterator[PianoRoll]:
    """The endless piece decoded (``decoding``, default the model's own), one hop at a time.

    Each roll's first column keeps HELD where a note goes on from the previous roll. Decoding
    sees ``min_length`` steps on each side of what it hands on, so the cells equal those of
    decoding the whole piece at once (the first hop is ``min_length`` steps shorter, the rest are
    a hop each). ``transpose`` moves the notes by semitones (folded into the grid by octaves).
    """
    decoding = spec.decoding if decoding is None else decoding
    tempo = spec.tempo if tempo is None else tempo
    margin = decoding.min_length
    buffer, start, done = None, 0, 0  # probabilities from step `start`; cells handed on up to `done`
    for probs in endless_probabilities(generator, seed, batch=batch):
        buffer = probs if buffer is None else np.concatenate([buffer, probs], axis=-1)
        stop = start + buffer.shape[-1] - margin
        cells = decoding.decode(buffer, spec.encoding, spec.grid, tempo).cells[:, done - start : stop - start]
        yield _transpose(PianoRoll(cells, spec.grid, tempo), transpose)
        done = stop
        keep = done - margin
        buffer, start = buffer[..., keep - start :], keep


def _transpose(roll: PianoRoll, semitones: int) -> PianoRoll:
    """``roll`` moved as :meth:`PianoRoll.transpose` moves it, a note held into the roll kept held."""
    if not semitones:
        return roll
    moved = roll.transpose(semitones)
    rows = np.flatnonzero(roll.cells[:, 0] == HELD)
    pitch, _ = fold_pitches(rows + roll.grid.lowest_pitch + semitones, roll.grid)
    column = moved.cells[:, 0]
    held = pitch - roll.grid.lowest_pitch
    column[held[column[held] == ONSET]] = HELD
    return moved


# -- timed messages ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """A MIDI message due at ``step`` (sixteenths from the start, on the model's grid)."""

    step: int
    message: mido.Message


class Stream:
    """The endless piece, arranged, as timed messages: iterate for one list of events per hop.

    ``bars`` ends the piece there (None: never); the last list then ends every sounding note.
    Messages within a list are in time order, note-offs before note-ons at the same step.
    """

    def __init__(self, generator: Generator, spec: ModelSpec, *, seed: int, tempo: float | None = None,
                 instrument: int | str | None = None, ensemble: str | None = None, line: str | None = None,
                 decoding: Decoding | None = None, transpose: int = 0, bars: int | None = None,
                 batch: int = 1, velocity: int = 80) -> None:
        check_choice(instrument, ensemble, line)
        self.generator, self.spec, self.seed = generator, spec, seed
        self.tempo = spec.tempo if tempo is None else tempo
        self.instrument, self.ensemble, self.line = instrument, ensemble, line
        self.decoding, self.transpose, self.batch, self.velocity = decoding, transpose, batch, velocity
        self.end = None if bars is None else bars * spec.steps_per_bar
        self.programs: dict[int, int] = {}  # channel -> program, known once the first hop is arranged
        self.moves: list[int] | None = None  # each part's octave move, chosen on the first hop and kept
        self.names: dict[int, str] = {}

    @property
    def seconds_per_step(self) -> float:
        return 60.0 / (self.tempo * self.spec.grid.steps_per_beat)

    def __iter__(self) -> Iterator[list[Event]]:
        rolls = endless_rolls(self.generator, self.spec, self.seed, decoding=self.decoding, tempo=self.tempo,
                              transpose=self.transpose, batch=self.batch)
        step, sounding = 0, set()  # (channel, pitch) of notes that reach the end of the last hop
        for roll in rolls:
            if self.end is not None and step + roll.n_steps >= self.end:
                roll = PianoRoll(roll.cells[:, : self.end - step], roll.grid, roll.tempo)
            events, sounding = self._hop(roll, step, sounding)
            step += roll.n_steps
            if self.end is not None and step >= self.end:
                events += [self._off(channel, pitch, step) for channel, pitch in sorted(sounding)]
                yield events
                return
            yield events

    def _hop(self, roll: PianoRoll, step: int, sounding: set) -> tuple[list[Event], set]:
        """One hop's events, and the notes still sounding at its end (module doc: held notes)."""
        held = {int(p) % 12 for p in np.flatnonzero(roll.cells[:, 0] == HELD) + roll.grid.lowest_pitch}
        parts = arrange(roll, instrument=self.instrument, ensemble=self.ensemble, line=self.line, moves=self.moves).parts
        if self.moves is None:
            self.moves = [part.move for part in parts]
        if len(parts) > len(CHANNELS):
            raise ApolloError(f"{len(parts)} parts, but MIDI has only {len(CHANNELS)} channels for them")
        events, going_on, continued = [], set(), set()
        for channel, part in zip(CHANNELS, parts):
            self.programs.setdefault(channel, part.program)
            self.names.setdefault(channel, part.name)
            for pitch, start, end in zip(*part.roll.notes()):
                key = (channel, int(pitch))
                if start == 0 and key in sounding and key[1] % 12 in held:
                    continued.add(key)
                else:
                    events.append(Event(step + int(start), mido.Message("note_on", channel=channel, note=key[1],
                                                                         velocity=self.velocity)))
                if end >= roll.n_steps:
                    going_on.add(key)
                else:
                    events.append(self._off(*key, step + int(end)))
        events += [self._off(*key, step) for key in sounding - continued]
        events.sort(key=lambda e: (e.step, e.message.type == "note_on"))
        return events, going_on

    @staticmethod
    def _off(channel: int, pitch: int, step: int) -> Event:
        return Event(step, mido.Message("note_off", channel=channel, note=pitch, velocity=0))


# -- playing -------------------------------------------------------------------------------------


class RecordingPort(mido.ports.BaseOutput):
    """An output port that keeps every message it is sent, with ``time.perf_counter()`` then."""

    def __init__(self, name: str = "recording", **kwargs) -> None:
        self.sent: list[tuple[float, mido.Message]] = []
        super().__init__(name, **kwargs)

    def _send(self, message: mido.Message) -> None:
        self.sent.append((time.perf_counter(), message))


@dataclass
class PlayResult:
    """What :meth:`Player.play` did: how late each message left, how far ahead generation stayed."""

    steps: int = 0  # steps played
    seconds: float = 0.0
    n_notes: int = 0
    lateness: array = field(default_factory=lambda: array("d"))  # seconds, one per scheduled message
    min_lead: float = math.inf  # seconds between a hop being ready and its first step sounding
    behind: int = 0  # hops that were not ready in time
    stopped: bool = False  # by stop() or Ctrl-C rather than the end of the piece
    record: Path | None = None


class Player:
    """Plays a :class:`Stream` to a mido output ``port`` in real time (module doc).

    ``ahead`` hops are generated ahead of the one playing (one hop is 8 bars with the usual
    model). ``record`` writes what was played as a MIDI file (atomically) when playing ends.
    """

    def __init__(self, port: mido.ports.BaseOutput, stream: Stream, *, ahead: int = 1,
                 record: str | Path | None = None) -> None:
        self.port, self.stream, self.record = port, stream, None if record is None else Path(record)
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, ahead))
        self._stop = threading.Event()
        self._t0: float | None = None
        self._result = PlayResult()
        self._error: BaseException | None = None  # from the generating thread

    def stop(self) -> None:
        """End playing (from any thread): the notes sounding are ended, then all notes off."""
        self._stop.set()

    def play(self) -> PlayResult:
        """Play until the stream ends, :meth:`stop` or Ctrl-C; returns what happened."""
        with _realtime(), _ctrl_c_sets(self._stop):
            return self._play()

    def _play(self) -> PlayResult:
        result, sps = self._result, self.stream.seconds_per_step
        worker = threading.Thread(target=self._generate, name="apollo-generate", daemon=True)
        worker.start()
        sounding: dict[tuple[int, int], int] = {}  # (channel, pitch) -> start step
        notes: list[tuple[int, int, int, int]] = []  # (channel, pitch, start, end) played, kept to record
        n_notes = 0
        step = 0
        try:
            while not self._stop.is_set():
                hop = self._next_hop()
                if hop is None:
                    break
                if self._t0 is None:  # the clock starts when the first hop is ready
                    self._t0 = time.perf_counter() + 0.05
                    for channel, program in self.stream.programs.items():
                        self.port.send(mido.Message("program_change", channel=channel, program=program))
                for event in hop:
                    due = self._t0 + event.step * sps
                    if self._wait(due):
                        break
                    self.port.send(event.message)
                    result.lateness.append(time.perf_counter() - due)
                    key = (event.message.channel, event.message.note)
                    if event.message.type == "note_on":
                        sounding[key] = event.step
                    else:
                        start = sounding.pop(key)
                        n_notes += 1
                        if self.record is not None:
                            notes.append((*key, start, event.step))
                    step = event.step
        except KeyboardInterrupt:
            self._stop.set()
        finally:
            stopped = self._stop.is_set()
            self._stop.set()
            if stopped and self._t0 is not None:
                step = max(step, math.ceil((time.perf_counter() - self._t0) / sps))
            for (channel, pitch), start in sorted(sounding.items()):
                self.port.send(mido.Message("note_off", channel=channel, note=pitch, velocity=0))
                notes.append((channel, pitch, start, max(step, start + 1)))
                n_notes += 1
            for channel in sorted(self.stream.programs):
                self.port.send(mido.Message("control_change", channel=channel, control=ALL_NOTES_OFF, value=0))
            worker.join(timeout=5)
        result.stopped, result.steps, result.n_notes = stopped, step, n_notes
        result.seconds = step * sps
        if self.record is not None:
            self._write(notes, step)
        if self._error is not None:
            raise self._error
        return result

    def _wait(self, due: float) -> bool:
        """Wait until ``due`` (perf_counter seconds): sleep, then spin. True if stopped meanwhile."""
        while True:
            left = due - time.perf_counter()
            if left <= 0:
                return self._stop.is_set()
            if left > SPIN_SECONDS and self._stop.wait(left - SPIN_SECONDS):
                return True

    def _next_hop(self) -> list[Event] | None:
        """The next hop's events (None at the end); counts a hop that came late."""
        try:
            item = self._queue.get_nowait()
        except queue.Empty:
            if self._t0 is not None:
                self._result.behind += 1
            while not self._stop.is_set():
                try:
                    item = self._queue.get(timeout=0.05)
                    break
                except queue.Empty:
                    continue
            else:
                return None
        if isinstance(item, BaseException):
            self._error = item
            self._stop.set()
            return None
        return item

    def _generate(self) -> None:
        """The background thread: hops into the queue, as far ahead as it holds."""
        try:
            for hop in self.stream:
                if hop and self._t0 is not None:
                    lead = self._t0 + hop[0].step * self.stream.seconds_per_step - time.perf_counter()
                    self._result.min_lead = min(self._result.min_lead, lead)
                if not self._put(hop):
                    return
            self._put(None)
        except Exception as error:  # noqa: BLE001 (handed to the playing thread, which raises it after stopping cleanly)
            self._put(error)

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _write(self, notes: list[tuple[int, int, int, int]], n_steps: int) -> None:
        by_channel = {channel: [n for n in notes if n[0] == channel] for channel in self.stream.programs}
        tracks = [NoteTrack(*(np.array([n[i] for n in mine], dtype=np.int64) for i in (1, 2, 3)),
                            program=self.stream.programs[channel], channel=channel,
                            name=self.stream.names.get(channel))
                  for channel, mine in by_channel.items()]
        if not tracks:
            tracks = [NoteTrack(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64))]
        try:
            write_tracks(self.record, tracks, steps_per_beat=self.stream.spec.grid.steps_per_beat,
                         tempo=self.stream.tempo, n_steps=n_steps)
        except OSError as error:
            raise ApolloError(f"{self.record}: cannot write ({error.strerror or error})") from None
        self._result.record = self.record


def play(port: str | mido.ports.BaseOutput | None = None, *, checkpoint: str | Path | None = None,
         run: str | Path | None = None, instrument: int | str | None = None, ensemble: str | None = None,
         line: str | None = None, bars: int | None = None, tempo: float | None = None, seed: int | None = None,
         record: str | Path | None = None, runs_root: str | Path = "runs", announce=None) -> PlayResult:
    """Play the endless piece of ``seed`` (random if None) live to ``port`` (a port object, a port
    name, or None: see :func:`open_port`) until ``bars`` bars are played, Ctrl-C or never.

    The model is chosen as :func:`apollo.generate.generate` chooses it; a model trained in one key
    is moved to a key drawn with the seed. ``announce(text)``, if given, hears what is about to
    play (model, port, seed) once everything is ready. Raises ApolloError with a one-line message.
    """
    import secrets

    from apollo.generate import find_model, key_move, load_model

    if bars is not None and bars < 1:
        raise ApolloError(f"--bars must be at least 1, got {bars}")
    if tempo is not None and not 10 <= tempo <= 400:
        raise ApolloError(f"--tempo must lie in 10..400 beats per minute, got {tempo}")
    check_choice(instrument, ensemble, line)
    if record is not None and Path(record).suffix.lower() not in (".mid", ".midi"):
        raise ApolloError(f"{record}: the recording should be a .mid file")
    output = port if isinstance(port, mido.ports.BaseOutput) else open_port(port)
    try:
        choice = find_model(checkpoint, run, runs_root)
        generator, spec = load_model(choice, dcgan_only="apollo play")
        seed = secrets.randbelow(1_000_000) if seed is None else seed
        stream = Stream(generator, spec, seed=seed, tempo=tempo, instrument=instrument, ensemble=ensemble,
                        line=line, transpose=key_move(spec, seed), bars=bars)
        if announce is not None:
            length = f"{bars} bars" if bars else "until Ctrl-C"
            announce(f"Playing to MIDI port {output.name!r}: model {choice}, seed {seed}, "
                     f"{stream.tempo:g} BPM, {length}")
        return Player(output, stream, record=record).play()
    finally:
        if output is not port:
            output.close()


@contextmanager
def _realtime() -> Iterator[None]:
    """While playing: the interpreter switches threads every 0.5 ms instead of 5 (the playing
    thread waits less for the generating one), the objects that exist are exempt from garbage
    collection (a full collection after loading a model holds everything up for ~80 ms), and torch
    leaves a core to the playing thread. Everything is put back afterwards."""
    import gc

    import torch

    interval, threads = sys.getswitchinterval(), torch.get_num_threads()
    gc.collect()
    gc.freeze()
    sys.setswitchinterval(0.0005)
    torch.set_num_threads(max(1, min(threads, (os.cpu_count() or 2) - 1)))
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        sys.setswitchinterval(interval)
        gc.unfreeze()


@contextmanager
def _ctrl_c_sets(stop: threading.Event) -> Iterator[None]:
    """While playing: Ctrl-C sets ``stop`` instead of raising KeyboardInterrupt, which could land
    between sending a message and noting it (a note-off sent twice, or one never sent). Only in the
    main thread and only over Python's own handler: a job that ignores SIGINT keeps ignoring it."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


# -- ports ---------------------------------------------------------------------------------------

BACKEND_HINT = ("to get ports: pip install python-rtmidi, and on Linux load ALSA's sequencer (modprobe snd-seq, "
                "/dev/snd/seq); on Windows create one with loopMIDI and pass --port")


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence what native MIDI libraries print to file descriptor 2 (ALSA's "cannot open /dev/snd/seq")."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _names() -> tuple[list[str], str | None]:
    """The output ports there are, and why there can be none ("" when there is a MIDI system)."""
    try:
        with _quiet_stderr():
            return list(mido.get_output_names()), None
    except ImportError:
        return [], "python-rtmidi is not installed"
    except Exception as error:  # noqa: BLE001 (rtmidi raises SystemError, RuntimeError...: no MIDI system)
        return [], f"rtmidi: {_first_line(error)}"


def output_names() -> list[str]:
    """The MIDI output ports there are. Raises ApolloError when there is no working MIDI backend."""
    names, problem = _names()
    if problem:
        raise ApolloError(f"no MIDI system ({problem}); {BACKEND_HINT}")
    return names


def open_port(name: str | None = None) -> mido.ports.BaseOutput:
    """The output port ``name``; without a name a virtual port named "Apollo" where the system
    allows one (Linux, macOS), else the first port there is. Raises ApolloError in one line,
    listing the ports there are and how to get a backend."""
    if name is None:
        try:
            with _quiet_stderr():
                return mido.open_output(VIRTUAL_PORT, virtual=True)
        except Exception:  # noqa: BLE001, S110 (no virtual ports here: Windows, no ALSA sequencer) take a real one
            pass
    names, problem = _names()
    if name is None and names:
        name = names[0]
    if name not in names:
        what = f"no MIDI port {name!r}" if name else "no MIDI output port"
        there = ", ".join(repr(n) for n in names) or "none"
        raise ApolloError(f"{what}; ports there are: {there}" + (f" ({problem})" if problem else "")
                          + f"; {BACKEND_HINT}")
    try:
        with _quiet_stderr():
            return mido.open_output(name)
    except Exception as error:  # noqa: BLE001 (the backend's own message names the cause)
        raise ApolloError(f"cannot open MIDI port {name!r}: {_first_line(error)}") from None


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
