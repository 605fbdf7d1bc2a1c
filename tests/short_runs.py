"""The short training runs that the resume and run-folder tests start and interrupt."""

import os

# 256 samples / 32 = 8 steps per epoch, a checkpoint every 3 steps and at each epoch's end.
FLAGS = dict(
    model="cpu-micro-32",
    batch_size=32,
    epochs=2,
    lr=2e-3,
    warmup=2,
    workers=0,
    seed=0,
    save_every_steps=3,
    log_every_steps=1,
    val_frequency=0,
)
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def build_corpus(tmp_path_factory, name: str, seed: int):
    """A 256-pair shapes corpus of 32 px images (8 val rows)."""
    from clip_ping.data.shapes import build_shapes

    out = tmp_path_factory.mktemp(name)
    build_shapes(out, num_train=256, num_val=8, image_size=32, seed=seed)
    return out
