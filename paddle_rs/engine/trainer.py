"""Iteration-based trainer: config -> data, model, loss, optimizer -> checkpoints, best model, logs.

Used by ``tools/train.py`` and ``test_tipc/run_task.py``::

    from paddle_rs.engine import config as C, trainer as T
    cfg = C.load_config("configs/factseg/isaid.yaml", ["train.iters=100"])
    summary = T.Trainer(cfg, save_dir="output/x", resume=False).train()

Config schema (see configs/factseg/isaid.yaml for a commented full example)::

    model:  {name: <registry name>, init_params: {..}, pretrained: <.pdparams, strict> | null,
             backbone_pretrained: {path: <.pdparams>, prefix: resencoder.resnet.} | null}
    task: seg                       # default: the registry entry's task
    num_classes: 16                 # also passed to the model unless init_params sets it
    in_channels: 3
    ignore_index: 255
    labels: [..] | null             # class names; null -> data.labels_file -> class_<i>
    seed: 2333                      # random / numpy / paddle + augmentation + shuffling (default 1024)
    device: auto | cpu | gpu
    save_dir: output/<name>
    data:   {root, train_list, val_list, labels_file, color_map: null | isaid | [[r,g,b]..],
             expect_bands, train_windows: null | {size, stride}, num_workers: 0}
    train_transforms: [{Op: {args}}, ..]     # paddle_rs.data.transforms
    eval_transforms:  [{Op: {args}}, ..]     # up to Normalize; the evaluator pads per window
    loss: {type: JointLoss | <module>:<callable>, ..}
    optimizer: {type, lr, momentum, weight_decay, grad_clip, paramwise}    # engine.optim
    lr_scheduler: {type, power, end_lr, warmup_iters, warmup_ratio}
    train:  {iters | epochs, batch_size (per device), shuffle, drop_last, log_interval, save_interval,
             eval_interval, keep_checkpoints, lr_offset: paddle | simplecv, sync_bn, cpu_kernels: auto | on | off,
             amp: {enable, level, dtype, init_loss_scaling, custom_white_list, custom_black_list},
             metric_for_best: miou, progress_bar}
    eval:   {mode: whole | slide, window, stride, flip, merge: prob | logit, nan_policy, pad_value,
             max_samples}

Top-level aliases (PaddleRS TIPC YAML keys, so ``run_task.py --key=value`` works): ``num_epochs`` ->
``train.epochs``, ``train_batch_size`` / ``batch_size`` -> ``train.batch_size``, ``iters`` ->
``train.iters``, ``learning_rate`` -> ``optimizer.lr``, ``model_path`` / ``pretrained`` ->
``model.pretrained``.

Iteration semantics: ``iter`` = number of completed optimizer steps. Iteration ``i`` (0-based) of epoch
``e = i // iters_per_epoch`` reads batch ``i - e * iters_per_epoch`` of a permutation seeded by
``(seed, e)``; augmentation of sample ``k`` in epoch ``e`` is seeded by ``(seed, e, k)``. Resuming therefore
replays exactly the batches an uninterrupted run would have seen. LR timing: ``lr_offset: paddle``
steps the scheduler after every optimizer step (iteration i uses lr(i)); ``simplecv`` skips the step after
iteration 0 (iterations 0 and 1 use lr(0), iteration i >= 1 uses lr(i-1)), factseg.md §7.
"""
import contextlib
import json
import math
import os
import random
import time
from typing import Callable, Dict, List, Optional

import numpy as np
import paddle

from ..data.datasets import SegDataset, read_class_names, sliding_windows
from . import checkpoint as ckpt
from .config import save_config
from .evaluator import build_evaluator, format_seg_table

__all__ = ["Trainer", "train", "seed_everything", "NonFiniteLossError", "ResumableBatchSampler",
           "WindowedSegDataset", "SegTask", "TASKS", "register_task", "build_criterion", "reduce_loss",
           "resolve_config", "model_init_params", "plot_training_curve", "read_log"]

