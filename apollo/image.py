"""Piano rolls as PNG pictures: pitch upwards, time to the right, bars marked."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from apollo.io import atomic_path
from apollo.roll import HELD, ONSET, PianoRoll

__all__ = ["roll_image", "save_png"]

BACKGROUND, BAR_LINE, C_ROW = (250, 250, 247), (215, 215, 210), (238, 238, 232)
HELD_COLOUR, ONSET_COLOUR, SEPARATOR = (90, 120, 200), (20, 40, 110), (120, 120, 120)


def roll_image(roll: PianoRoll, scale: int = 2) -> np.ndarray:
    """An RGB array [height, width, 3] of one roll, each cell ``scale`` pixels square."""
    cells = roll.cells[::-1]  # highest pitch on top
    image = np.empty((*cells.shape, 3), dtype=np.uint8)
    image[:] = BACKGROUND
    c_rows = [i for i in range(roll.n_pitches) if (roll.grid.highest_pitch - i) % 12 == 0]
    image[c_rows] = C_ROW
    image[:, :: 4 * roll.grid.steps_per_beat] = BAR_LINE
    image[cells == HELD] = HELD_COLOUR
    image[cells == ONSET] = ONSET_COLOUR
    return image.repeat(scale, axis=0).repeat(scale, axis=1)


def save_png(rolls: PianoRoll | Sequence[PianoRoll], path: str | Path, scale: int = 2) -> Path:
    """Save one roll, or several stacked top to bottom, as a PNG (written atomically)."""
    from PIL import Image

    rolls = [rolls] if isinstance(rolls, PianoRoll) else list(rolls)
    if not rolls:
        raise ValueError("save_png needs at least one roll")
    width = max(r.n_steps for r in rolls) * scale
    parts = []
    for roll in rolls:
        part = roll_image(roll, scale)
        part = np.pad(part, ((0, 0), (0, width - part.shape[1]), (0, 0)), constant_values=255)
        parts += [part, np.full((scale, width, 3), SEPARATOR, dtype=np.uint8)]
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(np.concatenate(parts[:-1])).save(tmp, format="PNG")
    return path
