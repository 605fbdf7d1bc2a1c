"""The demo corpus's images: every row and its image conversion (fitted on white, at the
size of its source), converted once, with the edge signature of each and the blank ones found.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..data.transforms import to_rgb
from .clipart import CLIPART_IMAGE_SIZE
from .corpus_splits import Row
from .emoji import EMOJI_IMAGE_SIZE, EMOJI_STYLES
from .groups import SIGNATURE_SIZE, edge_signature

BLANK_STD = 2.0  # pixel std (0-255) below which a converted image is blank and dropped


def fit_on_white(image: Image.Image, size: int) -> Image.Image:
    """RGB ``size``×``size``: scaled to fit, centred, alpha composited on white."""
    if image.size == (size, size):
        return to_rgb(image)
    # Scale first (Pillow resizes RGBA premultiplied, so edges do not darken), then
    # composite: a 1,100 px drawing is composited at 128 px, ~10x faster.
    image = image.convert("RGBA")
    scale = size / max(image.size)
    w, h = (max(1, round(side * scale)) for side in image.size)
    image = image.resize((w, h), Image.Resampling.LANCZOS, reducing_gap=3.0)
    canvas = Image.new("RGB", (size, size), (255, 255, 255))
    canvas.paste(to_rgb(image), ((size - w) // 2, (size - h) // 2))
    return canvas


def convert(source: Path, target: Path, size: int) -> Image.Image:
    """Write ``source`` fitted on white at ``size`` to ``target``; the fitted image."""
    if source.suffix == ".svg":
        import cairosvg  # only OpenMoji and a few huge clip-art renders need a rasteriser

        # The width alone keeps the drawing's aspect ratio; fit_on_white fits the height.
        png = cairosvg.svg2png(url=str(source), output_width=size)
        image = Image.open(io.BytesIO(png))
    else:
        image = Image.open(source)
    target.parent.mkdir(parents=True, exist_ok=True)
    with image:
        fitted = fit_on_white(image, size)
    fitted.save(target, compress_level=1)  # fast; the folder is scratch
    return fitted


def openmoji_image(svg: Path) -> Path:
    return Path("images", "openmoji", f"{svg.stem.lower()}.png")


def corpus_rows(concepts, drawings, folders: dict[str, Path]) -> tuple[list[Row], list[tuple]]:
    """Every training or evaluation row, and its image conversion (source, image, size)."""
    rows, jobs = [], []
    for concept in concepts:
        for style in EMOJI_STYLES:
            images = folders[f"emoji-datasource-{style}"] / "img" / style / str(EMOJI_IMAGE_SIZE)
            for variant in concept.variants:
                image = Path("images", "emoji", style, f"{variant.stem}.png")
                jobs.append((images / f"{variant.stem}.png", image, EMOJI_IMAGE_SIZE))
                rows.append(
                    Row(
                        key=f"emoji/{style}/{variant.stem}",
                        image=image.as_posix(),
                        caption=variant.caption,
                        source=f"emoji-datasource-{style}",
                        kind=style,
                        concept=concept.base,
                        label=concept.label,
                    )
                )
    for drawing in drawings:
        image = Path("images", f"{drawing.key}.png")
        jobs.append((drawing.image, image, CLIPART_IMAGE_SIZE))
        rows.append(
            Row(
                key=drawing.key,
                image=image.as_posix(),
                caption=drawing.caption,
                source="openclipart",
                kind="clipart",
                label=drawing.title,
            )
        )
    return rows, jobs


def convert_images(jobs: list[tuple], num_rows: int, tmp: Path) -> tuple[np.ndarray, list[int]]:
    """Convert every job (source, image, size) into ``tmp``; the edge signatures of the first
    ``num_rows`` (the training and evaluation images, not OpenMoji) and which of them are
    blank (white on white: nothing to see; their files are deleted)."""
    signatures = np.zeros((num_rows, SIGNATURE_SIZE**2), dtype=np.float32)
    blank = []
    for i, (source, image, size) in enumerate(
        tqdm(jobs, desc="demo corpus images", unit="img", mininterval=1)
    ):
        fitted = convert(source, tmp / image, size)
        if i < num_rows:
            signatures[i] = edge_signature(fitted)
            if np.asarray(fitted).std() < BLANK_STD:
                blank.append(i)
                (tmp / image).unlink()
    return signatures, blank
