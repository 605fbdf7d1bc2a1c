"""The offline demo corpus: real emoji and clip-art image-text pairs from installable packages.

Sources (fetched once by ``make assets`` into ``.assets/``; see :data:`SOURCES`): Noto and
Twemoji emoji PNGs with CLDR labels and keywords (npm), OpenMoji SVGs (npm, never trained on),
Open Clip Art Library drawings (Debian). Splits (:mod:`.corpus_splits`, :mod:`.groups`):

- the corpus is split by *groups*, never by single images: an emoji concept with its skin
  tones and its gender, age and family counterparts; clip-art drawings linked by a normalised
  title; and anything linked by a near-duplicate image or the same caption;
- a seeded hash of the group's name puts ~20% of the groups in ``test``, ~10% in ``val`` and
  the rest in ``train``, so no image, caption or group of val or test occurs in train;
- evaluation sets have unique caption texts (CLIP_benchmark's retrieval protocol): one per
  split and source, ``{val,test}_{google,twitter,clipart}.csv``; clip-art keeps one drawing
  per group;
- OpenMoji stays out of training: zero-shot over the names of the **unseen** concepts (the
  test groups: a new concept in a new style), over the names of the **seen** concepts (the
  training groups: a known concept in a new style), and over CLDR **subgroups**
  (``face-smiling`` → ``face smiling``, every concept; subgroups with fewer than 5 drawings
  dropped), and retrieval over ``{val,test}_openmoji``: the OpenMoji drawing of each
  concept of the split with the caption its base emoji has in the trained styles (off-style
  retrieval: the same concepts and texts as ``{val,test}_google``, in a style never seen).

Layout under ``out`` (CSV paths are relative to the CSV's folder)::

    images/emoji/{google,twitter}/<stem>.png, images/openmoji/<hex>.png   64×64 RGB
    images/clipart/<category path>.png                128×128 RGB, fitted on white
    train.csv, {val,test}_{google,twitter,clipart}.csv   filepath,title,key,source
    {val,test}_openmoji.csv                          the same columns: off-style retrieval
    groups.csv                                       key,group,split of every row
    zeroshot/{unseen,seen,subgroups}/test.csv        filepath,label,key
    zeroshot/{unseen,seen,subgroups}/{classnames,templates}.txt
    corpus.json                                      sources, licences, counts, rules, options

Full build (``clip-ping data demo --out /tmp/demo``, 2 shared CPU cores, ~40-100 s, most of
it converting 12,049 images): 1,744 emoji concepts (3,781 images per style) and 2,734
clip-art drawings kept (4,724 dropped: 3,446 collection titles, 581 file-name-like, 553
duplicate images, 81 without a PNG, 54 untitled, 9 blank) form 3,183 groups: 2,232 train,
319 val, 632 test (70.1 / 10.0 / 19.9%). Rows: train 7,407; val google 427, twitter 427,
clip-art 188; test google 626, twitter 626, clip-art 380 (215 rows left out of the
evaluation sets as repeated captions or second drawings of a group). Zero-shot: 299 unseen
and 1,285 seen concept classes, 88 subgroups (1,718 images). The largest groups: 704 images
of people (the person, man, woman, child, baby, older person and prince emoji with their
gestures, linked by gender and age, near-duplicate heads, and drawings named like them) and
266 of country flags (one layout, near-duplicate edge maps); both landed in train.

Built from the packages ``make assets`` fetches (so not offline on a fresh checkout)::

    clip-ping data demo --out data/demo --max-concepts 60 --max-clipart 40
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..io import atomic_write_text
from .assets import SOURCES, package_dir, package_version, resolve_assets
from .clipart import load_clipart
from .corpus_splits import (
    EVAL_SOURCES,
    SPLITS,
    TEST_FRACTION,
    VAL_FRACTION,
    Row,
    evaluation_sets,
    link_groups,
    split_of,
    unit_hash,
)
from .demo_images import convert_images, corpus_rows, openmoji_image
from .emoji import EMOJI_IMAGE_SIZE, EMOJI_STYLES, load_concepts
from .groups import NEAR_DUPLICATE_THRESHOLD
from .openmoji_sets import (
    OFF_STYLE,
    TEMPLATES,
    ZEROSHOT_SETS,
    write_csv,
    write_off_style_sets,
    write_zeroshot_sets,
)

FORMAT = "clip-ping-demo-corpus"
# 1: two splits of concepts and drawings; 2: before the same-name rule; 3: no OpenMoji
# retrieval sets
FORMAT_VERSION = 4
EVAL_SETS = tuple(
    f"{split}_{source}" for split in SPLITS[1:] for source in (*EVAL_SOURCES, OFF_STYLE)
)
CAPTION_RECIPE = (
    "emoji: lowercased CLDR label (emojibase; emoji.json name where missing), then the CLDR "
    "keywords and emoji.json short names, de-duplicated; variants use their own label "
    "('waving hand: medium skin tone') with the keywords of their emoji. clip-art: lowercased "
    "dc:title (author prefix removed) plus dc:description when at most 12 words, then the "
    "dc:subject keywords. At most 30 words."
)
GROUP_RULE = (
    "connected components of: an emoji concept (skin tones, gendered sequences); emoji "
    "counterparts (labels equal with gender and age words read as one; family/kiss/couple "
    "sequences; facing-right forms); clip-art with the same title without case, digits and "
    "punctuation; the same caption; near-duplicate images (edge-map correlation >= threshold)"
)
EVAL_RULE = (
    "one set per split and source (google, twitter, clipart); clip-art keeps one drawing per "
    "group; a caption text already in the set is left out: one caption per image, unique texts. "
    "Off-style: one set per split of the OpenMoji drawings of its emoji concepts (never "
    "trained on), each captioned as its concept's base emoji; a drawing that is a near-duplicate "
    "of a training image is left out"
)


def _subset(items: list, name: Callable[[Any], str], limit: int | None, seed: int) -> list:
    """The ``limit`` items ranked first by hash: a smaller limit gives a subset of a larger."""
    if limit is None or limit >= len(items):
        return items
    ranked = sorted(items, key=lambda item: unit_hash(seed, "subset", name(item)))[:limit]
    return sorted(ranked, key=name)


def _files(out: Path) -> dict[str, str]:
    names = {
        "train": "train.csv",
        **{name: f"{name}.csv" for name in EVAL_SETS},
        **{f"zeroshot_{name}": f"zeroshot/{name}/test.csv" for name in ZEROSHOT_SETS},
        "groups": "groups.csv",
        "corpus_json": "corpus.json",
    }
    return {name: str(out / file) for name, file in names.items()}


def _cached(out: Path, options: dict) -> dict | None:
    try:
        meta = json.loads((out / "corpus.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if meta.get("format_version") != FORMAT_VERSION or meta.get("options") != options:
        return None
    return {**_files(out), "counts": meta["counts"], "cached": True}


def _check_replaceable(out: Path) -> None:
    if out.exists() and any(out.iterdir()) and not (out / "corpus.json").is_file():
        raise FileExistsError(
            f"--out {out} exists and is not a demo corpus (no corpus.json); choose an empty or "
            "new folder"
        )


def build_demo_corpus(
    out: str | os.PathLike,
    assets: str | os.PathLike | None = None,
    max_concepts: int | None = None,
    max_clipart: int | None = None,
    seed: int = 0,
) -> dict:
    """Build the demo corpus in ``out`` (see the module docstring); cached when complete.

    Args:
        out: output folder; a previous corpus there is replaced when the options differ.
        assets: folder filled by ``make assets`` (default ``$CLIP_PING_ASSETS`` or ``.assets``).
        max_concepts: keep this many emoji concepts (a hash-ranked, nested subset).
        max_clipart: keep this many clip-art drawings (likewise).
        seed: salts the split and subset hashes.

    Returns:
        the paths of the CSVs and ``corpus.json`` (keys as :func:`_files`), ``counts``, and
        ``cached`` (True when a complete corpus with the same options was already there).
    """
    out = Path(out)
    options = {"seed": seed, "max_concepts": max_concepts, "max_clipart": max_clipart}
    for name, value in (("max_concepts", max_concepts), ("max_clipart", max_clipart)):
        if value is not None and value < 1:
            raise ValueError(f"{name}={value}: pass a positive number, or leave it unset for all")
    if cached := _cached(out, options):
        return cached
    _check_replaceable(out)
    started = time.perf_counter()
    root = resolve_assets(assets)
    folders = {package: package_dir(root, package) for package in SOURCES}
    concepts, dropped_variants, drawings, dropped_clipart = _load_sources(
        folders, max_concepts, max_clipart, seed
    )
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    rows, jobs = corpus_rows(concepts, drawings, folders)
    openmoji = [(c, c.openmoji) for c in concepts if c.openmoji and c.openmoji.is_file()]
    jobs += [(svg, openmoji_image(svg), EMOJI_IMAGE_SIZE) for _, svg in openmoji]
    signatures, blank = convert_images(jobs, len(rows), tmp)
    if blank:
        dropped_clipart["blank image"] += sum(rows[i].kind == "clipart" for i in blank)
        dropped_variants += sum(rows[i].kind != "clipart" for i in blank)
        keep = np.setdiff1d(np.arange(len(rows)), blank)
        rows, signatures = [rows[i] for i in keep], signatures[keep]
    groups, links = link_groups(rows, signatures)
    split = {group: split_of(group, seed) for group in groups}
    off_style, off_style_groups = write_off_style_sets(
        tmp, rows, groups, split, openmoji, signatures
    )
    counts, left_out = _write_splits(tmp, rows, groups, split, off_style_groups)
    counts.update(off_style)
    zeroshot = write_zeroshot_sets(tmp, rows, groups, split, openmoji)
    counts.update(
        _build_counts(rows, groups, split, zeroshot, links, left_out, dropped_clipart)
        | {
            "concepts": len(concepts),
            "emoji_images_per_style": sum(len(c.variants) for c in concepts),
            "emoji_variants_dropped": dropped_variants,
            "openmoji_images": len(openmoji),
        }
    )
    source_counts = _source_counts(counts, len(openmoji), len(concepts), len(drawings))
    meta = _corpus_meta(root, options, counts, zeroshot, source_counts)
    meta["build_seconds"] = round(time.perf_counter() - started, 1)
    atomic_write_text(tmp / "corpus.json", json.dumps(meta, indent=2) + "\n")  # last: complete
    _swap_in(tmp, out)
    return {**_files(out), "counts": counts, "cached": False}


def _build_counts(rows, groups, split, zeroshot, links, left_out, dropped_clipart) -> dict:
    """The corpus's counts of kept and dropped clip-art, groups, links and evaluation sets."""
    group_split = Counter(split.values())
    group_kinds = Counter(
        (split[g], "clipart" if r.kind == "clipart" else "emoji")
        for r, g in zip(rows, groups, strict=True)
    )
    return {
        # Drops are counted over the whole package, before --max-clipart subsets the rest.
        "clipart_kept": sum(r.kind == "clipart" for r in rows),
        "clipart_dropped": sum(dropped_clipart.values()),
        "clipart_dropped_by_reason": dict(sorted(dropped_clipart.items())),
        "groups": {s: group_split[s] for s in SPLITS},
        "rows_by_split_and_kind": {f"{s}/{k}": n for (s, k), n in sorted(group_kinds.items())},
        "group_links": dict(links),
        "eval_rows_left_out": left_out,
        **{f"zeroshot_{n}_classes": z["classes"] for n, z in zeroshot.items()},
    }


