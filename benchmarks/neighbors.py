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

# "teacher-like": the shape of a real teacher bank (the demo's MiniLM caption bank has
# random-pair cosine 0.17 ± 0.14, nearest-neighbour cosine ~0.8 and a participation ratio of
# ~55 of 384 dimensions): a shared direction, topics and sub-topics in a 64-d subspace, and a
# little full-rank noise. Squared norms of the parts, before normalising:
TEACHER_LATENT_DIM = 64
TEACHER_PARTS = {"shared": 0.17, "topic": 0.35, "subtopic": 0.25, "row": 0.15, "noise": 0.08}
TEACHER_ROWS_PER_TOPIC, TEACHER_ROWS_PER_SUBTOPIC = 1000, 20
BANK_KINDS = ("isotropic", "teacher-like")


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def make_bank(path: Path, num_rows: int, dim: int, seed: int = 0, kind: str = "isotropic") -> None:
    """Clustered unit rows as an (N, D) float16 .npy file, written in blocks.

    ``isotropic``: ~N/100 random unit centres with full-rank noise (same-cluster cosine ≈ 0.3,
    other pairs ≈ 0): a hard case for IVF, whose lists cannot follow 10,000 equally distant
    clusters with a few thousand centroids. ``teacher-like``: see ``TEACHER_PARTS``."""
    rng = np.random.default_rng(seed)
    out = np.lib.format.open_memmap(path, "w+", np.float16, (num_rows, dim))
    if kind == "isotropic":
        centres = _unit(rng.normal(size=(max(1, num_rows // ROWS_PER_CLUSTER), dim)))
    else:
        latent = TEACHER_LATENT_DIM
        basis = np.linalg.qr(rng.normal(size=(dim, latent)))[0].T  # (latent, D) orthonormal
        shared = _unit(rng.normal(size=dim))
        topics = _unit(rng.normal(size=(max(1, num_rows // TEACHER_ROWS_PER_TOPIC), latent)))
        num_sub = max(1, num_rows // TEACHER_ROWS_PER_SUBTOPIC)
        sub_topic = rng.integers(len(topics), size=num_sub)
        sub_offsets = _unit(rng.normal(size=(num_sub, latent)))
        w = {name: np.sqrt(share) for name, share in TEACHER_PARTS.items()}
    for start in range(0, num_rows, 65536):
        n = min(start + 65536, num_rows) - start
        if kind == "isotropic":
            rows = centres[rng.integers(len(centres), size=n)]
            rows = rows + NOISE * rng.standard_normal((n, dim), dtype=np.float32)
        else:
            sub = rng.integers(num_sub, size=n)
            z = w["topic"] * topics[sub_topic[sub]] + w["subtopic"] * sub_offsets[sub]
            z += w["row"] * _unit(rng.normal(size=(n, latent)))
            rows = w["shared"] * shared + z @ basis
            rows += w["noise"] * _unit(rng.normal(size=(n, dim)))
        out[start : start + n] = _unit(rows)
    out.flush()


def bank_stats(path: Path, queries: int = 1000, seed: int = 1) -> dict:
    """What a bank looks like: random-pair cosine, nearest-neighbour cosine (on ``queries``
    random rows) and the participation ratio of its covariance (effective dimensions)."""
    features = np.load(path, mmap_mode="r")
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(features), min(queries, len(features)), replace=False))
    sample = np.asarray(features[rows], dtype=np.float32)
    best = np.full(len(rows), -np.inf, dtype=np.float32)
    for start in range(0, len(features), 65536):
        block = np.asarray(features[start : start + 65536], dtype=np.float32)
        sims = sample @ block.T
        own = (rows >= start) & (rows < start + len(block))
        sims[np.flatnonzero(own), rows[own] - start] = -np.inf
        best = np.maximum(best, sims.max(axis=1))
    pairs = (sample @ sample.T)[np.triu_indices(len(rows), 1)]
    eig = np.linalg.eigvalsh(np.cov(sample.T))
    return {
        "random_pair_cosine": [float(pairs.mean()), float(pairs.std())],
        "nearest_cosine_median": float(np.median(best)),
        "participation_ratio": float(eig.sum() ** 2 / (eig**2).sum()),
    }


def run_one(bank: str, backend: str, k: int, device: str, nprobe: int, nlist: int | None) -> dict:
    """In a child process: mine, measure, print one JSON line."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from clip_ping.bank import mine_neighbors

    features = np.load(bank, mmap_mode="r")
    started = time.perf_counter()
    result = mine_neighbors(features, k, backend=backend, device=device, nprobe=nprobe, nlist=nlist)
    seconds = time.perf_counter() - started  # includes the recall check for IVF
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    outputs = result.neighbors.nbytes + result.similarities.nbytes
    return {
        "rows": len(features),
        "backend": backend,
        "seconds": seconds,
        "mining_seconds": result.seconds,
        "rows_per_second": len(features) / result.seconds,
        "recall": result.recall,
        "settings": result.settings,
        "peak_rss_bytes": peak,
        "bank_bytes": features.nbytes,
        "output_bytes": outputs,
    }


def projection(row: dict, target: int) -> float:
    power = 2.0 if row["backend"] in ("exact", "faiss-flat") else 1.5
    return row["mining_seconds"] * (target / row["rows"]) ** power


def backend_label(row: dict) -> str:
    settings = row.get("settings") or {}
    if "nlist" not in settings:
        return row["backend"]
    return f"{row['backend']}, nlist {settings['nlist']:,}, nprobe {settings['nprobe']}"


def table(rows: list[dict], k: int) -> str:
    flat = {r["rows"]: r["mining_seconds"] for r in rows if r["backend"] == "faiss-flat"}
    lines = [
        f"| bank | rows | backend | seconds | rows/s | recall@1 | recall@{k} | peak RSS GiB | "
        "RSS − bank − outputs GiB | exact ÷ flat | projected 3M | projected 12M |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    gib = 2**30
    for r in rows:
        recall = r["recall"] or {}
        ratio = ""
        if r["backend"] == "exact" and r["rows"] in flat:
            ratio = f"{r['mining_seconds'] / flat[r['rows']]:.2f}"
        beyond = (r["peak_rss_bytes"] - r["bank_bytes"] - r["output_bytes"]) / gib
        lines.append(
            f"| {r.get('bank', 'isotropic')} | {r['rows']:,} | {backend_label(r)} | "
            f"{r['mining_seconds']:.1f} | "
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
    parser.add_argument("--nlist", type=int, default=None, help="faiss-ivf lists (default 4·√N)")
    parser.add_argument("--bank", choices=BANK_KINDS, default="isotropic", help="synthetic bank")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--max-exact-rows",
        type=int,
        default=300_000,
        help="skip exact and faiss-flat above this size (N² work)",
    )
    parser.add_argument("--out", default=None, help="also write the rows as JSON here")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        row = run_one(args.child[0], args.child[1], args.k, args.device, args.nprobe, args.nlist)
        print(json.dumps(row))
        return

    print(f"load average {os.getloadavg()}, {os.cpu_count()} CPUs", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            bank = Path(tmp) / f"bank_{size}.npy"
            make_bank(bank, size, args.dim, kind=args.bank)
            stats = bank_stats(bank)
            print(json.dumps({"bank": args.bank, "rows": size, **stats}), flush=True)
            for backend in args.backends:
                if backend in ("exact", "faiss-flat") and size > args.max_exact_rows:
                    continue
                child = [sys.executable, __file__, "--child", str(bank), backend]
                child += ["--k", str(args.k), "--device", args.device, "--nprobe", str(args.nprobe)]
                child += ["--nlist", str(args.nlist)] if args.nlist else []
                output = subprocess.run(child, check=True, capture_output=True, text=True).stdout
                rows.append({"bank": args.bank, **json.loads(output.strip().splitlines()[-1])})
                print(json.dumps(rows[-1]), flush=True)
            bank.unlink()
    print(f"load average {os.getloadavg()}")
    print(table(rows, args.k))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
