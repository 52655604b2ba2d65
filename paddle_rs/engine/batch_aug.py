"""Mixup / CutMix batch augmentation (mmpretrain ``RandomBatchAugment``), PaddlePaddle.

Mirror of ``torch_ref/engine/batch_aug.py`` (same classes, same parameter draws, same arithmetic). Upstream:
mmpretrain 1.2.0 ``models/utils/batch_augments/{mixup,cutmix,wrapper}.py``, run by ``ClsDataPreprocessor`` on the
*normalised* batch and the one-hot scores of the labels. The RSMamba recipe (rsmamba.md §7)::

    RandomBatchAugment([Mixup(alpha=0.8), CutMix(alpha=1.0)])     # probs=None: one of the two, uniformly
                                                                  # per batch (no 'none' option)

Each augmentation is split into ``draw`` (the random parameters, in upstream order) and ``apply`` (pure
tensor arithmetic on given parameters), so the parity harness can inject the same parameters into both
frameworks:

* Mixup: ``lam ~ Beta(a, a)`` (``np.random.beta``), then the pairing ``index = randperm(B)`` (here
  ``paddle.randperm``, upstream ``torch.randperm``: same distribution, different stream);
  ``x' = lam x + (1 - lam) x[index]``, ``s' = lam s + (1 - lam) s[index]``.
* CutMix: ``lam ~ Beta(a, a)``, ``index = randperm(B)``, box centre ``cy ~ U{0..H-1}``, ``cx ~ U{0..W-1}``
  (``np.random.randint``), cut side ``int(H * sqrt(1 - lam))`` / ``int(W * sqrt(1 - lam))``, box clipped to the
  image, ``correct_lam``: ``lam = 1 - box_area / (H W)``; the box of ``x[index]`` is pasted into ``x``;
  ``s' = lam s + (1 - lam) s[index]``. ``cutmix_minmax`` (unused by RSMamba) draws the box sides instead.
* RandomBatchAugment: ``choice = np.random.choice(len(augments), p=probs)`` first; with ``probs`` summing to
  less than 1 the remainder is "no augmentation".

Parameters are plain dicts ``{'kind', 'choice', 'lam', 'lam_beta', 'index', 'bbox'}`` (numpy / Python values).
Every ``draw`` accepts injected values (``choice``, ``lam`` = the Beta draw, ``index``, ``center`` or ``bbox``);
what is not injected is drawn. Arithmetic: ``lam`` and ``1 - lam`` are formed in float64 and rounded once to
float32, as torch does with a Python scalar, so both frameworks (and upstream) mix bit-identically. Unlike
upstream, CutMix does not modify the caller's tensor in place.
"""
import numpy as np
import paddle
import paddle.nn.functional as F

__all__ = ["Mixup", "CutMix", "RandomBatchAugment", "build_batch_augment", "labels_to_scores", "BATCH_AUGMENTS"]


def labels_to_scores(labels, num_classes):
    """Class ids ``[N]`` -> one-hot float32 ``[N, C]``; float ``[N, C]`` scores are returned as float32."""
    labels = paddle.to_tensor(labels) if not isinstance(labels, paddle.Tensor) else labels
    if labels.ndim == 2 and int(labels.shape[1]) == int(num_classes) and labels.dtype in (paddle.float32,
                                                                                          paddle.float64):
        return labels.astype("float32")
    return F.one_hot(labels.reshape([-1]).astype("int64"), int(num_classes)).astype("float32")


def _fp32(v):
    """A Python float that is exactly representable in float32 (the value torch uses for a Python scalar)."""
    return float(np.float32(v))


def _perm(n):
    return paddle.randperm(int(n), dtype="int64").numpy()


