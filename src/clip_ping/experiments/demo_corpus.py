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
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from ..data.transforms import to_rgb
from ..io import atomic_write_text
from .clipart import CLIPART_IMAGE_SIZE, load_clipart
from .emoji import EMOJI_IMAGE_SIZE, EMOJI_STYLES, load_concepts

FORMAT = "clip-ping-demo-corpus"
FORMAT_VERSION = 1
VAL_CONCEPT_FRACTION = 0.25
VAL_CLIPART_FRACTION = 0.10
MIN_SUBGROUP_IMAGES = 5
TEMPLATES = ("an emoji of {}.", "a {} emoji.", "{}.", "an icon of {}.")
ASSETS_ENV = "CLIP_PING_ASSETS"
DEFAULT_ASSETS = ".assets"
CAPTION_RECIPE = (
    "emoji: lowercased CLDR label (emojibase; emoji.json name where missing), then the CLDR "
    "keywords and emoji.json short names, de-duplicated; variants use their own label "
    "('waving hand: medium skin tone') with the keywords of their emoji. clip-art: lowercased "
    "dc:title (author prefix removed) plus dc:description when at most 12 words, then the "
    "dc:subject keywords. At most 30 words."
)


@dataclass(frozen=True)
class Source:
    package: str
    manager: str  # "npm" or "debian"
    version: str  # the pinned version (npm); Debian's is read from the unpacked package
    licence: str
    url: str


SOURCES = {
    s.package: s
    for s in (
        Source("emoji-datasource-google", "npm", "16.0.0", "Apache-2.0 (Noto Emoji images)",
               "https://github.com/iamcal/emoji-data"),
        Source("emoji-datasource-twitter", "npm", "16.0.0", "CC-BY-4.0 (Twemoji images)",
               "https://github.com/iamcal/emoji-data"),
        Source("openmoji", "npm", "17.0.0", "CC-BY-SA-4.0", "https://openmoji.org"),
        Source("emojibase-data", "npm", "17.0.0", "MIT (data from Unicode CLDR, Unicode License)",
               "https://emojibase.dev"),
        Source("openclipart-svg", "debian", "", "public domain (CC0)", "https://openclipart.org"),
        Source("openclipart-png", "debian", "", "public domain (CC0)", "https://openclipart.org"),
    )
}  # fmt: skip


def resolve_assets(assets: str | os.PathLike | None = None) -> Path:
    """``assets``, else ``$CLIP_PING_ASSETS``, else ``./.assets``."""
    return Path(assets or os.environ.get(ASSETS_ENV) or DEFAULT_ASSETS)


def package_dir(root: Path, package: str) -> Path:
    """Folder of an unpacked asset package, or a FileNotFoundError saying how to fetch it."""
    source = SOURCES[package]
    if source.manager == "npm":
        folder = root / "npm" / "node_modules" / package
        marker = folder / "package.json"
        fetch = (
            f"npm install --prefix {root / 'npm'} --no-audit --no-fund --ignore-scripts "
            f"{package}@{source.version}"
        )
    else:
        folder = root / "openclipart" / "usr" / "share" / "openclipart" / package.split("-")[1]
        marker = root / "openclipart" / "usr" / "share" / "doc" / package / "changelog.Debian.gz"
        fetch = f"apt-get download {package} && dpkg-deb -x {package}_*.deb {root / 'openclipart'}"
    if not marker.is_file():
        raise FileNotFoundError(
            f"demo corpus asset {package} ({source.manager}) not found in {root}: run `make "
            f"assets` in the repository, or `{fetch}`; or point --assets / ${ASSETS_ENV} at a "
            "folder that has it"
        )
    return folder


