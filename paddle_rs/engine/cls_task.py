"""Scene classification in the training engine: ``ClsTask`` (``task: cls``) and ``ClsEvaluator``.

Registered with :func:`paddle_rs.engine.trainer.register_task` / :func:`paddle_rs.engine.evaluator.register_evaluator`;
``trainer.py`` and ``evaluator.py`` import this module once so the registration happens. Recipe: rsmamba.md §7
(mmpretrain ``ImageClassifier`` + ``LinearClsHead`` + ``RandomBatchAugment``), see configs/rsmamba_b/*.yaml.

Config keys used here (on top of the trainer's schema)::

    data:   {root, train_list: train.txt, val_list: val.txt, labels_file: cls_names.txt, expect_bands}
            # the upstream datainfo layout (paddle_rs.data.datasets.ClsDataset): "<class>/<file>" lines
    train_transforms / eval_transforms      # e.g. RandomResizedCrop ... AutoAugment, Normalize / ResizeEdge,
                                            # CenterCrop, Normalize (numpy transforms)
    batch_augments: {augments: [{type: Mixup, alpha: 0.8}, {type: CutMix, alpha: 1.0}], probs: null} | null
    loss:   {type: LabelSmoothLoss, label_smooth_val: 0.1, mode: original}
    lr_scheduler: {..., warmup_epochs: 10,  # converted to warmup_iters once the iterations per epoch are known
                   by_epoch: true}      # + iters_per_epoch: warm-up per iteration, cosine per epoch (mmengine)
    train:  {metric_for_best: macro_f1 (default), shuffle_perms: random | fixed,
             eval_interval_epochs, save_interval_epochs}      # converted to eval_interval / save_interval
    eval:   {batch_size: 16, perm_seed: null | int}

Shuffle permutations (RSMamba and any model with ``make_perms`` / a ``perm_seed`` option, rsmamba.md §4):

* the model is built with ``perm_seed`` = ``model.init_params.perm_seed`` if the config sets it, else the
  config's ``seed``: a fixed, seeded permutation set that evaluation and the export use (recorded in
  ``model.yml`` ``_init_params``), so reports are reproducible and the exported model predicts exactly what
  was evaluated. ``perm_seed: null`` in the config keeps upstream's fresh permutations in evaluation too;
* training (``train.shuffle_perms: random``, default) passes fresh permutations every iteration, drawn from the
  global numpy generator (upstream draws ``randperm`` per layer per forward): the same distribution, seeded by
  the config's ``seed`` and restored on ``--resume`` with the other RNG states. ``fixed`` trains on the fixed set;
* ``eval.perm_seed: int`` evaluates with ``make_perms(int)`` instead of the model's set.

Mixup / CutMix run in :meth:`ClsTask.forward_loss` on the normalised batch with the global numpy generator and
Paddle's ``randperm`` (``paddle_rs.engine.batch_aug``), as upstream's data preprocessor does; the loss then
receives soft ``[B, C]`` targets.
"""
import math
from typing import Dict, List, Optional, Sequence

import numpy as np
import paddle
import paddle.nn.functional as F

from ..data.datasets import ClsDataset
from ..metrics.classification import ClsMetric
from .batch_aug import build_batch_augment
from .evaluator import register_evaluator
from .trainer import ResumableBatchSampler, build_criterion, register_task

__all__ = ["ClsTask", "ClsEvaluator", "format_cls_table", "model_perms"]


def _unwrap(model):
    return getattr(model, "_layers", model)          # paddle.DataParallel


def model_perms(net, seed=None, rng=None):
    """``[num_layers, L]`` int64 shuffle permutations for a model with ``make_perms`` (RSMamba), else None.
    ``seed``: ``net.make_perms(seed)``; otherwise fresh ones from ``rng`` (default: the global numpy generator)."""
    net = _unwrap(net)
    if not hasattr(net, "make_perms"):
        return None
    if seed is not None:
        return net.make_perms(int(seed))
    n, length = int(net.num_layers), int(net.num_tokens)
    draw = (rng or np.random).permutation
    return np.stack([draw(length) for _ in range(n)]).astype(np.int64)


def _call(net, x, perms):
    return net(x) if perms is None else net(x, perms)


# ----------------------------------------------------------------------------------------------------------
# evaluator
# ----------------------------------------------------------------------------------------------------------
def _pct(v) -> str:
    return "   nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{float(v):6.2f}"


