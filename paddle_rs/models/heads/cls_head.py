"""Linear classification head (mmpretrain ``LinearClsHead``), PaddlePaddle.

Mirror of ``torch_ref/models/heads/cls_head.py``. Parameters ``fc.weight [D, C]``
(Paddle layout; torch ``[C, D]`` is transposed by the converter), ``fc.bias [C]``.
``forward`` returns logits; initialised like torch's ``nn.Linear``.
"""
import paddle.nn as nn

from .. import init

__all__ = ["LinearClsHead"]


class LinearClsHead(nn.Layer):
    def __init__(self, num_classes, in_channels):
        super().__init__()
        if num_classes <= 0:
            raise ValueError(f"num_classes={num_classes} must be a positive integer")
        self.num_classes, self.in_channels = num_classes, in_channels
        self.fc = nn.Linear(in_channels, num_classes)
        init.torch_default_(self.fc)

    def forward(self, feats):
        """``feats``: ``[B, D]`` or a tuple/list of them (mmpretrain style, last one used) -> logits ``[B, C]``."""
        if isinstance(feats, (tuple, list)):
            feats = feats[-1]
        return self.fc(feats)
