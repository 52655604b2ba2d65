"""Segmentation evaluation: whole-image or sliding-window inference, optional flip, global-CM metrics.

Inference of one image (factseg.md §6.1), for each view (the image, plus its horizontal flip when
``flip=True``):

1. windows: ``[whole image]`` (``mode='whole'``) or :func:`paddle_rs.data.datasets.sliding_windows`
   (``mode='slide'``, ``window``/``stride``; rows outer, starts ``min(i*stride, L-k)``);
2. each window is cut from the *normalised* image (the dataset's eval transforms end with Normalize) and
   zero-padded right/bottom to a multiple of the model's ``size_divisor`` -- padding after normalisation,
   pad value ``pad_value`` (0);
3. model in eval mode, batch 1 -> the output is mapped into the *merge space*, cropped back to the window
   and summed; the sum is divided by the per-pixel window count;
4. the merge space turns the average into probabilities.

With ``rescale=True`` (mmseg ``rescale``/``ori_shape``) the averaged output of each view is resized
(bilinear, align_corners=False, before the merge space's softmax) to the size of the dataset's *untransformed*
label (``dataset.load(i)['mask']``), which the metric then uses: eval transforms that resize/pad the image
(RSP iSAID: keep-ratio resize + pad to 896) are then scored against the original label as mmseg does.

The view probabilities are averaged (the flipped one flipped back) and ``argmax`` over C gives the label
map. Merge spaces (pluggable via :func:`register_merge_space`):

- ``'prob'`` (FactSeg upstream): average probabilities. The model output is used as is when the model
  declares ``outputs_probabilities = True`` (FactSeg's CP map), else it is softmaxed first.
- ``'logit'`` (mmseg ``slide_inference``, RSP UperNet): average raw logits, softmax afterwards. A model
  that outputs probabilities cannot use it.

The metric is :class:`paddle_rs.metrics.segmentation.SegMetric` (one confusion matrix over the whole set,
``ignore_index`` masked, the NaN policy of factseg.md §6.3).
"""
import math
from typing import Dict, List, Optional, Sequence

import numpy as np
import paddle
import paddle.nn.functional as F

from ..data.datasets import Window, sliding_windows
from ..metrics.segmentation import NAN_POLICIES, SegMetric

__all__ = ["SegEvaluator", "MergeSpace", "ProbMerge", "LogitMerge", "MERGE_SPACES", "register_merge_space",
           "format_seg_table", "pad_to_multiple", "build_evaluator", "EVALUATORS", "register_evaluator"]


# ----------------------------------------------------------------------------------------------------------
# merge spaces
# ----------------------------------------------------------------------------------------------------------
MERGE_SPACES: Dict[str, type] = {}


def register_merge_space(name: str):
    def deco(cls):
        MERGE_SPACES[name] = cls
        cls.name = name
        return cls
    return deco


