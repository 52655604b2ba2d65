"""Atomic training checkpoints, the ``latest`` pointer, ``best_model/`` and resume.

Layout under ``save_dir``::

    iter_N/            model.pdparams   model weights (structured names, as model.state_dict())
                       model.pdopt      optimizer state, accumulators keyed by *structured* parameter names
                       train_state.json iteration, epoch, best metric, scheduler state, ...
                       rng_state.pkl    python / numpy / paddle generator states (exact resume)
                       model.yml        tipc.md §6, status Normal
    latest             text file naming the newest complete checkpoint ("iter_N")
    best_model/        model.pdparams, model.yml (status Normal), eval_details.json

Every directory is written into a hidden temporary sibling and renamed into place, and ``latest`` is
replaced with ``os.replace`` only after that: a crash (or a NaN stop) never leaves a half-written
checkpoint, and the previous one stays untouched. ``train_state.json`` is written last inside the
temporary directory, so a directory without it is never a valid checkpoint.

Why structured optimizer keys: Paddle keys optimizer accumulators by ``param.name`` (``conv2d_12.w_0``),
which depends on how many layers the process has created before; a model rebuilt in another process (or
a second time in the same one) gets different names and ``set_state_dict`` silently skips the state.
"""
import json
import math
import os
import pickle
import random
import re
import shutil
import tempfile
import time
from typing import Callable, Dict, Optional

import numpy as np
import paddle

from ..utils.io import _umask, atomic_write_file  # noqa: F401  (re-exported)

__all__ = ["save_checkpoint", "save_best_model", "load_checkpoint", "find_latest", "list_checkpoints",
           "atomic_write_dir", "atomic_write_file", "atomic_write_json", "optimizer_state_to_structured",
           "optimizer_state_from_structured", "capture_rng_state", "restore_rng_state", "json_safe",
           "clean_interrupted_writes",
           "CheckpointError", "STATE_FILE", "LATEST_FILE", "BEST_DIR"]

STATE_FILE = "train_state.json"
LATEST_FILE = "latest"
BEST_DIR = "best_model"
_ITER_RE = re.compile(r"^iter_(\d+)$")


class CheckpointError(RuntimeError):
    pass


# ----------------------------------------------------------------------------------------------------------
# atomic writes
# ----------------------------------------------------------------------------------------------------------


def json_safe(obj):
    """numpy -> python; NaN / inf -> None (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def atomic_write_json(path: str, obj) -> str:
    def w(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(json_safe(obj), f, indent=1, sort_keys=True, allow_nan=False)
            f.write("\n")
    return atomic_write_file(path, w)


def atomic_write_dir(final_dir: str, writer: Callable[[str], None]) -> str:
    """``writer(tmp_dir)`` fills a hidden sibling directory, which then replaces ``final_dir``.

    An existing ``final_dir`` is moved aside first and deleted after the swap; if the process dies in
    between, the old copy survives as ``.old_*`` next to it and the new one is complete.
    """
    final_dir = os.path.abspath(os.fspath(final_dir))
    parent = os.path.dirname(final_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".tmp_{os.path.basename(final_dir)}_", dir=parent)
    old = None
    try:
        writer(tmp)
        os.chmod(tmp, 0o777 & ~_umask())            # mkdtemp creates 0700
        if os.path.exists(final_dir):
            old = tempfile.mkdtemp(prefix=f".old_{os.path.basename(final_dir)}_", dir=parent)
            os.rmdir(old)
            os.replace(final_dir, old)
        os.replace(tmp, final_dir)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        if old and os.path.exists(old):
            shutil.rmtree(old, ignore_errors=True)
    return final_dir


def clean_interrupted_writes(save_dir: str):
    """Tidy what a killed process left of :func:`atomic_write_dir` / :func:`atomic_write_file` in ``save_dir``:
    hidden ``.tmp_*`` entries (writes that never completed their rename) are removed; an ``.old_<name>_*`` copy is
    removed when ``<name>`` exists, and renamed back to ``<name>`` when the process died between moving it aside
    and putting the new one in place. Returns ``[(action, entry)]``."""
    save_dir = os.fspath(save_dir)
    done = []
    if not os.path.isdir(save_dir):
        return done
    for entry in sorted(os.listdir(save_dir)):
        path = os.path.join(save_dir, entry)
        if entry.startswith(".tmp_"):
            shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.remove(path)
            done.append(("removed", entry))
        elif entry.startswith(".old_") and os.path.isdir(path):
            name = entry[len(".old_"):].rsplit("_", 1)[0]
            final = os.path.join(save_dir, name)
            if name and not os.path.exists(final):
                os.replace(path, final)
                done.append(("restored", f"{entry} -> {name}"))
            else:
                shutil.rmtree(path, ignore_errors=True)
                done.append(("removed", entry))
    return done


# ----------------------------------------------------------------------------------------------------------
# optimizer state with structured names
# ----------------------------------------------------------------------------------------------------------
def _param_maps(model):
    named = [(n, p) for n, p in model.named_parameters()]
    return {p.name: n for n, p in named}, {n: p.name for n, p in named}


def _rename_key(key: str, table: Dict[str, str], sorted_src) -> Optional[str]:
    if key in table:
        return table[key]
    for src in sorted_src:                       # longest first: conv2d_1.w_0 must not match conv2d_10.w_0_...
        if key.startswith(src + "_"):
            return table[src] + key[len(src):]
    return None


def _rename_state(state: Dict, table: Dict[str, str], what: str) -> Dict:
    sorted_src = sorted(table, key=len, reverse=True)
    out = {}
    for k, v in state.items():
        if k == "LR_Scheduler":
            out[k] = v
        elif k == "master_weights" and isinstance(v, dict):
            out[k] = {(_rename_key(mk, table, sorted_src) or mk): mv for mk, mv in v.items()}
        else:
            nk = _rename_key(k, table, sorted_src)
            if nk is None and what == "load" and k.startswith("@"):
                raise CheckpointError(f"optimizer state key {k!r} matches no parameter of the model")
            out[nk if nk is not None else k] = v        # keys that name no parameter pass unchanged
    return out


def optimizer_state_to_structured(optimizer, model) -> Dict:
    """``optimizer.state_dict()`` with accumulator keys re-based on structured parameter names
    (``resencoder.resnet.conv1.weight_velocity_0``); values as numpy arrays."""
    by_pname, _ = _param_maps(model)
    state = optimizer.state_dict()
    out = _rename_state(state, {k: "@" + v for k, v in by_pname.items()}, "save")
    return {k: (v.numpy() if isinstance(v, paddle.Tensor) else v) for k, v in out.items()}


def optimizer_state_from_structured(state: Dict, model) -> Dict:
    """Inverse of :func:`optimizer_state_to_structured` for the current model's ``param.name``s."""
    _, by_struct = _param_maps(model)
    table = {"@" + n: pn for n, pn in by_struct.items()}
    out = _rename_state(state, table, "load")

    def tensors(v):
        if isinstance(v, np.ndarray):
            return paddle.to_tensor(v)
        return {mk: tensors(mv) for mk, mv in v.items()} if isinstance(v, dict) and v is not out.get("LR_Scheduler") \
            else v
    return {k: tensors(v) for k, v in out.items()}


