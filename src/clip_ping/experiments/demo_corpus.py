"""The offline demo corpus: real emoji and clip-art image-text pairs from installable packages.

Sources (fetched once by ``make assets`` into ``.assets/``; see :data:`SOURCES`): Noto and
Twemoji emoji PNGs with CLDR labels and keywords (npm), OpenMoji SVGs (npm, held out whole
for zero-shot), Open Clip Art Library drawings (Debian). Splits and captions:

- a *concept* is a base emoji with its skin-tone and gender variants (:mod:`.emoji`);
  ~25% of concepts are held out (``val_concepts.csv``, both styles) by a seeded hash of the
  concept's base hexcode, so a concept's side never depends on package order or subsetting;
- OpenMoji never enters training: ``zeroshot/concepts`` (one drawing per concept, class =
  the concept's label as written in captions) and ``zeroshot/subgroups`` (CLDR subgroup,
  ``face-smiling`` → ``face smiling``; subgroups with fewer than 5 drawings dropped);
- ~10% of the kept clip-art is held out (``val_clipart.csv``) by a seeded hash of its key.

Layout under ``out`` (CSV paths are relative to the CSV's folder)::

    images/emoji/{google,twitter}/<stem>.png, images/openmoji/<hex>.png   64×64 RGB
    images/clipart/<category path>.png                128×128 RGB, fitted on white
    train.csv, val_concepts.csv, val_clipart.csv     filepath,title,key,source
    zeroshot/{concepts,subgroups}/test.csv           filepath,label,key
    zeroshot/{concepts,subgroups}/{classnames,templates}.txt
    corpus.json                                      sources, licences, counts, options

Full build (``clip-ping data demo --out /tmp/demo``, 2 shared CPU cores, ~105 s of which
~90 s converting 12,049 images): 1,744 concepts (1,315 train / 429 held out), 3,781 images
per emoji style; 2,743 clip-art kept (2,469 train / 274 held out), 4,715 dropped (3,446
collection titles, 581 file-name-like, 553 duplicate images, 81 without a PNG, 54 untitled);
rows: train 8,011, val_concepts 2,020, val_clipart 274; zero-shot: 1,744 concept classes
(1,744 images), 88 subgroup classes (1,718 images).

Examples:
    >>> info = build_demo_corpus("/tmp/demo", max_concepts=60, max_clipart=40)
    >>> info["counts"]["train_rows"] > 0
    True
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from ..data.transforms import to_rgb
from ..io import atomic_write_text
from .assets import SOURCES, package_dir, package_version, resolve_assets
from .clipart import CLIPART_IMAGE_SIZE, load_clipart
from .emoji import EMOJI_IMAGE_SIZE, EMOJI_STYLES, load_concepts

FORMAT = "clip-ping-demo-corpus"
FORMAT_VERSION = 1
VAL_CONCEPT_FRACTION = 0.25
VAL_CLIPART_FRACTION = 0.10
MIN_SUBGROUP_IMAGES = 5
TEMPLATES = ("an emoji of {}.", "a {} emoji.", "{}.", "an icon of {}.")
CAPTION_RECIPE = (
    "emoji: lowercased CLDR label (emojibase; emoji.json name where missing), then the CLDR "
    "keywords and emoji.json short names, de-duplicated; variants use their own label "
    "('waving hand: medium skin tone') with the keywords of their emoji. clip-art: lowercased "
    "dc:title (author prefix removed) plus dc:description when at most 12 words, then the "
    "dc:subject keywords. At most 30 words."
)


def unit_hash(seed: int, purpose: str, name: str) -> float:
    """A stable number in [0, 1) for ``name``: splits and subsets without any RNG state."""
    digest = hashlib.blake2b(f"{seed}:{purpose}:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _subset(items: list, name: Callable[[Any], str], limit: int | None, seed: int) -> list:
    """The ``limit`` items ranked first by hash: a smaller limit gives a subset of a larger."""
    if limit is None or limit >= len(items):
        return items
    ranked = sorted(items, key=lambda item: unit_hash(seed, "subset", name(item)))[:limit]
    return sorted(ranked, key=name)


def _fit_on_white(image: Image.Image, size: int) -> Image.Image:
    """RGB ``size``×``size``: scaled to fit, centred, alpha composited on white."""
    if image.size == (size, size):
        return to_rgb(image)
    # Scale first (Pillow resizes RGBA premultiplied, so edges do not darken), then
    # composite: a 1,100 px drawing is composited at 128 px, ~10x faster.
    image = image.convert("RGBA")
    scale = size / max(image.size)
    w, h = (max(1, round(side * scale)) for side in image.size)
    image = image.resize((w, h), Image.Resampling.LANCZOS, reducing_gap=3.0)
    canvas = Image.new("RGB", (size, size), (255, 255, 255))
    canvas.paste(to_rgb(image), ((size - w) // 2, (size - h) // 2))
    return canvas


def _convert(source: Path, target: Path, size: int) -> None:
    if source.suffix == ".svg":
        import cairosvg  # only OpenMoji and a few huge clip-art renders need a rasteriser

        # The width alone keeps the drawing's aspect ratio; _fit_on_white fits the height.
        png = cairosvg.svg2png(url=str(source), output_width=size)
        image = Image.open(io.BytesIO(png))
    else:
        image = Image.open(source)
    target.parent.mkdir(parents=True, exist_ok=True)
    with image:
        _fit_on_white(image, size).save(target, compress_level=1)  # fast; the folder is scratch


def _write_csv(path: Path, columns: list[str], rows: list[dict]) -> int:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(sorted(rows, key=lambda row: row["key"]))
    atomic_write_text(path, buffer.getvalue())
    return len(rows)


def _write_zeroshot(folder: Path, items: list[tuple[str, str, str]]) -> dict:
    """``items`` = (image path from ``out``, class name, key) → test.csv + names + templates."""
    classnames = sorted({name for _, name, _ in items})
    label = {name: i for i, name in enumerate(classnames)}
    rows = [{"filepath": f"../../{p}", "label": label[n], "key": k} for p, n, k in items]
    _write_csv(folder / "test.csv", ["filepath", "label", "key"], rows)
    atomic_write_text(folder / "classnames.txt", "".join(f"{n}\n" for n in classnames))
    atomic_write_text(folder / "templates.txt", "".join(f"{t}\n" for t in TEMPLATES))
    return {"images": len(rows), "classes": len(classnames)}


def _files(out: Path) -> dict[str, str]:
    names = {
        "train": "train.csv",
        "val_concepts": "val_concepts.csv",
        "val_clipart": "val_clipart.csv",
        "zeroshot_concepts": "zeroshot/concepts/test.csv",
        "zeroshot_subgroups": "zeroshot/subgroups/test.csv",
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

    concepts, dropped_variants = load_concepts(
        {style: folders[f"emoji-datasource-{style}"] for style in EMOJI_STYLES},
        folders["emojibase-data"],
        folders["openmoji"],
    )
    concepts = _subset(concepts, lambda c: c.base, max_concepts, seed)
    drawings, dropped_clipart = load_clipart(folders["openclipart-svg"], folders["openclipart-png"])
    drawings = _subset(drawings, lambda d: d.key, max_clipart, seed)

    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    plan = _plan(concepts, drawings, folders, seed)
    for source, image, size in tqdm(
        plan.jobs, desc="demo corpus images", unit="img", mininterval=1
    ):
        _convert(source, tmp / image, size)
    counts: dict = {}
    for split, rows in plan.splits.items():
        counts[f"{split}_rows"] = _write_csv(
            tmp / f"{split}.csv", ["filepath", "title", "key", "source"], rows
        )
    subgroup_sizes = Counter(name for _, name, _ in plan.zeroshot_subgroups)
    zeroshot_subgroups = [
        i for i in plan.zeroshot_subgroups if subgroup_sizes[i[1]] >= MIN_SUBGROUP_IMAGES
    ]
    zeroshot = {
        "concepts": _write_zeroshot(tmp / "zeroshot" / "concepts", plan.zeroshot_concepts),
        "subgroups": _write_zeroshot(tmp / "zeroshot" / "subgroups", zeroshot_subgroups),
    }
    val_concept_count = sum(
        unit_hash(seed, "split", c.base) < VAL_CONCEPT_FRACTION for c in concepts
    )
    per_style = sum(len(c.variants) for c in concepts)
    counts.update({
        "concepts": len(concepts), "train_concepts": len(concepts) - val_concept_count,
        "val_concepts": val_concept_count, "emoji_images_per_style": per_style,
        "emoji_variants_dropped": dropped_variants,
        "openmoji_images": len(plan.zeroshot_concepts),
        # Drops are counted over the whole package, before --max-clipart subsets the rest.
        "clipart_kept": len(drawings), "clipart_dropped": sum(dropped_clipart.values()),
        "clipart_dropped_by_reason": dict(sorted(dropped_clipart.items())),
        "zeroshot_concepts_classes": zeroshot["concepts"]["classes"],
        "zeroshot_subgroups_classes": zeroshot["subgroups"]["classes"],
        "zeroshot_subgroups_images": zeroshot["subgroups"]["images"],
    })  # fmt: skip
    source_counts = {
        "emoji-datasource-google": per_style, "emoji-datasource-twitter": per_style,
        "openmoji": len(plan.zeroshot_concepts), "emojibase-data": len(concepts),
        "openclipart-svg": len(drawings), "openclipart-png": len(drawings),
    }  # fmt: skip
    meta = _corpus_meta(root, options, counts, zeroshot, source_counts)
    meta["build_seconds"] = round(time.perf_counter() - started, 1)
    atomic_write_text(tmp / "corpus.json", json.dumps(meta, indent=2) + "\n")  # last: complete
    _swap_in(tmp, out)
    return {**_files(out), "counts": counts, "cached": False}


@dataclass
class _Plan:
    """What the corpus will hold: image conversions and the rows of every split."""

    jobs: list[tuple[Path, Path, int]] = field(default_factory=list)  # (source, image, size)
    splits: dict[str, list[dict]] = field(
        default_factory=lambda: {"train": [], "val_concepts": [], "val_clipart": []}
    )
    zeroshot_concepts: list[tuple[str, str, str]] = field(default_factory=list)
    zeroshot_subgroups: list[tuple[str, str, str]] = field(default_factory=list)


def _plan(concepts, drawings, folders: dict[str, Path], seed: int) -> _Plan:
    """Assign every emoji concept and drawing to its split (hashes salted by ``seed``)."""
    plan = _Plan()
    emoji_images = {
        style: folders[f"emoji-datasource-{style}"] / "img" / style / str(EMOJI_IMAGE_SIZE)
        for style in EMOJI_STYLES
    }
    for concept in concepts:
        held_out = unit_hash(seed, "split", concept.base) < VAL_CONCEPT_FRACTION
        split = "val_concepts" if held_out else "train"
        for style in EMOJI_STYLES:
            for variant in concept.variants:
                image = Path("images", "emoji", style, f"{variant.stem}.png")
                source = emoji_images[style] / f"{variant.stem}.png"
                plan.jobs.append((source, image, EMOJI_IMAGE_SIZE))
                plan.splits[split].append({
                    "filepath": image.as_posix(), "title": variant.caption,
                    "key": f"emoji/{style}/{variant.stem}", "source": f"emoji-datasource-{style}",
                })  # fmt: skip
        if concept.openmoji is not None and concept.openmoji.is_file():
            image = Path("images", "openmoji", f"{concept.openmoji.stem.lower()}.png")
            plan.jobs.append((concept.openmoji, image, EMOJI_IMAGE_SIZE))
            key = f"openmoji/{concept.openmoji.stem.lower()}"
            plan.zeroshot_concepts.append((image.as_posix(), concept.label, key))
            subgroup = concept.subgroup.replace("-", " ")
            plan.zeroshot_subgroups.append((image.as_posix(), subgroup, key))
    for drawing in drawings:
        image = Path("images", f"{drawing.key}.png")
        plan.jobs.append((drawing.image, image, CLIPART_IMAGE_SIZE))
        held_out = unit_hash(seed, "split", drawing.key) < VAL_CLIPART_FRACTION
        plan.splits["val_clipart" if held_out else "train"].append({
            "filepath": image.as_posix(), "title": drawing.caption, "key": drawing.key,
            "source": "openclipart",
        })  # fmt: skip
    return plan


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
        ],  # fmt: skip
        "splits": {
            "train.csv": counts["train_rows"],
            "val_concepts.csv": counts["val_concepts_rows"],
            "val_clipart.csv": counts["val_clipart_rows"],
            "zeroshot/concepts/test.csv": zeroshot["concepts"]["images"],
            "zeroshot/subgroups/test.csv": zeroshot["subgroups"]["images"],
        },  # fmt: skip
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