def _load_sources(folders: dict[str, Path], max_concepts, max_clipart, seed: int) -> tuple:
    """The emoji concepts and clip-art drawings kept (subsets of at most ``max_concepts`` and
    ``max_clipart``), with the emoji variants and drawings dropped while loading."""
    concepts, dropped_variants = load_concepts(
        {style: folders[f"emoji-datasource-{style}"] for style in EMOJI_STYLES},
        folders["emojibase-data"],
        folders["openmoji"],
    )
    concepts = _subset(concepts, lambda c: c.base, max_concepts, seed)
    drawings, dropped_clipart = load_clipart(folders["openclipart-svg"], folders["openclipart-png"])
    drawings = _subset(drawings, lambda d: d.key, max_clipart, seed)
    return concepts, dropped_variants, drawings, dropped_clipart


def _write_splits(
    tmp: Path, rows: list[Row], groups: list, split: dict, more_groups: list[dict]
) -> tuple[dict, Any]:
    """``train.csv``, the evaluation sets and ``groups.csv`` (with ``more_groups``, the
    off-style rows' entries); the row counts of the first two and the evaluation rows left
    out."""
    pairs = list(zip(rows, groups, strict=True))
    train = [r.csv_row() for r, g in pairs if split[g] == "train"]
    counts: dict = {"train_rows": write_csv(tmp / "train.csv", train)}
    eval_sets, left_out = evaluation_sets(rows, groups, split)
    for name, members in eval_sets.items():
        counts[f"{name}_rows"] = write_csv(tmp / f"{name}.csv", [r.csv_row() for r in members])
    write_csv(
        tmp / "groups.csv",
        [{"key": r.key, "group": g, "split": split[g]} for r, g in pairs] + more_groups,
        columns=["key", "group", "split"],
    )
    return counts, left_out


