"""Generic, strict torch <-> Paddle state_dict conversion (porting.md §1).

The rules are derived from the *torch reference model's module tree*, never from
tensor shapes:

* ``nn.Linear`` weights are transposed ([out, in] -> [in, out]);
* BatchNorm ``running_mean``/``running_var`` become ``_mean``/``_variance``;
  ``num_batches_tracked`` is dropped;
* buffers the Paddle model rebuilds instead of storing (relative-position index
  tables, ...) are dropped **only after checking** they equal the torch model's
  own freshly built value;
* every other key is copied unchanged (names are equal by construction).

Every key is accounted for: missing, unexpected or mis-shaped keys raise
:class:`ConversionError` listing each one. Paddle's own loader would only warn.
"""
import collections
import dataclasses
from typing import Dict, List

import numpy as np
import torch
import torch.nn as tnn

from .checkpoint import CheckpointError

_BN_TYPES = (tnn.modules.batchnorm._BatchNorm,)
_BN_RENAME = {"running_mean": "_mean", "running_var": "_variance"}


class ConversionError(CheckpointError):
    pass


@dataclasses.dataclass
class Report:
    copied: int = 0
    transposed: List[str] = dataclasses.field(default_factory=list)
    renamed_bn: int = 0
    dropped: Dict[str, str] = dataclasses.field(default_factory=dict)   # key -> reason

    def summary(self):
        reasons = collections.Counter(self.dropped.values())
        drops = ", ".join(f"{n} {r}" for r, n in sorted(reasons.items())) or "none"
        return (f"{self.copied} copied, {len(self.transposed)} Linear weights transposed, "
                f"{self.renamed_bn} BN statistics renamed; dropped: {drops}")


def _module_rules(torch_model):
    """Map torch key -> (paddle key or None, kind) from the module tree."""
    rules = {}
    for mname, m in torch_model.named_modules():
        prefix = f"{mname}." if mname else ""
        if isinstance(m, tnn.Linear):
            rules[prefix + "weight"] = (prefix + "weight", "transpose")
        if isinstance(m, _BN_TYPES):
            for t, p in _BN_RENAME.items():
                rules[prefix + t] = (prefix + p, "bn")
            rules[prefix + "num_batches_tracked"] = (None, "num_batches_tracked")
    return rules


def linear_weight_keys(torch_model):
    """Torch keys of the ``nn.Linear`` weights: stored transposed ([in, out]) in Paddle."""
    return {k for k, (_, kind) in _module_rules(torch_model).items() if kind == "transpose"}


def _fail(what, items, hint):
    if items:
        lines = "\n  ".join(items[:50]) + (f"\n  ... and {len(items) - 50} more" if len(items) > 50 else "")
        raise ConversionError(f"{what} ({len(items)}):\n  {lines}\n{hint}")


def torch_to_paddle(torch_sd, torch_model, paddle_model):
    """Convert a torch state_dict (already unwrapped) into ``{paddle_key: np.ndarray}``.

    ``torch_model`` / ``paddle_model`` are the reference and the port, built with
    the same constructor arguments; they define the expected key sets.
    Returns ``(paddle_state_dict, Report)``.
    """
    expected_t = torch_model.state_dict()
    expected_p = {k: v for k, v in paddle_model.state_dict().items()}
    missing = [k for k in expected_t if k not in torch_sd]
    unexpected = [k for k in torch_sd if k not in expected_t]
    _fail("keys the model needs but the checkpoint lacks", missing,
          "Is this checkpoint for this model (and these options, e.g. num_classes)?")
    _fail("keys in the checkpoint the model does not have", unexpected,
          "Is this checkpoint for this model? Nothing was written.")
    rules = _module_rules(torch_model)
    report, out, mis_shaped = Report(), collections.OrderedDict(), []
    for k, v in torch_sd.items():
        pkey, kind = rules.get(k, (k, "copy"))
        if kind == "num_batches_tracked":
            report.dropped[k] = "num_batches_tracked"
            continue
        if pkey not in expected_p:
            ref = expected_t[k]
            if k not in dict(torch_model.named_buffers()):
                raise ConversionError(f"parameter {k!r} has no counterpart {pkey!r} in the Paddle model")
            if ref.shape != v.shape or not torch.equal(ref, v):
                raise ConversionError(
                    f"buffer {k!r} is rebuilt by the Paddle model, but the checkpoint's value differs from the one "
                    f"the reference builds (shape {tuple(v.shape)} vs {tuple(ref.shape)}): the checkpoint was made "
                    f"with other model options")
            report.dropped[k] = "rebuilt buffer"
            continue
        if v.dtype in (torch.bfloat16, torch.float16):      # bf16 has no numpy dtype; fp32 holds both exactly
            arr = v.detach().cpu().float().numpy()
        else:
            arr = v.detach().cpu().numpy()
        if kind == "transpose":
            arr = arr.T
            report.transposed.append(k)
        elif kind == "bn":
            report.renamed_bn += 1
        else:
            report.copied += 1
        want = expected_p[pkey]
        if list(arr.shape) != list(want.shape):
            mis_shaped.append(f"{k} -> {pkey}: checkpoint {list(arr.shape)} vs model {list(want.shape)}")
            continue
        want_dtype = str(want.dtype).replace("paddle.", "")
        if arr.dtype.name != want_dtype:
            arr = arr.astype(want_dtype)
        out[pkey] = np.ascontiguousarray(arr)
    _fail("mis-shaped keys", mis_shaped, "Check the model options (num_classes, img_size, ...). Nothing was written.")
    not_filled = [k for k in expected_p if k not in out]
    _fail("Paddle keys no checkpoint key maps to", not_filled, "The converter rules are incomplete for this model.")
    return out, report


def paddle_to_torch(paddle_sd, torch_model, paddle_model):
    """Inverse of :func:`torch_to_paddle`; returns a torch state_dict loadable with ``strict=True``.

    ``num_batches_tracked`` and rebuilt buffers are taken from ``torch_model``.
    """
    expected_p = paddle_model.state_dict()
    missing = [k for k in expected_p if k not in paddle_sd]
    unexpected = [k for k in paddle_sd if k not in expected_p]
    _fail("keys the Paddle model needs but the file lacks", missing, "Nothing was written.")
    _fail("keys in the file the Paddle model does not have", unexpected, "Nothing was written.")
    rules = _module_rules(torch_model)
    out, mis_shaped = collections.OrderedDict(), []
    for k, ref in torch_model.state_dict().items():
        pkey, kind = rules.get(k, (k, "copy"))
        if pkey is None or pkey not in paddle_sd:
            out[k] = ref.clone()          # num_batches_tracked / rebuilt buffers
            continue
        v = paddle_sd[pkey]
        arr = v.numpy() if hasattr(v, "numpy") else np.asarray(v)
        if kind == "transpose":
            arr = arr.T
        t = torch.from_numpy(np.ascontiguousarray(arr)).to(ref.dtype)
        if t.shape != ref.shape:
            mis_shaped.append(f"{pkey} -> {k}: file {list(t.shape)} vs model {list(ref.shape)}")
            continue
        out[k] = t
    _fail("mis-shaped keys", mis_shaped, "Nothing was written.")
    return out
