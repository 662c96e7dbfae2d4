"""Help texts that quote a default agree with the code and with the bundled model's metadata."""

from __future__ import annotations

import json
import re
from pathlib import Path

from click.testing import CliRunner

import apollo
from apollo.cli.main import cli
from apollo.decoding import Decoding
from apollo.generate import DEFAULT_TEMPO
from apollo.train import TrainConfig


def help_text(*command: str) -> str:
    result = CliRunner().invoke(cli, [*command, "--help"], terminal_width=1000)
    assert result.exit_code == 0, result.output
    return result.output


def option_help(text: str, option: str) -> str:
    """The help of one option, on one line (the terminal is wide)."""
    (line,) = [line for line in text.splitlines() if line.strip().startswith(option + " ")]
    return line


def test_generate_quotes_the_bundled_models_decoding_and_the_fallbacks():
    meta = json.loads((Path(apollo.__file__).parent / "bundled" / "generator.json").read_text())["decoding"]
    text = help_text("generate")
    assert f"bundled model's: {meta['threshold']:g}), else {Decoding().threshold:g}" in option_help(text, "--threshold")
    assert f"bundled model's: {meta['onset_threshold']:g})" in option_help(text, "--onset-threshold")
    assert f"bundled model's: {meta['min_length']}), else {Decoding().min_length}" in option_help(text, "--min-length")
    assert f"else {DEFAULT_TEMPO:g})" in option_help(text, "--tempo")


def test_every_default_apollo_train_shows_is_the_configs():
    text = help_text("train")
    fields = TrainConfig()
    shown = re.findall(r"^\s+(--[\w-]+).*\[default: ([^;\]]+)", text, re.MULTILINE)
    assert len(shown) >= 7
    for option, default in shown:
        assert default == str(getattr(fields, option[2:].replace("-", "_"))), option


def test_generate_lists_every_ensemble_and_the_lines():
    from apollo.parts import ENSEMBLES

    text = help_text("generate")
    assert all(name in option_help(text, "--ensemble") for name in ENSEMBLES)
    assert "[top|bottom]" in option_help(text, "--line")
