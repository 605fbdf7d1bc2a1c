"""The explorer's server over plain HTTP: what it serves, what it refuses, and that bad
requests and load never stop it; the embeddings cache; the command's one-line errors."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.error import HTTPError
from urllib.parse import quote
from urllib.request import urlopen

import pytest

from clip_ping.cli import main
from clip_ping.explore import SetSpec, open_explorer, start_server


def get(url: str) -> tuple[int, bytes]:
    try:
        with urlopen(url, timeout=30) as response:
            return response.status, response.read()
    except HTTPError as error:
        return error.code, error.read()


def raw(server, request: bytes) -> bytes:
    """Send ``request`` bytes as they are; the server's answer (its first 4 KiB)."""
    host, port = server.server_address[:2]
    with socket.create_connection((host, port), timeout=30) as conn:
        conn.sendall(request)
        return conn.recv(4096)


def status_line(answer: bytes) -> bytes:
    return answer.split(b"\r\n", 1)[0]


def test_it_listens_on_loopback_and_serves_the_page(server):
    assert server.server_address[0] == "127.0.0.1"
    status, page = get(server.url)
    assert status == 200 and b'<script src="app.js">' in page
    meta = json.loads(get(server.url + "api/meta")[1])
    assert [run["name"] for run in meta["runs"]] == ["sharp", "blurry"]


def test_only_the_sets_own_images_are_served(server, explore_runs):
    from clip_ping.evaluation.datasets import load_eval_dataset

    data = load_eval_dataset(explore_runs["dataset"], lambda x: x)
    status, body = get(server.url + "image/3")
    assert status == 200 and body == Path(data.images.paths[3]).read_bytes()
    secret = explore_runs["dataset"].parent / "train.csv"
    for path in (
        f"image/{len(data)}",
        "image/-1",
        "image/1.5",
        "image/../train.csv",
        "image/%2e%2e/train.csv",
        "image/..%2f..%2fetc%2fpasswd",
        "image/" + quote(str(secret), safe=""),
        "image" + str(secret),
        "train/0",  # no banks: no training images either
        "../train.csv",
        "%2e%2e/%2e%2e/etc/passwd",
        "web/app.js",
        "explorer.py",
    ):
        status, body = get(server.url + path)
        assert status == 404, path
        assert b"label" not in body and b"root:" not in body
    answer = raw(server, b"GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_line(answer).endswith(b"404 Not Found")


def test_a_symlink_out_of_the_set_is_refused(explore_runs, tmp_path):
    source = explore_runs["dataset"]
    folder = tmp_path / "set"
    (folder / "images").mkdir(parents=True)
    lines = source.read_text().splitlines()[:9]
    outside = tmp_path / "outside.png"
    for line in lines[1:]:
        name = line.split(",", 1)[0]
        shutil.copyfile(source.parent / name, folder / name)
    first = lines[1].split(",", 1)[0]
    shutil.move(folder / first, outside)
    os.symlink(outside, folder / first)
    (folder / "val.csv").write_text("\n".join(lines) + "\n")
    explorer = open_explorer(explore_runs["runs"][:1], SetSpec(str(folder / "val.csv")))
    server = start_server(explorer)
    try:
        assert get(server.url + "image/0")[0] == 404  # the symlink leads out of the set
        assert get(server.url + "image/1")[0] == 200
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    "path, reason",
    [
        ("api/search?q=" + "a" * 301, "at most 300 characters"),
        ("api/search?q=red&k=0", "k must be an integer from 1 to 50"),
        ("api/search?q=red&k=51", "k must be an integer"),
        ("api/search?q=red&k=1e9", "k must be an integer"),
        ("api/search?k=3", "missing parameter q"),
        ("api/search?q=%20", "non-empty"),
        ("api/image?i=999999", "image must be an integer from 0 to 63"),
        ("api/image?i=abc", "image must be"),
        ("api/disagreements?limit=100000", "limit must be"),
        ("api/nothing", "no such API"),
        ("api/search?" + "&".join(f"x{i}=1" for i in range(20)), "malformed query string"),
    ],
)
def test_bad_requests_get_400_with_the_reason(server, path, reason):
    status, body = get(server.url + path)
    assert status == 400
    assert reason in json.loads(body)["error"]