LOG_FILE = "train_log.jsonl"
CURVE_FILE = "train_curve.png"


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN/Inf; ``iteration`` is the 1-based iteration that produced it."""

    def __init__(self, message, iteration, value, last_checkpoint):
        super().__init__(message)
        self.iteration, self.value, self.last_checkpoint = iteration, value, last_checkpoint


def seed_everything(seed: Optional[int]) -> None:
    if seed is None:
        return
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    paddle.seed(seed)


# ----------------------------------------------------------------------------------------------------------
# config normalisation
# ----------------------------------------------------------------------------------------------------------
_ALIASES = {"num_epochs": "train.epochs", "train_batch_size": "train.batch_size", "batch_size": "train.batch_size",
            "iters": "train.iters", "learning_rate": "optimizer.lr", "model_path": "model.pretrained",
            "pretrained": "model.pretrained"}


def resolve_config(cfg: Dict) -> Dict:
    """Apply the top-level aliases, fill defaults and the class names. Returns a new dict."""
    import copy

    from .config import set_by_path

    cfg = copy.deepcopy(cfg)
    for alias, target in _ALIASES.items():
        if alias in cfg:
            v = cfg.pop(alias)
            if v is not None:
                set_by_path(cfg, target, v)
    for sec in ("model", "data", "train", "eval", "optimizer", "lr_scheduler"):
        if cfg.get(sec) is None:
            cfg[sec] = {}
    if "name" not in cfg["model"]:
        raise ValueError("config: model.name (the registry name, e.g. factseg) is required")
    lf = cfg["data"].get("labels_file")
    if lf:
        path = lf if os.path.isabs(lf) else os.path.join(cfg["data"].get("root") or ".", lf)
        if os.path.isfile(path):
            names = read_class_names(path)
            if cfg.get("labels") is None:
                cfg["labels"] = names
            elif list(cfg["labels"]) != names:
                import warnings
                warnings.warn(f"config labels {cfg['labels']} differ from {path} {names}; using the config's")
    if "num_classes" not in cfg:
        if cfg.get("labels"):
            cfg["num_classes"] = len(cfg["labels"])
        else:
            raise ValueError("config: num_classes is required (or labels)")
    if cfg.get("labels") is not None and len(cfg["labels"]) != cfg["num_classes"]:
        raise ValueError(f"config: {len(cfg['labels'])} labels for num_classes={cfg['num_classes']}")
    if cfg.get("labels") is None:
        cfg["labels"] = [f"class_{i}" for i in range(cfg["num_classes"])]
    cfg.setdefault("seed", 1024)
    cfg.setdefault("ignore_index", 255)
    return cfg


def model_init_params(cfg: Dict, entry=None) -> Dict:
    """Constructor kwargs (``model.yml`` ``_init_params``): registry defaults < top-level ``num_classes`` /
    ``in_channels`` < ``model.init_params``."""
    if entry is None:
        from ..registry import get_entry
        entry = get_entry(cfg["model"]["name"])
    params = dict(entry.defaults)
    params["num_classes"] = cfg["num_classes"]
    if "in_channels" in params and cfg.get("in_channels") is not None:      # only models that take it
        params["in_channels"] = cfg["in_channels"]
    params.update(cfg["model"].get("init_params") or {})
    return params


# ----------------------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------------------
class ResumableBatchSampler(paddle.io.BatchSampler):
    """Per-epoch batches from a ``(seed, epoch)``-seeded permutation, split over ranks the way
    ``paddle.io.DistributedBatchSampler`` does (global batch ``b*r .. b*(r+1)`` of each ``b*world`` block),
    and able to start mid-epoch (``set_epoch(epoch, skip=n)``), which a resumed run needs.

    ``drop_last``: drop the incomplete last global batch (else it is filled by wrapping around). A dataset
    smaller than one global batch is repeated to fill it.
    """

    def __init__(self, num_samples: int, batch_size: int, shuffle: bool = True, drop_last: bool = True,
                 seed: Optional[int] = 0, rank: int = 0, world_size: int = 1):
        if num_samples < 1:
            raise ValueError("the training set is empty")
        self.num_samples, self.batch_size = int(num_samples), int(batch_size)
        self.shuffle, self.drop_last = bool(shuffle), bool(drop_last)
        self.seed = 0 if seed is None else int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.sampler = None
        self.epoch, self.skip = 0, 0

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    @property
    def iters_per_epoch(self) -> int:
        n = max(self.num_samples, self.global_batch)
        return n // self.global_batch if self.drop_last else -(-n // self.global_batch)

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = int(epoch), int(skip)

    def epoch_batches(self, epoch: int) -> List[List[int]]:
        if self.shuffle:
            perm = np.random.default_rng([self.seed, int(epoch)]).permutation(self.num_samples)
        else:
            perm = np.arange(self.num_samples)
        gb = self.global_batch
        need = self.iters_per_epoch * gb
        if need > len(perm):
            perm = np.resize(perm, need)         # wrap around
        perm = perm[:need].tolist()
        r0, r1 = self.rank * self.batch_size, (self.rank + 1) * self.batch_size
        return [perm[b * gb + r0:b * gb + r1] for b in range(self.iters_per_epoch)]

    def __iter__(self):
        yield from self.epoch_batches(self.epoch)[self.skip:]

    def __len__(self):
        return max(0, self.iters_per_epoch - self.skip)


def _image_hw(path: str):
    from ..data.raster_io import PIL_EXTS, read_image

    if os.path.splitext(path)[1].lower() in PIL_EXTS:
        from PIL import Image
        with Image.open(path) as im:            # header only
            return im.size[1], im.size[0]
    return read_image(path).shape[:2]


class WindowedSegDataset:
    """Training patches cut on the fly: every image of ``base`` (a :class:`SegDataset`) is split by
    :func:`sliding_windows` (``size``, ``stride``; windows clamped inside the image, smaller images give
    one smaller patch) -- the iSAID 896/512 patching of factseg.md §5 without writing patches to disk.
    The base dataset's transforms run on each patch; augmentation is seeded per (seed, epoch, patch)."""

    def __init__(self, base: SegDataset, size, stride):
        self.base = base
        self.index = []
        for i, (img_path, _) in enumerate(base.items):
            h, w = _image_hw(img_path)
            self.index.extend((i, win) for win in sliding_windows(h, w, size, stride))
        self.size, self.stride = size, stride

    def __len__(self):
        return len(self.index)

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)

    def __getitem__(self, k: int):
        i, win = self.index[k]
        s = self.base.load(i)
        ys, xs = win.slices
        s["image"], s["mask"] = s["image"][ys, xs], s["mask"][ys, xs]
        s = self.base._finish(self.base.transforms(s, self.base._rng(k)))
        return s["image"], s["mask"]


