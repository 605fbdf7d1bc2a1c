"""Emoji concepts for the demo corpus: Noto (Google) and Twemoji (Twitter) images with CLDR text.

A *concept* is one base emoji with all its variants: the skin tones listed in ``emoji.json``
``skin_variations``, and the gendered forms (``man gesturing OK`` and ``woman gesturing OK``
belong to ``person gesturing OK``; ``man technologist`` to ``technologist``). Variants share
a concept so that a held-out concept never leaks into training through a recoloured copy.

Hexcodes are compared with their ``FE0F`` (emoji presentation selector) parts removed,
because the three packages write them differently (``00A9-FE0F`` vs ``00A9``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

EMOJI_STYLES = ("google", "twitter")
EMOJI_IMAGE_SIZE = 64  # emoji-datasource's img/<style>/64 folder
SKIN_TONES = {  # fallback variant labels where emojibase has none (CLDR wording)
    "1F3FB": "light skin tone",
    "1F3FC": "medium-light skin tone",
    "1F3FD": "medium skin tone",
    "1F3FE": "medium-dark skin tone",
    "1F3FF": "dark skin tone",
}
GENDER_SIGNS = ("2640", "2642")  # ♀ ♂ after a zero-width joiner make the gendered forms
MAN_WOMAN = ("1F468", "1F469")
PERSON = "1F9D1"
COMPONENT_CATEGORY = "Component"  # skin-tone swatches and hair parts, not pictures
MAX_CAPTION_WORDS = 30


def normalise_hexcode(hexcode: str) -> str:
    """``"00a9-fe0f"`` → ``"00A9"``: upper case, presentation selectors dropped."""
    return "-".join(part for part in hexcode.upper().split("-") if part != "FE0F")


def caption(label: str, keywords: list[str], max_words: int = MAX_CAPTION_WORDS) -> str:
    """``label: kw1, kw2, ...`` with keywords de-duplicated, added while ≤ ``max_words``.

    A label that already holds a colon (``waving hand: medium skin tone``) continues with a
    comma so a caption has one colon.
    """
    seen, kept = {label}, []
    words = len(label.split())
    for keyword in keywords:
        keyword = " ".join(keyword.lower().replace("_", " ").split())
        if not keyword or keyword in seen:
            continue
        if words + len(keyword.split()) > max_words:
            break
        seen.add(keyword)
        kept.append(keyword)
        words += len(keyword.split())
    if not kept:
        return label
    return label + (", " if ":" in label else ": ") + ", ".join(kept)


@dataclass(frozen=True)
class EmojiVariant:
    """One emoji image name (``1f44b-1f3fd``) shared by both styles, with its caption."""

    stem: str
    caption: str


@dataclass
class Concept:
    """A base emoji and its variants. ``base`` (normalised hexcode) decides the split;
    ``label`` (lowercased CLDR label) is its class name and the start of its captions."""

    base: str
    label: str
    subgroup: str
    variants: list[EmojiVariant] = field(default_factory=list)
    openmoji: Path | None = None  # OpenMoji's colour SVG of the base emoji


def _concept_base(hexcode: str, known: set[str]) -> str:
    """The hexcode of the concept ``hexcode`` belongs to (itself unless a gendered form)."""
    parts = hexcode.split("-")
    ungendered: list[str] = []
    i = 0
    while i < len(parts):
        if parts[i] == "200D" and i + 1 < len(parts) and parts[i + 1] in GENDER_SIGNS:
            i += 2
            continue
        ungendered.append(parts[i])
        i += 1
    candidates = []
    if len(ungendered) > 1 and ungendered[0] in MAN_WOMAN and ungendered[1] == "200D":
        candidates.append("-".join([PERSON, *ungendered[1:]]))
    candidates.append("-".join(ungendered))
    return next((c for c in candidates if c in known and c != hexcode), hexcode)


def _read_json(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def load_concepts(
    datasource: dict[str, Path], emojibase: Path, openmoji: Path
) -> tuple[list[Concept], int]:
    """Concepts with an image of every variant in every style, sorted by ``base``.

    Args:
        datasource: style → ``emoji-datasource-<style>`` package folder.
        emojibase: ``emojibase-data`` package folder (CLDR labels and keywords).
        openmoji: ``openmoji`` package folder.

    Returns:
        (concepts, number of variants dropped for a missing image in some style).
    """
    cldr: dict[str, dict] = {}
    for entry in _read_json(emojibase / "en" / "data.json"):
        cldr[normalise_hexcode(entry["hexcode"])] = entry
        for skin in entry.get("skins") or ():
            cldr[normalise_hexcode(skin["hexcode"])] = skin
    entries = {
        style: {normalise_hexcode(e["unified"]): e for e in _read_json(folder / "emoji.json")}
        for style, folder in datasource.items()
    }
    first = entries[EMOJI_STYLES[0]]
    known = {h for h, e in first.items() if e["category"] != COMPONENT_CATEGORY}
    openmoji_svgs = {
        normalise_hexcode(e["hexcode"]): openmoji / "color" / "svg" / f"{e['hexcode']}.svg"
        for e in _read_json(openmoji / "data" / "openmoji.json")
    }

    def has_image(style: str, hexcode: str, image: str, flags: dict) -> bool:
        path = datasource[style] / "img" / style / str(EMOJI_IMAGE_SIZE) / image
        return hexcode in entries[style] and flags.get(f"has_img_{style}", False) and path.is_file()

    concepts: dict[str, Concept] = {}
    dropped = 0
    for hexcode in sorted(known):
        entry = first[hexcode]
        info = cldr.get(hexcode, {})
        label = info.get("label", entry["name"]).lower()
        keywords = list(info.get("tags") or ()) + list(entry.get("short_names") or ())
        base = _concept_base(hexcode, known)
        if base not in concepts:
            base_entry, base_info = first[base], cldr.get(base, {})
            concepts[base] = Concept(
                base=base,
                label=base_info.get("label", base_entry["name"]).lower(),
                subgroup=base_entry["subcategory"],
                openmoji=openmoji_svgs.get(base),
            )
        forms = [(hexcode, entry, label)]
        for tones, skin in sorted((entry.get("skin_variations") or {}).items()):
            skin_hex = normalise_hexcode(skin["unified"])
            tone_names = ", ".join(SKIN_TONES.get(t, t) for t in tones.split("-"))
            fallback = f"{label}: {tone_names}"
            forms.append((skin_hex, skin, cldr.get(skin_hex, {}).get("label", fallback).lower()))
        for _, flags, form_label in forms:
            if not all(has_image(s, hexcode, flags["image"], flags) for s in datasource):
                dropped += 1
                continue
            stem = Path(flags["image"]).stem.lower()
            concepts[base].variants.append(EmojiVariant(stem, caption(form_label, keywords)))
    kept = [c for _, c in sorted(concepts.items()) if c.variants]
    return kept, dropped