def package_version(root: Path, package: str) -> str:
    if SOURCES[package].manager == "npm":
        meta = root / "npm" / "node_modules" / package / "package.json"
        return json.loads(meta.read_text(encoding="utf-8"))["version"]
    log = root / "openclipart" / "usr" / "share" / "doc" / package / "changelog.Debian.gz"
    with gzip.open(log, "rt", encoding="utf-8") as f:
        match = re.search(r"\((.+?)\)", f.readline())  # "openclipart (1:0.18+dfsg-19) unstable"
    return match.group(1) if match else "unknown"


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
    jobs: list[tuple[Path, Path, int]] = []  # (source, image path under out, size)
    splits: dict[str, list[dict]] = {"train": [], "val_concepts": [], "val_clipart": []}
    zeroshot_concepts, zeroshot_subgroups = [], []
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
                jobs.append((source, image, EMOJI_IMAGE_SIZE))
                splits[split].append({
                    "filepath": image.as_posix(), "title": variant.caption,
                    "key": f"emoji/{style}/{variant.stem}", "source": f"emoji-datasource-{style}",
                })  # fmt: skip
        if concept.openmoji is not None and concept.openmoji.is_file():
            image = Path("images", "openmoji", f"{concept.openmoji.stem.lower()}.png")
            jobs.append((concept.openmoji, image, EMOJI_IMAGE_SIZE))
            key = f"openmoji/{concept.openmoji.stem.lower()}"
            zeroshot_concepts.append((image.as_posix(), concept.label, key))
            zeroshot_subgroups.append((image.as_posix(), concept.subgroup.replace("-", " "), key))
    for drawing in drawings:
        image = Path("images", f"{drawing.key}.png")
        jobs.append((drawing.image, image, CLIPART_IMAGE_SIZE))
        split = (
            "val_clipart"
            if unit_hash(seed, "split", drawing.key) < VAL_CLIPART_FRACTION
            else "train"
        )
        splits[split].append({
            "filepath": image.as_posix(), "title": drawing.caption, "key": drawing.key,
            "source": "openclipart",
        })  # fmt: skip

    for source, image, size in tqdm(jobs, desc="demo corpus images", unit="img", mininterval=1):
        _convert(source, tmp / image, size)
    counts: dict = {}
    for split, rows in splits.items():
        counts[f"{split}_rows"] = _write_csv(
            tmp / f"{split}.csv", ["filepath", "title", "key", "source"], rows
        )
    subgroup_sizes = Counter(name for _, name, _ in zeroshot_subgroups)
    zeroshot_subgroups = [
        i for i in zeroshot_subgroups if subgroup_sizes[i[1]] >= MIN_SUBGROUP_IMAGES
    ]
    zeroshot = {
        "concepts": _write_zeroshot(tmp / "zeroshot" / "concepts", zeroshot_concepts),
        "subgroups": _write_zeroshot(tmp / "zeroshot" / "subgroups", zeroshot_subgroups),
    }
    val_concept_count = sum(
        unit_hash(seed, "split", c.base) < VAL_CONCEPT_FRACTION for c in concepts
    )
    per_style = sum(len(c.variants) for c in concepts)
    counts.update({
        "concepts": len(concepts), "train_concepts": len(concepts) - val_concept_count,
        "val_concepts": val_concept_count, "emoji_images_per_style": per_style,
        "emoji_variants_dropped": dropped_variants, "openmoji_images": len(zeroshot_concepts),
        # Drops are counted over the whole package, before --max-clipart subsets the rest.
        "clipart_kept": len(drawings), "clipart_dropped": sum(dropped_clipart.values()),
        "clipart_dropped_by_reason": dict(sorted(dropped_clipart.items())),
        "zeroshot_concepts_classes": zeroshot["concepts"]["classes"],
        "zeroshot_subgroups_classes": zeroshot["subgroups"]["classes"],
        "zeroshot_subgroups_images": zeroshot["subgroups"]["images"],
    })  # fmt: skip
    source_counts = {
        "emoji-datasource-google": per_style, "emoji-datasource-twitter": per_style,
        "openmoji": len(zeroshot_concepts), "emojibase-data": len(concepts),
        "openclipart-svg": len(drawings), "openclipart-png": len(drawings),
    }  # fmt: skip
    meta = {
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
        "build_seconds": round(time.perf_counter() - started, 1),
    }
    atomic_write_text(tmp / "corpus.json", json.dumps(meta, indent=2) + "\n")  # last: complete
    _check_replaceable(out)
    if out.exists():  # an older corpus (other options): swap, then delete it
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old)
    else:
        tmp.rename(out)
    return {**_files(out), "counts": counts, "cached": False}