def _color_map(spec):
    if spec is None or spec is False:
        return None
    if isinstance(spec, str):
        from ..data import raster_io
        name = spec.upper() + "_COLOR_MAP"
        if not hasattr(raster_io, name):
            raise ValueError(f"unknown color_map {spec!r} (known: isaid, or a list of [r, g, b])")
        return getattr(raster_io, name)
    return [tuple(int(c) for c in rgb) for rgb in spec]


# ----------------------------------------------------------------------------------------------------------
# loss
# ----------------------------------------------------------------------------------------------------------
def build_criterion(cfg: Dict) -> Callable:
    """``criterion(model_outputs, labels)``. ``type`` is a ``paddle_rs.losses`` name (``JointLoss``) or an
    import path ``package.module:callable`` called with the remaining keys (a plug-in point for new
    models before their loss is registered)."""
    if not cfg or "type" not in cfg:
        raise ValueError("config: loss.type is required")
    kind = cfg["type"]
    if ":" in kind:
        import importlib
        mod, attr = kind.split(":", 1)
        factory = getattr(importlib.import_module(mod), attr)
        return factory(**{k: v for k, v in cfg.items() if k != "type"})
    from ..losses import build_loss
    return build_loss(cfg)


def reduce_loss(out):
    """A loss tensor, or a dict whose keys containing ``'loss'`` are summed (SimpleCV / mmseg convention).
    Returns ``(total, {name: tensor})``."""
    if isinstance(out, paddle.Tensor):
        return out, {}
    if isinstance(out, dict):
        parts = {k: v for k, v in out.items() if "loss" in k}
        if not parts:
            raise ValueError(f"the criterion returned a dict without loss keys: {sorted(out)}")
        total = None
        for v in parts.values():
            total = v if total is None else total + v
        return total, parts
    raise TypeError(f"the criterion must return a Tensor or a dict of Tensors, got {type(out).__name__}")


# ----------------------------------------------------------------------------------------------------------
# tasks (pluggable: seg now; cls registers itself later)
# ----------------------------------------------------------------------------------------------------------
TASKS: Dict[str, type] = {}


def register_task(name: str):
    def deco(cls):
        TASKS[name] = cls
        cls.name = name
        return cls
    return deco


