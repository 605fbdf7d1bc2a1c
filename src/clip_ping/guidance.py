"""The data side of CLIP-PING: draw each anchor's neighbours and fetch their targets.

For a batch of anchors with stable sample indices ``(B,)`` this module

1. draws one image neighbour n_I(k) and one caption neighbour n_T(k) uniformly from the
   top-K rows of the precomputed tables (K = 1: the nearest);
2. reads the four targets (DESIGN.md §2): in ``bank`` mode the neighbours' frozen teacher
   features (only the rows the batch needs, from the memory-mapped banks); in ``memory``
   mode their latest student embeddings from :class:`~clip_ping.memory.StudentMemory`.

The draw is a hash of (seed, step, sample index): a resumed run draws what the
uninterrupted one drew, however the batch is split across ranks.

**Where it runs.** With the ``offline`` source, steps 1 and (``bank`` mode) 2 run in the
data loader's worker processes, off the training loop's critical path: the loop hands the
loader a :class:`NeighborReader` (:meth:`NeighborGuidance.reader`), which each worker applies
to every collated batch. The reader knows the step at which a batch will be trained from the
batch's position in the epoch (``epoch_batch``, set by the loader), the step of the epoch's
first batch and ``--accum-freq``; it opens the banks and tables itself in each process (memory
maps, nothing large crosses a process boundary). The loop then only assembles the delivered
ids and rows (:meth:`NeighborGuidance.targets`), after checking that they were drawn for the
step it trains. ``memory`` targets are read in the loop (the memory lives there) from the ids
the workers drew; the ``active`` source runs wholly in the loop (it needs the teachers and
the batch's pixels). Both paths give the same neighbours and targets bit for bit.

``active`` source (our reading of A-CLIP-PING): instead of the precomputed tables, the
teachers embed the *current* augmented image and the caption, and the top-K neighbours are
searched in the banks at that moment (exact blocked search, the anchor itself excluded).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .bank import Bank, search_vectors
from .losses import NeighborTargets
from .memory import StudentMemory

_MIX = (0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D)  # odd constants of a multiplicative hash

# The columns of the (B, 5) int64 "neighbors" a NeighborReader adds to a batch: the step it
# drew for, the image and the caption neighbour, and whether each is usable (1) or masked (0).
NEIGHBOR_COLUMNS = ("step", "image", "text", "image_ok", "text_ok")


def draw_offsets(indices: torch.Tensor, step: int, seed: int, k: int) -> torch.Tensor:
    """``(B,)`` offsets in ``[0, k)``, a deterministic, well-mixed function of each
    sample index, the step and the seed."""
    x = indices.long() * _MIX[0] + step * _MIX[1] + seed * _MIX[2]
    x = x & 0x7FFFFFFF
    for shift in (16, 13, 16):  # xorshift-multiply rounds spread every input bit
        x = ((x ^ (x >> shift)) * _MIX[0]) & 0x7FFFFFFF
    return x % k


def _rows(table: np.ndarray, indices: torch.Tensor) -> torch.Tensor:
    """Rows of a memory-mapped table; reads only those rows."""
    return torch.from_numpy(np.ascontiguousarray(table[indices.cpu().numpy()]))


def neighbor_rows(
    bank: np.ndarray, image_nbr: torch.Tensor, text_nbr: torch.Tensor
) -> torch.Tensor:
    """``(B, 2, D)``: the rows of each anchor's image neighbour and caption neighbour in the
    ``(N, D)`` ``bank``, in one read."""
    return _rows(bank, torch.stack([image_nbr, text_nbr], 1))


def targets_from_rows(
    image_nbr: torch.Tensor,
    text_nbr: torch.Tensor,
    image_rows: torch.Tensor,
    text_rows: torch.Tensor,
) -> NeighborTargets:
    """``bank`` targets from the :func:`neighbor_rows` of the image and the text bank: NN
    image and XNN text in the image bank, XNN image and NN text in the text bank."""
    return NeighborTargets(
        image_nbr, text_nbr,
        nn_image=image_rows[:, 0].contiguous(), nn_text=text_rows[:, 1].contiguous(),
        xnn_image=text_rows[:, 0].contiguous(), xnn_text=image_rows[:, 1].contiguous(),
    )  # fmt: skip


def bank_targets(
    image_bank: np.ndarray, text_bank: np.ndarray, image_nbr: torch.Tensor, text_nbr: torch.Tensor
) -> NeighborTargets:
    """Targets in ``bank`` mode: the neighbours' teacher features (``(N, D)`` bank rows)."""
    return targets_from_rows(
        image_nbr, text_nbr,
        neighbor_rows(image_bank, image_nbr, text_nbr),
        neighbor_rows(text_bank, image_nbr, text_nbr),
    )  # fmt: skip


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
        image_nbr, text_nbr, nn_image, nn_text, xnn_image, xnn_text,
        nn_image_valid, nn_text_valid, xnn_image_valid, xnn_text_valid,
    )  # fmt: skip


