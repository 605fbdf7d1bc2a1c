"""``clip-ping bank show``: a contact sheet of neighbours, to see at a glance whether the
teachers' neighbours make sense.

One row per anchor: the anchor image and caption, then its image neighbours (from the image
bank: they should *look* alike), then its caption neighbours (from the text bank: their
captions should *mean* alike), each with its teacher similarity.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from ..bank import Bank, SampleReader
from ..data.loader import DataSpec
from ..io import atomic_write
from .figures import pyplot

CAPTION_WIDTH = 22  # characters per caption line under a thumbnail
CELL_INCHES = 1.6


def _load(spec: DataSpec, indices: set[int]) -> dict[int, tuple]:
    """``index → (RGB image, caption)`` for the given samples."""
    reader, samples = SampleReader(spec), {}
    for index in sorted(indices):
        samples.update(reader.read(index, index + 1, "both"))
    return samples


def contact_sheet(
    image_bank: str | Path,
    text_bank: str | Path,
    spec: DataSpec,
    out: str | Path,
    num_anchors: int = 8,
    num_neighbors: int = 4,
    seed: int = 0,
) -> Path:
    """Draw ``num_anchors`` random anchors with ``num_neighbors`` image and caption
    neighbours each into the PNG ``out``. Both banks need neighbour tables."""
    plt = pyplot()
    banks = {"image": Bank(image_bank), "text": Bank(text_bank)}
    tables = {}
    for modality, bank in banks.items():
        if bank.modality != modality:
            raise ValueError(
                f"--{modality}-bank {bank.path} is a {bank.modality} bank; pass a {modality} bank"
            )
        bank.check_dataset(spec)
        tables[modality] = bank.neighbors()
        num_neighbors = min(num_neighbors, tables[modality][0].shape[1])
    num_rows = banks["image"].num_rows
    rng = np.random.default_rng(seed)
    anchors = np.sort(rng.choice(num_rows, min(num_anchors, num_rows), replace=False))
    wanted = set(anchors.tolist())
    for neighbors, _ in tables.values():
        wanted.update(np.asarray(neighbors[anchors, :num_neighbors]).ravel().tolist())
    samples = _load(spec, wanted)

    columns = 1 + 2 * num_neighbors
    fig, axes = plt.subplots(
        len(anchors),
        columns,
        figsize=(columns * CELL_INCHES, len(anchors) * CELL_INCHES * 1.45),
        squeeze=False,
    )
    for row, anchor in enumerate(anchors.tolist()):
        cells = [(anchor, f"#{anchor} anchor", "black")]
        for modality, kind, colour in (
            ("image", "image", "tab:blue"),
            ("text", "caption", "tab:green"),
        ):
            neighbors, similarities = tables[modality]
            for j in range(num_neighbors):
                index = int(neighbors[anchor, j])
                label = f"{kind} nn {j + 1}: {float(similarities[anchor, j]):.3f}"
                cells.append((index, label, colour))
        for ax, (index, label, colour) in zip(axes[row], cells, strict=True):
            image, caption = samples[index]
            ax.imshow(image)
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(2)
            ax.set_title(label, fontsize=7, color=colour)
            wrapped = "\n".join(textwrap.wrap(caption, CAPTION_WIDTH)[:3])
            ax.set_xlabel(wrapped, fontsize=6)
    fig.suptitle(
        f"anchors | image neighbours ({banks['image'].teacher}, blue) | caption neighbours "
        f"({banks['text'].teacher}, green)",
        fontsize=9,
    )
    fig.tight_layout()
    out = Path(out)
    atomic_write(out, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
    return out