def format_cls_table(result: Dict, class_names: Optional[Sequence[str]] = None) -> str:
    """Per-class precision / recall / F1 (percent) with GT and predicted counts, then top-1 and the macro means."""
    names = list(class_names or result.get("class_names") or [f"class_{i}" for i in range(len(result["f1"]))])
    cm = np.asarray(result["confusion_matrix"]) if result.get("confusion_matrix") is not None else None
    width = max(12, max(len(n) for n in names) + 1)
    head = f"{'id':>3} {'class':<{width}} {'Prec':>6} {'Recall':>6} {'F1':>6}"
    if cm is not None:
        head += f" {'GT':>6} {'Pred':>6}"
    lines = [head, "-" * len(head)]
    for i, n in enumerate(names):
        line = f"{i:>3} {n:<{width}} {_pct(result['precision'][i])} {_pct(result['recall'][i])} {_pct(result['f1'][i])}"
        if cm is not None:
            line += f" {int(cm[i].sum()):>6d} {int(cm[:, i].sum()):>6d}"
        lines.append(line)
    lines.append("-" * len(head))
    perms = result.get("perms", "?")
    lines.append(f"top-1 {_pct(result['top1']).strip()}  macro P {_pct(result['macro_precision']).strip()}  "
                 f"R {_pct(result['macro_recall']).strip()}  F1 {_pct(result['macro_f1']).strip()}  "
                 f"({result.get('num_images', '?')} images, permutations: {perms})")
    return "\n".join(lines)


@register_evaluator("cls")
class ClsEvaluator:
    """Batched eval-mode inference + :class:`paddle_rs.metrics.classification.ClsMetric` (top-1, per-class and
    macro P/R/F1 in percent; prediction = argmax of the softmax scores, as mmpretrain).

    ``perm_seed``: None -> the model's own permutations (its fixed ``perm_seed`` set, or upstream's random ones);
    int -> ``model.make_perms(perm_seed)`` passed explicitly.
    """

    def __init__(self, num_classes: int, class_names: Optional[Sequence[str]] = None, batch_size: int = 16,
                 perm_seed: Optional[int] = None, progress: bool = False):
        self.num_classes = int(num_classes)
        self.class_names = list(class_names) if class_names is not None else \
            [f"class_{i}" for i in range(self.num_classes)]
        self.batch_size = max(1, int(batch_size))
        self.perm_seed = None if perm_seed is None else int(perm_seed)
        self.progress = progress

    @classmethod
    def from_config(cls, cfg: Dict, **overrides) -> "ClsEvaluator":
        ev = cfg.get("eval") or {}
        kw = dict(num_classes=cfg["num_classes"], class_names=cfg.get("labels"),
                  batch_size=ev.get("batch_size", 16), perm_seed=ev.get("perm_seed"))
        kw.update(overrides)
        return cls(**kw)

    def _perms_note(self, net):
        if not hasattr(net, "make_perms"):
            return "n/a"
        if self.perm_seed is not None:
            return f"make_perms({self.perm_seed})"
        seed = getattr(getattr(net, "backbone", net), "perm_seed", None)
        return f"fixed, perm_seed={seed}" if seed is not None else "random per forward (not reproducible)"

    def predict(self, model, images) -> np.ndarray:
        """Softmax scores ``[N, C]`` (float32) for a normalised NCHW batch (numpy or paddle), eval mode."""
        net = _unwrap(model)
        perms = model_perms(net, self.perm_seed) if self.perm_seed is not None else None
        x = images if isinstance(images, paddle.Tensor) else paddle.to_tensor(np.ascontiguousarray(images,
                                                                                                  dtype=np.float32))
        was_training = net.training
        net.eval()
        try:
            with paddle.no_grad():
                out = _call(net, x, perms)
                if isinstance(out, (tuple, list)):
                    out = out[0]
                if not getattr(type(net), "outputs_probabilities", False):
                    out = F.softmax(out, axis=1)
                return out.astype("float32").numpy()
        finally:
            if was_training:
                net.train()

    def evaluate(self, model, dataset, max_samples: Optional[int] = None, verbose: bool = False) -> Dict:
        net = _unwrap(model)
        n = len(dataset) if not max_samples else min(len(dataset), int(max_samples))
        metric = ClsMetric(self.num_classes)
        starts = range(0, n, self.batch_size)
        if self.progress:
            try:
                from tqdm import tqdm
                starts = tqdm(starts, desc="eval", unit="batch", dynamic_ncols=True)
            except ImportError:  # pragma: no cover
                pass
        for s in starts:
            items = [dataset[i] for i in range(s, min(s + self.batch_size, n))]
            images = np.stack([np.asarray(im, dtype=np.float32) for im, _ in items])
            labels = np.asarray([int(lb) for _, lb in items], dtype=np.int64)
            scores = self.predict(net, images)
            if scores.shape[1] != self.num_classes:
                raise ValueError(f"model predicts {scores.shape[1]} classes, the config says {self.num_classes}")
            metric.update(scores, labels)
        res = metric.compute()
        out = {k: (float(v) if np.ndim(v) == 0 else [float(x) for x in np.asarray(v)]) for k, v in res.items()
               if k not in ("confusion_matrix", "support", "num_samples")}
        out.update(support=[int(v) for v in res["support"]], confusion_matrix=res["confusion_matrix"].tolist(),
                   class_names=self.class_names, num_images=n, perms=self._perms_note(net),
                   perm_seed=self.perm_seed)
        if verbose:
            print(format_cls_table(out))
        return out