def test_malformed_requests_never_stop_the_server(server):
    # A request line that cannot be parsed is answered in HTTP/0.9 style: a page, no status.
    assert b"Error code: 400" in raw(server, b"GARBAGE AND MORE\r\n\r\n")
    assert b"Error code: 400" in raw(server, b"\xff\xfe\x00\r\n\r\n")
    assert b"Error code: 505" in raw(server, b"GET / HTTP/9.1\r\n\r\n")
    post = raw(server, b"POST /api/meta HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_line(post).split(b" ")[1] == b"501"
    long = raw(server, b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n")
    assert status_line(long).split(b" ")[1] == b"414"
    host, port = server.server_address[:2]
    with socket.create_connection((host, port)) as conn:  # a client that leaves mid-request
        conn.sendall(b"GET /api/meta HTTP/1.1\r\n")
    assert get(server.url + "api/search?q=a%20red%20circle")[0] == 200


def test_a_small_load_is_answered_in_full(server, explorer):
    captions = sorted(set(explorer.data.captions))[:10] + ["a blue square", "green"]

    def client(worker: int) -> list[int]:
        return [
            get(server.url + "api/search?q=" + quote(captions[(worker + i) % len(captions)]))[0]
            for i in range(25)
        ]

    with ThreadPoolExecutor(8) as pool:
        statuses = [s for batch in pool.map(client, range(8)) for s in batch]
    assert statuses == [200] * 200


def test_typed_queries_use_the_text_tower_and_captions_the_cache(explorer):
    caption = explorer.data.captions[5]
    found = explorer.search(caption, 5)
    assert found["caption_rows"] and 5 in found["caption_rows"]
    typed = explorer.search("a purple thing", 5)
    assert typed["caption_rows"] == [] and "rank" not in typed["runs"][0]
    run = explorer.runs[0]
    expected = (run.images @ run.encode_query("a purple thing")).topk(5).indices.tolist()
    assert [i for i, _ in typed["runs"][0]["results"]] == expected


def test_the_cache_is_reused_and_invalidated_by_the_checkpoint_or_the_set(explore_runs, tmp_path):
    import torch

    run = tmp_path / "run"
    shutil.copytree(explore_runs["runs"][1], run)
    shutil.rmtree(run / "explore", ignore_errors=True)
    folder = tmp_path / "set"
    shutil.copytree(explore_runs["dataset"].parent, folder, ignore=shutil.ignore_patterns("train*"))
    spec = SetSpec(str(folder / "val.csv"))
    first = open_explorer([run], spec).runs[0]
    assert not first.cached and (run / "explore" / "val.pt").is_file()
    again = open_explorer([run], spec).runs[0]
    assert again.cached and torch.equal(again.images, first.images)
    image = folder / "images" / "val_000000.png"
    image.write_bytes(image.read_bytes())  # same bytes, a new modification time
    os.utime(image, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert not open_explorer([run], spec).runs[0].cached
    assert open_explorer([run], spec).runs[0].cached
    # A new checkpoint: other weights in the export the run loads.
    from safetensors.torch import load_file, save_file

    weights = next((run / "hf").glob("*.safetensors"))
    state = load_file(weights)
    name = next(k for k in state if "visual_projection" in k)
    state[name] = state[name] * 1.5
    save_file(state, weights)
    changed = open_explorer([run], spec).runs[0]
    assert not changed.cached and not torch.equal(changed.images, first.images)


def test_bad_arguments_fail_in_one_line_before_serving(explore_runs, capsys, tmp_path):
    run, dataset = str(explore_runs["runs"][0]), str(explore_runs["dataset"])
    cases = [
        (["explore", str(tmp_path / "nope"), "--dataset", dataset], "nope"),
        (["explore", run, "--dataset", str(tmp_path / "none.csv")], "none.csv"),
        (["explore", run, "--dataset", dataset, "--image-bank", "b"], "go together"),
    ]
    for argv, named in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and named in err and err.startswith("clip-ping: error")
    with pytest.raises(SystemExit):
        main(["explore", run, "--dataset", dataset, "--port", "70000"])
    assert "70000" in capsys.readouterr().err


def test_the_command_prints_its_address_and_warns_off_loopback(explore_runs):
    run, dataset = str(explore_runs["runs"][0]), str(explore_runs["dataset"])
    argv = [sys.executable, "-m", "clip_ping.cli", "explore", run, "--dataset", dataset]
    process = subprocess.Popen(
        [*argv, "--host", "0.0.0.0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    try:
        line = process.stdout.readline()
        assert line.startswith("explorer of val at http://0.0.0.0:"), line
        port = int(line.split(":")[2].split("/")[0])
        assert get(f"http://127.0.0.1:{port}/api/meta")[0] == 200
    finally:
        process.terminate()
        _, err = process.communicate(timeout=30)
    assert "not a loopback address" in err
