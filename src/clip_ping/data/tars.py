"""WebDataset tar shards: reading members, and the key index that gives every sample of a
list of shards its stable index (position in "shards in list order, then members in tar
order"), cached beside the shards.

Shards follow img2dataset's layout: ``KEY.jpg|.png|.webp`` + ``KEY.txt`` (+ ``KEY.json``).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import os
import tarfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import braceexpand
from PIL import Image

from ..io import atomic_write_text
from .bad_samples import (
    BadSample,
    check_caption,
    decode_image,
)
from .datasets import IMAGE_EXTENSIONS, KEY_INDEX_FORMAT, TEXT_EXTENSION

log = logging.getLogger("clip_ping")


def expand_urls(spec: str | Sequence[str]) -> list[str]:
    """Shard URLs from ``"a/{00000..00009}.tar::b/{0..3}.tar"`` or a list of such strings."""
    specs = [spec] if isinstance(spec, str) else list(spec)
    urls = []
    for part in itertools.chain.from_iterable(s.split("::") for s in specs):
        if part.strip():
            urls.extend(braceexpand.braceexpand(part.strip()))
    return urls


def local_path(url: str) -> Path | None:
    """The file behind ``url``, or None for ``pipe:`` and remote URLs."""
    if url.startswith("file:"):  # file:///abs/x.tar or file:rel/x.tar
        return Path(url.removeprefix("file:").removeprefix("//")).expanduser()
    if url.startswith("pipe:") or "://" in url:
        return None
    return Path(url).expanduser()


def shard_name(url: str) -> str:
    # Local shards are matched by file name, so a moved corpus keeps its key index.
    path = local_path(url)
    return path.name if path is not None else url


def _not_a_shard(url: str, exc: Exception) -> ValueError:
    """The error for a shard that is no tar file (a CSV read as shards, most often)."""
    path = local_path(url)
    if path is not None and path.suffix.lower() in (".csv", ".tsv"):
        fix = "it is a CSV file: pass --dataset-type csv, or auto (.csv/.tsv are read as CSV)"
    else:
        fix = "WebDataset shards are .tar files of KEY.jpg|png|webp + KEY.txt members"
    return ValueError(f"shard {url} is not a tar archive ({exc}); {fix}")


@contextlib.contextmanager
def _open_tar(url: str) -> Iterator[tarfile.TarFile]:
    path = local_path(url)
    if path is not None:
        # Random access: members we skip are seeked over, not read.
        try:
            tar = tarfile.open(path, mode="r:")
        except tarfile.ReadError as exc:
            raise _not_a_shard(url, exc) from None
        with tar:
            yield tar
        return
    from webdataset.gopen import gopen  # only needed for pipe:/remote URLs

    stream = gopen(url, "rb")
    try:
        try:
            tar = tarfile.open(fileobj=stream, mode="r|")
        except tarfile.ReadError as exc:
            raise _not_a_shard(url, exc) from None
        with tar:
            yield tar
    finally:
        stream.close()


def _split_name(name: str) -> tuple[str, str] | None:
    """``"dir/000012.jpg"`` → ``("dir/000012", "jpg")`` (WebDataset: the key ends at the first
    dot of the file name); None for names that belong to no sample."""
    directory, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    if not dot or not stem:
        return None
    return (f"{directory}/{stem}" if directory else stem), ext.lower()


def decode_shard_sample(
    files: dict[str, bytes], image: bool = True
) -> tuple[Image.Image | None, str]:
    """``(image, caption)`` of a sample from :func:`iter_shard` (image None if not asked
    for); :class:`BadSample` if it is cut, undecodable or has an empty caption."""
    if "error" in files:
        raise BadSample(files["error"].decode())
    caption = check_caption(files[TEXT_EXTENSION])
    if not image:
        return None, caption
    return decode_image(files[next(e for e in IMAGE_EXTENSIONS if e in files)]), caption


def _is_sample(extensions: set[str]) -> bool:
    return TEXT_EXTENSION in extensions and any(e in extensions for e in IMAGE_EXTENSIONS)


def iter_shard(
    url: str, start: int = 0, stop: int | None = None, read: bool = True
) -> Iterator[tuple[int, str, dict[str, bytes]]]:
    """Yield ``(position, key, {ext: bytes})`` for the samples at ``start <= position < stop``
    of one shard. A sample is a run of members sharing a key with an image and a ``.txt``;
    positions count samples only. Members before ``start`` are not read (``read=False``: none
    are, for listing keys).

    A shard cut short (an interrupted download) ends at the cut with a warning; the sample
    it cut through is yielded with ``files["error"]`` set, read or not, so listing and
    reading agree on positions."""
    position, key, files, extensions = 0, None, {}, set()
    with _open_tar(url) as tar:
        for member in itertools.chain(_members(tar, url), [None]):  # None flushes the last
            if member is not None and member.name == _CUT:
                files["error"] = b"shard cut short inside this sample"
                member = None
            if member is not None:
                parsed = _split_name(member.name) if member.isfile() else None
                if parsed is None:
                    continue
                name_key, ext = parsed
            if member is None or name_key != key:
                if key is not None and _is_sample(extensions):
                    if position >= start:
                        yield position, key, files
                    position += 1
                    if stop is not None and position >= stop:
                        return
                if member is None:
                    return
                key, files, extensions = name_key, {}, set()
            extensions.add(ext)
            # A sample's position is known at its first member, so skipped ones cost no read.
            if read and position >= start:
                try:
                    files[ext] = tar.extractfile(member).read()
                except tarfile.ReadError:  # data cut; the next header read reports the cut
                    files["error"] = b"shard cut short inside this sample"


_CUT = "\0cut"  # a member name no tar holds: marks where a cut shard ends


def _members(tar: tarfile.TarFile, url: str) -> Iterator[tarfile.TarInfo]:
    """The shard's members; a cut shard ends with a marker member named :data:`_CUT`."""
    count, fix = 0, "download or write the shard again"
    try:
        for member in tar:
            count += 1
            yield member
    except tarfile.ReadError as exc:  # a member's data ends early
        _cut_short(
            url,
            f"shard {url} is cut short after {count} members ({exc}); the samples after the "
            f"cut are missing and the one cut through is a bad sample: {fix}",
        )
        yield tarfile.TarInfo(_CUT)
        return
    path = local_path(url)
    # tarfile ends quietly at a cut header; a whole archive has end-of-archive blocks there.
    if path is not None and path.stat().st_size - tar.offset < tarfile.BLOCKSIZE:
        _cut_short(
            url,
            f"shard {url} is cut short after {count} members (no end-of-archive block); the "
            f"samples after the cut are missing: {fix}",
        )


