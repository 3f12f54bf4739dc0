"""Saving image batches for people to look at (grids with optional captions)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, ImageDraw


def to_pil(image: torch.Tensor) -> Image.Image:
    """[3, H, W] float in [0, 1] -> RGB PIL image."""
    array = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array, mode="RGB")


def image_grid(images: torch.Tensor, columns: int | None = None, captions: Sequence[str] | None = None,
               scale: int = 1) -> Image.Image:
    """Tile images [B, 3, H, W] in [0, 1] into one PIL image, ``columns`` wide, captions below each."""
    count, _, height, width = images.shape
    columns = columns or math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    caption_height = 12 if captions else 0
    cell_w, cell_h = width * scale, height * scale + caption_height
    grid = Image.new("RGB", (columns * cell_w, rows * cell_h), "white")
    draw = ImageDraw.Draw(grid)
    for index in range(count):
        x, y = (index % columns) * cell_w, (index // columns) * cell_h
        tile = to_pil(images[index])
        if scale != 1:
            tile = tile.resize((cell_w, height * scale), Image.NEAREST)
        grid.paste(tile, (x, y))
        if captions:
            draw.text((x + 1, y + height * scale), captions[index][: max(1, cell_w // 6)], fill="black")
    return grid


def titled_grid(images: torch.Tensor, title: str, captions: Sequence[str] | None = None, columns: int | None = None,
                min_cell: int = 64) -> Image.Image:
    """``image_grid`` under a title strip; small images are enlarged (nearest) to at least ``min_cell`` px.

    images [B, 3, H, W] in [0, 1]; ``captions`` (one per image) go under each tile.
    """
    scale = max(1, math.ceil(min_cell / min(images.shape[2], images.shape[3])))
    body = image_grid(images, columns=columns, captions=captions, scale=scale)
    strip = 14
    out = Image.new("RGB", (body.width, body.height + strip), "white")
    out.paste(body, (0, strip))
    ImageDraw.Draw(out).text((2, 1), title[: max(1, body.width // 6)], fill="black")
    return out


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float32 [3, H, W] in [0, 1]."""
    import numpy as np

    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def save_grid(images: torch.Tensor, path: str | Path, columns: int | None = None,
              captions: Sequence[str] | None = None, scale: int = 1) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid(images, columns, captions, scale).save(path)
    return path


def text_table(lines: Sequence[str], header: Sequence[str], rows: Sequence[Sequence[str]], padding: int = 6) -> Image.Image:
    """A white table image: caption ``lines`` on top, then ``header`` and ``rows`` in ruled, left-aligned columns."""
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    cells = [list(header), *[list(row) for row in rows]]
    widths = [max(int(draw.textlength(str(row[column]))) for row in cells) + 2 * padding
              for column in range(len(header))]
    line_height = 14
    caption_height = line_height * len(lines) + (padding if lines else 0)
    width = max(sum(widths), *(int(draw.textlength(line)) + 2 * padding for line in lines), 1)
    out = Image.new("RGB", (width, caption_height + line_height * len(cells) + 1), "white")
    draw = ImageDraw.Draw(out)
    for index, line in enumerate(lines):
        draw.text((padding, index * line_height + 1), line, fill="black")
    for index, row in enumerate(cells):
        y = caption_height + index * line_height
        if index == 0:
            draw.rectangle((0, y, sum(widths) - 1, y + line_height - 1), fill=(225, 225, 225))
        x = 0
        for column, cell in enumerate(row):
            draw.text((x + padding, y + 1), str(cell), fill="black")
            x += widths[column]
        draw.line((0, y + line_height, sum(widths) - 1, y + line_height), fill=(180, 180, 180))
    return out


def stack_vertically(images: Sequence[Image.Image], gap: int = 10) -> Image.Image:
    """PIL images one under the other on white, left-aligned, ``gap`` pixels apart."""
    width = max(image.width for image in images)
    out = Image.new("RGB", (width, sum(image.height for image in images) + gap * (len(images) - 1)), "white")
    y = 0
    for image in images:
        out.paste(image, (0, y))
        y += image.height + gap
    return out
