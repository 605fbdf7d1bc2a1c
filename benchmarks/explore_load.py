"""The explorer under load: typed-query latency over 10,000 images, and a bounded load test
of the server on loopback.

    .venv/bin/python benchmarks/explore_load.py --out /tmp/explore_load.json

The set is synthetic so that its size is free: ``--images`` random unit image embeddings per
run and one made-up caption per image (``"a red circle number 17"``); each run is a fresh
``--model`` student (untrained: the cost of a forward does not depend on the weights). What is
timed is what the page asks for:

1. **typed query** (``Explorer.search`` of a text not in the set, top 8): per run one
   text-tower forward (tokenizer included), one ``(N, D) @ (D,)`` product and a top-k;
   ``--repeats`` of them after warm-up, p50 and p99 in ms;
2. **load**: the server on 127.0.0.1 (a free port), ``--clients`` threads each sending
   ``--queries`` HTTP requests over one keep-alive connection, every one a new typed query;
   client-side latency p50 / p99, requests per second, and how many were not answered 200.

Threads: torch's default (one per core) unless ``--threads``. The machine's load average and the other Python
processes running are recorded beside the numbers, since they share the cores.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import statistics
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import numpy as np
import torch

from clip_ping.evaluation.datasets import EvalDataset, ImageArrays
from clip_ping.explore.embeddings import RunEmbeddings
from clip_ping.explore.explorer import Explorer
from clip_ping.explore.server import start_server
from clip_ping.models import create_model

COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
SHAPES = ("circle", "square", "star", "triangle", "cross")


def synthetic_explorer(images: int, runs: int, model_name: str, seed: int = 0) -> Explorer:
    generator = torch.Generator().manual_seed(seed)
    captions = [f"a {COLOURS[i % 6]} {SHAPES[i // 6 % 5]} number {i}" for i in range(images)]
    data = EvalDataset(
        name="synthetic",
        images=ImageArrays(np.zeros((images, 8, 8), np.uint8), preprocess=lambda x: x),
        captions=captions,
        caption_image=list(range(images)),
    )
    loaded = []
    for r in range(runs):
        model, tokenizer = create_model(model_name)
        model.eval()
        dim = model.encode_text(tokenizer(["x"])).shape[1]
        embed = torch.nn.functional.normalize(torch.randn(images, dim, generator=generator), dim=1)
        texts = torch.nn.functional.normalize(embed + 0.5 * torch.randn_like(embed), dim=1)
        loaded.append(RunEmbeddings(f"run{r}", "synthetic", model, tokenizer, embed, texts, None))
    return Explorer(loaded, data)


def percentiles(ms: list[float]) -> dict[str, float]:
    ordered = sorted(ms)
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
    return {"p50_ms": round(statistics.median(ordered), 2), "p99_ms": round(p99, 2)}


def time_typed(explorer: Explorer, repeats: int) -> dict:
    for i in range(5):
        explorer.search(f"warm up query {i}", 8)
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        explorer.search(f"a blue star with a hat {i}", 8)
        times.append((time.perf_counter() - start) * 1000)
    return percentiles(times)


def load_test(explorer: Explorer, clients: int, queries: int) -> dict:
    server = start_server(explorer, "127.0.0.1", 0)
    host, port = server.server_address[:2]

    def client(worker: int) -> tuple[list[float], int]:
        conn = http.client.HTTPConnection(host, port, timeout=60)
        times, failed = [], 0
        for i in range(queries):
            path = "/api/search?k=8&q=" + quote(f"a query from client {worker} number {i}")
            start = time.perf_counter()
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            times.append((time.perf_counter() - start) * 1000)
            failed += response.status != 200
        conn.close()
        return times, failed

    try:
        start = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            results = list(pool.map(client, range(clients)))
        wall = time.perf_counter() - start
    finally:
        server.shutdown()
        server.server_close()
    times = [t for batch, _ in results for t in batch]
    return {
        "requests": len(times),
        "not_200": sum(f for _, f in results),
        "requests_per_s": round(len(times) / wall, 1),
        **percentiles(times),
    }


def others() -> list[str]:
    """The other Python processes running now (their command lines, cut)."""
    out = subprocess.run(["ps", "-eo", "pid,pcpu,args"], capture_output=True, text=True).stdout
    me = str(os.getpid())
    return [
        " ".join(line.split()[:2] + [" ".join(line.split()[2:])[:120]])
        for line in out.splitlines()[1:]
        if "python" in line and line.split()[0] != me and "ps -eo" not in line
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--model", default="cpu-mini-32")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: cores)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    explorer = synthetic_explorer(args.images, args.runs, args.model)
    record = {
        "settings": vars(args),
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
        "other_python_processes": others(),
        "typed_query": time_typed(explorer, args.repeats),
        "typed_query_one_run": time_typed(Explorer(explorer.runs[:1], explorer.data), args.repeats),
        "load": load_test(explorer, args.clients, args.queries),
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    text = json.dumps(record, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as file:
            file.write(text + "\n")


if __name__ == "__main__":
    main()
