"""Built-in corpora: MIDI files made from the scores that ship inside music21, so Apollo has data offline.

- ``bach-chorales``: the four-part Bach chorales of ``music21.corpus.getComposer("bach")`` (about 400).
  The Roman-numeral analyses (``.rntxt``) are not chorales and are left out; where a chorale exists in
  two encodings (MusicXML and Humdrum) only one is used.
- ``folk``: Ryan's Mammoth Collection and O'Neill's Music of Ireland (1850), fiddle reels, jigs and
  hornpipes in ABC. An ABC file holds many tunes; each tune becomes one MIDI file.
- ``palestrina``: the mass movements of Palestrina in Humdrum (about 1,300), four to six voices. No
  recipe or default was chosen on it: it is the corpus that shows how the default recipe does on
  music it was not tuned on (docs/results.md).

Converting a score with music21 takes about 0.1 s, so converted files are cached under
``$APOLLO_CACHE/corpora/<name>/<conversion>/`` (default ``$XDG_CACHE_HOME/apollo`` or ``~/.cache/apollo``) and a
second export only copies them. Conversion runs in parallel on all cores. Pieces music21 cannot
convert are skipped, counted, and remembered in the cache so they are not retried.
"""

from __future__ import annotations

import concurrent.futures
import copy
import multiprocessing
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from apollo.errors import ApolloError

__all__ = ["CORPORA", "Corpus", "ExportSummary", "Piece", "cache_dir", "export"]

# Converted files are cached per version of the conversion: a change to what a file holds gets a
# new name, so a cache written by an older Apollo is never copied out as if it were current.
CONVERSION = "v2"  # v2: grace notes dropped (_drop_grace_notes)


@dataclass(frozen=True)
class Piece:
    """One score to convert: ``name`` is its path in the export without ``.mid``."""

    name: str
    source: str  # path of the score file inside music21's corpus
    tune: int | None = None  # ABC files only: which tune of the file (0-based)


@dataclass(frozen=True)
class Corpus:
    name: str
    description: str
    pieces: Callable[[], list[Piece]]  # listing is cheap (no parsing), so limits stay fast


@dataclass
class ExportSummary:
    """What :func:`export` did: MIDI files written, how many needed converting, what was skipped."""

    corpus: str
    out_dir: Path
    written: int = 0
    converted: int = 0  # converted by this call; the rest of ``written`` came from the cache
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (piece, reason)
    seconds: float = 0.0

    def line(self) -> str:
        cached = self.written - min(self.converted, self.written)
        text = (
            f"{self.corpus}: {self.written} MIDI files written to {self.out_dir} "
            f"({cached} from the cache, {self.converted} converted)"
        )
        if self.skipped:
            text += f", {len(self.skipped)} skipped (music21 cannot convert them)"
        return text + f" in {self.seconds:.1f} s"


# -- listing ---------------------------------------------------------------------------------------

# Preferred encoding when music21 holds the same chorale twice (bwv277.mxl and bwv277.krn).
_CHORALE_SUFFIXES = (".mxl", ".xml", ".musicxml", ".krn")


def _bach_chorales() -> list[Piece]:
    from music21 import corpus

    by_stem: dict[str, Path] = {}
    for path in map(Path, corpus.getComposer("bach")):
        if path.suffix not in _CHORALE_SUFFIXES:  # .rntxt: Roman-numeral analyses, not music
            continue
        known = by_stem.get(path.stem)
        if known is None or _CHORALE_SUFFIXES.index(path.suffix) < _CHORALE_SUFFIXES.index(known.suffix):
            by_stem[path.stem] = path
    return [Piece(stem, str(path)) for stem, path in sorted(by_stem.items(), key=lambda kv: _natural(kv[0]))]


def _palestrina() -> list[Piece]:
    from music21 import corpus

    paths = sorted(map(Path, corpus.getComposer("palestrina")), key=lambda p: _natural(p.name))
    return [Piece(f"palestrina/{path.stem}", str(path)) for path in paths if path.suffix == ".krn"]