_cut_found: dict[str, str] = {}  # shard → its warning, for each cut shard this process read


def _cut_short(url: str, message: str) -> None:
    """Log a cut shard once per process: to the run log (``out.log``) in a training."""
    if url not in _cut_found:
        log.warning(message)
    _cut_found[url] = message


@dataclass(frozen=True)
class KeyIndex:
    """Sample key → stable index over a shard list: shards in list order, members in tar order.

    ``keys[i]`` is the key of stable index ``i``; shard ``s`` holds indices
    ``offsets[s] .. offsets[s] + counts[s] - 1``.
    """

    shards: tuple[str, ...]  # shard names (file names for local shards, else URLs)
    counts: tuple[int, ...]
    keys: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.keys)

    @cached_property
    def offsets(self) -> tuple[int, ...]:
        return tuple(itertools.accumulate(self.counts, initial=0))[:-1]

    @cached_property
    def _index_of_key(self) -> dict[str, int]:
        return {key: i for i, key in enumerate(self.keys)}

    def index_of(self, key: str) -> int:
        try:
            return self._index_of_key[key]
        except KeyError:
            raise KeyError(
                f"sample key {key!r} is not in the key index of {self.shards[:3]}..."
            ) from None


def default_key_index_path(urls: Sequence[str]) -> Path | None:
    """``<first shard's folder>/keys-<hash of the shard list>.json``; None for remote shards."""
    first = local_path(urls[0]) if urls else None
    if first is None:
        return None
    digest = hashlib.sha1("\n".join(shard_name(u) for u in urls).encode()).hexdigest()[:12]
    return first.parent / f"keys-{digest}.json"


def _shard_bytes(urls: Sequence[str]) -> list[int | None]:
    """File size of each local shard (None for remote ones); an error if any is missing."""
    paths = [local_path(url) for url in urls]
    missing = [u for u, p in zip(urls, paths, strict=True) if p is not None and not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"shard {missing[0]} not found ({len(missing)} of {len(urls)} shards missing); "
            "check --train-data: brace ranges like DIR/{00000..00009}.tar must match the "
            "files written (DIR/sizes.json lists them)"
        )
    return [path.stat().st_size if path is not None else None for path in paths]


def build_key_index(
    urls: str | Sequence[str], cache_path: str | os.PathLike | None = None
) -> KeyIndex:
    """Scan the shards once (headers only for local files) and map sample keys to indices.

    The result is cached as JSON (default :func:`default_key_index_path`) and reloaded while
    the shard names and local file sizes match; a stale cache is rebuilt.
    """
    urls = expand_urls(urls)
    if not urls:
        raise ValueError("no shards given; pass shard paths like DIR/{00000..00009}.tar")
    names = [shard_name(u) for u in urls]
    sizes = _shard_bytes(urls)
    cache = Path(cache_path) if cache_path is not None else default_key_index_path(urls)
    if cache is not None and cache.is_file():
        stored = json.loads(cache.read_text())
        if (
            stored.get("format") == KEY_INDEX_FORMAT
            and stored["shards"] == names
            and stored["bytes"] == sizes
        ):
            for url, message in stored.get("cut", {}).items():  # each process that uses it
                _cut_short(url, message)
            return KeyIndex(tuple(names), tuple(stored["counts"]), tuple(stored["keys"]))

    counts, keys = [], []
    for url in urls:
        _cut_found.pop(url, None)  # scanned anew: warned anew
        shard_keys = [key for _, key, _ in iter_shard(url, read=False)]
        counts.append(len(shard_keys))
        keys.extend(shard_keys)
    if len(set(keys)) != len(keys):
        seen, duplicate = set(), None
        for key in keys:
            if key in seen:
                duplicate = key
                break
            seen.add(key)
        raise ValueError(
            f"sample key {duplicate!r} occurs more than once in {len(urls)} shards; keys must "
            "be unique across shards for stable sample indices (rewrite the shards)"
        )
    index = KeyIndex(tuple(names), tuple(counts), tuple(keys))
    if cache is not None:
        cut = {url: _cut_found[url] for url in urls if url in _cut_found}
        payload = {"format": KEY_INDEX_FORMAT, "shards": names, "bytes": sizes, "cut": cut}
        payload.update(counts=counts, keys=keys)
        try:
            atomic_write_text(cache, json.dumps(payload))
        except OSError as exc:  # read-only dataset folder: work on, rescan next time
            warnings.warn(f"could not cache the key index at {cache}: {exc}", stacklevel=2)
    return index
