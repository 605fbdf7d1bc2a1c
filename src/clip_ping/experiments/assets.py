"""The demo corpus's source packages (npm, Debian): what each is, its licence, and where
``make assets`` unpacks it (``.assets/``, or ``$CLIP_PING_ASSETS``, or ``--assets``)."""

from __future__ import annotations

import gzip
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

ASSETS_ENV = "CLIP_PING_ASSETS"
DEFAULT_ASSETS = ".assets"


@dataclass(frozen=True)
class Source:
    package: str
    manager: str  # "npm" or "debian"
    version: str  # the pinned version (npm); Debian's is read from the unpacked package
    licence: str
    url: str


_EMOJI_DATA = "https://github.com/iamcal/emoji-data"
_CLDR = "MIT (data from Unicode CLDR, Unicode License)"
_CC0 = "public domain (CC0)"
# package: (manager, version, licence, url)
_TABLE = {
    "emoji-datasource-google": ("npm", "16.0.0", "Apache-2.0 (Noto Emoji images)", _EMOJI_DATA),
    "emoji-datasource-twitter": ("npm", "16.0.0", "CC-BY-4.0 (Twemoji images)", _EMOJI_DATA),
    "openmoji": ("npm", "17.0.0", "CC-BY-SA-4.0", "https://openmoji.org"),
    "emojibase-data": ("npm", "17.0.0", _CLDR, "https://emojibase.dev"),
    "openclipart-svg": ("debian", "", _CC0, "https://openclipart.org"),
    "openclipart-png": ("debian", "", _CC0, "https://openclipart.org"),
}
SOURCES = {package: Source(package, *row) for package, row in _TABLE.items()}


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
