"""Students with a MobileViT image tower (hybrid), transformers' ``MobileViTModel``."""

from __future__ import annotations

from torch import nn

from .towers import TowerStudent, joined


class MobileViTStudent(TowerStudent):
    """A MobileViT backbone, its pooled last convolution projected."""

    tower = "mobilevit"
    title = "MobileViT"
    design = "hybrid: MobileNetV2 convolutions with transformer blocks"

    @staticmethod
    def pooled_width(config) -> int:
        return config.neck_hidden_sizes[-1]

    @staticmethod
    def shape(config) -> str:
        return (
            f"convolution widths {joined(config.neck_hidden_sizes)}, transformer widths "
            f"{joined(config.hidden_sizes)}"
        )

    @staticmethod
    def init_from_scratch(vision: nn.Module) -> None:
        """Convolutions from He's normal (fan-out) and BatchNorm scales 1, shifts 0, as
        MobileViT's reference code and MobileNetV2 start.

        transformers initialises MobileViT for pretrained weights to be loaded over it: its
        BatchNorm scales come from N(0, 0.02) like its weights, which from scratch shrinks
        the signal about 50x at every normalisation, so the images' embeddings collapse to
        one and the tower does not learn."""
        for module in vision.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.reset_parameters()
