"""Run by tests/test_distributed.py, once alone and once under torchrun with 2 processes.

Computes CLIP and CLIP-PING losses and gradients on one fixed global batch of 8 pairs,
each process taking its slice, and saves rank 0's view to the output file:

    python tests/distributed_worker.py OUT.pt MODEL
    torchrun --nproc_per_node 2 tests/distributed_worker.py OUT.pt MODEL
"""

import sys

import torch
import torch.nn.functional as F
from torch import nn

from clip_ping.distributed import cleanup, init_distributed
from clip_ping.guidance import bank_targets, memory_targets, neighbor_rows, targets_from_rows
from clip_ping.losses import ClipLoss, NeighborLoss, total
from clip_ping.losses.added import DistillNeighborLoss
from clip_ping.losses.regression import FeatureRegression
from clip_ping.losses.relational import RelationalLoss
from clip_ping.memory import StudentMemory
from clip_ping.models import create_model
from clip_ping.training.accumulate import accumulate_gradients
from clip_ping.training.task import ContrastiveStep

GLOBAL_BATCH, IMAGE_DIM, TEXT_DIM, NUM_SAMPLES = 8, 12, 10, 20
CASES = [  # (name, neighbour target mode or None, local_loss, micro-batches per rank)
    ("clip", None, False, 1),
    ("clip-local", None, True, 1),
    ("bank", "bank", False, 1),
    ("bank-local", "bank", True, 1),
    ("memory", "memory", False, 1),
    ("memory-local", "memory", True, 1),
    ("fd", "fd", False, 1),  # feature regression onto each anchor's own bank rows
    ("rel", "rel", False, 1),  # relational KL to the teachers' in-batch similarities
    ("rel-local", "rel", True, 1),
    ("dnn", "dnn", False, 1),  # distillation plus decaying neighbours (own and drawn rows)
    ("dnn-local", "dnn", True, 1),
    # --accum-freq 2: each rank's slice as two micro-batches; must equal the cases above.
    ("clip-accum", None, False, 2),
    ("bank-accum", "bank", False, 2),
    ("bank-local-accum", "bank", True, 2),
    ("memory-accum", "memory", False, 2),
    ("fd-accum", "fd", False, 2),
    ("rel-accum", "rel", False, 2),
    ("dnn-accum", "dnn", False, 2),
]
PROGRESS = 0.4  # the share of the run done: the neighbour weight of distill-nn decays by it


def global_inputs(tokenizer, model):
    g = torch.Generator().manual_seed(0)
    images = torch.randn(GLOBAL_BATCH, 3, 32, 32, generator=g)
    words = ["red", "blue", "green", "circle", "square", "small", "large", "left"]
    texts = tokenizer([f"a {words[i]} {words[(3 * i + 1) % 8]}" for i in range(GLOBAL_BATCH)])
    indices = torch.randperm(NUM_SAMPLES, generator=g)[:GLOBAL_BATCH]
    image_neighbors = torch.randint(0, NUM_SAMPLES, (GLOBAL_BATCH,), generator=g)
    text_neighbors = torch.randint(0, NUM_SAMPLES, (GLOBAL_BATCH,), generator=g)
    image_bank = F.normalize(torch.randn(NUM_SAMPLES, IMAGE_DIM, generator=g), dim=-1)
    text_bank = F.normalize(torch.randn(NUM_SAMPLES, TEXT_DIM, generator=g), dim=-1)
    memory = StudentMemory(NUM_SAMPLES, model.embed_dim)
    written = torch.arange(0, NUM_SAMPLES, 3)  # a third of the rows, so masking is exercised
    memory.image[written] = F.normalize(
        torch.randn(len(written), model.embed_dim, generator=g), dim=-1
    ).half()
    memory.text[written] = F.normalize(
        torch.randn(len(written), model.embed_dim, generator=g), dim=-1
    ).half()
    memory.written[written] = True
    return images, texts, indices, image_neighbors, text_neighbors, image_bank, text_bank, memory