# ----------------------------------------------------------------------------------------------------------
# task
# ----------------------------------------------------------------------------------------------------------
@register_task("cls")
class ClsTask:
    """Scene classification: datainfo split files, Mixup/CutMix + label-smoothing CE, :class:`ClsEvaluator`."""

    model_type = "cls"
    percent_scale = 1.0          # its metrics are already percent (ClsMetric)
    SUMMARY_KEYS = ("top1", "macro_precision", "macro_recall", "macro_f1")

    def __init__(self, cfg: Dict):
        from ..registry import get_entry

        self.cfg = cfg
        self.entry = get_entry(cfg["model"]["name"])
        if "perm_seed" in self.entry.defaults:        # deterministic permutation set from the config's seed
            if cfg["model"].get("init_params") is None:
                cfg["model"]["init_params"] = {}
            ip = cfg["model"]["init_params"]
            if "perm_seed" not in ip:
                ip["perm_seed"] = int(cfg.get("seed") or 0)
        tr = cfg.setdefault("train", {}) or {}
        tr.setdefault("metric_for_best", "macro_f1")
        self.shuffle_perms = tr.get("shuffle_perms", "random")
        if self.shuffle_perms not in ("random", "fixed"):
            raise ValueError(f"train.shuffle_perms must be 'random' or 'fixed', got {self.shuffle_perms!r}")
        self.batch_augment = build_batch_augment(cfg.get("batch_augments"))

    # -- data ----------------------------------------------------------------------------------------------
    def _dataset(self, list_key_or_path, transforms, seed):
        d = self.cfg["data"]
        if not d.get("root"):
            raise ValueError("config: data.root is required")
        return ClsDataset(d["root"], list_key_or_path, self.cfg["labels"], transforms=transforms or [],
                          expect_bands=d.get("expect_bands"), seed=seed)

    def build_datasets(self, seed):
        """``(train, val)``; val is None without ``data.val_list``. Also turns ``lr_scheduler.warmup_epochs`` into
        ``warmup_iters`` (the trainer builds the scheduler after the datasets)."""
        d = self.cfg["data"]
        if not d.get("train_list"):
            raise ValueError("config: data.train_list is required")
        train = self._dataset(d["train_list"], self.cfg.get("train_transforms"), seed)
        self._epochs_to_iters(len(train))
        return train, self.build_val_dataset() if d.get("val_list") else None

    def _epochs_to_iters(self, num_samples):
        """Epoch-based keys -> the trainer's iteration keys, with the trainer's iterations per epoch:
        ``lr_scheduler.warmup_epochs`` -> ``warmup_iters``, ``train.eval_interval_epochs`` / ``save_interval_epochs``
        -> ``eval_interval`` / ``save_interval``."""
        tr = self.cfg["train"]
        sched = self.cfg.get("lr_scheduler") or {}
        pairs = [(sched, "warmup_epochs", "warmup_iters"), (tr, "eval_interval_epochs", "eval_interval"),
                 (tr, "save_interval_epochs", "save_interval")]
        if all(sec.get(k) is None for sec, k, _ in pairs) and not sched.get("by_epoch"):
            return
        ipe = ResumableBatchSampler(num_samples, int(tr.get("batch_size", 8)), drop_last=tr.get("drop_last", True),
                                    world_size=paddle.distributed.get_world_size()).iters_per_epoch
        if sched.get("by_epoch"):          # the schedule is stepped per epoch after the warm-up (engine/optim.py)
            sched["iters_per_epoch"] = ipe
        for sec, key, target in pairs:
            v = sec.pop(key, None)
            if v is not None:
                sec[target] = int(round(float(v) * ipe))

    def build_val_dataset(self, file_list=None):
        file_list = file_list or self.cfg["data"].get("val_list")
        if not file_list:
            raise ValueError("config: data.val_list is required for evaluation")
        return self._dataset(file_list, self.cfg.get("eval_transforms"), None)

    # -- training ------------------------------------------------------------------------------------------
    def build_criterion(self):
        return build_criterion(self.cfg.get("loss"))

    def forward_loss(self, model, batch, criterion):
        images, labels = batch[0], batch[1]
        target = labels
        if self.batch_augment is not None:
            images, target, _ = self.batch_augment(images, labels, num_classes=self.cfg["num_classes"])
        perms = model_perms(model) if self.shuffle_perms == "random" else None
        return criterion(_call(model, images, perms), target)

    # -- evaluation / export --------------------------------------------------------------------------------
    def build_evaluator(self, progress=False):
        from .evaluator import build_evaluator
        return build_evaluator(self.cfg, "cls", progress=progress)

    def export_transforms(self, net) -> List[Dict]:
        """``model.yml`` Transforms: the eval transforms (ResizeEdge, CenterCrop, Normalize)."""
        from ..data.transforms import build_transforms
        return build_transforms(list(self.cfg.get("eval_transforms") or [])).to_config()

    @classmethod
    def summary(cls, result: Dict) -> Dict:
        return {k: result[k] for k in cls.SUMMARY_KEYS if k in result}

    @staticmethod
    def format(result: Dict) -> str:
        return format_cls_table(result)
