"""New pieces from a trained generator: MIDI for any instrument, with a WAV and a PNG beside it.

The model is, in this order: ``checkpoint`` (a training ``.pt`` or an exported ``.safetensors``;
``"bundled"`` names the model that ships inside the package), else the best (or last) checkpoint of
``run``, else the most recent run's under ``runs/``, else the bundled model.

Pieces of any length
--------------------
The generator turns noise ``[C, 2, 8]`` into 16 bars, and each noise column drives two bars of the
output through convolutions that are the same at every position. A piece of any length is
therefore read from one long *noise tape* of ``[C, 2, n]`` columns: window ``k`` is the generator's
output for columns ``4k .. 4k + 8``, so neighbouring windows share four columns (eight bars). Inside
that overlap both windows compute the same music, except in the one column at each window's edge,
where the convolutions' zero padding stands in for the neighbouring noise. So each window's edge
column is given weight 0, and across the two middle columns of the overlap the earlier window fades
out while the later one fades in (raised cosine, weights summing to 1), on the probabilities,
before thresholding. For a translation-equivariant generator (batch norm in eval mode, or none) the
result equals one pass over the whole tape (a test checks it to 1e-5): there is no seam to hear, and
every 16-bar stretch of a long piece is an ordinary sample of the model (its noise is i.i.d. Gaussian
as in training). The default generator normalizes each sample as a whole (layer norm), so two
overlapping windows differ slightly; the cross-fade then carries one into the other without a jump. The tape is drawn column
by column, so a longer piece starts with the shorter piece of the same seed.

What a generator reads from its *whole* noise, the key (``chroma``) and the style numbers, is a
choice about the whole piece, so every window of a piece reads it from the first window's noise
(``Generator.forward(noise, whole)``): the piece keeps one key and one character. Read from each
window's own noise instead, they changed every eight bars, and 16-bar stretches of 32-bar folk
pieces lost mean OA against the validation split (0.631 to 0.588 for a default-recipe model, 0.822
to 0.711 with style numbers; a window alone is the first figure); held, they measure as a window
alone does (0.626, 0.829), and the holes where two windows' different tunes faded into each other
are gone (docs/notebook/2026-12-06-one-key-per-piece.md).

A sequence model (``apollo train --model lstm|gru|transformer``; :mod:`apollo.sequence`) needs no
chaining: it writes one time step after another and simply runs on, drawing its cells at a
``temperature`` instead of thresholding probabilities. The rest of the path (decoding's shortest
note, the ending, the key, the arrangement, the files) is the same for every family.
"""

from __future__ import annotations

import itertools
import math
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from apollo.decoding import Decoding, judged_decoding
from apollo.errors import ApolloError
from apollo.io import FoundFile, write_json
from apollo.key import draw_move
from apollo.parts import Part, arrange, check_choice, write_arrangement
from apollo.roll import ENCODINGS, HELD, SILENT, Grid, PianoRoll

if TYPE_CHECKING:  # torch is imported only when a model is loaded
    import torch

    from apollo.model import Generator
    from apollo.render import RenderInfo
    from apollo.sequence import SequenceModel

__all__ = [
    "BUNDLED_DIR",
    "BUNDLED_MODEL",
    "bundled_decoding",
    "Chaining",
    "DEFAULT_TEMPO",
    "GenerateResult",
    "GeneratedPiece",
    "ModelChoice",
    "ModelSpec",
    "export_model",
    "family",
    "hold_last_chord",
    "find_model",
    "generate",
    "key_move",
    "load_model",
    "noise_columns",
    "noise_tape",
    "numbered_paths",
    "sample_probabilities",
    "sample_cells",
    "write_midi",
    "write_piece",
]

BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"
BUNDLED_MODEL = BUNDLED_DIR / "generator.safetensors"
DEFAULT_TEMPO = 100.0  # beats per minute when the model does not say (the trainer's sample tempo)
BEATS_PER_BAR = 4  # the datasets are cut in bars of 4/4
OVERLAP_COLUMNS = 4  # noise columns shared by neighbouring windows (8 bars with the default grid)
EDGE_COLUMNS = 1  # columns at a window's edge that zero padding changes; never used inside a piece
ENDINGS = ("hold", "none")  # how a piece of N bars stops (generate's `ending`)
WINDOWS_PER_BATCH = 16  # windows pushed through the generator at once (bounds memory on long pieces)


