"""The main job, end to end and offline: corpus → banks → neighbours → CLIP and CLIP-PING
→ evaluation → report.

    clip-ping demo            # the full demo (make demo)
    clip-ping demo --quick    # a smaller corpus and budget: minutes, not tens of minutes

Stages, each cached (a second call reuses what is finished, and a killed call resumes):

1. the demo corpus (``clip-ping data demo``): emoji in two styles with CLDR captions plus
   clip-art for training; held-out concepts and held-out clip-art for retrieval; the OpenMoji
   style, never trained on, for zero-shot;
2. teacher banks (EfficientNet-Lite0 images, MiniLM captions) and top-K neighbour tables;
3. a contact sheet of the neighbours;
4. CLIP and CLIP-PING trained with the same student, data, budget and seed (so the same
   initial weights and batch order): only the objective differs;
5. every run evaluated: zero-shot on OpenMoji (concept names; subgroups), retrieval on
   held-out concepts and clip-art, linear probe on MNIST-5k and scikit-learn digits;
6. ``summary.json`` (the metric names of docs/design.md) and ``report.md`` with figures.

The runs themselves (train, evaluate, side by side) are :mod:`.runs`; the results page
(:mod:`.results`) uses the same data and runs for its seeds and ablations.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from ..io import atomic_write_text
from ..models import is_exported
from .demo_data import FULL, QUICK, DemoData, DemoSize, mean_recall, off_style_recall

# Teacher input: emoji are 64 px and clip-art 128 px; 128 px costs a third of 224 px and the
# neighbours look as sensible on the contact sheet.
IMAGE_TEACHER_SIZE = 128
NEIGHBOR_K = 5
DEMO_RUNS = ("clip", "clip-ping")


def _stage(name: str):
    print(f"\n== {name} ==", flush=True)
    return time.perf_counter()


def prepare_data(out: Path, size: DemoSize, assets: str | None = None) -> DemoData:
    """The corpus, both banks and their neighbour tables (also without same-caption pairs)."""
    from .demo_corpus import build_demo_corpus

    data = DemoData(out / "data" / "corpus", out / "banks")
    built = build_demo_corpus(
        data.corpus, assets=assets, max_concepts=size.max_concepts, max_clipart=size.max_clipart
    )
    if not built["cached"]:
        _drop_stale_banks(data)
    prepare_banks(data)
    return data


def _drop_stale_banks(data: DemoData) -> None:
    """Delete the banks that no longer match the corpus (one built anew has new image files,
    so the image banks' fingerprints differ): derived data, built again by
    :func:`prepare_banks`. Banks that still match (the text banks of the same captions) stay."""
    from ..bank import Bank
    from ..data.loader import DataSpec

    spec = DataSpec(str(data.train))
    folders = sorted(p for p in data.banks.iterdir() if p.is_dir()) if data.banks.is_dir() else []
    for folder in folders:
        try:
            Bank(folder).check_dataset(spec)
        except (ValueError, OSError) as stale:  # stale, or never finished
            print(f"the corpus was rebuilt: building {folder} again ({stale})", flush=True)
            shutil.rmtree(folder)


def prepare_banks(data: DemoData, same_caption_variant: bool = True) -> None:
    """Both teacher banks of ``data.train`` and their top-K neighbour tables; with
    ``same_caption_variant`` also the tables without same-caption neighbours. Finished parts
    are kept."""
    from ..bank import build_bank, caption_groups, has_neighbor_table, mine_bank
    from ..data.loader import DataSpec, read_captions

    spec = DataSpec(str(data.train))
    build_bank(spec, "image", data.bank("image"), image_size=IMAGE_TEACHER_SIZE, workers=0)
    build_bank(spec, "text", data.bank("text"), workers=0)
    groups = caption_groups(read_captions(spec)) if same_caption_variant else None
    for modality, other in (("image", "text"), ("text", "image")):
        paired = data.bank(other)  # a sample bad in either bank is no neighbour
        if not has_neighbor_table(data.bank(modality)):
            mine_bank(data.bank(modality), k=NEIGHBOR_K, paired_bank=paired)
        alt = data.bank(modality, "no-same-caption")
        if groups is not None and not has_neighbor_table(alt):
            _link_bank(data.bank(modality), alt)
            mine_bank(alt, k=NEIGHBOR_K, exclude_groups=groups, paired_bank=paired)


def _link_bank(source: Path, target: Path) -> None:
    """A bank folder sharing ``source``'s features (hard links), for another neighbour table."""
    from ..bank import FEATURES, META

    target.mkdir(parents=True, exist_ok=True)
    for name in (FEATURES, META):
        if not (target / name).exists():
            os.link(source / name, target / name)


def run_demo(
    out: str | Path = "runs/demo",
    quick: bool = False,
    seed: int = 0,
    assets: str | None = None,
    size: DemoSize | None = None,
    jobs: int | None = None,
) -> dict:
    """Build everything, train and evaluate both runs, write ``summary.json`` and ``report.md``.

    ``size`` overrides the corpus limits and budget of ``quick`` (tests use a tiny one);
    ``jobs`` is how many runs train at once (:func:`run_variants`)."""
    from ..data.loader import DataSpec
    from .contact_sheet import contact_sheet
    from .figures import plot_bars
    from .report import plot_curves
    from .runs import run_variants

    started = time.perf_counter()
    out = Path(out)
    size = size or (QUICK if quick else FULL)
    stage_seconds: dict[str, float] = {}

    t = _stage("corpus, teacher banks and neighbour tables")
    data = prepare_data(out, size, assets)
    stage_seconds["data"] = time.perf_counter() - t
    figures = out / "figures"
    sheet = figures / "neighbours.png"
    if not sheet.is_file():
        contact_sheet(data.bank("image"), data.bank("text"), DataSpec(str(data.train)), sheet)

    t = _stage(f"train and evaluate {' and '.join(DEMO_RUNS)}")
    reused = [name for name in DEMO_RUNS if is_exported(out / name)]
    metrics = run_variants(data, size, [(name, seed, name) for name in DEMO_RUNS], out, jobs)
    stage_seconds["runs"] = time.perf_counter() - t
    for run in metrics.values():
        run["mean_recall/test"] = mean_recall(run, "test")
        run["off_style_recall/test"] = off_style_recall(run, "test")
    keys = ["mean_recall/test", "off_style_recall/test", *demo_keys(metrics)]
    plot_curves({name: out / name for name in DEMO_RUNS}, figures / "curves.png")
    plot_bars(metrics, keys, figures / "metrics.png", title="held-out metrics, one seed")
    t = _stage("explorer (static)")
    write_explorer(out, data)
    stage_seconds["explore"] = time.perf_counter() - t
    wall_seconds = time.perf_counter() - started
    summary = {
        "runs": metrics,
        "wall_seconds": round(wall_seconds, 1),
        "stage_seconds": {k: round(v, 1) for k, v in stage_seconds.items()},
        "reused_runs": reused,  # trained by an earlier call: their time is not in wall_seconds
        "quick": quick,
        "seed": seed,
        "size": asdict(size),
        "student": size.model,
        "corpus": data.split_rows(),
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(out / "report.md", render_report(summary, keys))
    print(f"\nreport: {out / 'report.md'}\nsummary: {out / 'summary.json'}")
    return summary


EXPLORE_SET = "test_google"  # the runs side by side in runs/demo/explore/index.html


def write_explorer(out: Path, data: DemoData) -> Path:
    """The static explorer of the demo's runs on ``EXPLORE_SET``, ``out/explore/index.html``:
    it opens from disk and shows the corpus's own image files (no copies). The embeddings are
    cached in each run's ``explore/``, so a second call only rewrites the pages. Without the
    teachers' neighbours: finding them runs the image teacher over the set, time the demo's
    budget does not have (``clip-ping explore`` with the banks shows them)."""
    from ..explore import SetSpec, open_explorer, write_static

    explorer = open_explorer(
        [out / name for name in DEMO_RUNS], SetSpec(str(data.corpus / f"{EXPLORE_SET}.csv"))
    )
    return write_static(explorer, out / "explore", copy_images=False)  # beside the corpus


def demo_keys(metrics: dict[str, dict[str, float]]) -> list[str]:
    """The report's rows: top-1/top-5, R@1/R@5 and probe top-1 of every test evaluation."""
    from .report import headline

    keys = set().union(*(m.keys() for m in metrics.values()))
    return headline(k for k in keys if not k.startswith("retrieval/val_"))  # test sets only


def render_report(summary: dict, keys: list[str]) -> str:
    from .report import metrics_table

    size, corpus = summary["size"], summary["corpus"]
    counts = ", ".join(f"{name}: {n:,}" for name, n in corpus.items())
    timings = ", ".join(f"{name} {s:.0f} s" for name, s in summary["stage_seconds"].items())
    return (
        "# clip-ping demo: CLIP vs CLIP-PING\n\n"
        f"Both runs train the `{summary['student']}` student on the same pairs (emoji in the "
        "Google and Twitter styles with CLDR captions, plus clip-art) for the same budget "
        f"({size['epochs']} epochs of batch {size['batch_size']}, lr {size['lr']}, warm-up "
        f"{size['warmup']} steps: the recipe chosen on val, docs/method.md) from the "
        f"same seed ({summary['seed']}): same initial weights, same batch order. CLIP-PING adds "
        f"the neighbour terms (bank targets, top-{NEIGHBOR_K} neighbours from EfficientNet-"
        "Lite0 and MiniLM banks, λ_NN = λ_XNN = 1).\n\n"
        f"Corpus rows — {counts}.\n\n"
        "**Splits.** The corpus is split by *groups*, never by single images: an emoji "
        "concept with its skin tones and its gender, age and family counterparts; clip-art "
        "linked by a normalised title, by the name of an emoji, or by a near-duplicate image "
        "(edge maps that correlate at 0.85 or more, recolours included); and anything with "
        "the same caption. About 70% of the groups train, 10% are val (every setting, for "
        "both methods, was chosen there: docs/method.md) and 20% are test, read here once. "
        "No image, caption or group of val or test occurs in training (tested).\n\n"
        "**Evaluations (test).** Retrieval as CLIP_benchmark scores it, one caption per image "
        "and unique caption texts per set: `test_google` and `test_twitter` (the test "
        "concepts in each emoji style) and `test_clipart` (one drawing per test group); "
        "`mean_recall` is the mean of their 18 R@1/5/10 values, each method's one number; "
        "`off_style_recall` the mean of the 6 of `test_openmoji` (the test concepts drawn in "
        "OpenMoji's style, never trained on, with their emoji's captions). "
        "Zero-shot on OpenMoji, a style never trained on: `unseen` (test concepts among the "
        "test concepts' names), `seen` (training concepts in a new style), `subgroups` (CLDR "
        "subgroups). Linear probe on real MNIST digits (`mnist5k`) and scikit-learn's 8×8 "
        "`digits`.\n\n"
        + metrics_table(summary["runs"], keys)
        + "\nOne seed: docs/results.md gives the mean ± std over 5 seeds and the paired "
        "difference with its 95% interval; read a single difference with care.\n\n"
        "![metrics](figures/metrics.png)\n\n![curves](figures/curves.png)\n\n"
        "Neighbours from the teachers (anchor, its image neighbours, its caption neighbours):\n\n"
        "![neighbours](figures/neighbours.png)\n\n"
        f"**Look at the runs side by side:** [explore/index.html](explore/index.html) opens "
        f"from disk: each run's top images for every caption of `{EXPLORE_SET}`, each "
        "image's top captions, and the captions the runs disagree on most. `clip-ping "
        "explore RUN RUN --dataset SET` serves the same page for typed queries, and with "
        "`--image-bank`, `--text-bank` and `--train-data` it adds the teachers' neighbours of "
        "each image's nearest training samples.\n\n"
        f"Wall time: {summary['wall_seconds']:.0f} s ({timings})"
        + (
            f"; reused from an earlier call, so not timed here: {', '.join(summary['reused_runs'])}"
            if summary["reused_runs"]
            else ""
        )
        + ".\n"
    )
