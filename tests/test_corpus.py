"""Built-in corpora: listing, export with limits, the conversion cache, and the command line."""

from __future__ import annotations

import pytest
from apollo.cli.main import cli
from click.testing import CliRunner

from apollo.corpus import CONVERSION, CORPORA, _to_midi_bytes, cache_dir, export
from apollo.errors import ApolloError
from apollo.midi import read_notes


def test_chorale_listing_leaves_out_analyses_and_duplicate_encodings():
    names = [piece.name for piece in CORPORA["bach-chorales"].pieces()]
    assert 380 <= len(names) <= 420
    assert len(set(names)) == len(names)  # bwv277.mxl and bwv277.krn give one chorale
    assert not any("riemenschneider" in name for name in names)
    assert not any(piece.source.endswith(".rntxt") for piece in CORPORA["bach-chorales"].pieces())


def test_folk_listing_has_one_piece_per_tune():
    pieces = CORPORA["folk"].pieces()
    names = [piece.name for piece in pieces]
    assert len(names) > 2500  # 1,059 files of Ryan's plus about 2,000 tunes in O'Neill's 39 files
    assert len(set(names)) == len(names)
    oneills = [p for p in pieces if p.name.startswith("oneills1850/")]
    assert len({p.source for p in oneills}) < len(oneills) / 10  # many tunes per file


def test_palestrina_exports_polyphonic_movements(monkeypatch, tmp_path):
    pieces = CORPORA["palestrina"].pieces()
    assert len(pieces) > 1200 and all(p.source.endswith(".krn") for p in pieces)
    assert len({p.name for p in pieces}) == len(pieces)
    monkeypatch.setenv("APOLLO_CACHE", str(tmp_path / "cache"))
    summary = export("palestrina", tmp_path / "out", limit=1, workers=1)
    assert summary.written == 1
    notes = read_notes(next((tmp_path / "out").rglob("*.mid")))
    starts = notes.start.tolist()
    assert len(starts) - len(set(starts)) > 20  # voices that start notes together


def test_export_writes_readable_midi_and_second_export_comes_from_cache(chorale_dir, tmp_path):
    files = sorted(chorale_dir.glob("*.mid"))
    assert len(files) == 24
    notes = read_notes(files[0])
    assert len(notes.pitch) > 50  # a four-part chorale
    summary = export("bach-chorales", tmp_path / "again", limit=24)
    assert (summary.written, summary.converted) == (24, 0)
    assert summary.seconds < 5
    assert sorted(p.name for p in (tmp_path / "again").glob("*.mid")) == [p.name for p in files]


def test_cache_location_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("APOLLO_CACHE", str(tmp_path / "ac"))
    assert cache_dir("folk") == tmp_path / "ac" / "corpora" / "folk"
    monkeypatch.delenv("APOLLO_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir("folk") == tmp_path / "xdg" / "apollo" / "corpora" / "folk"


def test_folk_export_converts_only_the_limit_into_a_fresh_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("APOLLO_CACHE", str(tmp_path / "cache"))
    summary = export("folk", tmp_path / "out", limit=2, workers=1)
    assert summary.written == 2 and summary.converted == 2
    cached = list((tmp_path / "cache" / "corpora" / "folk" / CONVERSION).rglob("*.mid"))
    assert len(cached) == 2  # nothing beyond the limit was converted
    for path in (tmp_path / "out").rglob("*.mid"):
        assert len(read_notes(path).pitch) > 20


def test_grace_notes_leave_no_note_held_for_bars():
    """O'Neill's 1051 has grace notes ({a}, {d}); written as MIDI with them, its A5 sounded for 62 bars."""
    piece = next(p for p in CORPORA["folk"].pieces() if p.name == "oneills1850/1031-1115-x1051")
    notes = read_notes(_to_midi_bytes(piece), name=piece.name)
    assert len(notes.pitch) > 300
    assert (notes.end - notes.start).max() <= 8  # its longest notes are quarters (4 steps)


def test_unknown_corpus_is_an_apollo_error(tmp_path):
    with pytest.raises(ApolloError, match="unknown corpus 'nope'"):
        export("nope", tmp_path)


def test_cli_list_and_export(chorale_dir, tmp_path):
    runner = CliRunner()
    listing = runner.invoke(cli, ["corpus", "list"])
    assert listing.exit_code == 0
    assert "bach-chorales" in listing.output and "folk" in listing.output
    result = runner.invoke(cli, ["corpus", "export", "bach-chorales", str(tmp_path / "c"), "--limit", "3"])
    assert result.exit_code == 0, result.output
    assert "3 MIDI files written" in result.output
    assert len(list((tmp_path / "c").glob("*.mid"))) == 3
    bad = runner.invoke(cli, ["corpus", "export", "mozart", str(tmp_path / "m")])
    assert bad.exit_code == 2 and "mozart" in bad.output
