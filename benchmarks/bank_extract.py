"""Bank extraction speed against the teacher's bare forward (docs/benchmarks.md).

"Bare": ``teacher.encode`` on one already-preprocessed batch, repeated. "Extraction": the
bank builder's loop (reading images from disk, decoding, resizing, collating in DataLoader
workers, the forward, float16 rows into chunks) over a shapes corpus, for each worker count.
The target is extraction ≥ 80% of bare: the data path must not be the bottleneck.

    .venv/bin/python benchmarks/bank_extract.py                       # ~2-4 min on 2 cores
    .venv/bin/python benchmarks/bank_extract.py --image-size 224 --rows 512
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from clip_ping.bank.build import _ChunkStream, _extract, _Reader  # noqa: E402
from clip_ping.data.datasets import CsvDataset  # noqa: E402
from clip_ping.data.loader import DataSpec  # noqa: E402
from clip_ping.data.shapes import build_shapes  # noqa: E402
from clip_ping.teachers import create_teacher  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modality", default="image", choices=("image", "text"))
    parser.add_argument("--image-size", type=int, default=128, help="teacher input size")
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()

    print(f"load average {os.getloadavg()}, {os.cpu_count()} CPUs", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        build_shapes(tmp, num_train=args.rows, num_val=8, image_size=64, seed=0)
        spec = DataSpec(str(Path(tmp) / "train.csv"))
        image_size = args.image_size if args.modality == "image" else None
        teacher = create_teacher(None, args.modality, image_size)
        dataset = CsvDataset(spec.train_data)
        items = [
            dataset[i]["image"] if args.modality == "image" else dataset.captions[i]
            for i in range(args.batch_size)
        ]
        batch = teacher.collate([teacher.preprocess(x) for x in items])
        teacher.encode(batch)  # warm-up
        repeats = max(1, args.rows // args.batch_size)
        started = time.perf_counter()
        for _ in range(repeats):
            teacher.encode(batch)
        bare = repeats * args.batch_size / (time.perf_counter() - started)

        results = []
        for workers in args.workers:
            chunk_rows = 256
            chunks = list(range(-(-args.rows // chunk_rows)))
            stream = _ChunkStream(
                _Reader(spec, args.modality, teacher),
                chunks,
                chunk_rows,
                args.rows,
                args.batch_size,
                teacher.preprocess,
                teacher.collate,
            )
            started = time.perf_counter()
            rows = sum(len(features) for _, features in _extract(teacher, stream, workers, None))
            results.append((workers, rows / (time.perf_counter() - started)))

    print(f"load average {os.getloadavg()}")
    size = f"{args.image_size} px" if args.modality == "image" else "captions"
    print(f"\n{teacher.name}, {size}, batch {args.batch_size}, {args.rows} rows\n")
    print("| path | workers | rows/s | % of bare |\n|---|---:|---:|---:|")
    print(f"| bare forward (`teacher.encode`) | – | {bare:,.0f} | 100% |")
    for workers, rate in results:
        print(f"| extraction loop | {workers} | {rate:,.0f} | {100 * rate / bare:.0f}% |")


if __name__ == "__main__":
    main()
