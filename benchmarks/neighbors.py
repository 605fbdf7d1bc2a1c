"""Neighbour mining speed, recall and memory on synthetic clustered banks (docs/benchmarks.md).

Each (size, backend) runs in its own process so that peak RSS is that backend's alone. The
bank is a float16 ``.npy`` file, memory-mapped, as real banks are: ~100 rows per cluster,
384-d, unit rows, noise so that the nearest neighbour is usually, not always, in the same
cluster.

    .venv/bin/python benchmarks/neighbors.py --sizes 100000 1000000            # full run
    .venv/bin/python benchmarks/neighbors.py --sizes 100000 --backends exact faiss-flat
    python3 benchmarks/neighbors.py --sizes 1000000 3000000 --backends exact --device cuda

Prints a markdown table: seconds, rows/s, recall@1 / recall@K (approximate backends, against
exact search on 1,000 random queries), peak RSS and RSS beyond the bank and the outputs,
our exact time as a ratio to FAISS flat at the same size, and time projected to 3M (CC3M)
and 12M (CC12M) rows (exact: ∝ N²; IVF with nlist ∝ √N: ∝ N^1.5).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROWS_PER_CLUSTER = 100
NOISE = 0.08  # per-dimension std around a unit centre: same-cluster cosine ≈ 0.3 (hard for IVF)


def make_bank(path: Path, num_rows: int, dim: int, seed: int = 0) -> None:
    """Clustered unit rows as an (N, D) float16 .npy file, written in blocks."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(1, num_rows // ROWS_PER_CLUSTER), dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.lib.format.open_memmap(path, "w+", np.float16, (num_rows, dim))
    for start in range(0, num_rows, 65536):
        stop = min(start + 65536, num_rows)
        rows = centres[rng.integers(len(centres), size=stop - start)]
        rows = rows + NOISE * rng.standard_normal((stop - start, dim), dtype=np.float32)
        out[start:stop] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    out.flush()


def run_one(bank: str, backend: str, k: int, device: str, nprobe: int) -> dict:
    """In a child process: mine, measure, print one JSON line."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from clip_ping.neighbors import mine_neighbors

    features = np.load(bank, mmap_mode="r")
    started = time.perf_counter()
    result = mine_neighbors(features, k, backend=backend, device=device, nprobe=nprobe)
    seconds = time.perf_counter() - started  # includes the recall check for IVF
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    outputs = result.neighbors.nbytes + result.similarities.nbytes
    return {
        "rows": len(features), "backend": backend, "seconds": seconds,
        "mining_seconds": result.seconds, "rows_per_second": len(features) / result.seconds,
        "recall": result.recall, "settings": result.settings, "peak_rss_bytes": peak,
        "bank_bytes": features.nbytes, "output_bytes": outputs,
    }  # fmt: skip


def projection(row: dict, target: int) -> float:
    power = 2.0 if row["backend"] in ("exact", "faiss-flat") else 1.5
    return row["mining_seconds"] * (target / row["rows"]) ** power


def table(rows: list[dict], k: int) -> str:
    flat = {r["rows"]: r["mining_seconds"] for r in rows if r["backend"] == "faiss-flat"}
    lines = [
        f"| rows | backend | seconds | rows/s | recall@1 | recall@{k} | peak RSS GiB | "
        "RSS − bank − outputs GiB | exact ÷ flat | projected 3M | projected 12M |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    gib = 2**30
    for r in rows:
        recall = r["recall"] or {}
        ratio = ""
        if r["backend"] == "exact" and r["rows"] in flat:
            ratio = f"{r['mining_seconds'] / flat[r['rows']]:.2f}"
        beyond = (r["peak_rss_bytes"] - r["bank_bytes"] - r["output_bytes"]) / gib
        lines.append(
            f"| {r['rows']:,} | {r['backend']} | {r['mining_seconds']:.1f} | "
            f"{r['rows_per_second']:,.0f} | {recall.get('recall@1', float('nan')):.4f} | "
            f"{recall.get(f'recall@{k}', float('nan')):.4f} | {r['peak_rss_bytes'] / gib:.2f} | "
            f"{beyond:.2f} | {ratio} | {projection(r, 3_000_000) / 60:,.0f} min | "
            f"{projection(r, 12_000_000) / 3600:,.1f} h |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--backends", nargs="+", default=["exact", "faiss-flat", "faiss-ivf"])
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--nprobe", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-exact-rows", type=int, default=300_000,
                        help="skip exact and faiss-flat above this size (N² work)")  # fmt: skip
    parser.add_argument("--out", default=None, help="also write the rows as JSON here")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(args.child[0], args.child[1], args.k, args.device, args.nprobe)))
        return

    print(f"load average {os.getloadavg()}, {os.cpu_count()} CPUs", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            bank = Path(tmp) / f"bank_{size}.npy"
            make_bank(bank, size, args.dim)
            for backend in args.backends:
                if backend in ("exact", "faiss-flat") and size > args.max_exact_rows:
                    continue
                child = [sys.executable, __file__, "--child", str(bank), backend]
                child += ["--k", str(args.k), "--device", args.device, "--nprobe", str(args.nprobe)]
                output = subprocess.run(child, check=True, capture_output=True, text=True).stdout
                rows.append(json.loads(output.strip().splitlines()[-1]))
                print(json.dumps(rows[-1]), flush=True)
            bank.unlink()
    print(f"load average {os.getloadavg()}")
    print(table(rows, args.k))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
