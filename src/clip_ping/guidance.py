"""The data side of CLIP-PING: draw each anchor's neighbours and fetch their targets.

For a batch of anchors with stable sample indices ``(B,)`` this module

1. draws one image neighbour n_I(k) and one caption neighbour n_T(k) uniformly from the
   top-K rows of the precomputed tables (K = 1: the nearest);
2. reads the four targets (docs/method.md): in ``bank`` mode the neighbours' frozen
   teacher features (only the rows the batch needs, from the memory-mapped banks); in
   ``memory`` mode their latest student embeddings from
   :class:`~clip_ping.memory.StudentMemory`.

**A per-sample transform.** Each anchor's draw is a hash of (seed, epoch, sample index)
alone: it does not depend on the batch, the step, the rank or the worker, so a resumed run
draws what the uninterrupted one drew, however the batches are split across ranks and
micro-batches. With the ``offline`` source the data loader runs it: the loop hands the
loader a :class:`NeighborTransform` (:meth:`NeighborGuidance.transform`), which each
worker applies to every collated batch of the epoch (one read of the batch's bank rows
rather than one per sample), adding ``batch["neighbors"]``, a :class:`DrawnNeighbors`.
The loop turns that into the :class:`~clip_ping.losses.NeighborTargets` the loss terms
read (:meth:`NeighborGuidance.targets`). ``memory`` targets are read in the loop (the
memory lives there) for the neighbours the workers drew; the ``active`` source draws in
the loop (it needs the teachers and the batch's pixels). Both paths give the same
neighbours and targets bit for bit.

``active`` source (our reading of A-CLIP-PING): the teachers embed the *current* augmented
image and caption, and the top-K are searched in the banks then (exact, self excluded).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from .active import ActiveTeachers
from .bank import Bank, search_vectors
from .losses.neighbor import NeighborTargets
from .memory import StudentMemory

#: ``--neighbor-source``: the precomputed tables, or a search with the teachers online.
SOURCES = ("offline", "active")
#: ``--neighbor-self``: neighbours only; the anchor alone (its own teacher features:
#: distillation without neighbours); the anchor drawn beside its top-K.
SELF_TARGETS = ("exclude", "only", "include")

_MIX = (0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D)  # odd constants of a multiplicative hash


def draw_offsets(indices: torch.Tensor, epoch: int, seed: int, k: int) -> torch.Tensor:
    """``(B,)`` offsets in ``[0, k)``, a deterministic, well-mixed function of each
    sample index, the epoch and the seed."""
    x = indices.long() * _MIX[0] + epoch * _MIX[1] + seed * _MIX[2]
    x = x & 0x7FFFFFFF
    for shift in (16, 13, 16):  # xorshift-multiply rounds spread every input bit
        x = ((x ^ (x >> shift)) * _MIX[0]) & 0x7FFFFFFF
    return x % k


@dataclass
class DrawnNeighbors:
    """The neighbours drawn for ``B`` anchors: what ``batch["neighbors"]`` holds.

    ``ids``: ``(B, 4)`` int64, the columns ``image``, ``text`` (the drawn image and caption
    neighbours' sample indices), ``image_ok``, ``text_ok`` (1 where usable, 0 where every
    candidate was skipped in a bank). ``image_bank_rows`` ``(B, 2, D_I)`` and
    ``text_bank_rows`` ``(B, 2, D_T)``: the :func:`neighbor_rows` of both neighbours in each
    bank, read by the loader in ``bank`` mode (None otherwise); ``(B, 3, D)`` with the
    anchors' own rows third (guidance ``own_rows``). Three tensors rather than one per
    field: each costs a transfer from the loader's worker.
    """

    ids: torch.Tensor
    image_bank_rows: torch.Tensor | None = None
    text_bank_rows: torch.Tensor | None = None

    @property
    def image(self) -> torch.Tensor:
        return self.ids[:, 0]

    @property
    def text(self) -> torch.Tensor:
        return self.ids[:, 1]

    @property
    def image_ok(self) -> torch.Tensor:
        return self.ids[:, 2].bool()

    @property
    def text_ok(self) -> torch.Tensor:
        return self.ids[:, 3].bool()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, rows) -> DrawnNeighbors:
        """The anchors ``rows`` (a slice or an index tensor) only."""
        cut = lambda x: None if x is None else x[rows]  # noqa: E731
        return DrawnNeighbors(cut(self.ids), cut(self.image_bank_rows), cut(self.text_bank_rows))

    def pin_memory(self) -> DrawnNeighbors:
        """Page-locked copies (the DataLoader calls this when it pins batches)."""
        pin = lambda x: None if x is None else x.pin_memory()  # noqa: E731
        return DrawnNeighbors(pin(self.ids), pin(self.image_bank_rows), pin(self.text_bank_rows))

    def with_rows(
        self, image_bank: np.ndarray, text_bank: np.ndarray, anchors: torch.Tensor | None = None
    ) -> DrawnNeighbors:
        """A copy with both neighbours' rows read from the ``(N, D)`` banks (and the rows of
        the ``anchors`` themselves, their sample indices ``(B,)``, when given)."""
        return replace(
            self,
            image_bank_rows=neighbor_rows(image_bank, self.image, self.text, anchors),
            text_bank_rows=neighbor_rows(text_bank, self.image, self.text, anchors),
        )


def _rows(table: np.ndarray, indices: torch.Tensor) -> torch.Tensor:
    """Rows of a memory-mapped table; reads only those rows."""
    return torch.from_numpy(np.ascontiguousarray(table[indices.cpu().numpy()]))


def neighbor_rows(
    bank: np.ndarray,
    image_nbr: torch.Tensor,
    text_nbr: torch.Tensor,
    anchors: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(B, 2, D)``: the rows of each anchor's image neighbour and caption neighbour in the
    ``(N, D)`` ``bank``, in one read; ``(B, 3, D)`` with the ``anchors``' own rows third."""
    columns = [image_nbr, text_nbr] + ([anchors.cpu().long()] if anchors is not None else [])
    return _rows(bank, torch.stack(columns, 1))


