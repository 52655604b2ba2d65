"""Single-label classification metrics (mmpretrain ``Accuracy`` top-1 + ``SingleLabelMetric``), Paddle ops.

Mirror of ``torch_ref/metrics/classification.py``. One confusion matrix (rows = ground truth, columns =
prediction) is accumulated with the framework's ``bincount``; everything after it is :func:`reduce_cm`, the
same numpy code on both sides, so the two frameworks report bit-identical numbers.

Definitions (rsmamba.md §8, mmpretrain 1.2.0 ``evaluation/metrics/single_label.py``), all in percent::

    P_c  = TP_c / max(#pred_c, 1) * 100        R_c = TP_c / max(#gt_c, 1) * 100
    F1_c = 2 P_c R_c / max(P_c + R_c, eps_fp32)
    macro P / R / F1 = plain mean over all C classes (a class absent from labels and predictions counts as 0,
                       as upstream: C is the number of score columns)
    top-1 = sum_c TP_c / N * 100               (mmpretrain ``Accuracy(topk=1)``; not configured upstream)

Predictions: class ids ``[N]``, or scores ``[N, C]`` whose argmax is taken (upstream takes the top-1 of the
softmax scores; its ``thrs=(0.,)`` never applies to a softmax maximum). Upstream computes in float32; here the
reduction is float64 (differences below 1e-5 percentage points).
"""
import numpy as np
import paddle

__all__ = ["confusion_matrix", "reduce_cm", "ClsMetric"]


def confusion_matrix(pred, label, num_classes):
    """``[C, C]`` int64 numpy confusion matrix; ``pred`` ids ``[N]`` or scores ``[N, C]``, ``label`` ids ``[N]``."""
    pred = pred if isinstance(pred, paddle.Tensor) else paddle.to_tensor(pred)
    if pred.ndim == 2:
        if int(pred.shape[1]) != num_classes:
            raise ValueError(f"scores have {pred.shape[1]} columns, num_classes={num_classes}")
        pred = paddle.argmax(pred, axis=1)
    pred = pred.flatten().astype("int64")
    label = (label if isinstance(label, paddle.Tensor) else paddle.to_tensor(label)).flatten().astype("int64")
    if pred.shape[0] != label.shape[0]:
        raise ValueError(f"{pred.shape[0]} predictions for {label.shape[0]} labels")
    if pred.shape[0] == 0:
        return np.zeros((num_classes, num_classes), dtype=np.int64)
    bad = (label < 0) | (label >= num_classes) | (pred < 0) | (pred >= num_classes)
    if bool(bad.any()):
        raise ValueError(f"labels/predictions outside [0, {num_classes})")
    cm = paddle.bincount(label * num_classes + pred, minlength=num_classes * num_classes)
    return cm.reshape([num_classes, num_classes]).astype("int64").numpy()


def reduce_cm(cm):
    """Per-class and macro precision / recall / F1 and top-1 (percent, float64) from a confusion matrix.
    Identical numpy code in both frameworks."""
    cm = np.asarray(cm, dtype=np.int64)
    tp = np.diag(cm).astype(np.float64)
    gt, pred = cm.sum(1), cm.sum(0)
    precision = tp / np.maximum(pred, 1).astype(np.float64) * 100.0
    recall = tp / np.maximum(gt, 1).astype(np.float64) * 100.0
    f1 = 2.0 * precision * recall / np.maximum(precision + recall, float(np.finfo(np.float32).eps))
    n = int(cm.sum())
    top1 = np.float64(tp.sum() / n * 100.0) if n else np.float64("nan")
    return {"top1": top1, "precision": precision, "recall": recall, "f1": f1,
            "macro_precision": np.float64(precision.mean()), "macro_recall": np.float64(recall.mean()),
            "macro_f1": np.float64(f1.mean()), "support": gt.astype(np.int64), "num_samples": n}


class ClsMetric:
    """Accumulates a confusion matrix over batches; ``compute()`` -> :func:`reduce_cm` plus ``confusion_matrix``."""

    def __init__(self, num_classes):
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.cm = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, pred, label):
        self.cm += confusion_matrix(pred, label, self.num_classes)

    def compute(self):
        out = reduce_cm(self.cm)
        out["confusion_matrix"] = self.cm.copy()
        return out
