"""Students with a ConvNeXt image tower (convolutional), transformers' ``ConvNextModel``."""

from __future__ import annotations

from .towers import TowerStudent, joined


class ConvNextStudent(TowerStudent):
    """A ConvNeXt backbone, its pooled (layer-normed, averaged) last stage projected.

    transformers' own initialisation is the family's reference one (weights from
    N(0, 0.02), LayerNorm scales 1, layer scale 1e-6), so it stays.
    """

    tower = "convnext"
    title = "ConvNeXt"
    design = "convolutional"

    @staticmethod
    def pooled_width(config) -> int:
        return config.hidden_sizes[-1]

    @staticmethod
    def shape(config) -> str:
        return (
            f"stages of {joined(config.depths)} blocks, widths {joined(config.hidden_sizes)}, "
            f"patch-{config.patch_size} stem"
        )
