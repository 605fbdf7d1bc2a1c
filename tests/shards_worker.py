"""Run by tests/test_distributed.py under ``torchrun --nproc_per_node 2``, on WebDataset shards.

1. Reads two epochs through the training loader (2 DataLoader workers per rank) and saves
   this rank's ``(epoch, index, caption)`` triples to ``OUT/rank<r>.json``.
2. Trains one epoch of ``cpu-micro-32`` with CLIP-PING memory targets from the same shards
   (2 workers per rank), writing ``OUT/logs/shards``.

    torchrun --nproc_per_node 2 tests/shards_worker.py SHARDS IMAGE_BANK TEXT_BANK OUT
"""

import json
import sys
from pathlib import Path

from clip_ping.data.loader import DataSpec, build_train_data
from clip_ping.data.transforms import TrainTransform
from clip_ping.distributed import init_distributed
from clip_ping.tokenizer import get_tokenizer
from clip_ping.training.config import build_config
from clip_ping.training.train import train

BATCH, WORKERS, EPOCHS = 32, 2, 2


def main(shards: str, image_bank: str, text_bank: str, out: str) -> None:
    info = init_distributed("cpu")
    tokenizer = get_tokenizer(context_length=16)
    data = build_train_data(
        DataSpec(shards), TrainTransform(32), tokenizer, 0, info.rank, info.world_size
    )
    seen = []
    for epoch in range(EPOCHS):
        for batch in data.loader(epoch, 0, BATCH, WORKERS):
            seen += [
                (epoch, int(i), c) for i, c in zip(batch["index"], batch["caption"], strict=True)
            ]
    Path(out, f"rank{info.rank}.json").write_text(json.dumps(seen))
    cfg = build_config(
        overrides=dict(
            train_data=shards,
            model="cpu-micro-32",
            batch_size=BATCH,
            epochs=1,
            workers=WORKERS,
            loss="clip-ping",
            image_bank=image_bank,
            text_bank=text_bank,
            neighbor_target="memory",
            neighbor_k=3,
            logs=f"{out}/logs",
            name="shards",
            device="cpu",
            progress=False,
            save_every_steps=3,
            val_frequency=0,
            warmup=1,
        )
    )
    train(cfg)


if __name__ == "__main__":
    main(*sys.argv[1:5])
