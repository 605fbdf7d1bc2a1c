"""Feature banks: the training set embedded once by frozen teachers, and its neighbour tables.

- :mod:`.store`: the bank folder's one owner: file names, :class:`Bank` (reading,
  validation, neighbour tables), :class:`TeacherSpec`, :func:`write_neighbor_table`.
- :mod:`.samples`: the training data by stable index, and its fingerprint.
- :mod:`.build`: extraction (``clip-ping bank build``), resumable, under torchrun too.
- :mod:`.mine`: exact and FAISS top-K neighbours (``clip-ping bank neighbors``).
"""

from .build import DEFAULT_CHUNK_ROWS, build_bank
from .mine import (
    BACKENDS,
    NeighborResult,
    caption_groups,
    drop_same_group,
    exact_search,
    mine_bank,
    mine_neighbors,
    search_vectors,
)
from .samples import Fingerprint, SampleReader, dataset_fingerprint
from .store import (
    BANK_FORMAT,
    FEATURES,
    META,
    NEIGHBORS,
    NEIGHBORS_META,
    PROGRESS,
    SIMILARITIES,
    Bank,
    TeacherSpec,
    has_neighbor_table,
    open_array,
    write_neighbor_table,
)

__all__ = [
    "BACKENDS",
    "BANK_FORMAT",
    "DEFAULT_CHUNK_ROWS",
    "FEATURES",
    "META",
    "NEIGHBORS",
    "NEIGHBORS_META",
    "PROGRESS",
    "SIMILARITIES",
    "Bank",
    "Fingerprint",
    "NeighborResult",
    "SampleReader",
    "TeacherSpec",
    "build_bank",
    "caption_groups",
    "dataset_fingerprint",
    "drop_same_group",
    "exact_search",
    "has_neighbor_table",
    "mine_bank",
    "mine_neighbors",
    "open_array",
    "search_vectors",
    "write_neighbor_table",
]
