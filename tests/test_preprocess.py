"""``apollo preprocess`` on real chorales and real broken files: chunks, splits, robustness, resume."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from apollo.cli.main import cli
from click.testing import CliRunner

from apollo.dataset import DatasetConfig, read_manifest
from apollo.errors import ApolloError, MidiError
from apollo.midi import MidiNotes, read_notes, write_notes
from apollo.preprocess import (
    chunk_piece,
    find_midi_files,
    preprocess,
)
from apollo.splits import split_of
from apollo.roll import PianoRoll
from apollo.workers import _context, isolated_map

BROKEN = Path(__file__).parent / "data" / "broken"
CONFIG = DatasetConfig(transpose=(-1, 1))


@pytest.fixture(scope="module")
def dataset(chorale_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("datasets") / "chorales"
    preprocess(chorale_dir, out, CONFIG)
    return out


# -- chunks ----------------------------------------------------------------------------------------


def test_chunks_are_the_source_rolls_transposed_and_windowed(dataset, chorale_dir):
    from apollo.dataset import (
        RollDataset,  # imports torch, which the worker processes here must not
    )

    train = RollDataset(dataset)
    rng = np.random.default_rng(0)
    for i in rng.choice(len(train), 12, replace=False):
        source = chorale_dir / train.files[train.provenance["file"][i]]
        notes = read_notes(source)
        t, offset = train.provenance["transpose"][i], train.provenance["offset"][i]
        # Past its end the piece plays again from the first beat its first note can take (fill="repeat").
        period = -(-(notes.end.max() - notes.start.min()) // 4) * 4
        moved = np.repeat(np.arange(3) * period, len(notes.pitch))
        whole = PianoRoll.from_notes(np.tile(notes.pitch, 3) + t, np.tile(notes.start, 3) + moved,
                                     np.tile(notes.end, 3) + moved, CONFIG.grid)
        expected = whole.slice(offset, offset + CONFIG.n_steps)
        assert np.array_equal(train.rolls([i])[0].cells, expected.cells)


def test_repeats_add_no_rest_longer_than_a_beat_to_real_chorales(chorale_dir):
    # Real chorales, many with an upbeat: the join between one time through a piece and the next
    # may add no rest longer than the piece's own, beyond the part of a beat that keeps the beat.
    config = DatasetConfig()
    for path in sorted(chorale_dir.glob("*.mid")):
        notes = read_notes(path)
        inside = PianoRoll.from_notes(notes.pitch, notes.start, notes.end, config.grid)
        chunks = chunk_piece(notes, config)["rows"]
        allowed = max(_longest_rest(inside), config.grid.steps_per_beat - 1)
        for row in chunks:
            planes = np.unpackbits(row, bitorder="little").reshape(2, 64, 256)
            assert _longest_rest(PianoRoll(planes[0], config.grid)) <= allowed, path.name


def _longest_rest(roll: PianoRoll) -> int:
    """The longest run of silent steps between the first sounding step and the last."""
    sounding = np.flatnonzero(roll.cells.any(axis=0))
    return int(np.diff(sounding).max(initial=1)) - 1 if len(sounding) else 0


def test_held_out_chunks_are_whole_stretches_of_one_piece(dataset, chorale_dir):
    from apollo.dataset import RollDataset

    for split in ("val", "test"):
        held = RollDataset(dataset, split)
        n_steps = np.array(held.manifest["files"]["n_steps"])[held.provenance["file"]]
        assert (held.provenance["offset"] >= 0).all() and (held.provenance["shift"] == 0).all()
        assert (held.provenance["offset"] + CONFIG.n_steps <= -(-n_steps // 16) * 16).all()  # inside the piece
        assert (held.provenance["transpose"] == 0).all()  # no transposed copies: real music as written
        for i in range(min(len(held), 4)):
            notes = read_notes(chorale_dir / held.files[held.provenance["file"][i]])
            whole = PianoRoll.from_notes(notes.pitch, notes.start, notes.end, CONFIG.grid)
            offset = held.provenance["offset"][i]
            assert np.array_equal(held.rolls([i])[0].cells, whole.slice(offset, offset + CONFIG.n_steps).cells)


def test_every_transposition_gives_the_same_number_of_chunks(dataset):
    manifest = read_manifest(dataset)
    transposes = np.array(manifest["chunks"]["train"]["transpose"])
    counts = {t: int((transposes == t).sum()) for t in (-1, 0, 1)}
    assert counts[-1] == counts[0] == counts[1] > 0  # folding keeps every note in range
    assert set(np.unique(transposes)) == {-1, 0, 1}


def test_split_is_by_tune_and_deterministic(dataset, chorale_dir, tmp_path):
    manifest = read_manifest(dataset)
    splits = manifest["files"]["split"]
    for split in ("train", "val", "test"):
        files = set(manifest["chunks"][split]["file"])
        assert files <= {i for i, s in enumerate(splits) if s == split}
        assert manifest["counts"][f"{split}_files"] == splits.count(split)
    assert set(splits) == {"train", "val", "test"}
    assert all(split_of(tune, 0.1, 0.1) == split for tune, split in zip(manifest["files"]["tune"], splits))

    # One tune, two files: a copy a minor third up with another ending stays on its original's side.
    (tmp_path / "pair").mkdir()
    original = read_notes(chorale_dir / manifest["files"]["path"][0])
    shutil.copy(chorale_dir / manifest["files"]["path"][0], tmp_path / "pair" / "a.mid")
    keep = original.start < original.end.max() - 32
    write_notes(tmp_path / "pair" / "b.mid", original.pitch[keep] + 3, original.start[keep], original.end[keep])
    pair = read_manifest(preprocess(tmp_path / "pair", tmp_path / "pair-set", CONFIG).out)
    assert pair["files"]["tune"][0] == pair["files"]["tune"][1] and pair["files"]["split"] == [splits[0]] * 2

    # The same music under other names, in another folder, lands on the same sides.
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    for i, path in enumerate(sorted(chorale_dir.glob("*.mid"))[::-1]):
        shutil.copy(path, renamed / f"piece{i:02}.mid")
    again = read_manifest(preprocess(renamed, tmp_path / "again", CONFIG).out)
    val_hashes = {h for h, s in zip(manifest["files"]["hash"], splits) if s == "val"}
    assert val_hashes == {h for h, s in zip(again["files"]["hash"], again["files"]["split"]) if s == "val"}


def test_manifest_records_config_counts_and_provenance(dataset):
    manifest = read_manifest(dataset)
    assert manifest["format"] == "apollo-rolls" and manifest["version"] == 2
    assert DatasetConfig.from_dict(manifest["config"]) == CONFIG
    assert manifest["shape"] == [2, 64, 256] and manifest["bytes_per_chunk"] == 2 * 64 * 256 // 8
    counts = manifest["counts"]
    assert counts["files_found"] == counts["files_used"] == 24 and manifest["skipped"] == []
    for split in ("train", "val", "test"):
        columns = manifest["chunks"][split]
        assert set(columns) == {"file", "offset", "transpose", "shift"}
        assert all(len(values) == counts[f"{split}_chunks"] for values in columns.values())
        assert (dataset / f"{split}.bin").stat().st_size == counts[f"{split}_chunks"] * manifest["bytes_per_chunk"]
    assert sum(manifest["files"]["n_chunks"]) == counts["train_chunks"] + counts["val_chunks"] + counts["test_chunks"]
    assert sorted(os.listdir(dataset)) == ["manifest.json", "test.bin", "train.bin", "val.bin"]


def _notes(pitch, start, end) -> MidiNotes:
    pitch, start, end = (np.asarray(x) for x in (pitch, start, end))
    return MidiNotes(pitch, start, end, np.full(len(pitch), 80))


def _scale(n_steps: int) -> MidiNotes:
    """Quarter notes on a C major scale for ``n_steps`` sixteenths."""
    start = np.arange(0, n_steps, 4)
    return _notes(60 + np.arange(len(start)) % 8, start, start + 4)


def test_short_pieces_are_repeated_padded_or_skipped():
    config = DatasetConfig()  # n_steps 256, hop 128, min_fill 0.5, fill "repeat"
    one = chunk_piece(_scale(200), config)
    planes = np.unpackbits(one["rows"][0], bitorder="little").reshape(2, 64, 256)
    # 200 steps end on a beat inside bar 13; the piece begins again there, with no rest between.
    assert np.array_equal(planes[:, :, 200:], planes[:, :, :56])
    # An upbeat: the first note on the last beat of bar 1; the last note ends on a bar line. The
    # piece comes again on the beat that lets the upbeat follow the last note (step 196: 12 + 184),
    # not at the next bar line, which would leave three beats of silence before the upbeat.
    scale = _scale(180)
    upbeat = _notes(np.r_[55, scale.pitch], np.r_[12, scale.start + 16], np.r_[16, scale.end + 16])
    planes = np.unpackbits(chunk_piece(upbeat, config)["rows"][0], bitorder="little").reshape(2, 64, 256)
    assert planes[0, 55 - config.grid.lowest_pitch, 196:200].all()
    assert planes[0].any(axis=0)[12:].all()  # sound from the upbeat to the window's end
    config = DatasetConfig(fill="silence")
    with pytest.raises(MidiError, match=r"too short \(100 steps, a chunk needs at least 128\)"):
        chunk_piece(_scale(100), config)
    one = chunk_piece(_scale(200), config)
    assert one["offset"].tolist() == [0]
    planes = np.unpackbits(one["rows"][0], bitorder="little").reshape(2, 64, 256)
    assert planes[0, :, :200].any() and not planes[0, :, 200:].any()  # padded with silence
    # 300 steps: [0, 256) and [128, 384), which is more than half inside; [256, 512) is not.
    assert chunk_piece(_scale(300), config)["offset"].tolist() == [0, 128]


def test_held_out_pieces_give_whole_windows_or_none():
    config = DatasetConfig()  # held_out_hop 16: one window per bar line
    # 300 steps end in bar 19 (steps 288-303): windows may start at bars 0..3.
    assert chunk_piece(_scale(300), config, held_out=True)["offset"].tolist() == [0, 16, 32, 48]
    assert len(chunk_piece(_scale(200), config, held_out=True)["rows"]) == 0  # shorter than a window


def test_near_empty_chunks_are_dropped():
    sparse = _notes([60, 62, 64], [0, 300, 380], [4, 304, 384])
    with pytest.raises(MidiError, match="near-empty"):
        chunk_piece(sparse, DatasetConfig(min_notes=8))
    # Windows [0, 256), [128, 384) and [256, 512) hold 1, 2 and 2 notes.
    assert chunk_piece(sparse, DatasetConfig(min_notes=2))["offset"].tolist() == [128, 256]


def test_windows_start_on_the_first_bar_with_music():
    late = _scale(400)
    late.start, late.end = late.start + 70, late.end + 70  # enters after 4 bars and a bit
    # Music from step 70 to 470: the grid starts at bar line 64; [320, 576) is 150 steps inside.
    assert chunk_piece(late, DatasetConfig())["offset"].tolist() == [64, 192, 320]


def test_time_shift_delays_copies_of_each_window():
    chunks = chunk_piece(_scale(200), DatasetConfig(time_shift=2))
    assert chunks["shift"].tolist() == [0, 1, 2]
    assert chunks["offset"].tolist() == [0, -1, -2]
    planes = np.unpackbits(chunks["rows"], axis=1, bitorder="little").reshape(3, 2, 64, 256)
    for s in (1, 2):
        assert not planes[s, :, :, :s].any()
        assert np.array_equal(planes[s, 0, :, s:], planes[0, 0, :, : 256 - s])


def test_normalize_key_moves_each_window_to_c_and_records_the_move():
    from apollo.key import estimate_key, move_to_c

    start = np.arange(0, 512, 4)
    degrees = np.array([0, 2, 4, 5, 7, 9, 11, 12])[np.arange(len(start)) % 8]
    tonic = np.where(start < 256, 62, 67)  # 16 bars of D major scales, then 16 of G major
    modulating = _notes(tonic + degrees, start, start + 4)
    chunks = chunk_piece(modulating, DatasetConfig(normalize_key=True, fill="silence"))
    order = np.argsort(chunks["offset"])
    assert chunks["offset"][order].tolist() == [0, 128, 256, 384]
    moves = chunks["transpose"][order].tolist()
    assert moves[0] == -2 and moves[2:] == [5, 5] and moves[1] in (-2, 5)  # D down to C, G up; the middle is both
    planes = np.unpackbits(chunks["rows"], axis=1, bitorder="little").reshape(4, 2, 64, 256)
    for window in planes:
        roll = PianoRoll.decode(window)
        assert estimate_key(roll) == (0, "major") and move_to_c(roll) == 0
    # Without it, the same windows as written.
    assert chunk_piece(modulating, DatasetConfig())["transpose"].tolist() == [0, 0, 0, 0]


# -- files and folders -----------------------------------------------------------------------------


def test_walk_finds_any_case_follows_links_and_ends_loops(chorale_dir, tmp_path):
    root = tmp_path / "midi"
    (root / "sub" / "deeper").mkdir(parents=True)
    first, second = sorted(chorale_dir.glob("*.mid"))[:2]
    shutil.copy(first, root / "a.MID")
    shutil.copy(second, root / "sub" / "deeper" / "b.Midi")
    (root / "notes.txt").write_text("not midi")
    (root / "folder.mid").mkdir()  # a folder with a MIDI name is walked, not read
    (root / "sub" / "link.mid").symlink_to(root / "a.MID")
    (root / "sub" / "dangling.mid").symlink_to(root / "gone.mid")
    (root / "sub" / "deeper" / "loop").symlink_to(root)  # a link back up: entered once only
    files, problems = find_midi_files(root)
    assert files == ["a.MID", "sub/deeper/b.Midi", "sub/link.mid"]
    assert problems == [{"file": "sub/dangling.mid", "reason": "broken symbolic link"}]


def test_duplicates_are_skipped_keeping_the_first_name(chorale_dir, tmp_path):
    midi = tmp_path / "midi"
    shutil.copytree(chorale_dir, midi)
    original = sorted(midi.glob("*.mid"))[3]
    shutil.copy(original, midi / "zz-copy.mid")
    manifest = read_manifest(preprocess(midi, tmp_path / "out", DatasetConfig()).out)
    assert manifest["skipped"] == [{"file": "zz-copy.mid", "reason": f"duplicate (same content as {original.name})"}]
    assert manifest["counts"]["files_used"] == 24


def test_mixed_good_and_broken_folder_exits_0_and_names_every_skipped_file(chorale_dir, tmp_path):
    midi = tmp_path / "midi"
    shutil.copytree(chorale_dir, midi)
    shutil.copytree(BROKEN, midi / "broken", ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    result = CliRunner().invoke(cli, ["preprocess", str(midi), "-o", str(tmp_path / "ds"), "--workers", "2"])
    assert result.exit_code == 0, result.output
    manifest = read_manifest(tmp_path / "ds")
    assert manifest["counts"]["files_used"] == 24  # every chorale
    skipped = {entry["file"]: entry["reason"] for entry in manifest["skipped"]}
    expected = {}
    for path in sorted(BROKEN.glob("*.mid")):
        try:
            notes = read_notes(path)
        except MidiError as error:
            expected[f"broken/{path.name}"] = error.reason
        else:  # readable (tempo 0, RMID) but only 16 quarter notes: shorter than half a chunk
            expected[f"broken/{path.name}"] = f"too short ({int(notes.end.max())} steps, a chunk needs at least 128)"
    assert skipped == expected
    lines = result.output.strip().splitlines()
    assert "24 of 49 files used, 25 skipped" in lines[-1] and "chunks written" in lines[-1]
    assert "skipped broken/empty.mid: empty file" in result.output


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "missing", "no such folder"),
    (lambda d: d, "no .mid or .midi files in it"),
])
def test_bad_folder_is_a_one_line_error(tmp_path, make, message):
    result = CliRunner().invoke(cli, ["preprocess", str(make(tmp_path)), "-o", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert result.output.strip().count("\n") == 0 and message in result.output
    assert "Traceback" not in result.output


def test_folder_without_a_usable_file_is_an_error_and_leaves_nothing(tmp_path):
    midi = tmp_path / "midi"
    midi.mkdir()
    for name in ("empty.mid", "text.mid", "truncated.mid"):
        shutil.copy(BROKEN / name, midi / name)
    result = CliRunner().invoke(cli, ["preprocess", str(midi), "-o", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "no usable MIDI file (3 skipped" in result.output
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_existing_dataset_needs_overwrite(dataset, chorale_dir, tmp_path):
    out = tmp_path / "ds"
    shutil.copytree(dataset, out)
    with pytest.raises(ApolloError, match="already exists; pass --overwrite"):
        preprocess(chorale_dir, out, DatasetConfig())
    summary = preprocess(chorale_dir, out, DatasetConfig(), overwrite=True)
    manifest = read_manifest(out)
    assert DatasetConfig.from_dict(manifest["config"]) == DatasetConfig()
    assert summary.train_chunks == manifest["counts"]["train_chunks"]
    assert summary.train_chunks != read_manifest(dataset)["counts"]["train_chunks"]  # other config, other set


# -- crashes, hangs, memory ------------------------------------------------------------------------


def misbehave(item: str) -> str:
    """Runs in an isolated worker: crash, hang or allocate on request, else echo."""
    if item == "segfault":
        import ctypes

        ctypes.string_at(0)  # reads address 0: a real SIGSEGV in native code
    if item == "hang":
        time.sleep(60)
    if item == "greedy":
        np.ones(1 << 31, dtype=np.uint8)  # 2 GiB
    return item.upper()


@pytest.mark.parametrize("caller_has_threads", [False, True], ids=["forked", "fork-server"])
def test_isolated_workers_survive_crashes_hangs_and_runaway_memory(caller_has_threads):
    # Workers are forked from a single-threaded caller, else started by a fork server: test both.
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    if caller_has_threads:
        thread.start()
    items = ["a", "segfault", "b", "hang", "c", "greedy", "d"]
    try:
        if sys.platform == "linux":
            assert _context().get_start_method() == ("forkserver" if caller_has_threads else "fork")
        outcomes = isolated_map(misbehave, items, workers=2, timeout=1, memory_limit=256 << 20)
        results = {i: (ok, value) for i, ok, value in outcomes}
    finally:
        stop.set()
    assert results == {
        0: (True, "A"),
        1: (False, "parser crashed (signal 11, SIGSEGV)"),
        2: (True, "B"),
        3: (False, "timed out after 1 s"),
        4: (True, "C"),
        5: (False, "out of memory (over the 256 MiB limit)"),
        6: (True, "D"),
    }


def test_a_file_over_the_memory_limit_is_skipped_and_the_run_goes_on(chorale_dir, tmp_path):
    midi = tmp_path / "midi"
    shutil.copytree(chorale_dir, midi)
    # A legal but enormous piece: 60,000 sixteenths of chords, in 12 keys.
    start = np.repeat(np.arange(0, 60000, 16), 4)
    pitch = np.tile([48, 55, 64, 72], len(start) // 4)
    write_notes(midi / "enormous.mid", pitch, start, start + 8)
    # Its 12 rolls alone take 46 MB (64 x 60,000 cells each); the limit is well under that, because a forked worker may reuse
    # free heap it inherited without growing its address space (48 MiB passed only sometimes).
    summary = preprocess(midi, tmp_path / "out", DatasetConfig(transpose=(-5, 6)), memory_limit=16 << 20)
    assert summary.skipped == [{"file": "enormous.mid", "reason": "out of memory (over the 16 MiB limit)"}]
    assert summary.files_used == 24


# -- interruption ----------------------------------------------------------------------------------


def _strip_timing(manifest: dict) -> dict:
    return {k: v for k, v in manifest.items() if k != "finished"}


def _descendants(pid: int) -> set[int]:
    """The processes started under ``pid``, at any depth (Linux: /proc/PID/task/TID/children)."""
    found = set()
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            pids = [int(child) for child in children.read_text().split()]
        except OSError:  # it ended meanwhile
            continue
        for child in pids:
            found |= {child, *_descendants(child)}
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie has ended; only its parent has yet to collect it


# The CLI forks its workers; a caller with a thread gets them from a fork server (see _context).
WITH_A_THREAD = (
    "import sys, threading; threading.Thread(target=threading.Event().wait, daemon=True).start(); "
    "from apollo.cli.main import cli; cli(sys.argv[1:])"
)


@pytest.mark.skipif(
    not Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").exists(), reason="needs Linux's /proc children"
)
@pytest.mark.parametrize("caller", [["-m", "apollo"], ["-c", WITH_A_THREAD]], ids=["forked", "fork-server"])
def test_killed_run_leaves_no_dataset_and_no_process_and_a_rerun_completes_it(caller, chorale_dir, tmp_path):
    # Many distinct files so that the run is still going when it is killed.
    midi = tmp_path / "midi"
    midi.mkdir()
    for copy in range(8):
        for path in sorted(chorale_dir.glob("*.mid")):
            # Bytes after the last track are ignored by readers but make each copy distinct.
            (midi / f"{copy}-{path.name}").write_bytes(path.read_bytes() + bytes([copy]))
    out, partial = tmp_path / "killed", tmp_path / "killed.partial"
    options = ["--transpose", "-3:3", "--time-shift", "1", "--workers", "2"]  # 14 chunks per window: slow enough
    command = [sys.executable, *caller, "preprocess", str(midi), "-o", str(out), *options]
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        lines = partial / "files.jsonl"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not lines.exists() or lines.read_text().count("\n") < 20):
            assert process.poll() is None, "the run ended before it could be killed"
            time.sleep(0.005)
        started = _descendants(process.pid)  # workers (and a fork server, a resource tracker)
        process.kill()  # the main process only, as `kill -9 PID` or the OOM killer does
        process.wait()
        assert len(started) >= 2, "no workers to watch"
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(_alive(pid) for pid in started):
            time.sleep(0.01)
        assert not [pid for pid in started if _alive(pid)], "processes outlived the killed run"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # whatever is left, should the test fail
    done = lines.read_text().count("\n")
    assert 20 <= done < 192, "the run was not killed midway"
    assert not out.exists()  # nothing that looks finished

    result = CliRunner().invoke(cli, command[len(caller) + 1 :])
    assert result.exit_code == 0, result.output
    assert f"{done} from the interrupted run" in result.output
    assert not partial.exists()

    clean = tmp_path / "clean"
    preprocess(midi, clean, DatasetConfig(transpose=(-3, 3), time_shift=1))
    for name in ("train.bin", "val.bin"):
        assert (out / name).read_bytes() == (clean / name).read_bytes()
    assert _strip_timing(read_manifest(out)) == _strip_timing(read_manifest(clean))
