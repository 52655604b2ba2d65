"""PyTorch references whose state_dict keys equal the upstream checkpoints' keys."""
from .registry import build_model, get_entry, list_models, register_model

__all__ = ["build_model", "list_models", "get_entry", "register_model"]
