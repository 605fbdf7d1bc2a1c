"""Bad samples: unreadable, truncated or oversized images, missing files, empty captions.

Readers call :func:`decode_image` and :func:`check_caption`, which raise :class:`BadSample`
with the reason. What happens next is the ``--on-bad-sample`` policy:

- ``skip`` (default for training and bank builds): the reader returns a marker instead of
  the sample (:func:`bad_record`); :func:`collate_good` leaves it out of its batch, and
  :class:`BadSampleLog` logs it with its key and counts it. More distinct bad samples than
  ``--max-bad-share`` of the data stops the run: past that, the corpus itself is broken.
- ``error``: the first bad sample stops the run, naming its key and the reason.

A batch with skipped samples is smaller than ``--batch-size``; the contrastive losses take
any batch size and neighbour guidance indexes by sample index, so nothing else changes.
"""

from __future__ import annotations

import io
import logging
import os
import stat
import warnings
from pathlib import Path
from typing import IO

import torch
from PIL import Image
from torch.utils.data import default_collate

BAD_SAMPLE_POLICIES = ("skip", "error")
DEFAULT_MAX_BAD_SHARE = 0.01
# Larger images are refused as decompression bombs: a few KB of PNG can claim gigapixels.
# (PIL's own default; 89.5 M pixels is a 9,459² image, 268 MB as RGB.)
MAX_IMAGE_PIXELS = 89_478_485
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS

log = logging.getLogger("clip_ping")


class BadSample(ValueError):
    """A sample that cannot be used; ``reason`` says why (without the sample's name)."""

    def __init__(self, reason: str, where: str = ""):
        self.reason, self.where = reason, where
        fix = "fix or remove it, or pass --on-bad-sample skip to leave such samples out"
        super().__init__(f"{where}: {reason}; {fix}" if where else reason)

    def at(self, where: str) -> BadSample:
        """The same error, naming the sample (``"image x.png (row 3 of train.csv)"``)."""
        return BadSample(self.reason, where)


def check_policy(on_bad_sample: str, max_bad_share: float = DEFAULT_MAX_BAD_SHARE) -> None:
    if on_bad_sample not in BAD_SAMPLE_POLICIES:
        raise ValueError(
            f"--on-bad-sample {on_bad_sample!r}: choose one of {', '.join(BAD_SAMPLE_POLICIES)}"
        )
    if not 0 <= max_bad_share < 1:
        raise ValueError(f"--max-bad-share {max_bad_share}: use a fraction in [0, 1), e.g. 0.01")


def decode_image(source: bytes | str | os.PathLike) -> Image.Image:
    """Open and fully decode an image file or its bytes; :class:`BadSample` if it is missing,
    unreadable, truncated or larger than :data:`MAX_IMAGE_PIXELS`."""
    try:
        with warnings.catch_warnings():
            # PIL only warns between 1× and 2× its limit; any excess is a bomb to us.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with _open(source) as file, Image.open(file) as image:
                width, height = image.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise Image.DecompressionBombError(f"{width}×{height} pixels")
                image.load()
                return image
    except BadSample:
        raise
    except FileNotFoundError:
        raise BadSample("file not found") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadSample(
            f"image larger than MAX_IMAGE_PIXELS = {MAX_IMAGE_PIXELS:,} pixels (a decompression "
            f"bomb?): {exc}"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # PIL reports a truncated or corrupt file as OSError, some plugins as SyntaxError.
        raise BadSample(f"unreadable or truncated image ({type(exc).__name__}: {exc})") from None


def _open(source: bytes | str | os.PathLike) -> IO[bytes]:
    """``source`` as a file to read: its bytes, or the file at that path if it is a regular
    file, else :class:`BadSample`. Opened without blocking: a FIFO listed as an image would
    wait forever for a writer."""
    if isinstance(source, bytes):
        return io.BytesIO(source)
    path = source
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise BadSample("not a regular file (a FIFO, device or folder); list image files only")
    return os.fdopen(fd, "rb")


def check_caption(caption: str | bytes | None) -> str:
    """The caption, stripped; :class:`BadSample` if it is missing, empty or not UTF-8 text."""
    if caption is None:
        raise BadSample("no caption (the row has fewer fields than the header)")
    if isinstance(caption, bytes):
        try:
            caption = caption.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadSample(f"caption is not UTF-8 text ({exc})") from None
    caption = caption.strip()
    if not caption:
        raise BadSample("empty caption")
    return caption


def bad_record(index: int, key: str, reason: str) -> dict:
    """What a reader returns for a skipped sample (:func:`collate_good` takes it out)."""
    return {"bad": reason, "index": index, "key": key}


def collate_good(samples: list[dict]) -> dict:
    """``default_collate`` of the good samples, plus ``"bad_samples"``: ``[(index, key,
    reason)]`` of the skipped ones. All bad: ``{"index": (0,) long, "bad_samples": [...]}``."""
    good = [s for s in samples if "bad" not in s]
    batch = default_collate(good) if good else {"index": torch.empty(0, dtype=torch.long)}
    batch["bad_samples"] = [(s["index"], s["key"], s["bad"]) for s in samples if "bad" in s]
    return batch


class BadSampleLog:
    """Logs each skipped sample once (with its key) and stops past the allowed share.

    ``skipped`` counts every skip (a bad sample is skipped again each epoch); the share
    compares *distinct* bad samples with ``max_bad_share × num_samples``.
    """

    def __init__(self, num_samples: int, max_bad_share: float, source: str, state: dict | None):
        self.num_samples, self.max_bad_share, self.source = num_samples, max_bad_share, source
        state = state or {}
        self.indices: set[int] = set(state.get("indices", []))
        self.skipped: int = state.get("skipped", 0)

    def record(self, bad_samples: list[tuple[int, str, str]]) -> None:
        for index, key, reason in bad_samples:
            self.skipped += 1
            if index not in self.indices:
                self.indices.add(index)
                log.warning("skipped bad sample %r (index %d): %s", key, index, reason)
        allowed = self.max_bad_share * self.num_samples
        if len(self.indices) > allowed:
            raise ValueError(
                f"{len(self.indices):,} of the {self.num_samples:,} samples of {self.source} "
                f"are bad (more than --max-bad-share {self.max_bad_share} allows); the last: "
                f"{bad_samples[-1][1]!r}: {bad_samples[-1][2]}. Repair the data, or raise "
                "--max-bad-share if skipping that many is acceptable"
            )

    def state_dict(self) -> dict:
        return {"indices": sorted(self.indices), "skipped": self.skipped}


def inside_root(root: Path, relative: str) -> Path:
    """``root / relative``, or :class:`BadSample` if it points outside ``root`` (an absolute
    path, ``..`` or a symlink leading out)."""
    path = root / relative
    resolved, base = path.resolve(), root.resolve()
    if not resolved.is_relative_to(base):
        raise BadSample(f"path {relative!r} leads outside the data root {root}")
    return path
