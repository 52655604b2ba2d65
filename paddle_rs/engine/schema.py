"""The keys a training config may hold: a typo is an error that names the key and the nearest valid one.

Without this, ``tools/train.py --iter 2`` or ``trian: {iters: 2}`` in a YAML file became a new key nobody reads,
and the run trained for the default number of iterations. :func:`check_config_keys` walks a config against
:data:`SCHEMA`: a dict there lists the keys of that section, :data:`ANY` marks a value whose keys belong to
something else (a loss's or a transform's own arguments, a model constructor's options -- the constructor
checks those). A section that the code reads must be listed here; ``tests/test_engine.py`` checks that every
project config passes.
"""
import difflib
from typing import Dict, Iterable, List, Optional

__all__ = ["SCHEMA", "ANY", "check_config_keys", "unknown_keys"]


class _Any:
    def __repr__(self):
        return "ANY"


ANY = _Any()     # any value; its keys (if it is a dict) are not checked here

_AMP = {"enable": ANY, "level": ANY, "dtype": ANY, "init_loss_scaling": ANY, "custom_white_list": ANY,
        "custom_black_list": ANY}

SCHEMA: Dict = {
    "_config_path": ANY,
    "task": ANY, "num_classes": ANY, "in_channels": ANY, "ignore_index": ANY, "labels": ANY, "seed": ANY,
    "device": ANY, "save_dir": ANY,
    # top-level aliases (PaddleRS TIPC keys; engine.trainer._ALIASES)
    "num_epochs": ANY, "train_batch_size": ANY, "batch_size": ANY, "iters": ANY, "learning_rate": ANY,
    "model_path": ANY, "pretrained": ANY,
    "model": {"name": ANY, "init_params": ANY, "pretrained": ANY, "backbone_pretrained": ANY},
    "data": {"root": ANY, "train_list": ANY, "val_list": ANY, "labels_file": ANY, "color_map": ANY,
             "expect_bands": ANY, "train_windows": ANY, "num_workers": ANY},
    "train_transforms": ANY, "eval_transforms": ANY,
    "loss": ANY,                                  # type-specific arguments
    "batch_augments": {"augments": ANY, "probs": ANY},
    "optimizer": {"type": ANY, "lr": ANY, "momentum": ANY, "nesterov": ANY, "weight_decay": ANY, "betas": ANY,
                  "eps": ANY, "grad_clip": ANY, "paramwise": ANY},
    "lr_scheduler": {"type": ANY, "power": ANY, "end_lr": ANY, "warmup_iters": ANY, "warmup_ratio": ANY,
                     "warmup_epochs": ANY, "by_epoch": ANY, "iters_per_epoch": ANY},
    "train": {"iters": ANY, "epochs": ANY, "batch_size": ANY, "shuffle": ANY, "drop_last": ANY,
              "log_interval": ANY, "save_interval": ANY, "save_interval_epochs": ANY, "eval_interval": ANY,
              "eval_interval_epochs": ANY, "keep_checkpoints": ANY, "lr_offset": ANY, "sync_bn": ANY,
              "cpu_kernels": ANY, "amp": _AMP, "metric_for_best": ANY, "progress_bar": ANY,
              "shuffle_perms": ANY},
    "eval": {"mode": ANY, "window": ANY, "stride": ANY, "flip": ANY, "merge": ANY, "nan_policy": ANY,
             "pad_value": ANY, "max_samples": ANY, "batch_size": ANY, "perm_seed": ANY, "rescale": ANY,
             "size_divisor": ANY},
}


def _all_paths(schema: Dict, prefix: str = "") -> List[str]:
    out = []
    for k, v in schema.items():
        out.append(prefix + k)
        if isinstance(v, dict):
            out += _all_paths(v, prefix + k + ".")
    return out


def unknown_keys(cfg: Dict, schema: Dict = None, prefix: str = "") -> List[str]:
    """Dotted paths of ``cfg`` that ``schema`` does not list."""
    schema = SCHEMA if schema is None else schema
    out = []
    for k, v in cfg.items():
        path = f"{prefix}{k}"
        if k not in schema:
            out.append(path)
        elif isinstance(schema[k], dict) and isinstance(v, dict):
            out += unknown_keys(v, schema[k], path + ".")
    return out


def _suggest(path: str) -> Optional[str]:
    parent, _, leaf = path.rpartition(".")
    section = SCHEMA
    for part in parent.split(".") if parent else []:
        section = section.get(part) if isinstance(section, dict) else None
    siblings = list(section) if isinstance(section, dict) else []
    match = difflib.get_close_matches(leaf, siblings, n=1, cutoff=0.6)
    if match:
        return f"{parent}.{match[0]}" if parent else match[0]
    match = difflib.get_close_matches(path, _all_paths(SCHEMA), n=1, cutoff=0.6)     # e.g. a misplaced key
    return match[0] if match else None


def check_config_keys(cfg: Dict, where: str, error=ValueError, only: Optional[Iterable[str]] = None) -> None:
    """Raise ``error`` naming the first unknown key of ``cfg`` (``where``: the file or the override it came from)
    and the nearest valid key. ``only``: check just these dotted paths (the keys an override set)."""
    bad = unknown_keys(cfg)
    if only is not None:
        wanted = set(only)
        bad = [b for b in bad if any(b == w or b.startswith(w + ".") or w.startswith(b + ".") for w in wanted)]
    if not bad:
        return
    path = bad[0]
    hint = _suggest(path)
    more = f" (and {len(bad) - 1} more: {', '.join(bad[1:4])})" if len(bad) > 1 else ""
    raise error(f"{where}: unknown config key {path!r}" + (f"; did you mean {hint!r}?" if hint else "") + more
                + " -- the trainer would ignore it (valid keys: paddle_rs/engine/schema.py)")