# ----------------------------------------------------------------------------------------------------------
# RNG state
# ----------------------------------------------------------------------------------------------------------
def capture_rng_state() -> Dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "paddle": paddle.get_rng_state()}


def _rng_globals():
    """The one non-data class of ``rng_state.pkl``: Paddle's generator state (seed, offset, Mersenne state)."""
    from paddle.base.libpaddle import GeneratorState
    return {"paddle.base.libpaddle.GeneratorState": GeneratorState}


def restore_rng_state(state: Dict) -> None:
    if "python" in state:
        random.setstate(state["python"])
    if "numpy" in state:
        np.random.set_state(state["numpy"])
    if state.get("paddle") is not None:
        try:
            paddle.set_rng_state(state["paddle"])
        except Exception as e:  # a checkpoint from another device kind
            import warnings
            warnings.warn(f"could not restore the paddle RNG state ({e}); continuing with the current one")


# ----------------------------------------------------------------------------------------------------------
# save / load
# ----------------------------------------------------------------------------------------------------------
def _write_model_yml(d: str, model_yml: Optional[Dict]) -> None:
    if model_yml is not None:
        from ..deploy.model_yml import write_model_yml
        write_model_yml(os.path.join(d, "model.yml"), model_yml)


def list_checkpoints(save_dir: str):
    """Complete ``iter_N`` checkpoints under ``save_dir`` as ``[(N, path)]``, oldest first."""
    out = []
    if not os.path.isdir(save_dir):
        return out
    for name in os.listdir(save_dir):
        m = _ITER_RE.match(name)
        path = os.path.join(save_dir, name)
        if m and os.path.isfile(os.path.join(path, STATE_FILE)):
            out.append((int(m.group(1)), path))
    return sorted(out)