class Mixup:
    """mmpretrain ``Mixup(alpha)``."""

    kind = "mixup"

    def __init__(self, alpha):
        if not float(alpha) > 0:
            raise ValueError(f"{type(self).__name__}: alpha must be > 0, got {alpha!r}")
        self.alpha = float(alpha)

    def config(self):
        return {"type": type(self).__name__, "alpha": self.alpha}

    def draw(self, batch_size, img_hw=None, lam=None, index=None, **_):
        """``lam`` (np.random.beta) then ``index`` (randperm), unless injected."""
        lam = float(np.random.beta(self.alpha, self.alpha)) if lam is None else float(lam)
        index = _perm(batch_size) if index is None else np.asarray(index, dtype=np.int64).reshape(-1)
        if sorted(index.tolist()) != list(range(int(batch_size))):
            raise ValueError(f"index must be a permutation of 0..{batch_size - 1}, got {index.tolist()}")
        return {"kind": self.kind, "lam": lam, "lam_beta": lam, "index": index, "bbox": None}

    @staticmethod
    def mix_scores(scores, params):
        idx = paddle.to_tensor(np.asarray(params["index"], dtype=np.int64))
        lam = params["lam"]
        return scores * _fp32(lam) + paddle.index_select(scores, idx, axis=0) * _fp32(1 - lam)

    def apply(self, inputs, scores, params):
        idx = paddle.to_tensor(np.asarray(params["index"], dtype=np.int64))
        lam = params["lam"]
        mixed = inputs * _fp32(lam) + paddle.index_select(inputs, idx, axis=0) * _fp32(1 - lam)
        return mixed, self.mix_scores(scores, params)

    def __call__(self, inputs, scores, **inject):
        params = self.draw(inputs.shape[0], tuple(inputs.shape[-2:]), **inject)
        return (*self.apply(inputs, scores, params), params)


