"""Samples/s one CPU core turns into 224 px training tensors: JPEG bytes → decode → crop.

    .venv/bin/python benchmarks/decode_rate.py

The per-core rate of the data path of ``clip-ping train`` on WebDataset shards
(``ShardDataset._decode``: PIL decode, ``TrainTransform`` random resized crop to 224 px,
normalise) and of bank extraction (decode, ``EvalTransform``), for the two real photos
scikit-learn ships (``china.jpg``, ``flower.jpg``, 427 × 640), re-encoded at quality 95 with
the shorter side resized to 256 and 384 px (img2dataset's usual ``--image_size``). Run in one
process with ``torch.set_num_threads(1)``, as a DataLoader worker is. docs/scaling.md divides
GPU step rates by it to size ``--workers``.
"""

from __future__ import annotations

import io
import statistics
import time

import numpy as np
import torch
from PIL import Image
from sklearn.datasets import load_sample_images

from clip_ping.data.datasets import sample_rng
from clip_ping.data.transforms import EvalTransform, TrainTransform

ROUNDS, PER_ROUND = 5, 100


def jpeg_bytes(short_side: int) -> list[bytes]:
    out = []
    for array in load_sample_images().images:
        image = Image.fromarray(array)
        scale = short_side / min(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=95)
        out.append(buffer.getvalue())
    return out


def rate(payloads: list[bytes], transform, train: bool) -> float:
    """Median samples/s over ``ROUNDS`` rounds of ``PER_ROUND`` samples."""
    rates = []
    for r in range(ROUNDS):
        started = time.perf_counter()
        for i in range(PER_ROUND):
            with Image.open(io.BytesIO(payloads[i % len(payloads)])) as image:
                image.load()
                rgb = image.convert("RGB")
            transform(rgb, sample_rng(0, r, i) if train else None)
        rates.append(PER_ROUND / (time.perf_counter() - started))
    return statistics.median(rates)


def main() -> None:
    torch.set_num_threads(1)
    print(
        "| JPEG shorter side | bytes (mean) | train: decode + random crop 224 | bank: decode + resize/centre crop 224 |"
    )
    print("|---:|---:|---:|---:|")
    for side in (256, 384):
        payloads = jpeg_bytes(side)
        train = rate(payloads, TrainTransform(224), True)
        bank = rate(payloads, EvalTransform(224), False)
        mean_bytes = np.mean([len(p) for p in payloads])
        print(f"| {side} | {mean_bytes:,.0f} | {train:.0f} | {bank:.0f} |")


if __name__ == "__main__":
    main()