def targets_from_rows(
    image_nbr: torch.Tensor,
    text_nbr: torch.Tensor,
    image_rows: torch.Tensor,
    text_rows: torch.Tensor,
    anchors: torch.Tensor | None = None,
) -> NeighborTargets:
    """``bank`` targets from the :func:`neighbor_rows` of the image and the text bank: NN
    image and XNN text in the image bank, XNN image and NN text in the text bank (and the
    anchors' own rows, with their sample indices ``anchors``, where the rows hold them)."""
    own = image_rows.shape[1] == 3
    if own and anchors is None:
        raise ValueError("rows with the anchors' own rows need the anchors' indices")
    return NeighborTargets(
        image_nbr,
        text_nbr,
        nn_image=image_rows[:, 0].contiguous(),
        nn_text=text_rows[:, 1].contiguous(),
        xnn_image=text_rows[:, 0].contiguous(),
        xnn_text=image_rows[:, 1].contiguous(),
        anchors=anchors.cpu().long() if own else None,
        own_image=image_rows[:, 2].contiguous() if own else None,
        own_text=text_rows[:, 2].contiguous() if own else None,
    )


def bank_targets(
    image_bank: np.ndarray, text_bank: np.ndarray, image_nbr: torch.Tensor, text_nbr: torch.Tensor
) -> NeighborTargets:
    """Targets in ``bank`` mode: the neighbours' teacher features (``(N, D)`` bank rows)."""
    return targets_from_rows(
        image_nbr,
        text_nbr,
        neighbor_rows(image_bank, image_nbr, text_nbr),
        neighbor_rows(text_bank, image_nbr, text_nbr),
    )


def memory_targets(
    memory: StudentMemory, image_nbr: torch.Tensor, text_nbr: torch.Tensor
) -> NeighborTargets:
    """Targets in ``memory`` mode: the neighbours' latest student embeddings and whether
    their rows were ever written."""
    nn_image, nn_image_valid = memory.lookup("image", image_nbr)
    nn_text, nn_text_valid = memory.lookup("text", text_nbr)
    xnn_image, xnn_image_valid = memory.lookup("text", image_nbr)
    xnn_text, xnn_text_valid = memory.lookup("image", text_nbr)
    return NeighborTargets(
        image_nbr,
        text_nbr,
        nn_image,
        nn_text,
        xnn_image,
        xnn_text,
        nn_image_valid,
        nn_text_valid,
        xnn_image_valid,
        xnn_text_valid,
    )


