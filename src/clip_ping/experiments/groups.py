"""Groups of the demo corpus: what must stay on one side of every split.

A split of single images leaks: the same drawing under another title, a recolour, the woman
dancing beside the man dancing. The demo corpus therefore splits *groups*, the connected
components of these links (:class:`DisjointSets`):

- **emoji concept**: a base emoji with its skin tones and ♀/♂ sequences (:mod:`.emoji`);
- **emoji counterparts**: concepts whose labels agree once gender and age words are read as
  one word (:func:`emoji_group_key`): ``boy``/``girl``/``child``/``baby``/``man``/
  ``old woman``/``person`` ..., ``man dancing``/``woman dancing``, ``pregnant man``/
  ``pregnant woman``/``pregnant person``, ``men’s room``/``women’s room``, ``female sign``/
  ``male sign``, ``prince``/``princess``/``person with crown``, the three Clauses, the four
  ``holding hands``; and every ``family: ...``, ``kiss: ...``, ``couple with heart: ...``,
  ``person: <hair>`` and ``...: facing right`` label with its head;
- **same name**: drawings whose titles agree once lower-cased with digits and punctuation
  removed (:func:`title_key`: ``candy 21`` and ``Candy-22`` are ``candy``), and an emoji
  concept whose label agrees with such a title (:func:`name_key`: the ``bacon`` emoji and a
  drawing titled ``Bacon``: one concept in two sources);
- **near-duplicate image**: any two images (emoji or clip-art, any style) whose edge maps
  correlate at :data:`NEAR_DUPLICATE_THRESHOLD` or more (:func:`edge_signature`);
- **same caption**: rows with the same caption text.

The edge signature is the gradient magnitude of the 64-px grayscale image pooled to 32×32,
mean-centred and L2-normalised, so the correlation of two signatures ignores colour: a
recolour (an orange and a red balloon, a drawing and its black-and-white copy) scores as
high as a copy. The threshold was measured on the demo corpus's clip-art: of 24 random
pairs with different titles in each band, the same drawing or a recolour made up 16 in
[0.90, 0.95), 12 in [0.85, 0.90) and 3 in [0.80, 0.85) (the others: flags or signs on a
shared template). Plain grayscale correlation could not separate them: different flags of
one layout correlate at 0.95–0.97.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

import numpy as np
from PIL import Image

NEAR_DUPLICATE_THRESHOLD = 0.85
SIGNATURE_SIZE = 32  # pooled edge map side: 1,024 numbers per image

# Gender and age words read as one word; "and"/"two" then fall away ("two women holding
# hands", "woman and man holding hands" and "people holding hands" agree).
_PERSON_WORDS = set(
    "man woman men women person people boy girl child adult baby male female".split()
)
_WORD_MAP = {
    **dict.fromkeys(_PERSON_WORDS, "person"),
    **dict.fromkeys(("man's", "woman's", "men's", "women's"), "person's"),
    **dict.fromkeys(("prince", "princess"), "royal"),
}
_DROPPED_WORDS = {"old", "older", "mrs.", "mx", "santa"}  # old man ~ man; mrs. claus ~ claus
_PERSON_FILLERS = {"and", "two"}
_ALIASES = {"person with crown": "royal"}  # the ungendered prince/princess
# "head: tail" labels grouped by their head alone (a family's members, a person's hair).
_GROUPED_HEADS = {"family", "kiss", "couple with heart", "person"}
_GROUPED_TAILS = {"facing right"}  # a mirrored picture of the head's emoji


class DisjointSets:
    """Union-find over ``0..n-1`` (path halving, union by size)."""

    def __init__(self, n: int):
        self.parent = list(range(n))
        self.size = [1] * n

    def find(self, item: int) -> int:
        parent = self.parent
        while parent[item] != item:
            parent[item] = parent[parent[item]]
            item = parent[item]
        return item

    def union(self, a: int, b: int) -> bool:
        """Join the sets of ``a`` and ``b``; True when they were apart."""
        a, b = self.find(a), self.find(b)
        if a == b:
            return False
        if self.size[a] < self.size[b]:
            a, b = b, a
        self.parent[b] = a
        self.size[a] += self.size[b]
        return True

    def union_all(self, items: Sequence[int]) -> int:
        """Join every item of ``items`` into one set; the number of joins made."""
        return sum(self.union(items[0], other) for other in items[1:])

    def components(self) -> list[int]:
        """The root of each item: equal roots, one group."""
        return [self.find(i) for i in range(len(self.parent))]


def emoji_group_key(label: str) -> str:
    """The label with gender and age read away: equal keys are counterparts.

    >>> emoji_group_key("woman dancing") == emoji_group_key("man dancing")
    True
    >>> emoji_group_key("family: man, woman, boy"), emoji_group_key("flag: germany")
    ('family', 'flag: germany')
    """
    label = label.lower().replace("’", "'")
    head, colon, tail = label.partition(": ")
    words = [_WORD_MAP.get(w, w) for w in head.split() if w not in _DROPPED_WORDS]
    if "person" in words:
        words = [w for w in words if w not in _PERSON_FILLERS]
        words = [w for i, w in enumerate(words) if i == 0 or not (w == words[i - 1] == "person")]
    head = " ".join(words)
    head = _ALIASES.get(head, head)
    if colon and (head in _GROUPED_HEADS or tail in _GROUPED_TAILS):
        return head
    return head + colon + tail


def name_key(label: str) -> str:
    """An emoji label without case or punctuation: ``"keycap: 1"`` → ``"keycap 1"``."""
    return " ".join(re.sub(r"[^a-z0-9]+", " ", label.lower()).split())


def title_key(title: str) -> str:
    """A clip-art title without case, digits or punctuation: ``"Candy_21"`` → ``"candy"``."""
    return " ".join(re.sub(r"[^a-z]+", " ", title.lower()).split())


def edge_signature(image: Image.Image) -> np.ndarray:
    """``(1024,)`` float32: pooled edge magnitudes, mean-centred, unit length (see module)."""
    side = 2 * SIGNATURE_SIZE
    gray = np.asarray(
        image.convert("L").resize((side, side), Image.Resampling.BOX), dtype=np.float32
    )
    gx = np.zeros_like(gray)
    gy = np.zeros_like(gray)
    gx[:, 1:-1] = gray[:, 2:] - gray[:, :-2]
    gy[1:-1] = gray[2:] - gray[:-2]
    pooled = np.hypot(gx, gy).reshape(SIGNATURE_SIZE, 2, SIGNATURE_SIZE, 2).mean(axis=(1, 3))
    flat = pooled.ravel() - pooled.mean()
    norm = float(np.linalg.norm(flat))
    return flat / norm if norm > 1e-6 else flat  # a blank image matches nothing


def near_duplicates(
    signatures: np.ndarray,
    threshold: float = NEAR_DUPLICATE_THRESHOLD,
    against: np.ndarray | None = None,
    block: int = 2048,
) -> Iterator[tuple[int, int, float]]:
    """``(i, j, correlation)`` of every pair at ``threshold`` or above.

    Without ``against``: pairs within ``signatures`` with ``i < j``. With it: ``i`` indexes
    ``signatures`` and ``j`` indexes ``against`` (every pair). Scored in row blocks.
    """
    targets = signatures if against is None else against
    for start in range(0, len(signatures), block):
        scores = signatures[start : start + block] @ targets.T
        rows, cols = np.nonzero(scores >= threshold)
        for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
            i = start + r
            if against is None and c <= i:
                continue
            yield i, c, float(scores[r, c])
