"""Open Clip Art Library drawings (Debian ``openclipart-svg`` / ``openclipart-png``) with captions.

Pixels come from the PNG package (pre-rendered: ~15 ms an image against ~40 ms, and up to
seconds, to rasterise the SVG), except for the 16 PNGs rendered at over
:data:`MAX_PNG_PIXELS` (up to 20,990×29,700: seconds and gigabytes to decode), which are
rasterised from their SVG instead; text comes from the SVG's RDF metadata: ``dc:title``,
``dc:description`` and the ``dc:subject`` keywords.

Many titles name a collection, not the drawing (1,375 stars titled ``gramastar``, 552
icons titled ``Part of the Flat Icon Collection (...)``), or a file (``jigsaw_red_10``). A
drawing is dropped when its title is empty, a placeholder, file-name-like, or shared by at
least :data:`COLLECTION_TITLE_MIN_FILES` drawings; :func:`load_clipart` counts the drops by
reason.
"""

from __future__ import annotations

import html
import os
import re
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from .emoji import caption

CLIPART_IMAGE_SIZE = 128
MAX_PNG_PIXELS = 4_000_000  # larger renders are decoded from the SVG instead
COLLECTION_TITLE_MIN_FILES = 15  # a title on this many drawings names a collection
MAX_DESCRIPTION_WORDS = 12  # longer descriptions are prose about the file, not the picture
PLACEHOLDER_TITLES = {"untitled", "unnamed", "drawing", "image", "clipart", "svg", "new document"}
IGNORED_KEYWORDS = {"hash", "icon", "icons", "theme", "clipart", "clip art", "svg", "image"}

_TITLE = re.compile(rb"<dc:title>(.*?)</dc:title>", re.S)
_DESCRIPTION = re.compile(rb"<dc:description>(.*?)</dc:description>", re.S)
_SUBJECT = re.compile(rb"<dc:subject>(.*?)</dc:subject>", re.S)
_LIST_ITEM = re.compile(rb"<rdf:li>(.*?)</rdf:li>", re.S)
_AUTHOR_PREFIX = re.compile(r"^clip ?art by [^-]+ - ")  # "Clipart by Nicu Buculei - pear"
_FILE_NAME = re.compile(r"(\S+\.(svg|png|jpe?g|eps|ai|wmf))|([\w.-]*[\d_][\w.-]*)")


@dataclass(frozen=True)
class Clipart:
    """A kept drawing: ``key`` (``clipart/<path without suffix>``), the image to read (the
    PNG, or the SVG where the PNG is huge), its caption and its lower-cased title."""

    key: str
    image: Path
    caption: str
    title: str


def png_pixels(path: Path) -> int:
    """Width × height from a PNG's header, without decoding (or bomb-checking) it."""
    with open(path, "rb") as f:
        header = f.read(24)  # 8-byte signature, IHDR length and type, then width, height
    width, height = struct.unpack(">II", header[16:24])
    return width * height


def _text(raw: bytes) -> str:
    text = html.unescape(raw.decode("utf-8", errors="replace"))
    return " ".join(text.split())


def _metadata(svg: Path) -> tuple[str, str, list[str]]:
    """(title, description, keywords) of an SVG, lower-cased; empty where absent."""
    data = svg.read_bytes()
    title = _TITLE.search(data)
    description = _DESCRIPTION.search(data)
    subject = _SUBJECT.search(data)
    keywords = [_text(k).lower() for k in _LIST_ITEM.findall(subject.group(1))] if subject else []
    return (
        _AUTHOR_PREFIX.sub("", _text(title.group(1)).lower()) if title else "",
        _text(description.group(1)).lower() if description else "",
        keywords,
    )


def _title_problem(title: str, title_files: Counter) -> str | None:
    """Why ``title`` cannot caption a drawing, or None when it can."""
    if not title:
        return "empty title"
    if title in PLACEHOLDER_TITLES:
        return "placeholder title"
    if _FILE_NAME.fullmatch(title):
        return "file-name-like title"
    if title_files[title] >= COLLECTION_TITLE_MIN_FILES:
        return "collection title"
    return None


def load_clipart(svg_root: Path, png_root: Path) -> tuple[list[Clipart], Counter]:
    """Drawings with a usable title, sorted by key, and the dropped ones counted by reason.

    Args:
        svg_root: ``.../usr/share/openclipart/svg`` (metadata).
        png_root: ``.../usr/share/openclipart/png`` (pixels, same relative paths).

    Symbolic links (the packages file some drawings under two categories) and drawings whose
    PNG is another's are read once.
    """
    records, seen_png = [], set()
    dropped: Counter = Counter()
    for svg in sorted(svg_root.rglob("*.svg")):
        relative = svg.relative_to(svg_root).with_suffix("")
        png = png_root / relative.with_suffix(".png")
        if svg.is_symlink():
            continue
        if not png.is_file():
            dropped["no png"] += 1
            continue
        real = os.path.realpath(png)
        if real in seen_png:
            dropped["duplicate image"] += 1
            continue
        seen_png.add(real)
        image = svg if png_pixels(png) > MAX_PNG_PIXELS else png
        records.append((relative.as_posix(), image, *_metadata(svg)))
    title_files = Counter(title for _, _, title, _, _ in records)
    kept = []
    for relative, image, title, description, keywords in records:
        problem = _title_problem(title, title_files)
        if problem:
            dropped[problem] += 1
            continue
        head = title
        if description and description != title and not re.search(r"http|www\.|@", description):
            if len(description.split()) <= MAX_DESCRIPTION_WORDS:
                head = f"{title} - {description}"
        words = [k for k in keywords if k not in IGNORED_KEYWORDS]
        kept.append(Clipart(f"clipart/{relative}", image, caption(head, words), title))
    return kept, dropped
