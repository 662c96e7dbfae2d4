"""General MIDI instruments by name: the 128 programs, common aliases and forgiving lookup.

A name is matched after dropping case, spaces and punctuation, so ``"Acoustic Grand Piano"``,
``"acoustic-grand-piano"`` and ``"ACOUSTICGRANDPIANO"`` are one name. Besides the 128 General MIDI
names (pretty_midi's list) a few everyday words are accepted, such as ``"piano"``, ``"sax"``,
``"strings"`` or ``"nylon guitar"``. A program number counts from 0 as it does in a MIDI file
(0 is Acoustic Grand Piano, 40 is Violin); printed GM tables often count from 1.

This module imports neither torch nor anything heavy, so ``apollo instruments`` stays instant.
"""

from __future__ import annotations

import difflib
import functools
import re

from apollo.errors import ApolloError

__all__ = ["ALIASES", "aliases_of", "gm_names", "instrument_name", "instrument_program"]

# Everyday words -> program. Only names that are not already a GM name (after normalizing).
ALIASES: dict[str, int] = {
    "piano": 0,
    "grand piano": 0,
    "bright piano": 1,
    "electric piano": 4,
    "rhodes": 4,
    "clav": 7,
    "celeste": 8,
    "glock": 9,
    "vibes": 11,
    "bells": 14,
    "chimes": 14,
    "organ": 19,
    "pipe organ": 19,
    "hammond": 16,
    "guitar": 24,
    "nylon guitar": 24,
    "classical guitar": 24,
    "acoustic guitar": 25,
    "steel guitar": 25,
    "folk guitar": 25,
    "jazz guitar": 26,
    "electric guitar": 27,
    "clean guitar": 27,
    "muted guitar": 28,
    "bass": 32,
    "upright bass": 32,
    "double bass": 43,
    "electric bass": 33,
    "bass guitar": 33,
    "string bass": 43,
    "violoncello": 42,
    "harp": 46,
    "strings": 48,
    "string ensemble": 48,
    "string quartet": 48,
    "pizzicato": 45,
    "tremolo": 44,
    "choir": 52,
    "voice": 53,
    "vocals": 53,
    "horn": 60,
    "brass": 61,
    "sax": 65,
    "saxophone": 65,
    "soprano saxophone": 64,
    "alto saxophone": 65,
    "tenor saxophone": 66,
    "baritone saxophone": 67,
    "cor anglais": 69,
    "fagotto": 70,
    "pan pipes": 75,
    "panpipes": 75,
    "synth": 80,
    "synth lead": 80,
    "square": 80,
    "sawtooth": 81,
    "pad": 88,
    "synth pad": 88,
    "steel drum": 114,
    "steelpan": 114,
}


def normalize(name: str) -> str:
    """The comparison key of a name: lower case, letters and digits only."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


@functools.cache
def gm_names() -> tuple[str, ...]:
    """The 128 General MIDI program names, index = program number (pretty_midi's spelling)."""
    from pretty_midi.constants import (
        INSTRUMENT_MAP,  # imported lazily: pretty_midi brings numpy
    )

    return tuple(INSTRUMENT_MAP)


@functools.cache
def _index() -> dict[str, int]:
    """Normalized name or alias -> program."""
    index = {normalize(name): program for program, name in enumerate(gm_names())}
    for alias, program in ALIASES.items():
        index.setdefault(normalize(alias), program)
    return index


def instrument_name(program: int) -> str:
    """The General MIDI name of a program number (0..127)."""
    if not 0 <= program <= 127:
        raise ValueError(f"program must lie in 0..127, got {program}")
    return gm_names()[program]


def aliases_of(program: int) -> list[str]:
    """The everyday words that select ``program``, in the order they are listed in ALIASES."""
    return [alias for alias, p in ALIASES.items() if p == program]


def instrument_program(instrument: str | int) -> int:
    """The program number of a GM name, an alias or a program number given as int or digits.

    Raises ApolloError for anything else, naming the closest known names.
    """
    if isinstance(instrument, int):
        if not 0 <= instrument <= 127:
            raise ApolloError(f"instrument program {instrument} is outside 0..127")
        return instrument
    text = instrument.strip()
    if re.fullmatch(r"\d+", text):
        return instrument_program(int(text))
    key = normalize(text)
    program = _index().get(key)
    if program is None:
        raise ApolloError(f"unknown instrument {instrument!r}{_suggestions(key)}")
    return program


def _suggestions(key: str, n: int = 4) -> str:
    """'; did you mean: A, B?' for the names nearest to ``key`` (or a pointer to the full list)."""
    index = _index()
    # Spelling mistakes first (difflib), then names that contain the word ("electric" -> ...).
    close = difflib.get_close_matches(key, index, n=n, cutoff=0.6) if key else []
    close += [name for name in index if key and key in name and name not in close]
    spelled = {normalize(name): name for name in gm_names()} | {normalize(a): a for a in ALIASES}
    picks: list[str] = []
    for match in close:
        if spelled[match] not in picks:
            picks.append(spelled[match])
    if not picks:
        return "; `apollo instruments` lists the names"
    return f"; did you mean: {', '.join(picks[:n])}?"