def active_image_size(image_bank: Bank) -> int:
    """The input size at which the image bank's teacher runs on augmented crops (the active
    source), or an error naming the bank when it cannot run online."""
    size = image_bank.teacher_spec.online_image_size
    if size is None:
        raise ValueError(
            f"--neighbor-source active runs the image teacher on the augmented batch; it "
            f"supports efficientnet-lite0 banks, not {image_bank.teacher} ({image_bank.path})"
        )
    return size


class ActiveTeachers:
    """The banks' own teachers, run on the current batch (frozen, no gradients)."""

    def __init__(self, image_bank: Bank, text_bank: Bank, device: torch.device):
        from .teachers import create_teacher

        image_size = active_image_size(image_bank)
        self.image = create_teacher(image_bank.teacher, "image", image_size, str(device))
        self.text = create_teacher(text_bank.teacher, "text", None, str(device))
        self.image_size, self.device = image_size, device

    @torch.inference_mode()
    def encode(self, batch: dict) -> tuple[torch.Tensor, ...]:
        """Unit teacher features of ``batch``: ``teacher_image`` ``(B, 3, s, s)`` (the
        student's crop of the full-resolution image at the bank's input size, see
        :class:`~clip_ping.data.transforms.TrainTransform`) and ``caption``."""
        if "teacher_image" not in batch:
            raise ValueError(
                "--neighbor-source active needs the teacher's view of each crop: build the "
                f"training data with TrainTransform(..., teacher_size={self.image_size})"
            )
        pixels = batch["teacher_image"].to(self.device)
        if pixels.shape[-1] != self.image_size:
            raise ValueError(
                f"teacher views of {pixels.shape[-1]} px, but the image bank was built at "
                f"{self.image_size} px; build the data with teacher_size={self.image_size}"
            )
        image = self.image.encode(pixels)
        captions = batch["caption"]
        text = self.text.encode(self.text.collate([self.text.preprocess(c) for c in captions]))
        return image, text


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
    ):
        if self_targets not in ("exclude", "only", "include"):
            raise ValueError(f"self_targets={self_targets!r}: choose exclude, only or include")
        self.self_targets = self_targets
        self.image_bank, self.text_bank, self.k, self.target = image_bank, text_bank, k, target
        self.memory, self.seed, self.active = memory, seed, active
        # A sample skipped in either bank (a bad image, a bad caption) has a zero row in that
        # bank: it is never a neighbour, whichever table or search proposes it.
        self.skipped = np.union1d(image_bank.skipped, text_bank.skipped)
        if target == "memory" and memory is None:
            raise ValueError("memory targets need a StudentMemory")
        self.image_features, self.text_features = image_bank.features, text_bank.features
        if active is not None:  # neighbours are searched online: no tables needed
            if not 1 <= k < len(image_bank):
                raise ValueError(f"--neighbor-k {k}: need 1 <= k < {len(image_bank)} samples")
            return
        # A step reads a few scattered rows of each file (the active source above scans
        # whole banks, so it keeps the kernel's default readahead).
        self.image_neighbors, _ = image_bank.neighbors(random_access=True, check=check_tables)
        self.text_neighbors, _ = text_bank.neighbors(random_access=True, check=check_tables)
        if target == "bank":
            self.image_features = image_bank.random_access_features()
            self.text_features = text_bank.random_access_features()
        for bank, table in ((image_bank, self.image_neighbors), (text_bank, self.text_neighbors)):
            if not 1 <= k <= table.shape[1]:
                raise ValueError(
                    f"--neighbor-k {k} but the {bank.modality} bank {bank.path} lists "
                    f"{table.shape[1]} neighbours per sample; use --neighbor-k <= "
                    f"{table.shape[1]} or rerun clip-ping bank neighbors {bank.path} --k {k}"
                )

    def draw(
        self, indices: torch.Tensor, step: int, batch: dict | None = None
    ) -> tuple[torch.Tensor, ...]:
        """Image and caption neighbours ``(B,)`` of the anchors ``indices`` and whether each
        is usable ``(B,)``: drawn from the top-K of the tables, or (active) of an online
        search with the teachers' features of ``batch``. A neighbour skipped in either bank
        is passed over for the next usable one of the anchor's top-K; an anchor with none
        gets an unusable (masked) neighbour."""
        choices = {"exclude": self.k, "only": 1, "include": self.k + 1}[self.self_targets]
        offsets = draw_offsets(indices.cpu(), step, self.seed, choices)
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
        return image, text, image_ok, text_ok

    def _pick(self, top: torch.Tensor, offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``offsets``-th usable entry (cyclically) of each ``(B, k)`` row of ``top``."""
        usable = ~torch.from_numpy(np.isin(top.numpy(), self.skipped))
        count = usable.sum(1)
        # Position of the (offset mod count)-th usable entry: the first whose running count
        # of usable entries passes it.
        wanted = offsets % count.clamp(min=1)
        position = ((usable.cumsum(1) > wanted[:, None]) & usable).int().argmax(1)
        return top.gather(1, position[:, None])[:, 0], count > 0

    def reader(self, first_step: int, accum_freq: int = 1) -> NeighborReader | None:
        """The loader-side half of this guidance for an epoch whose first batch is trained
        at optimiser step ``first_step`` (None for the ``active`` source: its search needs
        the teachers and the batch's pixels, so it stays in the loop)."""
        if self.active is not None:
            return None
        return NeighborReader(
            str(self.image_bank.path), str(self.text_bank.path), self.k, self.seed,
            self.self_targets, self.target == "bank", first_step, accum_freq,
        )  # fmt: skip

    def targets(
        self, indices: torch.Tensor, step: int, device: torch.device, batch: dict | None = None
    ) -> NeighborTargets:
        """The anchors' :class:`NeighborTargets`, on ``device``. ``batch``: the current
        images and captions (the active source needs them); where a :class:`NeighborReader`
        has already drawn the neighbours (and read the bank rows) in the loader, they are
        taken from ``batch`` instead of drawn here."""
        if batch is not None and "neighbors" in batch:
            image_nbr, text_nbr, image_ok, text_ok = self._delivered(batch, step)
        else:
            image_nbr, text_nbr, image_ok, text_ok = self.draw(indices, step, batch)
        if self.target == "bank" and batch is not None and "image_bank_rows" in batch:
            rows = batch["image_bank_rows"], batch["text_bank_rows"]
            targets = targets_from_rows(image_nbr, text_nbr, *rows)
        elif self.target == "bank":
            targets = bank_targets(self.image_features, self.text_features, image_nbr, text_nbr)
        else:
            targets = memory_targets(self.memory, image_nbr, text_nbr)
        if not (image_ok.all() and text_ok.all()):  # anchors whose top-K are all skipped
            targets.mask_unusable(image_ok, text_ok)
        return targets.to(device)

    @staticmethod
    def _delivered(batch: dict, step: int) -> tuple[torch.Tensor, ...]:
        """The neighbours a :class:`NeighborReader` drew for ``batch``, checked to be those
        of ``step`` (a mismatch would silently change the draw, so it stops the run)."""
        drawn_at, image, text, image_ok, text_ok = batch["neighbors"].T.contiguous()
        if bool((drawn_at != step).any()):
            raise RuntimeError(
                f"the data loader drew neighbours for step {int(drawn_at[0])} but the batch "
                f"is trained at step {step}: the loader was given the wrong first step or "
                "--accum-freq (a bug; --neighbor-source active draws in the loop instead)"
            )
        return image, text, image_ok.bool(), text_ok.bool()


@dataclass
class NeighborReader:
    """The neighbour draw and the ``bank`` target reads of :class:`NeighborGuidance`, run by
    the data loader on each collated batch, in its workers (``prepare`` of
    :meth:`clip_ping.data.loader.TrainData.loader`).

    A batch is trained at step ``first_step + epoch_batch // accum_freq``, ``epoch_batch``
    being its position in the rank's epoch (set by the loader) and ``first_step`` the step of
    the epoch's first batch: the draw is the same pure function of (seed, step, sample
    index) as in the loop, so resumes stay exact. The reader adds to the batch

    - ``neighbors``: ``(B, 5)`` int64, columns :data:`NEIGHBOR_COLUMNS` (the step, the drawn
      image and caption neighbours, whether each is usable);
    - with ``read_targets`` (``bank`` mode): ``image_bank_rows`` ``(B, 2, D_I)`` and
      ``text_bank_rows`` ``(B, 2, D_T)``, the :func:`neighbor_rows` of both neighbours in
      each bank, which hold the four targets (:func:`targets_from_rows`).

    Three tensors, not one per field: each tensor costs the loop a transfer from the worker.

    It holds paths and settings only: each process opens the banks and tables on its first
    batch (memory maps, after the fork), and a pickled reader leaves them behind.
    """

    image_bank: str
    text_bank: str
    k: int
    seed: int
    self_targets: str
    read_targets: bool
    first_step: int
    accum_freq: int = 1

    def __post_init__(self):
        self._guidance: NeighborGuidance | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_guidance": None}

    def _open(self) -> NeighborGuidance:
        if self._guidance is None:
            self._guidance = NeighborGuidance(
                Bank(self.image_bank), Bank(self.text_bank), self.k, "bank", seed=self.seed,
                self_targets=self.self_targets, check_tables=False,
            )  # fmt: skip
        return self._guidance

    def step_of(self, epoch_batch: int) -> int:
        """The optimiser step at which the epoch's batch ``epoch_batch`` is trained."""
        return self.first_step + epoch_batch // self.accum_freq

    def __call__(self, batch: dict) -> dict:
        guidance, indices = self._open(), batch["index"]
        # A batch of bad samples only has no epoch_batch (and nothing to draw).
        position = batch.get("epoch_batch", torch.zeros(1, dtype=torch.long))
        if bool((position != position[0]).any()):
            raise ValueError("a collated batch mixes samples of several batches of the epoch")
        step = self.step_of(int(position[0]))
        image, text, image_ok, text_ok = guidance.draw(indices, step)
        columns = (torch.full_like(image, step), image, text, image_ok.long(), text_ok.long())
        out = {"neighbors": torch.stack(columns, 1)}
        if self.read_targets:
            out["image_bank_rows"] = neighbor_rows(guidance.image_features, image, text)
            out["text_bank_rows"] = neighbor_rows(guidance.text_features, image, text)
        return {**batch, **out}
