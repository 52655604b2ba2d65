"""Data transforms: numpy in, numpy out (no paddle / torch).

A transform is a callable ``op(sample, rng=None) -> sample`` on a dict with

- ``'image'``: HWC numpy array (any band count; uint8 until :class:`Normalize`, float32 after it);
- ``'mask'`` (optional): HW int64 label map, kept aligned with the image by every geometric op;
- ``'trans_info'``: list; invertible geometric ops append, *before* changing the geometry and only when
  they change it, ``('resize', (h, w))`` or ``('padding', (h, w), (x, y))`` with the size before the op
  (tipc.md §7.2). Post-processing undoes them in reverse order.

Random ops draw from a ``numpy.random.Generator``: the one passed as ``rng``, else the one held by
:class:`Compose` (``Compose(ops, seed=...)``), so runs are reproducible. Every op has ``to_config()``
returning ``{OpName: {args}}`` with plain lists / floats / ints / strings (the ``model.yml``
``Transforms`` entries, tipc.md §6), and :func:`build_transforms` rebuilds a :class:`Compose` from them.

Ops by recipe:
- FactSeg iSAID train (factseg.md §5): RandomHorizontalFlip, RandomVerticalFlip, RandomRotate90, FixedPad,
  Normalize. Eval: Normalize, PadToMultiple(32).
- RSP UperNet train (rsp_upernet.md §5): RandomResize, RandomCrop, RandomHorizontalFlip,
  PhotoMetricDistortion, Normalize, FixedPad.
- RSMamba (rsmamba.md §7): RandomResizedCrop, RandomHorizontalFlip, RandomVerticalFlip, AutoAugment; test
  ResizeEdge + CenterCrop; Normalize with min_val 0 / max_val 1 and the 0–255 mean/std.
- Export/predictor: Resize, Normalize, PadToMultiple. ToCHW ends a pipeline (datasets add it if absent).
Mixup/CutMix are batch-level and live in the training engine.
"""
import math
import numbers
from typing import Dict, List, Optional, Sequence

import numpy as np

__all__ = [
    "Transform", "Compose", "build_transforms", "TRANSFORMS",
    "Normalize", "PadToMultiple", "FixedPad", "Resize", "RandomResize", "RandomCrop",
    "RandomHorizontalFlip", "RandomVerticalFlip", "RandomRotate90", "PhotoMetricDistortion",
    "RandomResizedCrop", "ResizeEdge", "CenterCrop", "AutoAugment", "ToCHW",
    "resize_image", "resize_label", "IMAGENET_AUTOAUG_POLICY",
]

TRANSFORMS: Dict[str, type] = {}


# ----------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------
def _hw(size, name="size"):
    """int -> (s, s); [h, w] -> (h, w)."""
    if isinstance(size, numbers.Integral):
        return int(size), int(size)
    size = list(size)
    if len(size) != 2:
        raise ValueError(f"{name} must be an int or [h, w], got {size}")
    return int(size[0]), int(size[1])


def _floats(v):
    return [float(x) for x in (v if isinstance(v, (list, tuple, np.ndarray)) else [v])]


