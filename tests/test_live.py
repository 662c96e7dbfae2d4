"""apollo.live and `apollo play`: the endless piece, the player's timing, clean stops, the soak test."""

from __future__ import annotations

import _thread
import signal
import threading
import time
import tracemalloc

import numpy as np
import pytest
from apollo.cli.main import cli
from click.testing import CliRunner

from apollo.errors import ApolloError
from apollo.generate import Chaining, find_model, load_model, sample_probabilities
from apollo.live import (
    Player,
    RecordingPort,
    Stream,
    endless_probabilities,
    endless_rolls,
    play,
)
from apollo.midi import read_notes
from apollo.roll import PianoRoll

FAST = 400  # beats per minute: a bar lasts 0.6 s
LONGEST_CHORALE_REST = 16  # steps: the longest silence inside any of music21's 410 Bach chorales (docs/live.md)


@pytest.fixture(scope="module")
def model():
    return load_model(find_model("bundled"))


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def notes_from(messages):
    """(channel, pitch, on index, off index) of note messages in order; fails on a note-on without a note-off."""
    open_, notes = {}, []
    for i, message in enumerate(messages):
        if message.type not in ("note_on", "note_off"):
            continue
        key = (message.channel, message.note)
        if message.type == "note_on":
            assert key not in open_, f"{key} struck again while sounding"
            open_[key] = i
        elif message.type == "note_off":
            notes.append((*key, open_.pop(key), i))
    assert not open_, f"notes left hanging: {sorted(open_)}"
    return notes


def event_notes(events):
    """(pitch, start step, end step) of the notes a list of events plays (one channel)."""
    notes, sounding = [], {}
    for event in events:
        if event.message.type == "note_on":
            sounding[event.message.note] = event.step
        else:
            notes.append((event.message.note, sounding.pop(event.message.note), event.step))
    assert not sounding
    return notes


# -- the endless piece -----------------------------------------------------------------------------


