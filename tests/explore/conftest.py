"""Two small trained runs on the shapes corpus, their ``clip-ping eval`` recalls, a running
explorer server, and a headless Chromium (Debian's, through its chromium-driver)."""

import json
import shutil
from pathlib import Path

import pytest

CHROMIUM = ("/usr/bin/chromium", "/usr/lib/chromium/chromium")
CHROMEDRIVER = "/usr/bin/chromedriver"
RUNS = {"sharp": 8, "blurry": 1}  # run name → epochs: the same seed, unequal training


def train_run(corpus: Path, logs: Path, name: str, epochs: int) -> Path:
    from clip_ping.training.config import build_config
    from clip_ping.training.train import train

    values = dict(
        train_data=str(corpus / "train.csv"),
        val_data=None,
        model="cpu-micro-32",
        batch_size=64,
        epochs=epochs,
        lr=2e-3,
        warmup=5,
        workers=0,
        logs=str(logs),
        name=name,
        seed=0,
        progress=False,
    )
    return Path(train(build_config(overrides=values)))


@pytest.fixture(scope="session")
def explore_runs(small_corpus, tmp_path_factory):
    """``{"runs": [sharp, blurry], "dataset": val.csv, "eval": {name: eval record}}``: each
    run evaluated by ``clip-ping eval`` on the val set into its ``results/``."""
    from clip_ping.cli import main

    logs = tmp_path_factory.mktemp("explore_logs")
    dataset = small_corpus / "val.csv"
    runs, records = [], {}
    for name, epochs in RUNS.items():
        run = train_run(small_corpus, logs, name, epochs)
        out = run / "results" / "retrieval_val.json"
        args = ["eval", "--model", str(run), "--task", "retrieval", "--dataset", str(dataset)]
        assert main([*args, "--out", str(out)]) == 0
        runs.append(run)
        records[name] = json.loads(out.read_text())
    return {"runs": runs, "dataset": dataset, "eval": records}


@pytest.fixture(scope="session")
def explorer(explore_runs):
    from clip_ping.explore import SetSpec, open_explorer

    return open_explorer(explore_runs["runs"], SetSpec(str(explore_runs["dataset"])))


@pytest.fixture(scope="session")
def server(explorer):
    """The explorer served on a free loopback port."""
    from clip_ping.explore import start_server

    server = start_server(explorer, "127.0.0.1", 0)
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium. ``make test`` installs Debian's chromium and chromium-driver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary = next((path for path in CHROMIUM if Path(path).is_file()), None)
    assert binary and shutil.which(CHROMEDRIVER), (
        "the browser tests need Debian's chromium and chromium-driver: run make test, or "
        "apt-get install -y chromium chromium-driver"
    )
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    options.add_argument("--window-size=1280,900")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
