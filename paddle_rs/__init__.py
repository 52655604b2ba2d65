"""PaddlePaddle ports of remote-sensing models, each proven equal to its PyTorch original."""
from .cpu_kernels import accelerate
from .registry import build_model, get_entry, list_models, register_model

__version__ = "0.1.0"
__all__ = ["build_model", "list_models", "get_entry", "register_model", "accelerate", "__version__"]