def _abc_tunes(*collections: str) -> list[Piece]:
    from music21 import corpus

    pieces = []
    for collection in collections:
        for path in sorted(map(Path, corpus.getWork(collection)), key=lambda p: _natural(p.name)):
            numbers = [_reference_number(tune) for tune in _split_abc(path.read_text(errors="replace"))[1]]
            single = len(numbers) == 1
            for i, number in enumerate(numbers):
                # Name tunes by their X: number where it is unique within the file, else by position.
                label = number if number and numbers.count(number) == 1 else f"{i + 1}"
                name = f"{collection}/{path.stem}" if single else f"{collection}/{path.stem}-x{label}"
                pieces.append(Piece(name, str(path), i))
    return pieces


def _split_abc(text: str) -> tuple[str, list[str]]:
    """An ABC file as its file header (text before the first ``X:``) and its tunes."""
    parts = re.split(r"(?m)^(?=X:)", text)
    return parts[0], [p for p in parts[1:] if p.strip()]


def _reference_number(tune: str) -> str:
    match = re.match(r"X:\s*(\d+)", tune)
    return match.group(1) if match else ""


def _natural(name: str) -> list:
    """Sort key that puts bwv2 before bwv10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


CORPORA: dict[str, Corpus] = {
    "bach-chorales": Corpus(
        "bach-chorales", "J. S. Bach's four-part chorales (about 400, music21)", _bach_chorales
    ),
    "folk": Corpus(
        "folk",
        "Fiddle reels, jigs and hornpipes: Ryan's Mammoth Collection and O'Neill's 1850 (about 3,000 tunes, music21)",
        lambda: _abc_tunes("ryansMammoth", "oneills1850"),
    ),
    "palestrina": Corpus(
        "palestrina", "Palestrina's mass movements, four to six voices (about 1,300, music21)", _palestrina
    ),
}


# -- cache -----------------------------------------------------------------------------------------


def cache_dir(name: str | None = None) -> Path:
    """Where converted corpora are kept.

    ``$APOLLO_CACHE/corpora``, else ``$XDG_CACHE_HOME/apollo/corpora``, else ``~/.cache/apollo/corpora``.
    """
    root = os.environ.get("APOLLO_CACHE")
    if root:
        base = Path(root)
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "apollo"
    return base / "corpora" / name if name else base / "corpora"


def _cached(cache: Path, piece: Piece) -> tuple[str, str] | None:
    """("ok", "") or ("failed", reason) when the piece was converted before, else None."""
    if (cache / f"{piece.name}.mid").is_file():
        return "ok", ""
    failed = cache / f"{piece.name}.failed"
    if failed.is_file():
        return "failed", failed.read_text().strip()
    return None


# -- conversion (runs in worker processes) ---------------------------------------------------------


def _convert(piece: Piece, cache: str) -> tuple[str, str]:
    """Convert one piece into the cache; returns ("ok", "") or ("failed", reason). Never raises."""
    target = Path(cache) / f"{piece.name}.mid"
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        data = _to_midi_bytes(piece)
        status, payload, suffix = "ok", data, ".mid"
    except Exception as error:  # music21 raises many kinds; any of them means "cannot convert"
        message = " ".join(str(error).split())[:160]
        reason = f"music21 cannot convert it ({type(error).__name__}: {message})"
        status, payload, suffix = "failed", reason.encode(), ".failed"
    # Written under a temporary name and renamed, so the cache never holds half a file.
    final = target.with_suffix(suffix)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    tmp.write_bytes(payload)
    os.replace(tmp, final)
    return status, "" if status == "ok" else payload.decode()


def _to_midi_bytes(piece: Piece) -> bytes:
    from music21 import converter
    from music21.midi import translate

    if piece.tune is None:
        score = converter.parse(piece.source)
    else:
        header, tunes = _split_abc(Path(piece.source).read_text(errors="replace"))
        score = converter.parse(header + tunes[piece.tune], format="abc")
    _unshare_context_objects(score)
    _drop_grace_notes(score)
    return translate.streamToMidiFile(score).writestr()


def _drop_grace_notes(score) -> None:
    """Remove grace notes (ABC's ``{a}``), which have no duration.

    music21 writes a grace note's note-off before its note-on at the same tick, and MIDI readers
    pair that note-on with the next note-off of its pitch, often bars later: 334 of the 2,934 folk
    tunes held a note for more than four bars, a drone the fiddler never played. An ornament
    shorter than a step has no place on a sixteenth-note grid anyway.
    """
    for note in list(score.recurse().notes):
        if note.duration.isGrace:
            note.activeSite.remove(note)


def _unshare_context_objects(score) -> None:
    """Give every stream its own time/key signature and tempo objects.

    music21's ABC reader puts one TimeSignature object in several places; its MIDI writer then
    fails ("already found in this Stream") on about one folk tune in five. Copies fix that.
    """
    from music21 import key, meter, tempo

    seen: set[int] = set()
    for stream in [score, *score.recurse(streamsOnly=True)]:
        for element in list(stream.getElementsByClass((meter.TimeSignature, key.KeySignature, tempo.MetronomeMark))):
            if id(element) in seen:
                stream.replace(element, copy.deepcopy(element))
            seen.add(id(element))


def _pool_context():
    # forkserver: workers start from a clean single-threaded process, never from a copy of a
    # caller that may hold torch or tqdm threads.
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


# -- export ----------------------------------------------------------------------------------------


def export(
    name: str,
    out_dir: str | Path,
    limit: int | None = None,
    *,
    workers: int | None = None,
) -> ExportSummary:
    """Write the corpus ``name`` as MIDI files into ``out_dir`` and return what happened.

    With ``limit`` only the first ``limit`` convertible pieces are written (and only those are
    converted). Pieces already in the cache are copied; the others are converted in parallel on
    ``workers`` processes (default: all cores). Raises ApolloError for an unknown corpus.
    """
    if name not in CORPORA:
        raise ApolloError(f"unknown corpus {name!r}; choose from {', '.join(CORPORA)}")
    if limit is not None and limit < 0:
        raise ApolloError(f"limit must not be negative, got {limit}")
    started = time.perf_counter()
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ApolloError(f"{out_dir}: exists and is not a folder")
    cache = cache_dir(name) / CONVERSION
    cache.mkdir(parents=True, exist_ok=True)
    pieces = CORPORA[name].pieces()
    summary = ExportSummary(name, out_dir)

    # Walk the listing in order, converting in batches only as many pieces as the limit still
    # needs, so `limit=24` costs 24 conversions rather than 400.
    usable: list[Piece] = []
    position = 0
    workers = max(1, workers or os.cpu_count() or 1)
    executor = None
    try:
        while position < len(pieces) and (limit is None or len(usable) < limit):
            batch: list[Piece] = []
            while position < len(pieces) and (limit is None or len(usable) + len(batch) < limit):
                piece = pieces[position]
                position += 1
                known = _cached(cache, piece)
                if known is None:
                    batch.append(piece)
                elif known[0] == "ok":
                    usable.append(piece)
                else:
                    summary.skipped.append((piece.name, known[1]))
            if not batch:
                continue
            if executor is None:
                executor = concurrent.futures.ProcessPoolExecutor(
                    max_workers=min(workers, len(batch)), mp_context=_pool_context()
                )
            results = list(executor.map(_convert, batch, [str(cache)] * len(batch), chunksize=1))
            for piece, (status, reason) in zip(batch, results):
                summary.converted += status == "ok"
                if status == "ok":
                    usable.append(piece)
                else:
                    summary.skipped.append((piece.name, reason))
    finally:
        if executor is not None:
            executor.shutdown()

    order = {piece.name: i for i, piece in enumerate(pieces)}
    usable.sort(key=lambda piece: order[piece.name])
    for piece in usable[:limit]:
        target = out_dir / f"{piece.name}.mid"
        target.parent.mkdir(parents=True, exist_ok=True)
        # A copy, not a hard link: editing an exported file must never change the cache.
        shutil.copyfile(cache / f"{piece.name}.mid", target)
        summary.written += 1
    summary.seconds = time.perf_counter() - started
    return summary
