"""Each run's embeddings of an evaluation set, computed once and cached beside the run.

The cache is ``RUN/explore/<set name>.pt``. It is reused only while its fingerprint matches:
a hash of the student's weights (any new checkpoint changes it) and of the set (its spec,
captions, labels, class names, and each image file's path, size and modification time).
Anything else recomputes it; a run folder that cannot be written is used without a cache.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import UserError
from ..evaluation.datasets import EvalDataset, ImageArrays, ImageFiles, load_eval_dataset
from ..evaluation.features import encode_images, encode_texts
from ..evaluation.run import run_results
from ..evaluation.zeroshot import class_embeddings
from ..io import atomic_torch_save

log = logging.getLogger("clip_ping")
CACHE_DIR = "explore"
CACHE_FORMAT = "clip-ping-explore/1"


@dataclass
class SetSpec:
    """How to read the evaluation set (the ``clip-ping eval`` flags of the same names)."""

    dataset: str
    classnames: str | None = None
    templates: str | None = None
    csv_img_key: str = "filepath"
    csv_caption_key: str = "title"
    csv_separator: str | None = None

    def load(self, preprocess) -> EvalDataset:
        return load_eval_dataset(
            self.dataset,
            preprocess,
            split="test",
            classnames=self.classnames,
            templates=self.templates,
            csv_img_key=self.csv_img_key,
            csv_caption_key=self.csv_caption_key,
            csv_separator=self.csv_separator,
        )


@dataclass
class RunEmbeddings:
    """One run: its name, folder, metrics, model, and the set's embeddings."""

    name: str
    path: Path
    model: torch.nn.Module
    tokenizer: object
    images: torch.Tensor  # (N, D) normalised
    captions: torch.Tensor | None  # (T, D) normalised, None for a set without captions
    classes: torch.Tensor | None  # (C, D) zero-shot class embeddings, None without classes
    metrics: dict[str, float] = field(default_factory=dict)
    cached: bool = False

    @torch.no_grad()
    def encode_query(self, text: str) -> torch.Tensor:
        """``(D,)`` normalised embedding of a typed query: one text-tower forward."""
        return encode_texts(self.model, self.tokenizer, [text])[0]


def image_sources(data: EvalDataset) -> list[Path] | None:
    """The image files of a file-backed set, in index order (None for built-in arrays)."""
    if isinstance(data.images, ImageFiles):
        return list(data.images.paths)
    return None


def set_fingerprint(spec: SetSpec, data: EvalDataset) -> str:
    """Hash of what the set's embeddings depend on (see the module docstring)."""
    digest = hashlib.sha1()
    for part in (spec.dataset, data.name, str(len(data)), repr(data.captions)):
        digest.update(part.encode())
    for part in (data.caption_image, data.labels, data.classnames, list(data.templates)):
        digest.update(repr(part).encode())
    sources = image_sources(data)
    if sources is not None:
        for path in sources:
            try:
                stat = path.stat()
                digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}".encode())
            except OSError:
                digest.update(f"{path}|missing".encode())
    elif isinstance(data.images, ImageArrays):
        digest.update(data.images.pixels.tobytes())
    return digest.hexdigest()


def weights_fingerprint(model: torch.nn.Module) -> str:
    """Hash of every tensor of the model's weights."""
    digest = hashlib.sha1()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy())
    return digest.hexdigest()


def cache_path(run: Path, set_name: str) -> Path:
    """``RUN/explore/<set name>.pt``: the run folder of a checkpoint ``.pt`` or of an
    ``hf/`` export too (an export folder stays as exported)."""
    folder = run if run.is_dir() else run.parent
    if folder.name in ("checkpoints", "hf"):
        folder = folder.parent
    return folder / CACHE_DIR / f"{set_name}.pt"


def check_run(path: str | os.PathLike) -> Path:
    """``path`` as a Path, or a one-line error when it is no run folder, ``.pt`` or export."""
    run = Path(path)
    if not run.exists():
        raise UserError(
            f"run {str(path)!r} does not exist; pass a run folder (logs/<name>), a checkpoint "
            ".pt or an hf/ export folder"
        )
    return run


def _encode(model, tokenizer, data: EvalDataset, workers: int) -> dict:
    out: dict = {"images": encode_images(model, data.images, workers=workers)}
    out["captions"] = encode_texts(model, tokenizer, data.captions) if data.captions else None
    out["classes"] = None
    if data.labels is not None and data.classnames is not None:
        out["classes"] = class_embeddings(model, tokenizer, data.classnames, data.templates)
    return out


def embed_run(
    path: str | os.PathLike, spec: SetSpec, name: str | None = None, workers: int = 0
) -> tuple[RunEmbeddings, EvalDataset]:
    """Load the run at ``path`` and the set; the set's embeddings from the cache when its
    fingerprint matches, else encoded (as ``clip-ping eval`` encodes them) and cached."""
    from ..models import load

    run = check_run(path)
    model, preprocess, tokenizer = load(run)
    data = spec.load(preprocess)
    key = {"format": CACHE_FORMAT, "weights": weights_fingerprint(model)}
    key["set"] = set_fingerprint(spec, data)
    cache = cache_path(run, data.name)
    stored = _read_cache(cache)
    cached = stored is not None and stored.get("key") == key
    if cached:
        embeddings = stored
    else:
        embeddings = _encode(model, tokenizer, data, workers)
        _write_cache(cache, {"key": key, **embeddings})
    metrics = run_results(run) if run.is_dir() and (run / "results").is_dir() else {}
    result = RunEmbeddings(
        name=name or run.name,
        path=run,
        model=model,
        tokenizer=tokenizer,
        images=embeddings["images"],
        captions=embeddings["captions"],
        classes=embeddings["classes"],
        metrics=metrics,
        cached=cached,
    )
    return result, data


def _read_cache(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged cache is recomputed, never fatal
        log.warning("explore cache %s is unreadable (%s); recomputing it", path, exc)
        return None


def _write_cache(path: Path, value: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(value, path)
    except OSError as exc:
        log.warning("cannot cache the explorer's embeddings in %s (%s); going on", path, exc)


def unique_names(paths: list[str]) -> list[str]:
    """Display names of the runs: their folder names, made unique with their parents.

    Examples:
        >>> unique_names(["runs/a/clip", "runs/b/clip", "runs/clip-ping"])
        ['a/clip', 'b/clip', 'clip-ping']
    """
    base = [Path(p).name or str(p) for p in paths]
    return [
        "/".join(Path(p).parts[-2:]) if base.count(name) > 1 else name
        for p, name in zip(paths, base, strict=True)
    ]