class NeighborGuidance:
    """Neighbour tables + targets for ``bank`` or ``memory`` mode.

    Args:
        image_bank, text_bank: finished banks with neighbour tables of the training set.
        k: draw among the top-``k`` neighbours (at most the tables' K).
        target: ``bank`` or ``memory``.
        memory: the student memory (``memory`` mode).
        seed: seed of the neighbour draw.
        active: the active source's online teachers (None: the offline tables).
        self_targets: ``exclude`` (neighbours only), ``only`` (every anchor is its own
            "neighbour": its own teacher features, distillation without neighbours) or
            ``include`` (the anchor is drawn beside its top-``k``, uniformly among k + 1).
        check_tables: check every index of the tables (one pass over them); False in the
            loader's workers, which reopen tables the training process has checked.
        own_rows: read each anchor's own teacher rows too, beside its neighbours'
            (:attr:`~clip_ping.losses.NeighborTargets.own_image`; ``bank`` targets from the
            ``offline`` tables only): for terms that use both, as distillation plus
            neighbours.
    """

    def __init__(
        self,
        image_bank: Bank,
        text_bank: Bank,
        k: int,
        target: str,
        memory: StudentMemory | None = None,
        seed: int = 0,
        active: ActiveTeachers | None = None,
        self_targets: str = "exclude",
        check_tables: bool = True,
        own_rows: bool = False,
    ):
        if self_targets not in SELF_TARGETS:
            raise ValueError(f"self_targets={self_targets!r}: choose one of {SELF_TARGETS}")
        if own_rows and (target != "bank" or active is not None):
            raise ValueError("own rows are read with bank targets from the offline tables only")
        self.self_targets, self.own_rows = self_targets, own_rows
        self.image_bank, self.text_bank, self.k, self.target = image_bank, text_bank, k, target
        self.memory, self.seed, self.active = memory, seed, active
        # A sample skipped in either bank (a zero row there) is never a neighbour.
        self.skipped = np.union1d(image_bank.skipped, text_bank.skipped)
        if target == "memory" and memory is None:
            raise ValueError("memory targets need a StudentMemory")
        self.image_features, self.text_features = image_bank.features, text_bank.features
        if active is not None:  # neighbours are searched online: no tables needed
            if not 1 <= k < len(image_bank):
                raise ValueError(f"--neighbor-k {k}: need 1 <= k < {len(image_bank)} samples")
            return
        # A step reads a few scattered rows (the active source scans whole banks: readahead)
        if target == "bank":
            self.image_features = image_bank.random_access_features()
            self.text_features = text_bank.random_access_features()
        if self_targets == "only":  # every anchor is its own target: no tables needed
            return
        self.image_neighbors, _ = image_bank.neighbors(random_access=True, check=check_tables)
        self.text_neighbors, _ = text_bank.neighbors(random_access=True, check=check_tables)
        for bank, table in ((image_bank, self.image_neighbors), (text_bank, self.text_neighbors)):
            if not 1 <= k <= table.shape[1]:
                raise ValueError(
                    f"--neighbor-k {k} but the {bank.modality} bank {bank.path} lists "
                    f"{table.shape[1]} neighbours per sample; use --neighbor-k <= "
                    f"{table.shape[1]} or rerun clip-ping bank neighbors {bank.path} --k {k}"
                )

    def draw(self, indices: torch.Tensor, epoch: int, batch: dict | None = None) -> DrawnNeighbors:
        """The image and caption neighbours of the anchors ``indices`` ``(B,)`` in ``epoch``
        and whether each is usable: drawn from the top-K of the tables, or (active) of an
        online search with the teachers' features of ``batch``. A neighbour skipped in
        either bank is passed over for the next usable one of the anchor's top-K; an anchor
        with none gets an unusable (masked) neighbour."""
        choices = {"exclude": self.k, "only": 1, "include": self.k + 1}[self.self_targets]
        offsets = draw_offsets(indices.cpu(), epoch, self.seed, choices)
        if self.self_targets == "only":
            own = indices.cpu().long()[:, None]
            image_top = text_top = own
        elif self.active is not None:
            image_query, text_query = self.active.encode(batch)
            never = torch.from_numpy(self.skipped)
            image_top = search_vectors(
                self.image_bank.features, image_query, indices, self.k, never
            )
            text_top = search_vectors(self.text_bank.features, text_query, indices, self.k, never)
        else:
            rows = indices.cpu().numpy()
            image_top = torch.from_numpy(self.image_neighbors[rows, : self.k].astype(np.int64))
            text_top = torch.from_numpy(self.text_neighbors[rows, : self.k].astype(np.int64))
        if self.self_targets == "include":
            own = indices.cpu().long()[:, None]
            image_top, text_top = torch.cat([own, image_top], 1), torch.cat([own, text_top], 1)
        image, image_ok = self._pick(image_top, offsets)
        text, text_ok = self._pick(text_top, offsets)
        return DrawnNeighbors(torch.stack([image, text, image_ok.long(), text_ok.long()], 1))

    def _pick(self, top: torch.Tensor, offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``offsets``-th usable entry (cyclically) of each ``(B, k)`` row of ``top``."""
        usable = ~torch.from_numpy(np.isin(top.numpy(), self.skipped))
        count = usable.sum(1)
        # Position of the (offset mod count)-th usable entry: the first whose running count
        # of usable entries passes it.
        wanted = offsets % count.clamp(min=1)
        position = ((usable.cumsum(1) > wanted[:, None]) & usable).int().argmax(1)
        return top.gather(1, position[:, None])[:, 0], count > 0

    def transform(self) -> NeighborTransform | None:
        """The loader-side half of this guidance (None for the ``active`` source: its search
        needs the teachers and the batch's pixels, so it stays in the loop)."""
        if self.active is not None:
            return None
        return NeighborTransform(
            image_bank=str(self.image_bank.path),
            text_bank=str(self.text_bank.path),
            k=self.k,
            seed=self.seed,
            self_targets=self.self_targets,
            read_targets=self.target == "bank",
            own_rows=self.own_rows,
        )

    def targets(self, batch: dict, epoch: int, device: torch.device | str) -> NeighborTargets:
        """The :class:`NeighborTargets` of ``batch``'s anchors in ``epoch``, on ``device``:
        from the neighbours (and bank rows) the loader's :class:`NeighborTransform` put in
        ``batch["neighbors"]``, else drawn here (``batch``'s images and captions feed the
        active source)."""
        drawn = batch.get("neighbors")
        if drawn is None:
            drawn = self.draw(batch["index"], epoch, batch)
        if self.target == "memory":
            targets = memory_targets(self.memory, drawn.image, drawn.text)
        else:
            anchors = batch["index"] if self.own_rows else None
            if drawn.image_bank_rows is None:
                drawn = drawn.with_rows(self.image_features, self.text_features, anchors)
            targets = targets_from_rows(
                drawn.image, drawn.text, drawn.image_bank_rows, drawn.text_bank_rows, anchors
            )
        if not (drawn.image_ok.all() and drawn.text_ok.all()):  # every candidate skipped
            targets.mask_unusable(drawn.image_ok, drawn.text_ok)
        if self.own_rows and len(self.skipped):  # an anchor skipped in a bank: no own target
            targets.own_valid = ~torch.from_numpy(np.isin(targets.anchors.numpy(), self.skipped))
        return targets.to(device)


@dataclass
class NeighborTransform:
    """The neighbour draw and the ``bank`` target reads of :class:`NeighborGuidance`, run by
    the data loader on each collated batch of an epoch, in its workers (``prepare`` of
    :meth:`clip_ping.data.loader.TrainData.loader`). Adds ``batch["neighbors"]``, a
    :class:`DrawnNeighbors` (with the bank rows when ``read_targets``).

    Per sample, a pure function of (seed, epoch, sample index), as in the loop. It holds
    paths and settings only: each process opens the banks and tables on its first batch
    (memory maps, after the fork), and a pickled transform leaves them behind.
    """

    image_bank: str
    text_bank: str
    k: int
    seed: int
    self_targets: str
    read_targets: bool
    own_rows: bool = False

    def __post_init__(self):
        self._guidance: NeighborGuidance | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_guidance": None}

    def _open(self) -> NeighborGuidance:
        if self._guidance is None:
            self._guidance = NeighborGuidance(
                Bank(self.image_bank),
                Bank(self.text_bank),
                self.k,
                "bank",
                seed=self.seed,
                self_targets=self.self_targets,
                check_tables=False,
                own_rows=self.own_rows,
            )
        return self._guidance

    def __call__(self, batch: dict, epoch: int) -> dict:
        guidance = self._open()
        drawn = guidance.draw(batch["index"], epoch)
        if self.read_targets:
            anchors = batch["index"] if self.own_rows else None
            drawn = drawn.with_rows(guidance.image_features, guidance.text_features, anchors)
        return {**batch, "neighbors": drawn}
