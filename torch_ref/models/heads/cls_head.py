"""Linear classification head (mmpretrain ``LinearClsHead``), PyTorch reference.

Mirror of ``paddle_rs/models/heads/cls_head.py``. Parameters ``fc.weight [C, D]``,
``fc.bias [C]`` (checkpoint keys ``head.fc.*``). Loss and prediction
post-processing live outside the module; ``forward`` returns logits.
"""
import torch.nn as nn

__all__ = ["LinearClsHead"]


class LinearClsHead(nn.Module):
    def __init__(self, num_classes, in_channels):
        super().__init__()
        if num_classes <= 0:
            raise ValueError(f"num_classes={num_classes} must be a positive integer")
        self.num_classes, self.in_channels = num_classes, in_channels
        self.fc = nn.Linear(in_channels, num_classes)      # torch default init (configs set init_cfg=None)

    def forward(self, feats):
        """``feats``: ``[B, D]`` or a tuple/list of them (mmpretrain style, last one used) -> logits ``[B, C]``."""
        if isinstance(feats, (tuple, list)):
            feats = feats[-1]
        return self.fc(feats)