def test_endless_probabilities_equal_a_long_piece(model):
    generator, _ = model
    chain = Chaining.of(generator)
    n = 48 * 16
    endless = np.concatenate(take(endless_probabilities(generator, seed=5), n // chain.hop), axis=-1)
    long = sample_probabilities(generator, n, seed=5)
    # A long piece's last window is not faded out: only steps before the next window's fade-in are final.
    final = n - chain.hop + chain.edge
    np.testing.assert_allclose(endless[..., :final], long[..., :final], atol=1e-6)
    batched = np.concatenate(take(endless_probabilities(generator, seed=5, batch=4), n // chain.hop), axis=-1)
    np.testing.assert_allclose(batched, endless, atol=1e-6)


@pytest.mark.parametrize("bars", [32, 48])
def test_endless_notes_equal_a_long_piece(model, bars):
    generator, spec = model
    chain = Chaining.of(generator)
    n = bars * spec.steps_per_bar
    rolls = endless_rolls(generator, spec, seed=11)
    endless = PianoRoll.concatenate(take(rolls, n // chain.hop + 1))
    long = spec.decoding.decode(sample_probabilities(generator, n, 11), spec.encoding, spec.grid, spec.tempo)
    # Final in both: before the long piece's unfaded last window, less the decoding's context.
    final = n - chain.hop + chain.edge - spec.decoding.min_length
    assert final == n - 6 * spec.steps_per_bar - spec.decoding.min_length  # all but the last 6 bars
    assert np.array_equal(endless.cells[:, :final], long.cells[:, :final])
    assert long.cells[:, :final].any()
    # A piece long enough to make all of these bars final: every one of the bars is equal.
    longer = spec.decoding.decode(sample_probabilities(generator, n + chain.hop, 11), spec.encoding, spec.grid,
                                  spec.tempo)
    assert np.array_equal(endless.cells[:, :n], longer.cells[:, :n])


def test_stream_plays_the_texture_unbroken_across_hops(model):
    """Piano plays the whole texture: the notes played equal the texture's, held notes never cut at a hop."""
    generator, spec = model
    bars = 40
    events = [e for hop in Stream(generator, spec, seed=3, bars=bars) for e in hop]
    texture = PianoRoll.concatenate(take(endless_rolls(generator, spec, seed=3), 6)).slice(0, bars * 16)
    played = event_notes(events)
    pitch, start, end = texture.notes()
    assert sorted(played) == sorted(zip(pitch.tolist(), start.tolist(), end.tolist()))
    assert [e.step for e in events] == sorted(e.step for e in events)
    crossing = [n for n in played if n[1] < 128 < n[2] or n[1] < 256 < n[2]]
    assert crossing, "no note held across a hop boundary to check"


def test_ensemble_stream_has_no_hanging_notes(model):
    generator, spec = model
    events = [e for hop in Stream(generator, spec, seed=4, ensemble="string quartet", bars=24) for e in hop]
    notes = notes_from([e.message for e in events])
    assert {channel for channel, *_ in notes} <= {0, 1, 2, 3}
    assert len(notes) > 50


def test_ensemble_parts_keep_the_first_hops_octave_and_their_ranges(model):
    from apollo.parts import find_ensemble

    generator, spec = model
    stream = Stream(generator, spec, seed=4, ensemble="string quartet", bars=48)
    events = [e for hop in stream for e in hop]
    assert stream.moves is not None and len(stream.moves) == 4
    _, parts = find_ensemble("string quartet")
    for channel, part in zip(range(4), parts):
        pitches = [e.message.note for e in events if e.message.type == "note_on" and e.message.channel == channel]
        assert pitches and part.low <= min(pitches) and max(pitches) <= part.high


def test_a_moved_hop_keeps_a_held_note_held():
    from apollo.live import _transpose
    from apollo.roll import HELD, ONSET, Grid

    cells = np.zeros((64, 4), np.uint8)
    cells[10, :3] = HELD  # goes on from the hop before
    cells[20, 1:] = [ONSET, HELD, HELD]
    moved = _transpose(PianoRoll(cells, Grid(), 100.0), 5)
    assert moved.cells[15, 0] == HELD and moved.cells[25, 1] == ONSET
    assert np.array_equal(moved.cells > 0, np.roll(cells > 0, 5, axis=0))


# -- playing in real time --------------------------------------------------------------------------


def check_played(port, stopped):
    """Order, no hanging note, all notes off last on every channel used; the note messages."""
    times = [t for t, _ in port.sent]
    assert times == sorted(times)
    messages = [m for _, m in port.sent]
    notes_from(messages)
    channels = {m.channel for m in messages if m.type == "note_on"}
    last = messages[-len(channels or {0}):]
    assert all(m.type == "control_change" and m.control == 123 for m in last)
    assert {m.channel for m in last} >= channels
    return [(t, m) for t, m in port.sent if m.type in ("note_on", "note_off")]


def test_player_keeps_time_and_records(model, tmp_path):
    generator, spec = model
    port = RecordingPort()
    stream = Stream(generator, spec, seed=8, tempo=FAST, bars=6)  # 3.6 s
    result = Player(port, stream, record=tmp_path / "played.mid").play()
    assert not result.stopped and result.steps == 6 * 16 and result.behind == 0
    played = check_played(port, stopped=False)
    # The messages are the stream's, in its order, each at its time.
    expected = [e for hop in Stream(generator, spec, seed=8, tempo=FAST, bars=6) for e in hop]
    assert [m for _, m in played] == [e.message for e in expected]
    lateness = np.array(result.lateness)
    assert len(lateness) == len(expected)
    assert np.percentile(lateness, 99) < 0.020 and lateness.min() >= 0
    t0 = played[0][0] - expected[0].step * stream.seconds_per_step - lateness[0]
    measured = np.array([t - t0 - e.step * stream.seconds_per_step for (t, _), e in zip(played, expected)])
    assert np.abs(measured - lateness).max() < 0.005  # the port saw what the player reports
    # The recording holds what was played.
    notes = event_notes(expected)
    written = read_notes(tmp_path / "played.mid")
    assert sorted(notes) == sorted(zip(written.pitch.tolist(), written.start.tolist(), written.end.tolist()))
    assert written.tempo == pytest.approx(FAST, rel=1e-3)


def test_stop_from_another_thread_ends_every_note(model, tmp_path):
    generator, spec = model
    port = RecordingPort()
    player = Player(port, Stream(generator, spec, seed=9, tempo=FAST), record=tmp_path / "stopped.mid")
    threading.Timer(2.0, player.stop).start()
    start = time.perf_counter()
    result = player.play()
    assert time.perf_counter() - start < 4.0
    assert result.stopped and 0 < result.steps < 16 * 8
    played = check_played(port, stopped=True)
    assert played, "nothing played before the stop"
    written = read_notes(tmp_path / "stopped.mid")
    assert len(written.pitch) == result.n_notes == len(notes_from([m for _, m in played]))


def test_ctrl_c_ends_every_note(model):
    generator, spec = model
    port = RecordingPort()
    player = Player(port, Stream(generator, spec, seed=10, tempo=FAST, ensemble="choir"))
    # A job started in the background begins with SIGINT ignored, and interrupt_main then does
    # nothing: give Ctrl-C the handler a terminal gives it, and a stop later in case it never comes.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    fallback = threading.Timer(30.0, player.stop)
    try:
        fallback.start()
        threading.Timer(2.0, _thread.interrupt_main).start()
        start = time.perf_counter()
        result = player.play()  # Ctrl-C sets the stop flag: playing stops cleanly
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back after playing
    finally:
        fallback.cancel()
        signal.signal(signal.SIGINT, previous)
    assert result.stopped and time.perf_counter() - start < 20.0  # by Ctrl-C, not by the fallback
    check_played(port, stopped=True)
    assert {m.channel for _, m in port.sent if m.type == "control_change"} == {0, 1, 2, 3}


def test_play_loads_the_model_announces_and_records(tmp_path):
    said = []
    result = play(RecordingPort(), checkpoint="bundled", bars=2, tempo=FAST, seed=1, record=tmp_path / "two.mid",
                  announce=said.append)
    assert said and "seed 1" in said[0] and "400 BPM" in said[0]
    assert result.steps == 32 and result.record == tmp_path / "two.mid"
    assert len(read_notes(result.record).pitch) == result.n_notes > 0
    with pytest.raises(ApolloError, match="should be a .mid file"):
        play(RecordingPort(), checkpoint="bundled", bars=1, record=tmp_path / "two.wav")


def test_play_without_a_port_says_why_in_one_line():
    result = CliRunner().invoke(cli, ["play", "--bars", "1", "--port", "no such port"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output
    assert "no MIDI port 'no such port'" in lines[0] and "ports there are" in lines[0]
    assert "pip install python-rtmidi" in lines[0]


def test_list_ports_never_crashes():
    result = CliRunner().invoke(cli, ["play", "--list-ports"])
    assert result.exit_code in (0, 1) and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) >= 1


# -- an hour of music ---------------------------------------------------------------------------


def test_an_hour_without_holes_hanging_notes_or_growing_memory(model):
    """One hour at the model's tempo through the same chaining, as fast as it generates."""
    generator, spec = model
    hour = round(60 * 60 / (60 / spec.tempo * 4))  # bars
    stream = Stream(generator, spec, seed=2026, bars=hour, batch=16)
    sounding, silent_since, longest, last_step, n_notes = set(), 0, 0, 0, 0
    tracemalloc.start()
    peaks = {}
    try:
        for hop in stream:
            for event in hop:
                key = (event.message.channel, event.message.note)
                if event.message.type == "note_on":
                    assert key not in sounding
                    if not sounding:
                        longest = max(longest, event.step - silent_since)
                    sounding.add(key)
                    n_notes += 1
                else:
                    sounding.remove(key)
                    if not sounding:
                        silent_since = event.step
                last_step = event.step
            minutes = last_step * 60 / (spec.tempo * spec.grid.steps_per_beat) / 60
            if minutes >= 10 and 10 not in peaks:
                peaks[10] = tracemalloc.get_traced_memory()[1]
        peaks[60] = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert last_step == hour * spec.steps_per_bar
    assert not sounding
    assert n_notes > 10_000
    assert longest <= LONGEST_CHORALE_REST, f"a silence of {longest} steps"
    assert peaks[60] <= 1.5 * peaks[10], peaks