def _plain(v):
    """Config value -> plain YAML-friendly python (tuples -> lists, numpy scalars -> python)."""
    if isinstance(v, (list, tuple, np.ndarray)):
        return [_plain(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    return v


def _cast_like(arr: np.ndarray, dtype) -> np.ndarray:
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(arr), info.min, info.max).astype(dtype)
    return arr.astype(dtype, copy=False)


def _linear_index(src: int, dst: int):
    # half-pixel centres, align_corners=False, clamped at the border: cv2 INTER_LINEAR / torch / paddle
    x = (np.arange(dst, dtype=np.float64) + 0.5) * (src / dst) - 0.5
    x = np.clip(x, 0.0, src - 1)
    x0 = np.floor(x).astype(np.int64)
    x1 = np.minimum(x0 + 1, src - 1)
    return x0, x1, (x - x0).astype(np.float32)


def _nearest_index(src: int, dst: int):
    # floor(i * src / dst): cv2 INTER_NEAREST / torch 'nearest'
    return np.minimum((np.arange(dst, dtype=np.int64) * src) // dst, src - 1)


def resize_image(image: np.ndarray, size, interp: str = "bilinear") -> np.ndarray:
    """Resize HWC (or HW) to ``size`` = (h, w); dtype kept (integers rounded and clipped).

    'bilinear': half-pixel centres, no antialiasing (cv2 ``INTER_LINEAR``, torch/paddle
    ``align_corners=False``). 'nearest': ``floor(i * src / dst)``. 'bicubic'/'lanczos': Pillow (what the
    mmpretrain ``backend='pillow'`` pipelines use), per band in float for non-uint8 or >4-band images.
    """
    h, w = _hw(size)
    squeeze = image.ndim == 2
    img = image[:, :, None] if squeeze else image
    H, W = img.shape[:2]
    if (H, W) == (h, w):
        out = img.copy()
    elif interp == "nearest":
        out = img[_nearest_index(H, h)][:, _nearest_index(W, w)]
    elif interp == "bilinear":
        y0, y1, wy = _linear_index(H, h)
        x0, x1, wx = _linear_index(W, w)
        f = img.astype(np.float32)
        rows = f[y0] * (1.0 - wy)[:, None, None] + f[y1] * wy[:, None, None]
        out = rows[:, x0] * (1.0 - wx)[None, :, None] + rows[:, x1] * wx[None, :, None]
        out = _cast_like(out, img.dtype)
    elif interp in ("bicubic", "lanczos", "pil_bilinear"):
        out = _pil_resize(img, h, w, interp)
    else:
        raise ValueError(f"unknown interpolation {interp!r}")
    return out[:, :, 0] if squeeze else out


def _pil_resize(img: np.ndarray, h: int, w: int, interp: str) -> np.ndarray:
    from PIL import Image

    resample = {"bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS, "pil_bilinear": Image.BILINEAR}[interp]
    c = img.shape[2]
    if img.dtype == np.uint8 and c in (1, 3, 4):
        out = np.asarray(Image.fromarray(img[:, :, 0] if c == 1 else img).resize((w, h), resample))
        return out.reshape(h, w, c)
    bands = [np.asarray(Image.fromarray(np.ascontiguousarray(img[:, :, i], dtype=np.float32))
                        .resize((w, h), resample)) for i in range(c)]
    return _cast_like(np.stack(bands, axis=-1), img.dtype)


def resize_label(mask: np.ndarray, size) -> np.ndarray:
    """Nearest-neighbour resize of an HW label map."""
    return resize_image(mask, size, "nearest")


def _pad_hw(arr: np.ndarray, h: int, w: int, value) -> np.ndarray:
    """Pad ``arr`` (HW or HWC) on the bottom/right to (h, w) with ``value`` (scalar or per band)."""
    H, W = arr.shape[:2]
    if H > h or W > w:
        raise ValueError(f"cannot pad a {H}x{W} array to the smaller size {h}x{w}")
    out_shape = (h, w) + arr.shape[2:]
    value = np.asarray(value, dtype=np.float64)
    if arr.ndim == 3 and value.ndim == 1 and value.size not in (1, arr.shape[2]):
        raise ValueError(f"pad value has {value.size} entries for {arr.shape[2]} bands")
    out = np.empty(out_shape, dtype=arr.dtype)
    out[...] = value.reshape(-1) if (arr.ndim == 3 and value.ndim == 1) else value
    out[:H, :W] = arr
    return out


# ----------------------------------------------------------------------------------------------------------
# base classes
# ----------------------------------------------------------------------------------------------------------
class Transform:
    """Base class. Subclasses implement ``apply(sample, rng)`` and ``config()``."""

    random = False

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if not cls.__name__.startswith("_"):
            TRANSFORMS[cls.__name__] = cls

    def __call__(self, sample: dict, rng: Optional[np.random.Generator] = None) -> dict:
        if self.random and rng is None:
            if getattr(self, "_rng", None) is None:
                self._rng = np.random.default_rng()
            rng = self._rng
        return self.apply(sample, rng)

    def apply(self, sample: dict, rng) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def config(self) -> dict:
        return {}

    def to_config(self) -> dict:
        return {type(self).__name__: {k: _plain(v) for k, v in self.config().items()}}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


def _record(sample: dict, entry: tuple) -> None:
    sample.setdefault("trans_info", []).append(entry)


def _check_sample(sample: dict) -> None:
    img = sample.get("image")
    if not isinstance(img, np.ndarray) or img.ndim != 3:
        raise ValueError(f"sample['image'] must be an HWC numpy array, got "
                         f"{type(img).__name__} {getattr(img, 'shape', '')}")
    m = sample.get("mask")
    if m is not None:
        hw = img.shape[1:] if sample.get("layout") == "CHW" else img.shape[:2]
        if m.shape != hw:
            raise ValueError(f"mask shape {m.shape} does not match image size {hw}")


class Compose:
    """Apply ops in order. Holds a seedable ``numpy.random.Generator`` used by random ops.

    ``sample['image']`` / ``sample['mask']`` may also be file paths; they are decoded with
    :func:`paddle_rs.data.raster_io.read_image` / ``read_mask``. The input dict is not modified.
    """

    def __init__(self, transforms: Sequence, seed: Optional[int] = None,
                 rng: Optional[np.random.Generator] = None):
        ops = []
        for t in transforms:
            if isinstance(t, dict):
                ops.extend(build_transforms([t]).transforms)
            elif callable(t):
                ops.append(t)
            else:
                raise TypeError(f"not a transform: {t!r}")
        self.transforms: List[Transform] = ops
        self.rng = rng if rng is not None else np.random.default_rng(seed)

    def reseed(self, seed: Optional[int]) -> None:
        self.rng = np.random.default_rng(seed)

    def __call__(self, sample: dict, rng: Optional[np.random.Generator] = None) -> dict:
        from .raster_io import read_image, read_mask

        sample = dict(sample)
        sample["trans_info"] = list(sample.get("trans_info", []))
        if not isinstance(sample.get("image"), np.ndarray):
            sample["image"] = read_image(sample["image"])
        elif sample["image"].ndim == 2:
            sample["image"] = sample["image"][:, :, None]
        if sample.get("mask") is not None and not isinstance(sample["mask"], np.ndarray):
            sample["mask"] = read_mask(sample["mask"])
        _check_sample(sample)
        rng = rng if rng is not None else self.rng
        for op in self.transforms:
            sample = op(sample, rng) if isinstance(op, (Transform, Compose)) else op(sample)
        _check_sample(sample)
        return sample

    def to_config(self) -> List[dict]:
        return [op.to_config() for op in self.transforms]

    def __len__(self):
        return len(self.transforms)

    def __repr__(self):
        return "Compose([" + ", ".join(repr(t) for t in self.transforms) + "])"


def build_transforms(configs, seed: Optional[int] = None) -> Compose:
    """``[{OpName: {args}}, ...]`` (the ``model.yml`` ``Transforms`` list) -> :class:`Compose`."""
    if isinstance(configs, Compose):
        return configs
    ops = []
    for i, item in enumerate(configs or []):
        if isinstance(item, Transform) or (callable(item) and not isinstance(item, dict)):
            ops.append(item)
            continue
        if not isinstance(item, dict) or len(item) != 1:
            raise ValueError(f"transform #{i} must be a one-key dict {{OpName: {{args}}}}, got {item!r}")
        (name, args), = item.items()
        if name not in TRANSFORMS:
            raise KeyError(f"unknown transform {name!r} (#{i}); known: {', '.join(sorted(TRANSFORMS))}")
        try:
            ops.append(TRANSFORMS[name](**(args or {})))
        except TypeError as e:
            raise TypeError(f"transform #{i} {name}: {e}") from e
    return Compose(ops, seed=seed)


# ----------------------------------------------------------------------------------------------------------
# normalisation, padding, resizing (export-safe)
# ----------------------------------------------------------------------------------------------------------
class Normalize(Transform):
    """``x' = ((x - min_val) / (max_val - min_val) - mean) / std`` per band -> float32 (tipc.md §6).

    PaddleRS semantics and defaults. ImageNet mean/std with min 0 / max 255 equals the upstream
    ``(x - 123.675) / 58.395`` of FactSeg and RSP; the RSMamba recipe (0–255 mean/std) is
    ``Normalize(mean=[123.77, ...], std=[44.17, ...], min_val=[0]*3, max_val=[1]*3)``. Computed in float64,
    rounded once to float32. One-entry lists broadcast to every band.
    """

    def __init__(self, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), min_val=None, max_val=None):
        self.mean = _floats(mean)
        self.std = _floats(std)
        n = len(self.mean)
        self.min_val = _floats(min_val) if min_val is not None else [0.0] * n
        self.max_val = _floats(max_val) if max_val is not None else [255.0] * n
        if len({len(self.mean), len(self.std), len(self.min_val), len(self.max_val)} - {1}) > 1:
            raise ValueError(f"Normalize: mean/std/min_val/max_val lengths differ: {self.config()}")
        if 0.0 in self.std:
            raise ValueError("Normalize: std contains 0")
        if np.any(np.asarray(self.max_val) - np.asarray(self.min_val) <= 0):
            raise ValueError("Normalize: max_val must exceed min_val in every band")

    def config(self):
        return dict(mean=self.mean, std=self.std, min_val=self.min_val, max_val=self.max_val)

    def apply(self, sample, rng):
        img = sample["image"]
        c = img.shape[2]
        stats = [np.asarray(v, np.float64) for v in (self.mean, self.std, self.min_val, self.max_val)]
        for v in stats:
            if v.size not in (1, c):
                raise ValueError(f"Normalize has statistics for {v.size} bands, the image has {c} bands")
        mean, std, lo, hi = stats
        x = img.astype(np.float64)
        sample["image"] = (((x - lo) / (hi - lo) - mean) / std).astype(np.float32)
        return sample


class PadToMultiple(Transform):
    """Zero-pad right/bottom so H and W are multiples of ``divisor``; records ``('padding', (h, w), (0, 0))``.

    Image padded with ``pad_value``, mask with ``label_pad``. Nothing is recorded when no padding is
    needed (as PaddleRS ``Pad``). ``to_config`` omits ``label_pad`` at its default (tipc.md §6 example).
    """

    def __init__(self, divisor: int = 32, pad_value=0.0, label_pad: int = 255):
        self.divisor = int(divisor)
        if self.divisor < 1:
            raise ValueError("divisor must be >= 1")
        self.pad_value = pad_value if isinstance(pad_value, (list, tuple)) else float(pad_value)
        self.label_pad = int(label_pad)

    def config(self):
        cfg = dict(divisor=self.divisor, pad_value=self.pad_value)
        if self.label_pad != 255:
            cfg["label_pad"] = self.label_pad
        return cfg

    def apply(self, sample, rng):
        h, w = sample["image"].shape[:2]
        th = -(-h // self.divisor) * self.divisor
        tw = -(-w // self.divisor) * self.divisor
        return _pad_sample(sample, th, tw, self.pad_value, self.label_pad)


def _pad_sample(sample, th, tw, pad_value, label_pad):
    h, w = sample["image"].shape[:2]
    if (th, tw) == (h, w):
        return sample
    _record(sample, ("padding", (h, w), (0, 0)))
    sample["image"] = _pad_hw(sample["image"], th, tw, pad_value)
    if sample.get("mask") is not None:
        sample["mask"] = _pad_hw(sample["mask"], th, tw, label_pad)
    return sample


class FixedPad(Transform):
    """Pad right/bottom to exactly ``size`` (int or [h, w]); image with ``pad_value``, mask with ``label_pad``.

    FactSeg ``FixedPad(896)`` (mask 255) and mmseg ``Pad(size, pad_val, seg_pad_val)``. An image larger than
    ``size`` is an error.
    """

    def __init__(self, size, pad_value=0.0, label_pad: int = 255):
        self.size = _hw(size)
        self.pad_value = pad_value if isinstance(pad_value, (list, tuple)) else float(pad_value)
        self.label_pad = int(label_pad)

    def config(self):
        return dict(size=list(self.size), pad_value=self.pad_value, label_pad=self.label_pad)

    def apply(self, sample, rng):
        h, w = sample["image"].shape[:2]
        if h > self.size[0] or w > self.size[1]:
            raise ValueError(f"FixedPad{list(self.size)}: image is {h}x{w}, larger than the pad size; crop or "
                             f"resize it first")
        return _pad_sample(sample, self.size[0], self.size[1], self.pad_value, self.label_pad)


class Resize(Transform):
    """Resize to ``target_size`` [h, w] (int = square): image bilinear (or ``interp``), mask nearest.

    Records ``('resize', (h, w))`` with the size before resizing (when the size changes).
    """

    def __init__(self, target_size, interp: str = "bilinear"):
        self.target_size = _hw(target_size, "target_size")
        self.interp = interp

    def config(self):
        cfg = dict(target_size=list(self.target_size))
        if self.interp != "bilinear":
            cfg["interp"] = self.interp
        return cfg

    def apply(self, sample, rng):
        return _resize_sample(sample, self.target_size, self.interp)


def _resize_sample(sample, size, interp, record=True):
    h, w = sample["image"].shape[:2]
    if tuple(size) == (h, w):
        return sample
    if record:
        _record(sample, ("resize", (h, w)))
    sample["image"] = resize_image(sample["image"], size, interp)
    if sample.get("mask") is not None:
        sample["mask"] = resize_label(sample["mask"], size)
    return sample


def _rescale_size(h, w, scale_hw):
    # mmcv.rescale_size with a (long, short) bound: fit inside, keep the aspect ratio
    factor = min(max(scale_hw) / max(h, w), min(scale_hw) / min(h, w))
    return int(h * factor + 0.5), int(w * factor + 0.5)


class RandomResize(Transform):
    """mmseg ``Resize(img_scale, ratio_range, keep_ratio)`` (rsp_upernet.md §5).

    ``ratio_range=None``: rescale to fit ``scale`` (keep_ratio) or resize to it exactly. With
    ``ratio_range=[lo, hi]``: ``r ~ U(lo, hi)``, target ``int(scale * r)``, then the same rule. Image
    bilinear, mask nearest; records ``('resize', (h, w))``.
    """

    random = True

    def __init__(self, scale, ratio_range=None, keep_ratio: bool = True):
        self.scale = _hw(scale, "scale")
        self.ratio_range = None if ratio_range is None else _floats(ratio_range)
        if self.ratio_range is not None and len(self.ratio_range) != 2:
            raise ValueError("ratio_range must be [lo, hi]")
        self.keep_ratio = bool(keep_ratio)

    def config(self):
        return dict(scale=list(self.scale), ratio_range=self.ratio_range, keep_ratio=self.keep_ratio)

    def apply(self, sample, rng):
        scale = self.scale
        if self.ratio_range is not None:
            lo, hi = self.ratio_range
            r = rng.random() * (hi - lo) + lo
            scale = (int(scale[0] * r), int(scale[1] * r))
        h, w = sample["image"].shape[:2]
        size = _rescale_size(h, w, scale) if self.keep_ratio else scale
        return _resize_sample(sample, size, "bilinear")


class RandomCrop(Transform):
    """mmseg ``RandomCrop(crop_size, cat_max_ratio, ignore_index)``.

    Offsets uniform in [0, H - ch] x [0, W - cw] (no crop along an axis shorter than the crop). With
    ``cat_max_ratio < 1`` and a mask, up to 10 re-draws until the crop holds > 1 class (ignore_index
    excluded) and no class exceeds ``cat_max_ratio`` of the counted pixels. Note: mmseg's default
    ``ignore_index`` is 255 even in the Potsdam config (clutter = 5 is counted there).
    """

    random = True

    def __init__(self, crop_size, cat_max_ratio: float = 1.0, ignore_index: int = 255):
        self.crop_size = _hw(crop_size, "crop_size")
        self.cat_max_ratio = float(cat_max_ratio)
        self.ignore_index = int(ignore_index)

    def config(self):
        return dict(crop_size=list(self.crop_size), cat_max_ratio=self.cat_max_ratio,
                    ignore_index=self.ignore_index)

    def _bbox(self, h, w, rng):
        ch, cw = self.crop_size
        y = int(rng.integers(0, max(h - ch, 0) + 1))
        x = int(rng.integers(0, max(w - cw, 0) + 1))
        return y, x, y + ch, x + cw

    def apply(self, sample, rng):
        h, w = sample["image"].shape[:2]
        y0, x0, y1, x1 = self._bbox(h, w, rng)
        mask = sample.get("mask")
        if self.cat_max_ratio < 1.0 and mask is not None:
            for _ in range(10):
                labels, cnt = np.unique(mask[y0:y1, x0:x1], return_counts=True)
                cnt = cnt[labels != self.ignore_index]
                if len(cnt) > 1 and cnt.max() / cnt.sum() < self.cat_max_ratio:
                    break
                y0, x0, y1, x1 = self._bbox(h, w, rng)
        sample["image"] = sample["image"][y0:y1, x0:x1].copy()
        if mask is not None:
            sample["mask"] = mask[y0:y1, x0:x1].copy()
        return sample


# ----------------------------------------------------------------------------------------------------------
# flips / rotations
# ----------------------------------------------------------------------------------------------------------
class _RandomGeometric(Transform):
    random = True

    def _apply_fn(self, sample, fn):
        sample["image"] = np.ascontiguousarray(fn(sample["image"]))
        if sample.get("mask") is not None:
            sample["mask"] = np.ascontiguousarray(fn(sample["mask"]))
        return sample


class RandomHorizontalFlip(_RandomGeometric):
    """Flip left-right (W axis) with probability ``p``; image and mask together."""

    def __init__(self, p: float = 0.5):
        self.p = float(p)

    def config(self):
        return dict(p=self.p)

    def apply(self, sample, rng):
        if rng.random() < self.p:
            sample = self._apply_fn(sample, lambda a: a[:, ::-1])
        return sample


class RandomVerticalFlip(_RandomGeometric):
    """Flip top-bottom (H axis) with probability ``p``; image and mask together."""

    def __init__(self, p: float = 0.5):
        self.p = float(p)

    def config(self):
        return dict(p=self.p)

    def apply(self, sample, rng):
        if rng.random() < self.p:
            sample = self._apply_fn(sample, lambda a: a[::-1])
        return sample


class RandomRotate90(_RandomGeometric):
    """``np.rot90(x, k)`` (counter-clockwise, H/W axes) with ``k`` drawn uniformly from ``ks``."""

    def __init__(self, ks=(0, 1, 2, 3)):
        self.ks = [int(k) for k in ks]
        if not self.ks:
            raise ValueError("ks must not be empty")

    def config(self):
        return dict(ks=self.ks)

    def apply(self, sample, rng):
        k = self.ks[int(rng.integers(len(self.ks)))] % 4
        if k:
            sample = self._apply_fn(sample, lambda a: np.rot90(a, k, axes=(0, 1)))
        return sample


# ----------------------------------------------------------------------------------------------------------
# photometric (mmseg PhotoMetricDistortion)
# ----------------------------------------------------------------------------------------------------------
def _rgb_to_hsv_u8(img: np.ndarray) -> np.ndarray:
    """OpenCV 8-bit RGB -> HSV: H in [0, 180), S and V in [0, 255] (float32)."""
    f = img.astype(np.float32)
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    v = f.max(-1)
    diff = v - f.min(-1)
    s = np.where(v > 0, diff * 255.0 / np.maximum(v, 1e-6), 0.0)
    d = np.maximum(diff, 1e-6)
    h = np.where(v == r, 60.0 * (g - b) / d, np.where(v == g, 120.0 + 60.0 * (b - r) / d, 240.0 + 60.0 * (r - g) / d))
    h = np.where(diff == 0, 0.0, h)
    h = np.where(h < 0, h + 360.0, h)
    return np.stack([np.rint(h / 2.0) % 180, np.rint(s), v], -1)


def _hsv_u8_to_rgb(hsv: np.ndarray) -> np.ndarray:
    h = hsv[..., 0].astype(np.float32) * 2.0 / 60.0
    s = hsv[..., 1].astype(np.float32) / 255.0
    v = hsv[..., 2].astype(np.float32)
    i = np.floor(h).astype(np.int64) % 6
    f = h - np.floor(h)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    choices_r = [v, q, p, p, t, v]
    choices_g = [t, v, v, q, p, p]
    choices_b = [p, p, t, v, v, q]
    rgb = np.stack([np.choose(i, choices_r), np.choose(i, choices_g), np.choose(i, choices_b)], -1)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


class PhotoMetricDistortion(Transform):
    """mmseg 0.x ``PhotoMetricDistortion`` on uint8 images (rsp_upernet.md §5; place before Normalize).

    Brightness (p 0.5, ±delta) -> contrast first or last (mode p 0.5; p 0.5, U(range)) -> saturation
    (p 0.5) -> hue (p 0.5, integer shift in [-hue_delta, hue_delta) on the 0..180 OpenCV hue scale).
    Every step clips and rounds down to uint8 as upstream. The HSV steps need 3 bands (RGB); images with
    another band count get brightness and contrast only.
    """

    random = True

    def __init__(self, brightness_delta: int = 32, contrast_range=(0.5, 1.5), saturation_range=(0.5, 1.5),
                 hue_delta: int = 18):
        self.brightness_delta = int(brightness_delta)
        self.contrast_range = _floats(contrast_range)
        self.saturation_range = _floats(saturation_range)
        self.hue_delta = int(hue_delta)

    def config(self):
        return dict(brightness_delta=self.brightness_delta, contrast_range=self.contrast_range,
                    saturation_range=self.saturation_range, hue_delta=self.hue_delta)

    @staticmethod
    def _convert(img, alpha=1.0, beta=0.0):
        return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)

    def apply(self, sample, rng):
        img = sample["image"]
        if img.dtype != np.uint8:
            raise ValueError(f"PhotoMetricDistortion expects a uint8 image (place it before Normalize), "
                             f"got {img.dtype}")
        if rng.integers(2):
            img = self._convert(img, beta=rng.uniform(-self.brightness_delta, self.brightness_delta))
        mode = rng.integers(2)
        if mode == 1 and rng.integers(2):
            img = self._convert(img, alpha=rng.uniform(*self.contrast_range))
        if img.shape[2] == 3:
            if rng.integers(2):
                hsv = _rgb_to_hsv_u8(img)
                hsv[..., 1] = self._convert(hsv[..., 1], alpha=rng.uniform(*self.saturation_range))
                img = _hsv_u8_to_rgb(hsv)
            if rng.integers(2):
                hsv = _rgb_to_hsv_u8(img)
                hsv[..., 0] = (hsv[..., 0].astype(np.int64) + rng.integers(-self.hue_delta, self.hue_delta)) % 180
                img = _hsv_u8_to_rgb(hsv)
        if mode == 0 and rng.integers(2):
            img = self._convert(img, alpha=rng.uniform(*self.contrast_range))
        sample["image"] = img
        return sample


# ----------------------------------------------------------------------------------------------------------
# classification (RSMamba / mmpretrain recipe, rsmamba.md §7)
# ----------------------------------------------------------------------------------------------------------
class RandomResizedCrop(Transform):
    """mmpretrain ``RandomResizedCrop(scale=size, crop_ratio_range, aspect_ratio_range, pillow, bicubic)``.

    Up to ``max_attempts`` draws of area ~ U(scale)·HW and log-uniform aspect ratio; fallback central crop.
    The crop is resized to ``size`` ([h, w] or int) with Pillow ``interp``; a mask follows with nearest.
    """

    random = True

    def __init__(self, size=224, scale=(0.08, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0), interp: str = "bicubic",
                 max_attempts: int = 10):
        self.size = _hw(size)
        self.scale = _floats(scale)
        self.ratio = _floats(ratio)
        self.interp = interp
        self.max_attempts = int(max_attempts)

    def config(self):
        return dict(size=list(self.size), scale=self.scale, ratio=self.ratio, interp=self.interp,
                    max_attempts=self.max_attempts)

    def _params(self, h, w, rng):
        area = h * w
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(self.max_attempts):
            target_area = rng.uniform(*self.scale) * area
            aspect = math.exp(rng.uniform(*log_ratio))
            tw = int(round(math.sqrt(target_area * aspect)))
            th = int(round(math.sqrt(target_area / aspect)))
            if 0 < tw <= w and 0 < th <= h:
                return int(rng.integers(0, h - th + 1)), int(rng.integers(0, w - tw + 1)), th, tw
        in_ratio = w / h
        if in_ratio < min(self.ratio):
            tw, th = w, int(round(w / min(self.ratio)))
        elif in_ratio > max(self.ratio):
            th, tw = h, int(round(h * max(self.ratio)))
        else:
            th, tw = h, w
        return (h - th) // 2, (w - tw) // 2, th, tw

    def apply(self, sample, rng):
        h, w = sample["image"].shape[:2]
        y, x, th, tw = self._params(h, w, rng)
        sample["image"] = resize_image(sample["image"][y:y + th, x:x + tw], self.size, self.interp)
        if sample.get("mask") is not None:
            sample["mask"] = resize_label(sample["mask"][y:y + th, x:x + tw], self.size)
        return sample


class ResizeEdge(Transform):
    """mmpretrain ``ResizeEdge(scale, edge='short')``: the chosen edge becomes ``scale``, the other
    ``int(scale * other / edge)``; Pillow ``interp`` (bicubic). Records ``('resize', (h, w))``."""

    def __init__(self, scale: int = 256, edge: str = "short", interp: str = "bicubic"):
        if edge not in ("short", "long", "width", "height"):
            raise ValueError(f"edge must be short/long/width/height, got {edge!r}")
        self.scale = int(scale)
        self.edge = edge
        self.interp = interp

    def config(self):
        return dict(scale=self.scale, edge=self.edge, interp=self.interp)

    def apply(self, sample, rng):
        h, w = sample["image"].shape[:2]
        if (self.edge == "short" and w < h) or (self.edge == "long" and w > h) or self.edge == "width":
            size = (int(self.scale * h / w), self.scale)
        else:
            size = (self.scale, int(self.scale * w / h))
        return _resize_sample(sample, size, self.interp)


class CenterCrop(Transform):
    """mmpretrain ``CenterCrop(crop_size)``: offset ``round((H - ch) / 2)`` (>= 0); no padding."""

    def __init__(self, crop_size=224):
        self.crop_size = _hw(crop_size, "crop_size")

    def config(self):
        return dict(crop_size=list(self.crop_size))

    def apply(self, sample, rng):
        h, w = sample["image"].shape[:2]
        ch, cw = self.crop_size
        y = max(0, int(round((h - ch) / 2.0)))
        x = max(0, int(round((w - cw) / 2.0)))
        sample["image"] = sample["image"][y:y + ch, x:x + cw].copy()
        if sample.get("mask") is not None:
            sample["mask"] = sample["mask"][y:y + ch, x:x + cw].copy()
        return sample


# ImageNet AutoAugment policy of mmpretrain 1.x (AUTOAUG_POLICIES['imagenet']): 25 sub-policies.
IMAGENET_AUTOAUG_POLICY = [
    [dict(type="Posterize", bits=4, prob=0.4), dict(type="Rotate", angle=30.0, prob=0.6)],
    [dict(type="Solarize", thr=256 / 9 * 4, prob=0.6), dict(type="AutoContrast", prob=0.6)],
    [dict(type="Equalize", prob=0.8), dict(type="Equalize", prob=0.6)],
    [dict(type="Posterize", bits=5, prob=0.6), dict(type="Posterize", bits=5, prob=0.6)],
    [dict(type="Equalize", prob=0.4), dict(type="Solarize", thr=256 / 9 * 5, prob=0.2)],
    [dict(type="Equalize", prob=0.4), dict(type="Rotate", angle=30 / 9 * 8, prob=0.8)],
    [dict(type="Solarize", thr=256 / 9 * 6, prob=0.6), dict(type="Equalize", prob=0.6)],
    [dict(type="Posterize", bits=6, prob=0.8), dict(type="Equalize", prob=1.0)],
    [dict(type="Rotate", angle=10.0, prob=0.2), dict(type="Solarize", thr=256 / 9, prob=0.6)],
    [dict(type="Equalize", prob=0.6), dict(type="Posterize", bits=5, prob=0.4)],
    [dict(type="Rotate", angle=30 / 9 * 8, prob=0.8), dict(type="ColorTransform", magnitude=0.0, prob=0.4)],
    [dict(type="Rotate", angle=30.0, prob=0.4), dict(type="Equalize", prob=0.6)],
    [dict(type="Equalize", prob=0.0), dict(type="Equalize", prob=0.8)],
    [dict(type="Invert", prob=0.6), dict(type="Equalize", prob=1.0)],
    [dict(type="ColorTransform", magnitude=0.4, prob=0.6), dict(type="Contrast", magnitude=0.8, prob=1.0)],
    [dict(type="Rotate", angle=30 / 9 * 8, prob=0.8), dict(type="ColorTransform", magnitude=0.2, prob=1.0)],
    [dict(type="ColorTransform", magnitude=0.8, prob=0.8), dict(type="Solarize", thr=256 / 9 * 2, prob=0.8)],
    [dict(type="Sharpness", magnitude=0.7, prob=0.4), dict(type="Invert", prob=0.6)],
    [dict(type="Shear", magnitude=0.3 / 9 * 5, prob=0.6, direction="horizontal"),
     dict(type="Equalize", prob=1.0)],
    [dict(type="ColorTransform", magnitude=0.0, prob=0.4), dict(type="Equalize", prob=0.6)],
    [dict(type="Equalize", prob=0.4), dict(type="Solarize", thr=256 / 9 * 5, prob=0.2)],
    [dict(type="Solarize", thr=256 / 9 * 4, prob=0.6), dict(type="AutoContrast", prob=0.6)],
    [dict(type="Invert", prob=0.6), dict(type="Equalize", prob=1.0)],
    [dict(type="ColorTransform", magnitude=0.4, prob=0.6), dict(type="Contrast", magnitude=0.8, prob=1.0)],
    [dict(type="Equalize", prob=0.8), dict(type="Equalize", prob=0.6)],
]


def _aa_equalize(img):
    # mmcv.imequalize (PIL ImageOps.equalize algorithm), per channel
    out = np.empty_like(img)
    for c in range(img.shape[2]):
        im = img[:, :, c]
        histo = np.bincount(im.ravel(), minlength=256)
        nonzero = histo[histo > 0]
        step = (nonzero.sum() - nonzero[-1]) // 255
        if not step:
            out[:, :, c] = im
            continue
        lut = (np.cumsum(histo) + step // 2) // step
        lut = np.concatenate([[0], lut[:-1]])
        out[:, :, c] = np.minimum(lut, 255)[im]
    return out


def _aa_autocontrast(img):
    # mmcv.auto_contrast(cutoff=0), per channel: stretch [min, max] to [0, 255]
    out = np.empty_like(img)
    for c in range(img.shape[2]):
        im = img[:, :, c]
        lo, hi = int(im.min()), int(im.max())
        if lo >= hi:
            out[:, :, c] = im
            continue
        scale = 255.0 / (hi - lo)
        lut = np.clip(np.arange(256) * scale - lo * scale, 0, 255)
        out[:, :, c] = lut[im].astype(np.uint8)
    return out


class AutoAugment(Transform):
    """mmpretrain ``AutoAugment(policies='imagenet', hparams=dict(pad_val, interpolation))`` on uint8 RGB.

    One sub-policy is chosen uniformly per image; each op runs with its ``prob``; Rotate / Shear /
    ColorTransform / Contrast / Sharpness negate their magnitude with probability 0.5. Pillow implements
    the geometric and enhancement ops (statistically, not bitwise, equal to mmcv's cv2 versions, as
    rsmamba.md §7 allows). ``pad_val``: per-band fill of Rotate/Shear, in the image's band order (the
    RSMamba configs use the rounded dataset mean).
    """

    random = True

    def __init__(self, policies="imagenet", pad_val=128, interpolation: str = "bicubic"):
        if isinstance(policies, str):
            if policies != "imagenet":
                raise ValueError(f"unknown AutoAugment policy set {policies!r} (only 'imagenet')")
            self._policies = IMAGENET_AUTOAUG_POLICY
        else:
            self._policies = [[dict(op) for op in sub] for sub in policies]
        self.policies = policies
        self.pad_val = [int(round(v)) for v in _floats(pad_val)]
        self.interpolation = interpolation
        known = {"Posterize", "Rotate", "Solarize", "AutoContrast", "Equalize", "ColorTransform", "Invert",
                 "Contrast", "Sharpness", "Shear", "Brightness"}
        for sub in self._policies:
            for op in sub:
                if op.get("type") not in known:
                    raise ValueError(f"AutoAugment: unsupported op {op!r}")

    def config(self):
        return dict(policies=self.policies, pad_val=self.pad_val, interpolation=self.interpolation)

    def apply(self, sample, rng):
        img = sample["image"]
        if img.dtype != np.uint8 or img.shape[2] != 3:
            raise ValueError(f"AutoAugment needs a uint8 3-band image (before Normalize), got {img.dtype} "
                             f"with {img.shape[2]} bands")
        sub = self._policies[int(rng.integers(len(self._policies)))]
        for op in sub:
            if rng.random() > op.get("prob", 0.5):
                continue
            img = self._run(op, img, rng)
        sample["image"] = np.ascontiguousarray(img)
        return sample

    def _run(self, op, img, rng):
        from PIL import Image, ImageEnhance

        kind = op["type"]
        if kind == "Posterize":
            shift = 8 - int(math.ceil(op["bits"]))
            return (img >> shift) << shift
        if kind == "Solarize":
            return np.where(img < op["thr"], img, 255 - img).astype(np.uint8)
        if kind == "Invert":
            return 255 - img
        if kind == "Equalize":
            return _aa_equalize(img)
        if kind == "AutoContrast":
            return _aa_autocontrast(img)
        mag = op.get("angle", op.get("magnitude"))
        if rng.random() < op.get("random_negative_prob", 0.5):
            mag = -mag
        resample = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR,
                    "bicubic": Image.BICUBIC}[op.get("interpolation", self.interpolation)]
        fill = [int(round(v)) for v in _floats(op.get("pad_val", self.pad_val))]
        fill = tuple(fill * 3 if len(fill) == 1 else fill)
        im = Image.fromarray(img)
        if kind == "Rotate":                       # positive angle = clockwise (mmcv); PIL is counter-clockwise
            im = im.rotate(-mag, resample=resample, fillcolor=fill)
        elif kind == "Shear":                      # x' = x + m*y (horizontal); PIL takes the inverse map
            data = (1, -mag, 0, 0, 1, 0) if op.get("direction", "horizontal") == "horizontal" else (1, 0, 0, -mag, 1, 0)
            im = im.transform(im.size, Image.AFFINE, data, resample=resample, fillcolor=fill)
        elif kind == "ColorTransform":
            im = ImageEnhance.Color(im).enhance(1 + mag)
        elif kind == "Contrast":
            im = ImageEnhance.Contrast(im).enhance(1 + mag)
        elif kind == "Sharpness":
            im = ImageEnhance.Sharpness(im).enhance(1 + mag)
        elif kind == "Brightness":
            im = ImageEnhance.Brightness(im).enhance(1 + mag)
        return np.asarray(im)


# ----------------------------------------------------------------------------------------------------------
# layout
# ----------------------------------------------------------------------------------------------------------
class ToCHW(Transform):
    """HWC -> CHW float32 (contiguous); mask -> int64. Sets ``sample['layout'] = 'CHW'``."""

    def apply(self, sample, rng):
        if sample.get("layout") == "CHW":
            return sample
        sample["image"] = np.ascontiguousarray(sample["image"].transpose(2, 0, 1), dtype=np.float32)
        if sample.get("mask") is not None:
            sample["mask"] = np.ascontiguousarray(sample["mask"], dtype=np.int64)
        sample["layout"] = "CHW"
        return sample
