"""Draw the Comfy Registry icon, docs/images/icon.png (256x256, square as the Registry asks).

The picture is the method in one glance: one noise sample expands into a group of trajectories,
most are pruned early (grey), the survivors (bright) reach the reward. Deterministic; run from the
repository root with ``.venv/bin/python docs/images/make_icon.py`` after changing it.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

SIZE = 256
SCALE = 4  # drawn 4x larger, then downsampled: smooth edges without an antialiasing backend
BACKGROUND = (24, 28, 44)
PRUNED = (92, 100, 128)
SURVIVOR = (255, 176, 59)
ROOT = (120, 200, 255)
OUTPUT = Path(__file__).with_name("icon.png")


def _branch_rows(count: int, top: float, bottom: float) -> list[float]:
    """``count`` evenly spaced heights between ``top`` and ``bottom`` (fractions of the icon)."""
    step = (bottom - top) / (count - 1)
    return [top + index * step for index in range(count)]


def draw_icon(size: int = SIZE) -> Image.Image:
    """The icon as an RGB image of ``size`` x ``size`` pixels."""
    canvas = size * SCALE
    image = Image.new("RGB", (canvas, canvas), BACKGROUND)
    draw = ImageDraw.Draw(image)
    root = (0.16 * canvas, 0.5 * canvas)
    survivors = {1, 4, 6}
    width = round(0.018 * canvas)
    for index, row in enumerate(_branch_rows(8, 0.14, 0.86)):
        survived = index in survivors
        prune_x = 0.88 if survived else 0.52
        end = (prune_x * canvas, row * canvas)
        draw.line([root, end], fill=SURVIVOR if survived else PRUNED, width=width)
        radius = (0.05 if survived else 0.03) * canvas
        draw.ellipse([end[0] - radius, end[1] - radius, end[0] + radius, end[1] + radius],
                     fill=SURVIVOR if survived else PRUNED)
    radius = 0.075 * canvas
    draw.ellipse([root[0] - radius, root[1] - radius, root[0] + radius, root[1] + radius], fill=ROOT)
    return image.resize((size, size), Image.LANCZOS)


if __name__ == "__main__":
    draw_icon().save(OUTPUT, optimize=True)