@register_task("seg")
class SegTask:
    """Semantic segmentation: file-list datasets, ``criterion(model(images), labels)``, SegEvaluator.

    A new task implements the same five methods; ``forward_loss`` is where batch-level augmentation
    (Mixup / CutMix for classification) belongs.
    """

    model_type = "seg"
    percent_scale = 100.0        # its metrics are fractions in [0, 1]; shown as percent, like the eval table

    def __init__(self, cfg: Dict):
        self.cfg = cfg

    def _common(self):
        cfg, d = self.cfg, self.cfg["data"]
        if not d.get("root"):
            raise ValueError("config: data.root is required")
        return dict(num_classes=cfg["num_classes"], ignore_index=cfg["ignore_index"],
                    expect_bands=d.get("expect_bands"), color_map=_color_map(d.get("color_map")))

    def build_datasets(self, seed):
        """``(train, val)``; val is None without ``data.val_list``."""
        cfg, d = self.cfg, self.cfg["data"]
        if not d.get("train_list"):
            raise ValueError("config: data.train_list is required")
        train = SegDataset(d["root"], d["train_list"], transforms=cfg.get("train_transforms") or [], seed=seed,
                           **self._common())
        if d.get("train_windows"):
            w = d["train_windows"]
            train = WindowedSegDataset(train, w["size"], w.get("stride", w["size"]))
        return train, self.build_val_dataset() if d.get("val_list") else None

    def build_val_dataset(self, file_list=None):
        cfg, d = self.cfg, self.cfg["data"]
        file_list = file_list or d.get("val_list")
        if not file_list:
            raise ValueError("config: data.val_list is required for evaluation")
        return SegDataset(d["root"], file_list, transforms=cfg.get("eval_transforms") or [], seed=None,
                          **self._common())

    def build_criterion(self):
        return build_criterion(self.cfg.get("loss"))

    def forward_loss(self, model, batch, criterion):
        images, labels = batch[0], batch[1]
        return criterion(model(images), labels)

    def build_evaluator(self, progress=False):
        return build_evaluator(self.cfg, "seg", progress=progress)

    def export_transforms(self, net) -> List[Dict]:
        """``model.yml`` Transforms: the eval transforms plus PadToMultiple(size_divisor) (tipc.md §6)."""
        from ..data.transforms import build_transforms

        ops = list(self.cfg.get("eval_transforms") or [])
        div = int(getattr(net, "size_divisor", 1) or 1)
        names = {next(iter(t)) for t in ops if isinstance(t, dict)}
        if div > 1 and not names & {"PadToMultiple", "FixedPad", "Resize"}:
            ops.append({"PadToMultiple": {"divisor": div, "pad_value": float(self.cfg["eval"].get("pad_value",
                                                                                                   0.0))}})
        return build_transforms(ops).to_config()

    @staticmethod
    def summary(result: Dict) -> Dict:
        return {k: result[k] for k in ("miou", "miou_fg", "mf1", "acc") if k in result}

    @staticmethod
    def format(result: Dict) -> str:
        return format_seg_table(result)