# -- which model ---------------------------------------------------------------------------------


ModelChoice = FoundFile  # the model file to generate with, and why it was chosen


def bundled_decoding() -> Decoding | None:
    """The bundled model's own decoding, from its readable metadata (``generator.json``), or None."""
    import json

    try:
        return Decoding(**json.loads((BUNDLED_DIR / "generator.json").read_text())["decoding"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def find_model(
    checkpoint: str | Path | None = None, run: str | Path | None = None, runs_root: str | Path = "runs"
) -> ModelChoice:
    """The model file to generate with (see the module doc for the order). Raises ApolloError."""
    if checkpoint is not None and run is not None:
        raise ApolloError("give a checkpoint or a run, not both")
    if checkpoint is not None and str(checkpoint) == "bundled":
        if not BUNDLED_MODEL.is_file():
            raise ApolloError(f"the bundled model is not installed ({BUNDLED_MODEL.name} is missing from apollo/bundled/)")
        return ModelChoice(BUNDLED_MODEL, "the bundled model")
    if checkpoint is not None:
        path = Path(checkpoint)
        if path.is_dir():
            raise ApolloError(f"{path}: is a folder; give a checkpoint file, or a run folder with --run")
        if not path.is_file():
            raise ApolloError(f"{path}: no such checkpoint")
        return ModelChoice(path, "--checkpoint")
    from apollo.checkpoint import latest_checkpoint, run_checkpoint

    if run is not None:
        path = run_checkpoint(run)
        if path is None:
            problem = "no checkpoints/best.pt or checkpoints/last.pt in this run" if Path(run).is_dir() else "no such run directory"
            raise ApolloError(f"{run}: {problem}")
        return ModelChoice(path, f"run {Path(run).name}")
    latest = latest_checkpoint(runs_root)
    if latest is not None:
        return ModelChoice(latest, f"most recent run's {latest.stem} checkpoint")
    if BUNDLED_MODEL.is_file():
        return ModelChoice(BUNDLED_MODEL, "the bundled model: no run under runs/")
    raise ApolloError(
        f"no model to generate with: no run under {runs_root}/ and the bundled model is not installed; "
        "train one with `apollo train` or pass --checkpoint FILE"
    )


# -- what the model makes ------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """What a generator's output means: its grid, encoding, window length and usual tempo."""

    grid: Grid
    encoding: str
    n_steps: int  # steps in one generated window
    tempo: float
    key_moves: tuple[int, ...] | None = None  # trained in one key: how the corpus's chunks were moved there
    decoding: Decoding = field(default_factory=Decoding)  # how its probabilities become notes (apollo.decoding)
    temperature: float = 1.0  # a sequence model's sampling temperature (the DCGAN has none)

    @property
    def steps_per_bar(self) -> int:
        return BEATS_PER_BAR * self.grid.steps_per_beat

    @classmethod
    def from_meta(cls, meta: dict) -> ModelSpec:
        """Read a checkpoint's metadata; what a file leaves out falls back to the model's own shape."""
        model = meta.get("model_config", {})
        data = meta.get("dataset_config") or {}
        grid = Grid(**{"n_pitches": model.get("n_pitches", 64), **data.get("grid", {})})
        planes = model.get("roll_channels", 2)
        encoding = data.get("encoding") or ("onset" if planes == 2 else "plain")
        if ENCODINGS.get(encoding) != planes:
            raise ApolloError(f"the model makes {planes} plane(s) but its metadata names encoding {encoding!r}")
        tempo = float(meta.get("tempo") or data.get("tempo") or DEFAULT_TEMPO)
        moves = meta.get("key_moves")
        # A model without a saved decoding decodes as its discriminator judged it: with the fill
        # and the shortest sound it was trained to be judged with, if any (TrainConfig.binarize_fill,
        # judged_min_length; below 2 the default shortest sound stays).
        saved = meta.get("decoding") or judged_decoding(meta.get("train_config") or {}).to_dict()
        try:
            decoding = Decoding.from_dict(saved)
        except (TypeError, ValueError) as error:
            raise ApolloError(f"the model's saved decoding is not valid: {error}") from None
        return cls(grid, encoding, int(data.get("n_steps") or model.get("n_steps", 256)), tempo,
                   tuple(moves) if moves else None, decoding, float(meta.get("temperature") or 1.0))


def key_move(spec: ModelSpec, seed: int) -> int:
    """Semitones to move a piece by: for a model trained in one key, to a key of its corpus drawn
    with the piece's seed; for any other model, 0."""
    return draw_move(spec.key_moves, np.random.default_rng(seed)) if spec.key_moves else 0


def family(model: Generator | SequenceModel) -> str:
    """A loaded model's family: "dcgan", "lstm", "gru" or "transformer"."""
    return getattr(model.config, "family", "dcgan")


def load_model(choice: ModelChoice, dcgan_only: str | None = None) -> tuple[Generator | SequenceModel, ModelSpec]:
    """The generator (CPU, eval mode) of any family, and its spec. Never runs code stored in the file.
    ``dcgan_only`` names a command that needs the DCGAN's noise (inversion, chaining, ONNX): any
    other family is refused with one line."""
    from apollo.checkpoint import load_generator

    generator, meta = load_generator(choice.path)
    if dcgan_only is not None and family(generator) != "dcgan":
        raise ApolloError(f"{choice.path}: {dcgan_only} needs a DCGAN, and this model is a "
                          f"{family(generator)} (apollo generate works with every family)")
    return generator, ModelSpec.from_meta(meta)


def noise_columns(generator: Generator, seed: int) -> Iterator[torch.Tensor]:
    """The noise tape's columns ``[C, H]``, drawn one by one from ``seed``, without end."""
    import torch

    rng = torch.Generator().manual_seed(seed)
    channels, height, _ = generator.config.noise_shape
    while True:
        yield torch.randn(channels, height, generator=rng)


def noise_tape(generator: Generator, n_columns: int, seed: int) -> torch.Tensor:
    """Noise ``[C, H, n_columns]`` drawn column by column, so its first columns never depend on its length."""
    import torch

    return torch.stack(list(itertools.islice(noise_columns(generator, seed), n_columns)), dim=-1)


@dataclass(frozen=True)
class Chaining:
    """How a generator's windows chain into a long piece (module doc); lengths in steps unless named columns."""

    width: int  # noise columns per window
    hop_columns: int  # noise columns from one window to the next
    window: int  # steps per window
    hop: int  # steps from one window to the next
    overlap: int  # steps neighbouring windows share (window - hop)
    edge: int  # steps at a window's edge that get weight 0 inside a piece

    @classmethod
    def of(cls, generator: Generator) -> Chaining:
        _, _, width = generator.config.noise_shape
        window = generator.config.n_steps
        column = window // width  # steps per noise column
        overlap_columns = min(OVERLAP_COLUMNS, width - 1)
        edge_columns = min(EDGE_COLUMNS, (overlap_columns - 1) // 2)
        hop_columns = width - overlap_columns
        return cls(width, hop_columns, window, hop_columns * column, overlap_columns * column, edge_columns * column)

    def weight(self, *, first: bool, last: bool) -> np.ndarray:
        """A window's weight over its steps: 0 on its inner edge columns, a raised-cosine ramp across
        the middle of each overlap, 1 elsewhere; a fade-out and the next window's fade-in always sum to 1."""
        fade = self.overlap - 2 * self.edge
        ramp = (0.5 - 0.5 * np.cos(np.pi * (np.arange(fade) + 0.5) / fade)).astype(np.float32)
        fade_in = np.concatenate([np.zeros(self.edge, np.float32), ramp, np.ones(self.edge, np.float32)])
        weight = np.ones(self.window, dtype=np.float32)
        if not first:
            weight[: self.overlap] = fade_in
        if not last:
            weight[-self.overlap :] = fade_in[::-1]
        return weight


def sample_probabilities(generator: Generator, n_steps: int, seed: int) -> np.ndarray:
    """Cell probabilities ``[channels, n_pitches, n_steps]`` of one piece of any length (module doc)."""
    import torch

    chain = Chaining.of(generator)
    window, hop = chain.window, chain.hop
    n_windows = 1 + max(0, math.ceil((n_steps - window) / hop))
    tape = noise_tape(generator, chain.width + (n_windows - 1) * chain.hop_columns, seed)
    windows = torch.stack([tape[..., k * chain.hop_columns : k * chain.hop_columns + chain.width]
                           for k in range(n_windows)])

    with torch.inference_mode():
        probs = torch.cat([generator(batch, windows[:1].expand_as(batch))
                           for batch in windows.split(WINDOWS_PER_BATCH)]).numpy()

    total = window + (n_windows - 1) * hop
    out = np.zeros((*probs.shape[1:3], total), dtype=np.float32)
    for k, p in enumerate(probs):
        out[..., k * hop : k * hop + window] += p * chain.weight(first=k == 0, last=k == n_windows - 1)
    return out[..., :n_steps]


def sample_cells(generator: Generator | SequenceModel, n_steps: int, seeds: list[int], temperature: float = 1.0) -> Iterator[np.ndarray]:
    """What a model of any family writes for pieces of ``n_steps`` steps, one per seed, each as
    ``[channels, n_pitches, n_steps]`` for :meth:`Decoding.decode`: the DCGAN's chained probabilities
    (:func:`sample_probabilities`), one piece at a time; a sequence model's cells drawn at
    ``temperature``, all pieces together (:func:`apollo.sequence.sample_pieces`)."""
    if family(generator) == "dcgan":
        for seed in seeds:
            yield sample_probabilities(generator, n_steps, seed)
        return
    from apollo.sequence import sample_pieces

    yield from sample_pieces(generator, n_steps, seeds, temperature).numpy()


def hold_last_chord(roll: PianoRoll, bar_steps: int) -> PianoRoll:
    """The piece ending on purpose: in its last bar, the notes sounding at the first step where any
    sounds are held to the end, and nothing new starts after them. The model never learned to stop
    (its training windows play a piece round), so a piece asked for N bars would otherwise stop
    mid-phrase, wherever bar N happens to fall."""
    cells = roll.cells.copy()
    last = cells[:, -bar_steps:]  # a view: changing it changes cells
    sounding = np.flatnonzero((last > SILENT).any(axis=0))
    if not len(sounding):
        return roll
    first = sounding[0]
    chord = last[:, first] > SILENT
    last[:, first + 1 :] = SILENT
    last[chord, first + 1 :] = HELD
    return replace(roll, cells=cells)


# -- files ---------------------------------------------------------------------------------------


def numbered_paths(out: str | Path, n: int) -> list[Path]:
    """``out`` itself for one piece; ``out-01.mid, out-02.mid, ...`` beside it for several."""
    out = Path(out)
    if n == 1:
        return [out]
    digits = max(2, len(str(n)))
    return [out.with_name(f"{out.stem}-{i:0{digits}d}{out.suffix}") for i in range(1, n + 1)]


def write_midi(roll: PianoRoll, path: Path, *, program: int) -> None:
    """The roll as a MIDI file that lasts all of its steps (trailing rests included)."""
    try:
        roll.to_midi(path, program=program)
    except OSError as error:
        raise ApolloError(f"{path}: cannot write ({error.strerror or error})") from None


@dataclass
class GeneratedPiece:
    """One generated piece and the files written for it."""

    midi: Path
    seed: int | None  # the seed it was drawn from (None where :func:`write_piece` wrote it)
    bars: int
    seconds: float
    n_notes: int  # notes written, over all parts
    program: int | None  # the instrument's General MIDI program; None for an ensemble (see parts)
    transpose: int = 0  # semitones the model's output was moved
    wav: Path | None = None
    png: Path | None = None
    render_info: RenderInfo | None = None  # how the WAV was rendered, when one was
    parts: list[Part] = field(default_factory=list)  # one per MIDI track (apollo.parts)
    message: str = ""  # what arranging did, in words ("" when nothing worth saying)


def write_piece(
    roll: PianoRoll,
    midi_path: Path,
    *,
    instrument: int | str | None = None,
    ensemble: str | None = None,
    line: str | None = None,
    wav: bool = False,
    png: bool = False,
    soundfont: str | Path | None = None,
    sample_rate: int = 44100,
) -> GeneratedPiece:
    """Write a piece for real players: ``roll`` arranged for ``instrument`` (default piano) or
    ``ensemble`` (:func:`apollo.parts.arrange`, with ``line`` "top" or "bottom" for a solo line),
    as a MIDI file with one track per part; with ``png`` its parts' piano rolls, with ``wav`` its
    sound (as ``apollo render``), beside it. The piece's ``seed`` is left None for the caller.
    Raises ApolloError with a one-line message.
    """
    arrangement = arrange(roll, instrument=instrument, ensemble=ensemble, line=line)
    midi_path = Path(midi_path)
    try:
        write_arrangement(arrangement, midi_path)
    except OSError as error:
        raise ApolloError(f"{midi_path}: cannot write ({error.strerror or error})") from None
    parts = arrangement.parts
    bars = math.ceil(roll.n_steps / (BEATS_PER_BAR * roll.grid.steps_per_beat))
    program = None if ensemble is not None else parts[0].program
    piece = GeneratedPiece(midi_path, None, bars, roll.seconds, arrangement.n_notes, program,
                           parts=parts, message=arrangement.message)
    if png:
        from apollo.image import save_png

        piece.png = save_png([part.roll for part in parts], midi_path.with_suffix(".png"))
    if wav:
        from apollo.render import render

        piece.render_info = render(midi_path, midi_path.with_suffix(".wav"), soundfont=soundfont, sample_rate=sample_rate)
        piece.wav = piece.render_info.wav_path
    return piece


@dataclass
class GenerateResult:
    """Everything :func:`generate` did: the model, the seed and the pieces."""

    model: ModelChoice
    seed: int
    tempo: float
    decoding: Decoding
    pieces: list[GeneratedPiece] = field(default_factory=list)
    family: str = "dcgan"
    temperature: float | None = None  # a sequence model's; None for the DCGAN

    def describe_decoding(self) -> str:
        """How the cells became notes, in words."""
        if self.family == "dcgan":
            return f"decoding: {self.decoding}"
        return f"{self.family} drawing at temperature {self.temperature:g}, min length {self.decoding.min_length}"


def generate(
    out: str | Path,
    *,
    checkpoint: str | Path | None = None,
    run: str | Path | None = None,
    instrument: int | str | None = None,
    ensemble: str | None = None,
    line: str | None = None,
    n: int = 1,
    seed: int | None = None,
    bars: int | None = None,
    ending: str = "hold",
    tempo: float | None = None,
    threshold: float | None = None,
    onset_threshold: float | None = None,
    min_length: int | None = None,
    fill: float | None = None,
    temperature: float | None = None,
    transpose: int | None = None,
    wav: bool = False,
    png: bool = False,
    soundfont: str | Path | None = None,
    sample_rate: int = 44100,
    runs_root: str | Path = "runs",
) -> GenerateResult:
    """Generate ``n`` pieces as MIDI files at ``out`` (numbered beside it when ``n > 1``).

    Piece ``i`` (from 0) is made from seed ``seed + i``, so one seed always gives the same files;
    without a seed a random one is drawn (and returned). ``bars`` defaults to one window of the
    model (16 bars). ``instrument`` is a General MIDI name, alias or program (see
    :mod:`apollo.instruments`; default piano), or ``ensemble`` names an ensemble: each piece is
    arranged for real players (:func:`write_piece`, :mod:`apollo.parts`): one track per part with
    its program, each part in its range, a monophonic instrument one line (``line``: "top" or
    "bottom"). The MIDI carries the programs and the tempo.
    ``threshold``, ``onset_threshold``, ``min_length`` and ``fill`` decode the model's probabilities
    (:class:`~apollo.decoding.Decoding`); each one left out is the model's own (its saved decoding,
    else the defaults). A sequence model has no probabilities to threshold: it draws its cells at
    ``temperature`` (default its own, else 1; lower is safer, higher wilder). ``ending`` is how a piece stops where it was asked to: ``"hold"`` holds the
    chord of its last bar's first beat to the end (:func:`hold_last_chord`), ``"none"`` cuts the
    music at the bar line as the model made it.
    ``wav`` renders each piece beside its MIDI file exactly as ``apollo render`` does; ``png``
    saves its piano roll. ``transpose`` moves every piece by that many semitones; left out, a model
    trained in one key (``--normalize-key``) moves each piece to a key drawn, with the piece's seed,
    from the keys of its training corpus, and any other model's output stays as it is.
    Raises ApolloError with a one-line message.
    """
    if n < 1:
        raise ApolloError(f"--n must be at least 1, got {n}")
    for flag, value in (("--threshold", threshold), ("--onset-threshold", onset_threshold), ("--fill", fill)):
        if value is not None and not 0 < value < 1:
            raise ApolloError(f"{flag} must lie strictly between 0 and 1, got {value}")
    if temperature is not None and temperature <= 0:
        raise ApolloError(f"--temperature must be above 0, got {temperature}")
    if min_length is not None and min_length < 1:
        raise ApolloError(f"--min-length must be at least 1 step, got {min_length}")
    if bars is not None and bars < 1:
        raise ApolloError(f"--bars must be at least 1, got {bars}")
    if ending not in ENDINGS:
        raise ApolloError(f"--ending must be one of {', '.join(ENDINGS)}, got {ending!r}")
    if tempo is not None and not 10 <= tempo <= 400:
        raise ApolloError(f"--tempo must lie in 10..400 beats per minute, got {tempo}")
    check_choice(instrument, ensemble, line)  # before the model loads
    if Path(out).suffix.lower() not in (".mid", ".midi") or Path(out).is_dir():
        raise ApolloError(f"{out}: the output should be a .mid file")
    choice = find_model(checkpoint, run, runs_root)
    generator, spec = load_model(choice)
    if family(generator) == "dcgan" and temperature is not None:
        raise ApolloError(f"{choice.path}: --temperature is for the sequence families; the DCGAN's cells "
                          "are decoded with --threshold")
    if family(generator) != "dcgan" and (threshold is not None or onset_threshold is not None or fill is not None):
        raise ApolloError(f"{choice.path}: this {family(generator)} draws its cells, so there is no threshold; "
                          "use --temperature")
    temperature = spec.temperature if temperature is None else temperature
    seed = secrets.randbelow(1_000_000) if seed is None else seed
    tempo = spec.tempo if tempo is None else tempo
    bars = bars or max(1, spec.n_steps // spec.steps_per_bar)
    n_steps = bars * spec.steps_per_bar
    given = {"threshold": threshold, "onset_threshold": onset_threshold, "min_length": min_length, "fill": fill}
    decoding = replace(spec.decoding, **{k: v for k, v in given.items() if v is not None})

    result = GenerateResult(choice, seed, tempo, decoding, family=family(generator),
                            temperature=None if family(generator) == "dcgan" else temperature)
    drawn = sample_cells(generator, n_steps, [seed + i for i in range(n)], temperature)
    for i, (midi_path, cells) in enumerate(zip(numbered_paths(out, n), drawn)):
        roll = decoding.decode(cells, spec.encoding, spec.grid, tempo)
        if ending == "hold":
            roll = hold_last_chord(roll, spec.steps_per_bar)
        move = key_move(spec, seed + i) if transpose is None else transpose
        if move:
            roll = roll.transpose(move)
        piece = write_piece(roll, midi_path, instrument=instrument, ensemble=ensemble, line=line, wav=wav, png=png,
                            soundfont=soundfont, sample_rate=sample_rate)
        piece.seed, piece.bars, piece.transpose = seed + i, bars, move
        result.pieces.append(piece)
    return result


# -- packaging a model ---------------------------------------------------------------------------


def export_model(
    checkpoint: str | Path,
    out: str | Path = BUNDLED_MODEL,
    *,
    provenance: dict | None = None,
    tempo: float | None = None,
    half: bool = False,
    decoding: Decoding | None = None,
    temperature: float | None = None,
) -> Path:
    """Export a training checkpoint's generator as safetensors (the bundled model's format).

    Writes ``out`` and, beside it, ``<stem>.json`` with the provenance: the checkpoint's (the recipe
    and stage that trained it, the commit of the code) and ``provenance`` (command, run summary...). ``half`` stores the weights as float16, halving the file; they are read back
    into float32. ``tempo`` records the tempo `apollo generate` should use by default, and
    ``decoding`` the decoding (:func:`apollo.decoding.calibrate` chooses one); ``temperature`` a
    sequence model's sampling temperature (bench/calibrate_decoding.py chooses one).
    """
    import torch

    from apollo.checkpoint import load_generator, save_generator

    generator, meta = load_generator(checkpoint)
    spec = ModelSpec.from_meta(meta)
    out = Path(out)
    extra = {
        "tempo": spec.tempo if tempo is None else tempo,
        # The checkpoint's own provenance (the recipe and stage that made it, the code's commit) first.
        "provenance": {"source_checkpoint": Path(checkpoint).name, "step": meta.get("step"),
                       **meta.get("provenance", {}), **(provenance or {})},
    }
    if decoding is not None:
        extra["decoding"] = decoding.to_dict()
    if temperature is not None:
        extra["temperature"] = temperature
    meta = {k: v for k, v in meta.items() if k not in ("model_config", "apollo_version")} | extra
    if half:
        generator = generator.to(torch.float16)
    save_generator(out, generator, meta)
    write_json(out.with_suffix(".json"), {**meta, "model_config": generator.config.to_dict(), "half": half})
    return out
