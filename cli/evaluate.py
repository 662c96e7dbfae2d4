"""``apollo evaluate``: measure generated rolls against real ones (a thin layer over apollo.evaluate)."""

from __future__ import annotations

from pathlib import Path

import click

SPLITS = click.Choice(["val", "test", "train"])


@click.command()
@click.argument("generated", type=click.Path(path_type=Path))
@click.option(
    "--reference", "-r", required=True, type=click.Path(path_type=Path),
    help="A dataset folder (with manifest.json) or a folder of MIDI files.",
)
@click.option("--split", type=SPLITS, default="val", show_default=True,
              help="Split of the reference dataset: val to choose (checkpoints, settings), test only to report.")
@click.option(
    "--generated-split", type=SPLITS, default="train", show_default=True,
    help="Split used when GENERATED is a dataset (the real-vs-real ceiling: --generated-split val --split test).",
)
@click.option("--limit", "-n", type=click.IntRange(min=2), help="Use at most N rolls of each side, drawn at random.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of that draw.")
@click.option(
    "--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Also write the report (JSON) here."
)
def evaluate(
    generated: Path,
    reference: Path,
    split: str,
    generated_split: str,
    limit: int | None,
    seed: int,
    json_path: Path | None,
) -> None:
    """Measure the musical quality of GENERATED against real music.

    GENERATED is a MIDI file, a folder of MIDI files (pieces longer than a chunk are cut into
    chunks) or a dataset. Real music is compared as whole stretches (a dataset's validation and
    test splits are cut so; MIDI files as a reference are cut into every whole window, one per
    bar), never padded. Prints per-sample metrics next to their real values, MGEval overlapped
    areas per feature and their mean, diversity, near-duplicates and, when the reference is a
    dataset, memorization of its training split. See docs/metrics.md.

    \b
    Example:
        apollo evaluate samples/ --reference datasets/bach-chorales --json eval.json
        apollo evaluate samples/ --reference datasets/bach-chorales --split test   # to report
    """
    from apollo.evaluate import evaluate_paths, format_report
    from apollo.io import write_json

    rep = evaluate_paths(
        generated, reference, split=split, generated_split=generated_split, limit=limit, seed=seed
    )
    for side in ("generated", "reference"):
        skipped = rep[side].get("skipped") or []
        if skipped:
            click.echo(f"{side}: skipped {len(skipped)} unreadable file(s), e.g. {skipped[0]['reason']}", err=True)
    click.echo(format_report(rep))
    if json_path is not None:
        write_json(json_path, rep)
        click.echo(f"Wrote {json_path}")