# ----------------------------------------------------------------------------------------------------------
# logging helpers
# ----------------------------------------------------------------------------------------------------------
def read_log(path: str) -> List[Dict]:
    out = []
    if os.path.isfile(path):
        with open(path, "r", encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        out.append(json.loads(line))
                    except json.JSONDecodeError:
                        break                  # a torn last line after a crash
    return out


def plot_training_curve(records: List[Dict], path: str, metric: str = "miou", scale: float = 100.0) -> Optional[str]:
    """Loss and LR against the iteration (and the eval metric in percent, ``scale`` x the logged value, as the eval
    table shows it), written atomically as a PNG."""
    train = [r for r in records if r.get("type") == "train" and r.get("loss") is not None]
    if not train:
        return None
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    its = [r["iter"] for r in train]
    evals = [r for r in records if r.get("type") == "eval" and r.get(metric) is not None
             and math.isfinite(r[metric])]
    fig, axes = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    axes[0].plot(its, [r["loss"] for r in train], lw=1, label="train loss")
    axes[0].set_ylabel("loss")
    axes[0].grid(alpha=0.3)
    if evals:
        ax2 = axes[0].twinx()
        ax2.plot([r["iter"] for r in evals], [scale * r[metric] for r in evals], "o-", color="tab:red",
                 label=metric)
        ax2.set_ylabel(f"{metric} (%)", color="tab:red")
    axes[1].plot(its, [r["lr"] for r in train], lw=1, color="tab:green")
    axes[1].set_ylabel("learning rate")
    axes[1].set_xlabel("iteration")
    axes[1].grid(alpha=0.3)
    fig.tight_layout()
    try:
        ckpt.atomic_write_file(path, lambda tmp: fig.savefig(tmp, format="png", dpi=90))
    finally:
        plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------------------------
# trainer
# ----------------------------------------------------------------------------------------------------------
class Trainer:
    """See the module docstring. ``model`` / ``criterion`` may be injected (tests, plug-ins); otherwise they
    are built from the config. ``resume``: True = continue from ``save_dir``'s latest checkpoint (a fresh
    start if there is none), or a checkpoint directory path."""

    def __init__(self, cfg: Dict, save_dir: Optional[str] = None, resume=False, model=None, criterion=None,
                 progress: Optional[bool] = None, log=print):
        from ..registry import get_entry

        self.cfg = resolve_config(cfg)
        c, tr = self.cfg, self.cfg["train"]
        self.log_fn = log
        self.save_dir = os.path.abspath(save_dir or c.get("save_dir") or os.path.join("output", c["model"]["name"]))
        c["save_dir"] = self.save_dir
        # distributed
        self.world_size = paddle.distributed.get_world_size()
        self.rank = paddle.distributed.get_rank()
        self.is_main = self.rank == 0
        if self.world_size > 1:
            paddle.distributed.init_parallel_env()
        self._set_device(c.get("device", "auto"))
        seed_everything(c["seed"])
        # task, data
        self.entry = get_entry(c["model"]["name"])
        task_name = c.get("task") or self.entry.task
        if task_name not in TASKS:
            raise KeyError(f"no trainer task {task_name!r} (known: {', '.join(sorted(TASKS))})")
        self.task = TASKS[task_name](c)
        self.train_ds, self.val_ds = self.task.build_datasets(c["seed"])
        self.batch_size = int(tr.get("batch_size", 8))
        self.sampler = ResumableBatchSampler(len(self.train_ds), self.batch_size, tr.get("shuffle", True),
                                             tr.get("drop_last", True), c["seed"], self.rank, self.world_size)
        self.iters_per_epoch = self.sampler.iters_per_epoch
        if tr.get("epochs"):                       # epochs (e.g. run_task.py --num_epochs) win over iters
            self.total_iters = int(tr["epochs"]) * self.iters_per_epoch
        elif tr.get("iters"):
            self.total_iters = int(tr["iters"])
        else:
            raise ValueError("config: train.iters or train.epochs is required")
        tr["iters"] = self.total_iters
        self.loader = paddle.io.DataLoader(self.train_ds, batch_sampler=self.sampler,
                                           num_workers=int(c["data"].get("num_workers", 0) or 0),
                                           return_list=True, use_shared_memory=False)
        # model
        self.init_params = self._init_params()
        self.net = model if model is not None else self.entry.builder(**self.init_params)
        self._load_pretrained()
        from ..cpu_kernels import accelerate, resolve
        self.cpu_kernels = resolve(tr.get("cpu_kernels", "auto") or "auto")
        if self.cpu_kernels:                       # paddle_rs's CPU kernels, swapped in by layer type
            accelerate(self.net)
        if self.world_size > 1 and tr.get("sync_bn"):
            self.net = paddle.nn.SyncBatchNorm.convert_sync_batchnorm(self.net)
        self.model = paddle.DataParallel(self.net) if self.world_size > 1 else self.net
        self.criterion = criterion if criterion is not None else self.task.build_criterion()
        # optimisation
        from .optim import build_optimizer
        self.optimizer, self.scheduler = build_optimizer(self.net, c["optimizer"], c["lr_scheduler"],
                                                         self.total_iters)
        self.lr_offset = tr.get("lr_offset", "paddle")
        if self.lr_offset not in ("paddle", "simplecv"):
            raise ValueError(f"train.lr_offset must be 'paddle' or 'simplecv', got {self.lr_offset!r}")
        amp = tr.get("amp") or {}
        self.amp = dict(amp) if isinstance(amp, dict) else {"enable": bool(amp)}
        self.scaler = None
        if self.amp.get("enable"):
            if not paddle.is_compiled_with_cuda():
                self._print("[train] warning: AMP requested on a CPU build; Paddle's CPU AMP support is "
                            "limited (bfloat16 only) -- consider train.amp.enable=false")
            if self.amp.get("dtype", "float16") == "float16":
                self.scaler = paddle.amp.GradScaler(init_loss_scaling=float(self.amp.get("init_loss_scaling",
                                                                                         1024.0)))
        # bookkeeping
        self.evaluator = self.task.build_evaluator(progress=False) if self.val_ds is not None else None
        self.metric_name = tr.get("metric_for_best", "miou")
        self.progress = tr.get("progress_bar", True) if progress is None else progress
        self.start_iter = 0
        self.best = {"metric": self.metric_name, "value": None, "iter": None, "epoch": None}
        self.last_eval: Optional[Dict] = None
        self.records: List[Dict] = []
        self.latest_ckpt: Optional[str] = None
        if resume:
            self._resume(resume)

    # -- setup helpers --------------------------------------------------------------------------------------
    def _print(self, *a):
        if self.is_main and self.log_fn is not None:
            bar = getattr(self, "_bar", None)
            if bar is not None and self.log_fn is print:
                bar.write(" ".join(str(x) for x in a))
            else:
                self.log_fn(*a)

    def _set_device(self, device):
        if device in (None, "auto"):
            device = "gpu" if paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0 else "cpu"
        if device == "gpu" and self.world_size > 1:
            device = f"gpu:{paddle.distributed.ParallelEnv().device_id}"
        paddle.set_device(device)
        self.device = device

    def _init_params(self) -> Dict:
        return model_init_params(self.cfg, self.entry)

    def _load_pretrained(self):
        m = self.cfg["model"]
        if m.get("pretrained"):
            from ..utils.io import load_weights_strict
            load_weights_strict(self.net, m["pretrained"])
            self._print(f"[train] loaded {m['pretrained']} (strict)")
        bp = m.get("backbone_pretrained")
        if bp:
            bp = {"path": bp} if isinstance(bp, str) else dict(bp)
            prefix = bp.get("prefix", "")
            from ..utils.io import load_state_file
            state = load_state_file(bp["path"])
            own = self.net.state_dict()
            used, skipped = {}, []
            for k, v in state.items():
                key = prefix + k
                if key in own and list(own[key].shape) == list(np.shape(v)):
                    used[key] = v
                else:
                    skipped.append(k)
            if not used:
                raise ValueError(f"{bp['path']}: no tensor matches the model under prefix {prefix!r}")
            self.net.set_state_dict(used)
            missing = [k for k in own if k.startswith(prefix) and k not in used]
            self._print(f"[train] backbone weights {bp['path']}: {len(used)} tensors loaded into {prefix}*, "
                        f"{len(skipped)} skipped ({', '.join(skipped[:5])}{' ...' if len(skipped) > 5 else ''}), "
                        f"{len(missing)} backbone tensors left at init")

    # -- model.yml --------------------------------------------------------------------------------------------
    def model_yml(self, eval_result: Optional[Dict], iteration: int) -> Dict:
        from ..deploy.model_yml import make_model_yml

        summary = self.task.summary(eval_result) if eval_result else {}
        best_val = summary.get(self.metric_name)
        epoch = iteration // max(self.iters_per_epoch, 1)
        return make_model_yml(
            type(self.net).__name__, self.task.export_transforms(self.net), task=self.task.model_type,
            in_channels=int(self.init_params.get("in_channels", self.cfg.get("in_channels", 3))),
            num_classes=self.cfg["num_classes"], labels=self.cfg["labels"], init_params=self.init_params,
            status="Normal",
            extra_attributes={"model_name": self.entry.name,
                              "best_accuracy": float(best_val) if best_val is not None else 0.0,
                              "best_model_epoch": int(epoch), "best_model_iter": int(iteration),
                              "eval_metrics": {k: float(v) for k, v in summary.items()}},
            completed_epochs=int(epoch), completed_iters=int(iteration))

    # -- resume ---------------------------------------------------------------------------------------------
    def _resume(self, resume):
        if self.is_main:
            for action, entry in ckpt.clean_interrupted_writes(self.save_dir):
                self._print(f"[train] --resume: {action} {entry} (left by an interrupted checkpoint write)")
        path = resume if isinstance(resume, str) else ckpt.find_latest(self.save_dir)
        if path is None:
            self._print(f"[train] --resume: no checkpoint under {self.save_dir}; starting from scratch")
            return
        state = ckpt.load_checkpoint(path, self.net, self.optimizer, self.scheduler, self.scaler)
        self.start_iter = int(state["iter"])
        if state.get("iters_per_epoch") not in (None, self.iters_per_epoch):
            self._print(f"[train] warning: iterations per epoch changed ({state['iters_per_epoch']} -> "
                        f"{self.iters_per_epoch}); the data order differs from the interrupted run")
        if state.get("total_iters") not in (None, self.total_iters):
            self._print(f"[train] warning: total iterations changed ({state['total_iters']} -> "
                        f"{self.total_iters}); the LR schedule was built for the new total")
        self.best = state.get("best") or self.best
        self.last_eval = state.get("last_eval")
        self.latest_ckpt = path
        log_path = os.path.join(self.save_dir, LOG_FILE)
        self.records = [r for r in read_log(log_path) if r.get("iter", 0) <= self.start_iter]
        if self.is_main:
            def write(tmp):
                with open(tmp, "w", encoding="utf-8") as f:
                    f.writelines(json.dumps(ckpt.json_safe(r)) + "\n" for r in self.records)
            ckpt.atomic_write_file(log_path, write)
        self._print(f"[train] resumed from {path} at iteration {self.start_iter}/{self.total_iters}")

    # -- logging ----------------------------------------------------------------------------------------------
    def _log(self, record: Dict):
        self.records.append(record)
        if self.is_main:
            with open(os.path.join(self.save_dir, LOG_FILE), "a", encoding="utf-8") as f:
                f.write(json.dumps(ckpt.json_safe(record)) + "\n")

    # -- one step ---------------------------------------------------------------------------------------------
    def _amp_ctx(self):
        if not self.amp.get("enable"):
            return contextlib.nullcontext()
        return paddle.amp.auto_cast(enable=True, level=self.amp.get("level", "O1"),
                                    dtype=self.amp.get("dtype", "float16"),
                                    custom_white_list=self.amp.get("custom_white_list"),
                                    custom_black_list=self.amp.get("custom_black_list"))

    def _step(self, batch, it: int):
        with self._amp_ctx():
            out = self.task.forward_loss(self.model, batch, self.criterion)
        loss, parts = reduce_loss(out)
        value = loss.detach().astype("float32")
        if self.world_size > 1:
            value = value.clone()
            paddle.distributed.all_reduce(value)
            value = value / self.world_size
        value = float(value)
        if not math.isfinite(value):
            last = self.latest_ckpt or "none saved yet"
            msg = (f"non-finite loss ({value}) at iteration {it + 1} of {self.total_iters}; training stopped "
                   f"before the optimizer step. The last good checkpoint is untouched: {last}. Fix the cause "
                   f"(learning rate, data, loss.stable=true) and continue with --resume.")
            self._log({"type": "error", "iter": it + 1, "loss": None, "message": msg})
            raise NonFiniteLossError(msg, it + 1, value, self.latest_ckpt)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        self.optimizer.clear_grad()
        if not (self.lr_offset == "simplecv" and it == 0):
            self.scheduler.step()
        return value, {k: float(v) for k, v in parts.items()}

    # -- eval / save --------------------------------------------------------------------------------------------
    def evaluate(self) -> Optional[Dict]:
        if self.evaluator is None:
            return None
        result = None
        if self.is_main:
            max_n = self.cfg["eval"].get("max_samples")
            result = self.evaluator.evaluate(self.net, self.val_ds, max_samples=max_n)
        if self.world_size > 1:
            paddle.distributed.barrier()
        return result

    def _is_better(self, value) -> bool:
        if self.best.get("iter") is None:
            return True                                # the first evaluation always makes a best_model
        if value is None or math.isnan(value):
            return False                               # NaN never improves
        cur = self.best.get("value")
        return cur is None or math.isnan(cur) or value > cur

    def _after_eval(self, it: int, result: Dict):
        summary = self.task.summary(result)
        self.last_eval = {"iter": it, **summary}
        self._log({"type": "eval", "iter": it, **summary})
        self._print(f"\n[eval] iteration {it}:\n{self.task.format(result)}")
        value = summary.get(self.metric_name)
        if value is not None and math.isnan(value):
            self._print(f"[eval] warning: {self.metric_name} is NaN under nan_policy="
                        f"{self.cfg['eval'].get('nan_policy', 'nan')} (a class is absent from both GT and "
                        f"prediction); a NaN never replaces an earlier best_model")
        if self._is_better(value):
            self.best = {"metric": self.metric_name, "value": value, "iter": it,
                         "epoch": it // max(self.iters_per_epoch, 1)}
            if self.is_main:
                ckpt.save_best_model(self.save_dir, self.net, self.model_yml(result, it), eval_details=result)
                shown = "nan" if value is None or math.isnan(value) else \
                    f"{getattr(self.task, 'percent_scale', 1.0) * value:.2f}%"       # the eval table's units
                self._print(f"[eval] new best {self.metric_name} {shown} at iteration {it} -> "
                            f"{os.path.join(self.save_dir, ckpt.BEST_DIR)}")

    def save(self, it: int):
        if not self.is_main:
            return
        state = {"epoch": it // max(self.iters_per_epoch, 1), "iters_per_epoch": self.iters_per_epoch,
                 "total_iters": self.total_iters, "best": self.best, "last_eval": self.last_eval,
                 "lr": float(self.optimizer.get_lr()), "world_size": self.world_size,
                 "lr_offset": self.lr_offset, "config": self.cfg.get("_config_path")}
        self.latest_ckpt = ckpt.save_checkpoint(
            self.save_dir, it, self.net, self.optimizer, self.scheduler, state=state,
            model_yml=self.model_yml(self.last_eval and {k: v for k, v in self.last_eval.items() if k != "iter"},
                                     it),
            scaler=self.scaler, keep=int(self.cfg["train"].get("keep_checkpoints", 3) or 0))
        try:
            plot_training_curve(self.records, os.path.join(self.save_dir, CURVE_FILE), self.metric_name,
                                getattr(self.task, "percent_scale", 1.0))
        except Exception as e:  # a plotting problem must never stop training
            self._print(f"[train] warning: could not write the training curve: {e}")

    # -- main loop ----------------------------------------------------------------------------------------------
    def train(self) -> Dict:
        c, tr = self.cfg, self.cfg["train"]
        total, ipe = self.total_iters, self.iters_per_epoch
        log_every = max(1, int(tr.get("log_interval", 20)))
        save_every = int(tr.get("save_interval", 0) or 0) or total
        eval_every = int(tr.get("eval_interval", 0) or 0) or total
        if self.is_main:
            os.makedirs(self.save_dir, exist_ok=True)
            save_config(c, os.path.join(self.save_dir, "config.yaml"))
            if self.start_iter == 0:
                ckpt.atomic_write_file(os.path.join(self.save_dir, LOG_FILE), lambda tmp: None)
        self._print(f"[train] {self.entry.name}: {total} iterations, batch {self.batch_size} x {self.world_size} "
                    f"device(s), {len(self.train_ds)} training samples ({ipe} iterations/epoch), device "
                    f"{self.device}, save_dir {self.save_dir}")
        bar = None
        if self.is_main and self.progress:
            try:
                from tqdm import tqdm
                bar = tqdm(total=total, initial=self.start_iter, desc="train", unit="it", dynamic_ncols=True)
            except ImportError:  # pragma: no cover
                bar = None
        self._bar = bar
        it = self.start_iter
        window, t_window, d_window = [], 0.0, 0.0
        step_times = []
        self.model.train()
        try:
            while it < total:
                epoch, skip = it // ipe, it % ipe
                if hasattr(self.train_ds, "set_epoch"):
                    self.train_ds.set_epoch(epoch)
                self.sampler.set_epoch(epoch, skip)
                t_data = time.perf_counter()
                for batch in self.loader:
                    t0 = time.perf_counter()
                    lr = float(self.optimizer.get_lr())
                    loss, parts = self._step(batch, it)
                    it += 1
                    t1 = time.perf_counter()
                    step_times.append(t1 - t0)
                    window.append(loss)
                    t_window += t1 - t0
                    d_window += t0 - t_data
                    if bar is not None:          # postfix first: update() redraws, so the bar shows this step
                        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.3e}", refresh=False)
                        bar.update(1)
                    if it % log_every == 0 or it == total:
                        n = len(window)
                        self._log({"type": "train", "iter": it, "epoch": epoch, "loss": float(np.mean(window)),
                                   "lr": lr, "time": t_window / n, "data_time": d_window / n,
                                   **({k: v for k, v in parts.items()} if parts else {})})
                        window, t_window, d_window = [], 0.0, 0.0
                    if it % eval_every == 0 or it == total:
                        result = self.evaluate()
                        if result is not None:
                            self._after_eval(it, result)
                        self.model.train()
                    if it % save_every == 0 or it == total:
                        self.save(it)
                    t_data = time.perf_counter()
                    if it >= total:
                        break
        finally:
            if bar is not None:
                bar.close()
            self._bar = None
        if self.evaluator is None and self.is_main and self.best.get("iter") is None:
            ckpt.save_best_model(self.save_dir, self.net, self.model_yml(None, it))
            self.best.update(iter=it)
        timed = step_times[1:] if len(step_times) > 1 else step_times
        summary = {"save_dir": self.save_dir, "iters": it, "start_iter": self.start_iter, "best": self.best,
                   "last_eval": self.last_eval, "latest_checkpoint": self.latest_ckpt,
                   "best_model_dir": os.path.join(self.save_dir, ckpt.BEST_DIR),
                   "sec_per_iter": float(np.mean(timed)) if timed else None}
        if timed:
            bv = self.best.get("value")
            shown = "n/a" if bv is None else ("nan" if math.isnan(bv) else
                                              f"{getattr(self.task, 'percent_scale', 1.0) * bv:.2f}%")
            self._print(f"[train] done: {it} iterations, {summary['sec_per_iter']:.3f} s/iteration (excluding the "
                        f"first), best {self.metric_name} {shown} at iteration {self.best.get('iter')}")
        return summary


def train(cfg: Dict, save_dir: Optional[str] = None, resume=False, **kw) -> Dict:
    """``Trainer(cfg, save_dir, resume, **kw).train()``."""
    return Trainer(cfg, save_dir=save_dir, resume=resume, **kw).train()


from . import cls_task  # noqa: E402,F401  (registers task 'cls' and its evaluator; imports this module)