class CutMix(Mixup):
    """mmpretrain ``CutMix(alpha, cutmix_minmax=None, correct_lam=True)``."""

    kind = "cutmix"

    def __init__(self, alpha, cutmix_minmax=None, correct_lam=True):
        super().__init__(alpha)
        if cutmix_minmax is not None and len(cutmix_minmax) != 2:
            raise ValueError(f"cutmix_minmax must be [min, max], got {cutmix_minmax!r}")
        self.cutmix_minmax = None if cutmix_minmax is None else [float(v) for v in cutmix_minmax]
        self.correct_lam = bool(correct_lam)

    def config(self):
        return {"type": "CutMix", "alpha": self.alpha, "cutmix_minmax": self.cutmix_minmax,
                "correct_lam": self.correct_lam}

    def rand_bbox(self, img_hw, lam, center=None):
        """Square-ratio box of side ``sqrt(1 - lam)`` around ``center`` (drawn: cy, then cx), clipped."""
        h, w = int(img_hw[0]), int(img_hw[1])
        ratio = np.sqrt(1 - lam)
        cut_h, cut_w = int(h * ratio), int(w * ratio)
        if center is None:
            cy = np.random.randint(0, h)
            cx = np.random.randint(0, w)
        else:
            cy, cx = int(center[0]), int(center[1])
        yl = int(np.clip(cy - cut_h // 2, 0, h))
        yh = int(np.clip(cy + cut_h // 2, 0, h))
        xl = int(np.clip(cx - cut_w // 2, 0, w))
        xh = int(np.clip(cx + cut_w // 2, 0, w))
        return yl, yh, xl, xh

    def rand_bbox_minmax(self, img_hw):
        h, w = int(img_hw[0]), int(img_hw[1])
        lo, hi = self.cutmix_minmax
        cut_h = np.random.randint(int(h * lo), int(h * hi))
        cut_w = np.random.randint(int(w * lo), int(w * hi))
        yl = np.random.randint(0, h - cut_h)
        xl = np.random.randint(0, w - cut_w)
        return int(yl), int(yl + cut_h), int(xl), int(xl + cut_w)

    def draw(self, batch_size, img_hw=None, lam=None, index=None, center=None, bbox=None, **_):
        """``lam`` (Beta), ``index`` (randperm), the box (``center`` or the whole ``bbox`` may be injected),
        then the lambda correction."""
        if img_hw is None:
            raise ValueError("CutMix.draw needs the image size (H, W)")
        p = super().draw(batch_size, img_hw, lam=lam, index=index)
        if bbox is not None:
            bbox = tuple(int(v) for v in bbox)
        elif self.cutmix_minmax is not None:
            bbox = self.rand_bbox_minmax(img_hw)
        else:
            bbox = self.rand_bbox(img_hw, p["lam_beta"], center)
        lam = p["lam_beta"]
        if self.correct_lam or self.cutmix_minmax is not None:
            y1, y2, x1, x2 = bbox
            lam = 1.0 - (y2 - y1) * (x2 - x1) / float(int(img_hw[0]) * int(img_hw[1]))
        p.update(kind=self.kind, lam=float(lam), bbox=bbox)
        return p

    def apply(self, inputs, scores, params):
        y1, y2, x1, x2 = params["bbox"]
        out = inputs.clone()
        if y2 > y1 and x2 > x1:
            idx = paddle.to_tensor(np.asarray(params["index"], dtype=np.int64))
            out[:, :, y1:y2, x1:x2] = paddle.index_select(inputs, idx, axis=0)[:, :, y1:y2, x1:x2]
        return out, self.mix_scores(scores, params)


BATCH_AUGMENTS = {"Mixup": Mixup, "CutMix": CutMix}


class RandomBatchAugment:
    """mmpretrain ``RandomBatchAugment(augments, probs=None)``: one augmentation per batch.

    ``__call__(inputs [B,C,H,W], labels [B] or scores [B,K], num_classes=None, **inject)`` ->
    ``(inputs, scores float32 [B,K], params)``; ``inject``: ``choice``, ``lam``, ``index``, ``center``, ``bbox``.
    """

    def __init__(self, augments, probs=None):
        if not isinstance(augments, (list, tuple)):
            augments = [augments]
        self.augments = []
        for aug in augments:
            if isinstance(aug, dict):
                aug = dict(aug)
                kind = aug.pop("type")
                if kind not in BATCH_AUGMENTS:
                    raise ValueError(f"unknown batch augment {kind!r} (known: {', '.join(BATCH_AUGMENTS)})")
                aug = BATCH_AUGMENTS[kind](**aug)
            self.augments.append(aug)
        if not self.augments:
            raise ValueError("RandomBatchAugment needs at least one augmentation")
        if isinstance(probs, (int, float)):
            probs = [float(probs)]
        if probs is not None:
            probs = [float(p) for p in probs]
            if len(probs) != len(self.augments):
                raise ValueError(f"{len(self.augments)} augments but {len(probs)} probs")
            if sum(probs) > 1 + 1e-12:
                raise ValueError(f"the probabilities sum to {sum(probs)} > 1")
            self.augments.append(None)
            probs.append(1 - sum(probs))
        self.probs = probs

    def config(self):
        return {"augments": [a.config() for a in self.augments if a is not None],
                "probs": None if self.probs is None else self.probs[:-1]}

    def draw(self, batch_size, img_hw=None, choice=None, **inject):
        if choice is None:
            choice = int(np.random.choice(len(self.augments), p=self.probs))
        aug = self.augments[int(choice)]
        if aug is None:
            return {"kind": "none", "choice": int(choice), "lam": 1.0, "lam_beta": None, "index": None, "bbox": None}
        p = aug.draw(batch_size, img_hw, **inject)
        p["choice"] = int(choice)
        return p

    def apply(self, inputs, scores, params):
        if params["kind"] == "none":
            return inputs, scores.astype("float32")
        aug = self.augments[params["choice"]]
        if aug is None or aug.kind != params["kind"]:
            raise ValueError(f"params of kind {params['kind']!r} do not match augment #{params['choice']}")
        return aug.apply(inputs, scores.astype("float32"), params)

    def __call__(self, inputs, labels, num_classes=None, **inject):
        if num_classes is None:
            if labels.ndim != 2:
                raise ValueError("num_classes is required with class-id labels")
            num_classes = int(labels.shape[1])
        scores = labels_to_scores(labels, num_classes)
        params = self.draw(inputs.shape[0], tuple(inputs.shape[-2:]), **inject)
        return (*self.apply(inputs, scores, params), params)


def build_batch_augment(cfg):
    """``None`` / ``{augments: [{type: Mixup, alpha: 0.8}, {type: CutMix, alpha: 1.0}], probs: null}`` or a
    bare list of augment dicts -> :class:`RandomBatchAugment` or None."""
    if not cfg:
        return None
    if isinstance(cfg, (list, tuple)):
        return RandomBatchAugment(list(cfg))
    cfg = dict(cfg)
    return RandomBatchAugment(cfg.pop("augments"), cfg.pop("probs", None))