class MergeSpace:
    """How window outputs are averaged. ``to_merge``: model output (paddle [1,C,h,w]) -> the tensor to sum;
    ``finalize``: averaged numpy [C,H,W] -> probabilities [C,H,W]."""

    name = "base"

    def check(self, model) -> None:
        pass

    def to_merge(self, output, model):  # pragma: no cover - abstract
        raise NotImplementedError

    def finalize(self, merged: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


@register_merge_space("prob")
class ProbMerge(MergeSpace):
    def to_merge(self, output, model):
        if getattr(model, "outputs_probabilities", False):
            return output
        return F.softmax(output, axis=1)

    def finalize(self, merged):
        return merged


@register_merge_space("logit")
class LogitMerge(MergeSpace):
    def check(self, model):
        if getattr(model, "outputs_probabilities", False):
            raise ValueError(f"merge='logit' needs a model that outputs logits; {type(model).__name__} outputs "
                             f"probabilities (use merge='prob')")

    def to_merge(self, output, model):
        return output

    def finalize(self, merged):
        m = merged - merged.max(axis=0, keepdims=True)
        e = np.exp(m)
        return (e / e.sum(axis=0, keepdims=True)).astype(np.float32)


def _unwrap(model):
    return getattr(model, "_layers", model)          # paddle.DataParallel


def pad_to_multiple(image: np.ndarray, divisor: int, value: float = 0.0) -> np.ndarray:
    """Zero-pad a CHW array right/bottom so H and W are multiples of ``divisor``."""
    c, h, w = image.shape
    th, tw = -(-h // divisor) * divisor, -(-w // divisor) * divisor
    if (th, tw) == (h, w):
        return image
    out = np.full((c, th, tw), value, dtype=image.dtype)
    out[:, :h, :w] = image
    return out


# ----------------------------------------------------------------------------------------------------------
# evaluator
# ----------------------------------------------------------------------------------------------------------
class SegEvaluator:
    """Whole / sliding-window inference + confusion-matrix metrics (see the module docstring).

    ``window`` / ``stride``: int or [h, w] (slide mode). ``size_divisor``: None = the model's
    ``size_divisor`` attribute (1 if absent). ``class_names``: for the table and the result dict.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, nan_policy: str = "nan", mode: str = "slide",
                 window=896, stride=512, flip: bool = False, merge: str = "prob", pad_value: float = 0.0,
                 size_divisor: Optional[int] = None, class_names: Optional[Sequence[str]] = None,
                 progress: bool = False, rescale: bool = False):
        if mode not in ("whole", "slide"):
            raise ValueError(f"eval mode must be 'whole' or 'slide', got {mode!r}")
        if merge not in MERGE_SPACES:
            raise ValueError(f"unknown merge space {merge!r}; known: {', '.join(sorted(MERGE_SPACES))}")
        if nan_policy not in NAN_POLICIES:
            raise ValueError(f"unknown nan_policy {nan_policy!r}; choose one of {NAN_POLICIES}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        self.num_classes, self.ignore_index, self.nan_policy = int(num_classes), int(ignore_index), nan_policy
        self.mode, self.window, self.stride, self.flip = mode, window, stride, bool(flip)
        self.merge = MERGE_SPACES[merge]()
        self.pad_value = float(pad_value)
        self.size_divisor = size_divisor
        self.class_names = list(class_names) if class_names is not None else \
            [f"class_{i}" for i in range(self.num_classes)]
        self.progress = progress
        self.rescale = bool(rescale)

    @classmethod
    def from_config(cls, cfg: Dict, **overrides) -> "SegEvaluator":
        """From a full training config: ``eval`` section + top-level ``num_classes`` / ``ignore_index`` /
        ``labels``."""
        ev = dict(cfg.get("eval") or {})
        kw = dict(num_classes=cfg["num_classes"], ignore_index=cfg.get("ignore_index", 255),
                  nan_policy=ev.get("nan_policy", "nan"), mode=ev.get("mode", "slide"),
                  window=ev.get("window", 896), stride=ev.get("stride", 512), flip=ev.get("flip", False),
                  merge=ev.get("merge", "prob"), pad_value=ev.get("pad_value", 0.0),
                  size_divisor=ev.get("size_divisor"), class_names=cfg.get("labels"),
                  rescale=ev.get("rescale", False))
        kw.update(overrides)
        return cls(**kw)

    # -- inference ----------------------------------------------------------------------------------------
    def windows(self, height: int, width: int) -> List[Window]:
        if self.mode == "whole":
            return [Window(0, 0, height, width)]
        return sliding_windows(height, width, self.window, self.stride)

    def _divisor(self, model) -> int:
        if self.size_divisor:
            return int(self.size_divisor)
        return int(getattr(_unwrap(model), "size_divisor", 1) or 1)

    def _infer_view(self, model, image: np.ndarray, out_size=None) -> np.ndarray:
        net = _unwrap(model)
        self.merge.check(net)
        divisor = self._divisor(net)
        _, h, w = image.shape
        acc = None
        count = np.zeros((h, w), dtype=np.float32)
        for win in self.windows(h, w):
            crop = image[:, win.y:win.y + win.h, win.x:win.x + win.w]
            x = paddle.to_tensor(np.ascontiguousarray(pad_to_multiple(crop, divisor, self.pad_value))[None])
            out = model(x)
            if isinstance(out, (tuple, list)):
                raise TypeError(f"{type(net).__name__} returned a {type(out).__name__} in eval mode; the "
                                f"evaluator needs one [B,C,H,W] tensor (is the model in eval mode?)")
            m = self.merge.to_merge(out, net)[0, :, :win.h, :win.w].numpy().astype(np.float32)
            if acc is None:
                acc = np.zeros((m.shape[0], h, w), dtype=np.float32)
            acc[:, win.y:win.y + win.h, win.x:win.x + win.w] += m
            count[win.y:win.y + win.h, win.x:win.x + win.w] += 1.0
        merged = acc / count[None]
        if out_size is not None and tuple(out_size) != (h, w):      # mmseg: resize to ori_shape, then softmax
            merged = F.interpolate(paddle.to_tensor(merged[None]), size=[int(v) for v in out_size],
                                   mode="bilinear", align_corners=False)[0].numpy()
        return self.merge.finalize(merged)

    def predict(self, model, image, out_size=None) -> np.ndarray:
        """Probabilities [C,H,W] (float32) for one normalised CHW image (numpy or paddle); ``out_size``
        [H', W']: resize each view's merged output to it first (``rescale``)."""
        if isinstance(image, paddle.Tensor):
            image = image.numpy()
        image = np.asarray(image, dtype=np.float32)
        if image.ndim == 4 and image.shape[0] == 1:
            image = image[0]
        if image.ndim != 3:
            raise ValueError(f"predict expects one CHW image, got shape {image.shape}")
        was_training = _unwrap(model).training
        model.eval()
        try:
            with paddle.no_grad():
                probs = self._infer_view(model, image, out_size)
                if self.flip:
                    flipped = self._infer_view(model, np.ascontiguousarray(image[:, :, ::-1]), out_size)
                    probs = (probs + flipped[:, :, ::-1]) / 2.0
        finally:
            if was_training:
                model.train()
        return probs

    # -- dataset evaluation ---------------------------------------------------------------------------------
    def evaluate(self, model, dataset, max_samples: Optional[int] = None, verbose: bool = False) -> Dict:
        """Run over ``dataset`` (items ``(image CHW normalised, mask HW)``); returns the result dict
        (``miou``, ``miou_fg``, ``mf1``, ``acc`` as floats in [0, 1]; per-class lists; the confusion
        matrix; settings)."""
        metric = SegMetric(self.num_classes, self.ignore_index, self.nan_policy)
        n = len(dataset) if max_samples is None else min(len(dataset), int(max_samples))
        it = range(n)
        if self.progress:
            try:
                from tqdm import tqdm
                it = tqdm(it, desc="eval", unit="img", leave=False, dynamic_ncols=True)
            except ImportError:  # pragma: no cover
                pass
        for i in it:
            image, mask = dataset[i]
            if self.rescale:                     # score against the untransformed label (mmseg ori_shape)
                mask = dataset.load(i)["mask"]
            probs = self.predict(model, image, out_size=np.shape(mask)[-2:] if self.rescale else None)
            if probs.shape[0] != self.num_classes:
                raise ValueError(f"model predicts {probs.shape[0]} classes, the config says {self.num_classes}")
            metric.update(probs.argmax(0).astype(np.int64), np.asarray(mask, dtype=np.int64))
        res = metric.compute()
        out = {k: (float(v) if np.ndim(v) == 0 else [float(x) for x in np.asarray(v)]) for k, v in res.items()}
        out.update(confusion_matrix=metric.cm.tolist(), class_names=self.class_names, num_images=n,
                   nan_policy=self.nan_policy, mode=self.mode, merge=self.merge.name, flip=self.flip,
                   rescale=self.rescale)
        if self.mode == "slide":
            out.update(window=self.window, stride=self.stride)
        if verbose:
            print(format_seg_table(out))
        return out


def _pct(v) -> str:
    return "   nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100.0 * v:6.2f}"


def format_seg_table(result: Dict, class_names: Optional[Sequence[str]] = None) -> str:
    """Per-class IoU / F1 / precision / recall table (percent) followed by the summary line."""
    names = list(class_names or result.get("class_names") or [f"class_{i}" for i in range(len(result["iou"]))])
    cm = np.asarray(result.get("confusion_matrix")) if result.get("confusion_matrix") is not None else None
    width = max(12, max(len(n) for n in names) + 1)
    head = f"{'id':>3} {'class (%)':<{width}} {'IoU':>6} {'F1':>6} {'Prec':>6} {'Recall':>6}"
    if cm is not None:
        head += f" {'GT px':>11}"
    lines = [head, "-" * len(head)]
    for i, n in enumerate(names):
        line = (f"{i:>3} {n:<{width}} {_pct(result['iou'][i])} {_pct(result['f1'][i])} "
                f"{_pct(result['precision'][i])} {_pct(result['recall'][i])}")
        if cm is not None:
            line += f" {int(cm[i].sum()):>11d}"
        lines.append(line)
    lines.append("-" * len(head))
    lines.append(f"mIoU {_pct(result['miou']).strip()}%  mIoU-fg {_pct(result['miou_fg']).strip()}%  "
                 f"mF1 {_pct(result['mf1']).strip()}%  aAcc {_pct(result['acc']).strip()}%  "
                 f"(nan_policy={result.get('nan_policy', '?')}, {result.get('num_images', '?')} images)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# evaluator registry (per task)
# ----------------------------------------------------------------------------------------------------------
EVALUATORS: Dict[str, type] = {"seg": SegEvaluator}


def register_evaluator(task: str):
    def deco(cls):
        EVALUATORS[task] = cls
        return cls
    return deco


def build_evaluator(cfg: Dict, task: str = "seg", **overrides):
    if task not in EVALUATORS:
        raise KeyError(f"no evaluator for task {task!r}; known: {', '.join(sorted(EVALUATORS))}")
    return EVALUATORS[task].from_config(cfg, **overrides)
