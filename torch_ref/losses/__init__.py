"""Losses (torch reference), built from the ``loss`` section of a config: ``build_loss(cfg)(model_outputs, labels)``."""
from .joint_loss import JointLoss


def build_loss(cfg):
    cfg = dict(cfg)
    kind = cfg.pop("type")
    if kind == "JointLoss":
        return _Unpack(JointLoss(**cfg))
    raise ValueError(f"unknown loss type {kind!r}")


class _Unpack:
    """Adapts ``loss(*outputs, labels)`` to the uniform ``criterion(outputs, labels)``."""

    def __init__(self, loss):
        self.loss = loss

    def __call__(self, outputs, labels):
        if isinstance(outputs, (tuple, list)):
            return self.loss(*outputs, labels)
        return self.loss(outputs, labels)