def neighbor_targets(mode, image_neighbors, text_neighbors, image_bank, text_bank, memory):
    if mode == "bank":
        return bank_targets(image_bank.numpy(), text_bank.numpy(), image_neighbors, text_neighbors)
    return memory_targets(memory, image_neighbors, text_neighbors)


def main(out_path, model_name):
    info = init_distributed("cpu")
    per_rank = GLOBAL_BATCH // info.world_size
    part = slice(info.rank * per_rank, (info.rank + 1) * per_rank)
    results = {}
    for name, mode, local_loss, accum in CASES:
        model, tokenizer = create_model(model_name, seed=0)
        torch.manual_seed(1)  # the same head initialisation in every process
        terms = {"clip": ClipLoss(local_loss, gather_with_grad=True)}
        if mode == "fd":
            terms["fd"] = FeatureRegression(model.embed_dim, IMAGE_DIM, TEXT_DIM, weight=0.7)
        elif mode == "rel":
            terms["relational"] = RelationalLoss(0.9, 0.1, local_loss, gather_with_grad=True)
        elif mode == "dnn":
            terms["distill-nn"] = DistillNeighborLoss(
                model.embed_dim,
                image_bank_dim=IMAGE_DIM,
                text_bank_dim=TEXT_DIM,
                nn_weight=0.8,
                xnn_weight=0.6,
                neighbor_weight=0.5,
                local_loss=local_loss,
                gather_with_grad=True,
            )
        elif mode is not None:
            terms["neighbor"] = NeighborLoss(
                model.embed_dim,
                image_bank_dim=IMAGE_DIM,
                text_bank_dim=TEXT_DIM,
                target=mode,
                nn_weight=0.8,
                xnn_weight=0.6,
                local_loss=local_loss,
                gather_with_grad=True,
            )
        step = ContrastiveStep(model, terms)
        summed = step.summed
        if info.world_size > 1:
            step = nn.parallel.DistributedDataParallel(step)
        images, texts, indices, img_nbr, txt_nbr, image_bank, text_bank, memory = global_inputs(
            tokenizer, model
        )
        targets = None
        if mode in ("fd", "rel"):  # each anchor's own rows
            ids = indices[part]
            targets = neighbor_targets("bank", ids, ids, image_bank, text_bank, memory)
        elif mode == "dnn":  # the drawn neighbours' rows and the anchors' own
            ids, nbrs = indices[part], (img_nbr[part], txt_nbr[part])
            targets = targets_from_rows(
                *nbrs,
                neighbor_rows(image_bank.numpy(), *nbrs, ids),
                neighbor_rows(text_bank.numpy(), *nbrs, ids),
                ids,
            )
        elif mode is not None:
            targets = neighbor_targets(
                mode, img_nbr[part], txt_nbr[part], image_bank, text_bank, memory
            )
        module = step.module if info.world_size > 1 else step
        if accum == 1:
            terms, out = step(images[part], texts[part], targets, 1.0, None, PROGRESS)
            total(terms, summed).backward()
        else:  # what --accum-freq runs: the rank's slice as micro-batches
            size = per_rank // accum
            inputs = [
                (images[part][i * size : (i + 1) * size], texts[part][i * size : (i + 1) * size])
                for i in range(accum)
            ]
            _, terms, out = accumulate_gradients(
                step,
                module.model,
                inputs,
                targets,
                1.0,
                summed,
                lambda loss: loss.backward(),
                progress=PROGRESS,
            )
        memory.update(indices[part], out["image_features"], out["text_features"])
        values = {k: v.detach().clone() for k, v in terms.items()}
        shares = local_loss or mode == "fd"  # per-rank shares of the global mean
        if shares and info.world_size > 1:  # average them like DDP does
            for v in values.values():
                torch.distributed.all_reduce(v)
                v /= info.world_size
        results[name] = {
            "terms": values,
            "grads": {
                k: p.grad.clone() for k, p in module.named_parameters() if p.grad is not None
            },
            "memory": {k: v.clone() for k, v in memory.state_dict().items()},
        }
    if info.rank == 0:
        torch.save(results, out_path)
    cleanup()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