def _source_counts(counts: dict, openmoji: int, concepts: int, drawings: int) -> dict[str, int]:
    """How many items of each source package the corpus uses."""
    emoji = counts["emoji_images_per_style"]
    return {
        "emoji-datasource-google": emoji,
        "emoji-datasource-twitter": emoji,
        "openmoji": openmoji,
        "emojibase-data": concepts,
        "openclipart-svg": drawings,
        "openclipart-png": drawings,
    }


def _corpus_meta(root: Path, options: dict, counts: dict, zeroshot: dict, source_counts: dict):
    """``corpus.json``'s content (its build time is added by the caller)."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "options": options,
        "sources": [
            {
                "package": s.package,
                "manager": s.manager,
                "version": package_version(root, s.package),
                "licence": s.licence,
                "url": s.url,
                "count": source_counts[s.package],
            }
            for s in SOURCES.values()
        ],
        "splits": {
            **{f"{n}.csv": counts[f"{n}_rows"] for n in ("train", *EVAL_SETS)},
            **{f"zeroshot/{n}/test.csv": z["images"] for n, z in zeroshot.items()},
        },
        "rules": {
            "split": f"groups by hash: test {TEST_FRACTION:.0%}, val {VAL_FRACTION:.0%}, rest train",
            "groups": GROUP_RULE,
            "near_duplicate_threshold": NEAR_DUPLICATE_THRESHOLD,
            "evaluation_sets": EVAL_RULE,
        },
        "counts": counts,
        "captions": CAPTION_RECIPE,
        "templates": list(TEMPLATES),
    }


def _swap_in(tmp: Path, out: Path) -> None:
    """Replace ``out`` by the finished ``tmp`` (an older corpus is deleted after the swap)."""
    _check_replaceable(out)
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old)
    else:
        tmp.rename(out)