def save_checkpoint(save_dir: str, iteration: int, model, optimizer=None, scheduler=None, *,
                    state: Optional[Dict] = None, model_yml: Optional[Dict] = None, scaler=None,
                    rng_state: Optional[Dict] = None, keep: int = 0, protect=()) -> str:
    """Write ``save_dir/iter_<iteration>/`` atomically, then point ``latest`` at it.

    ``state``: extra JSON-able fields for ``train_state.json`` (epoch, best metric, ...). ``keep`` > 0
    deletes the oldest ``iter_*`` directories beyond the newest ``keep`` (never one named in ``protect``).
    """
    save_dir = os.path.abspath(os.fspath(save_dir))
    name = f"iter_{int(iteration)}"
    st = dict(state or {})
    st.update(iter=int(iteration), time=time.strftime("%Y-%m-%dT%H:%M:%S"), format=1)
    if scheduler is not None:
        st["scheduler"] = scheduler.state_dict()
    if scaler is not None:
        st["scaler"] = scaler.state_dict()

    def writer(d):
        paddle.save(model.state_dict(), os.path.join(d, "model.pdparams"))
        if optimizer is not None:
            paddle.save(optimizer_state_to_structured(optimizer, model), os.path.join(d, "model.pdopt"))
        with open(os.path.join(d, "rng_state.pkl"), "wb") as f:
            pickle.dump(rng_state if rng_state is not None else capture_rng_state(), f)
        _write_model_yml(d, model_yml)
        with open(os.path.join(d, STATE_FILE), "w", encoding="utf-8") as f:    # last: marks completeness
            json.dump(json_safe(st), f, indent=1, sort_keys=True, allow_nan=False)
            f.write("\n")

    path = atomic_write_dir(os.path.join(save_dir, name), writer)

    def write_latest(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(name + "\n")
    atomic_write_file(os.path.join(save_dir, LATEST_FILE), write_latest)
    if keep and keep > 0:
        protected = {os.path.abspath(p) for p in protect} | {path}
        ckpts = list_checkpoints(save_dir)
        for _, p in ckpts[:max(0, len(ckpts) - keep)]:
            if os.path.abspath(p) not in protected:
                shutil.rmtree(p, ignore_errors=True)
    return path


def save_best_model(save_dir: str, model, model_yml: Dict, eval_details: Optional[Dict] = None) -> str:
    """Write ``save_dir/best_model/{model.pdparams, model.yml, eval_details.json}`` atomically."""
    def writer(d):
        paddle.save(model.state_dict(), os.path.join(d, "model.pdparams"))
        if eval_details is not None:
            with open(os.path.join(d, "eval_details.json"), "w", encoding="utf-8") as f:
                json.dump(json_safe(eval_details), f, indent=1, sort_keys=True, allow_nan=False)
                f.write("\n")
        _write_model_yml(d, model_yml)

    return atomic_write_dir(os.path.join(os.path.abspath(os.fspath(save_dir)), BEST_DIR), writer)


def find_latest(save_dir: str) -> Optional[str]:
    """Path of the newest complete checkpoint: the one ``latest`` names, else the highest ``iter_N``."""
    save_dir = os.fspath(save_dir)
    pointer = os.path.join(save_dir, LATEST_FILE)
    if os.path.isfile(pointer):
        with open(pointer, "r", encoding="utf-8") as f:
            name = f.read().strip()
        path = os.path.join(save_dir, name)
        if name and os.path.isfile(os.path.join(path, STATE_FILE)):
            return path
    ckpts = list_checkpoints(save_dir)
    return ckpts[-1][1] if ckpts else None


def load_checkpoint(path: str, model, optimizer=None, scheduler=None, scaler=None,
                    restore_rng: bool = True) -> Dict:
    """Restore a checkpoint directory written by :func:`save_checkpoint`; returns its ``train_state.json``.

    Weights are loaded strictly (missing / unexpected / mis-shaped keys raise and name the keys).
    """
    from ..utils.io import load_pickle_file, load_weights_strict

    path = os.fspath(path)
    state_file = os.path.join(path, STATE_FILE)
    if not os.path.isfile(state_file):
        raise CheckpointError(f"{path} is not a complete checkpoint (no {STATE_FILE})")
    try:
        with open(state_file, "r", encoding="utf-8") as f:
            state = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{state_file} is damaged ({e}); resume from an earlier checkpoint with "
                              f"--resume {os.path.dirname(path)}/iter_N, or delete {path}") from e
    if not isinstance(state, dict) or "iter" not in state:
        raise CheckpointError(f"{state_file} holds no training state (no 'iter'); resume from another checkpoint")
    load_weights_strict(model, os.path.join(path, "model.pdparams"))
    if optimizer is not None:
        opt_file = os.path.join(path, "model.pdopt")
        if not os.path.isfile(opt_file):
            raise CheckpointError(f"{path}: no model.pdopt to resume the optimizer from")
        opt_state = optimizer_state_from_structured(load_pickle_file(opt_file), model)
        optimizer.set_state_dict(opt_state)
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.set_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler") is not None:
        scaler.load_state_dict(state["scaler"])
    rng_file = os.path.join(path, "rng_state.pkl")
    if restore_rng and os.path.isfile(rng_file):
        extra = _rng_globals()
        restore_rng_state(load_pickle_file(rng_file, extra=extra, buildable=tuple(extra.values())))
    return state
