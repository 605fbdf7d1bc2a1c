"""The training stage: configuration, the task, the loop, checkpoints, the run folder."""
