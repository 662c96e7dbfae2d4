"""General MIDI names, aliases and numbers; `apollo instruments`."""

from __future__ import annotations

import pytest
from apollo.cli.main import cli
from click.testing import CliRunner

from apollo.errors import ApolloError
from apollo.instruments import (
    ALIASES,
    aliases_of,
    gm_names,
    instrument_name,
    instrument_program,
)


def test_all_128_general_midi_names_round_trip():
    names = gm_names()
    assert len(names) == 128 and names[0] == "Acoustic Grand Piano" and names[40] == "Violin"
    for program, name in enumerate(names):
        assert instrument_program(name) == program
        assert instrument_name(program) == name


@pytest.mark.parametrize(
    "text, program",
    [
        ("violin", 40),
        ("  VIOLIN ", 40),
        ("acoustic-grand piano", 0),
        ("Acoustic Guitar (nylon)", 24),
        ("acousticguitarnylon", 24),
        ("electric_bass (finger)", 33),
        ("lead 8 (bass+lead)", 87),
        # aliases
        ("piano", 0),
        ("sax", 65),
        ("Strings", 48),
        ("nylon guitar", 24),
        ("flute", 73),
        ("organ", 19),
        ("French horn", 60),
        # numbers count from 0, as in a MIDI file
        ("0", 0),
        ("73", 73),
        ("127", 127),
        (41, 41),
    ],
)
def test_lookup_ignores_case_spaces_and_punctuation(text, program):
    assert instrument_program(text) == program


def test_every_alias_selects_a_valid_program_and_is_listed():
    gm = {name.lower() for name in gm_names()}
    for alias, program in ALIASES.items():
        assert 0 <= program <= 127
        assert alias not in gm, f"{alias!r} is already a General MIDI name"
        assert instrument_program(alias) == program
        assert alias in aliases_of(program)


@pytest.mark.parametrize(
    "text, suggestion",
    [("violn", "Violin"), ("trumpt", "Trumpet"), ("clarinett", "Clarinet"), ("electric", "Electric Piano 1")],
)
def test_unknown_names_suggest_the_closest(text, suggestion):
    with pytest.raises(ApolloError, match="did you mean") as error:
        instrument_program(text)
    assert suggestion in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("value", ["128", -1, 300, "-3", ""])
def test_out_of_range_or_empty_is_refused(value):
    with pytest.raises(ApolloError):
        instrument_program(value)


def test_instruments_command_lists_all_with_aliases_ranges_and_ensembles():
    result = CliRunner().invoke(cli, ["instruments"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[128] == "" and "Ensembles" in lines[129]
    assert lines[40].split() == ["40", "Violin", "one", "note", "G3..E7"]
    assert lines[0].split()[:5] == ["0", "Acoustic", "Grand", "Piano", "chords"] and "A0..C8" in lines[0]
    assert "Alto Sax" in lines[65] and "sax" in lines[65]
    assert "nylon guitar" in lines[24]
    assert "string quartet: Violin I (Violin, G3..E7), Violin II (Violin, G3..E7), Viola (C3..C6), Cello (C2..E5)" in lines[130]
    assert any("Right hand (Acoustic Grand Piano, A0..C8, 2 voices)" in line for line in lines[130:])
