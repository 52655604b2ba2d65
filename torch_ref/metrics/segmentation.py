"""Semantic-segmentation metrics from one global confusion matrix (torch ops).

Mirror of ``paddle_rs/metrics/segmentation.py``. Rows = ground truth, columns =
prediction; pixels whose label equals ``ignore_index`` are masked out.

NaN policy for classes whose union (IoU) or denominators (F1) are zero
(factseg.md §6.3):
* ``'nan'``     -- per-class NaN, plain mean (NaN if any class is NaN; SimpleCV/FactSeg upstream);
* ``'zero'``    -- per-class 0, counted in the mean (PaddleSeg);
* ``'nanmean'`` -- per-class NaN, mean over the others (mmseg).
"""
import numpy as np
import torch

NAN_POLICIES = ("nan", "zero", "nanmean")


def confusion_matrix(pred, label, num_classes, ignore_index=255):
    pred = torch.as_tensor(pred).flatten().long()
    label = torch.as_tensor(label).flatten().long()
    keep = label != ignore_index
    pred, label = pred[keep], label[keep]
    bad = (label < 0) | (label >= num_classes) | (pred < 0) | (pred >= num_classes)
    if bool(bad.any()):
        raise ValueError(f"labels/predictions outside [0, {num_classes}) that are not ignore_index={ignore_index}")
    cm = torch.bincount(label * num_classes + pred, minlength=num_classes * num_classes)
    return cm.reshape(num_classes, num_classes)


def _reduce(per_class, policy):
    """Mean over classes under the NaN policy, in numpy on both sides so the result is bit-identical."""
    v = np.asarray(per_class, dtype=np.float64)
    if policy == "nan":
        return np.float64(v.mean())
    if policy == "zero":
        return np.float64(np.nan_to_num(v, nan=0.0).mean())
    if policy == "nanmean":
        return np.float64(np.nanmean(v)) if (~np.isnan(v)).any() else np.float64("nan")
    raise ValueError(f"unknown nan_policy {policy!r}; choose one of {NAN_POLICIES}")


def metrics_from_cm(cm, nan_policy="nan"):
    """Per-class IoU/F1/precision/recall and their means, in float64."""
    cm = torch.as_tensor(cm).double()
    tp = torch.diagonal(cm)
    gt_area, pred_area = cm.sum(1), cm.sum(0)
    union = gt_area + pred_area - tp
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    iou = torch.where(union > 0, tp / union, nan)
    precision = torch.where(pred_area > 0, tp / pred_area, nan)
    recall = torch.where(gt_area > 0, tp / gt_area, nan)
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall), nan)
    f1 = torch.where(torch.isnan(precision) | torch.isnan(recall), nan, f1)
    total = cm.sum()
    return {
        "iou": iou, "f1": f1, "precision": precision, "recall": recall,
        "miou": _reduce(iou.numpy(), nan_policy), "miou_fg": _reduce(iou[1:].numpy(), nan_policy),
        "mf1": _reduce(f1.numpy(), nan_policy), "acc": tp.sum() / total if total > 0 else nan,
    }


class SegMetric:
    """Accumulates a confusion matrix over batches; ``compute()`` applies the NaN policy."""

    def __init__(self, num_classes, ignore_index=255, nan_policy="nan"):
        if nan_policy not in NAN_POLICIES:
            raise ValueError(f"unknown nan_policy {nan_policy!r}; choose one of {NAN_POLICIES}")
        self.num_classes, self.ignore_index, self.nan_policy = num_classes, ignore_index, nan_policy
        self.cm = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred, label):
        self.cm += confusion_matrix(pred, label, self.num_classes, self.ignore_index)

    def compute(self):
        return {k: np.asarray(v.numpy() if torch.is_tensor(v) else v)
                for k, v in metrics_from_cm(self.cm, self.nan_policy).items()}
