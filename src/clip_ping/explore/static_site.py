"""``clip-ping explore --static DIR``: the pages for the set's own captions, as a folder that
opens from disk without a server (``DIR/index.html``).

Every answer the server would give for a caption of the set, an image of the set, the
disagreements and the zero-shot tables is computed here once and written to ``data.js``
(a script, since a page opened from disk may not fetch files); the search box then filters
the set's captions. The set's images (and the training images the teachers' neighbours
show) are copied under ``DIR/images/`` (or, with ``copy_images=False``, shown where they are).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..io import atomic_write_text
from .explorer import DEFAULT_K, MAX_PAGE, Explorer
from .server import WEB_FILES, web_file


def static_payload(explorer: Explorer, k: int = DEFAULT_K) -> dict:
    """Everything the page shows, keyed as the server's API answers it."""
    meta = explorer.meta()
    searches = {text: explorer.search(text, k) for text in explorer.rows_of_text}
    views = [explorer.image_view(i, k) for i in range(len(explorer.data))]
    payload = {"meta": meta, "search": searches, "image": views}
    if explorer.ranks:
        total = len(explorer.order)
        pages = [explorer.disagreements(o, MAX_PAGE) for o in range(0, total, MAX_PAGE)]
        first = pages[0] if pages else {"counts": {}, "rows": []}
        first["rows"] = [row for page in pages for row in page["rows"]]
        payload["disagreements"] = first
    if explorer.has_zeroshot:
        payload["zeroshot"] = explorer.zeroshot()
    return payload


def _place(source: Path, out: Path, name: str, copy: bool) -> str:
    """The address of ``source`` from the page in ``out``: a copy in ``out/images/``, or the
    file where it is (a relative path: the folder then opens only where it was written)."""
    if not copy:
        return Path(os.path.relpath(source, out)).as_posix()
    shutil.copyfile(source, out / "images" / name)
    return f"images/{name}"


def _copy_images(explorer: Explorer, out: Path, payload: dict, copy: bool) -> None:
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    files = []
    for index in range(len(explorer.data)):
        png = explorer.image_png(index)
        source = explorer.image_file(index)
        if png is not None:
            (images / f"{index}.png").write_bytes(png)
            files.append(f"images/{index}.png")
        elif source is not None:
            files.append(_place(source, out, f"{index}{source.suffix.lower()}", copy))
        else:
            files.append("")  # refused (outside the set's folder) or missing: shown as absent
    payload["image_files"] = files
    rows = {
        n["row"]
        for view in payload["image"]
        for near in view.get("nearest_training", [])
        for n in [near, *near["image_neighbours"]]
    }
    train = {}
    for row in sorted(rows):
        source = explorer.train_file(row)
        if source is not None:
            train[str(row)] = _place(source, out, f"train-{row}{source.suffix.lower()}", copy)
    payload["train_files"] = train


def write_static(
    explorer: Explorer, out: str | Path, k: int = DEFAULT_K, copy_images: bool = True
) -> Path:
    """Write the static explorer of ``explorer`` into ``out``; returns ``out/index.html``.
    ``copy_images=False`` points the page at the image files where they are instead of
    copying them (cheaper; the folder then works only beside them)."""
    out = Path(out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    payload = static_payload(explorer, k)
    _copy_images(explorer, out, payload, copy_images)
    script = "window.EXPLORE_DATA = " + json.dumps(payload, separators=(",", ":")) + ";\n"
    atomic_write_text(out / "data.js", script)
    for name, _ in {v for v in WEB_FILES.values()}:
        (out / name).write_bytes(web_file(name))
    return out / "index.html"
