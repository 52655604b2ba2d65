"""Strict torch-vs-Paddle diff harness on top of reprod_log (porting.md §7).

reprod_log passes NaN, silently transposes, broadcasts, ignores dtypes and
``report()`` returns nothing (porting.md §7.2). This harness keeps its file and
log formats (``<stage>_torch.npy``, ``<stage>_paddle.npy``, ``<stage>_diff.log``)
but decides pass/fail itself:

* shapes must be equal and dtype kinds equal; values are compared in float64;
* NaN/Inf fail unless the key allows NaN at identical positions;
* per key ``|a - b| <= atol + rtol * |a|`` (a = torch reference), optional
  mean-abs bound, optional identical argmax where the reference's top-2 margin
  exceeds the tolerance, or exact equality;
* every key's tolerance is *declared* once, as a :class:`Check` of its family's
  ``CHECKS`` (``align/cases/<family>.py``); a key without a declaration is an
  error. docs/parity.md is generated from these declarations (align/report.py);
* a check may name a documented known divergence (``align/known_divergences.py``):
  it is still measured against its tolerance, and a miss is reported as KNOWN
  only while it stays inside the bound documented for that model and key;
* a summary table, a JSON file per stage and the process exit status.
"""
import contextlib
import dataclasses
import fnmatch
import io
import json
import logging
import os
import platform
import subprocess
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .known_divergences import KNOWN

# reprod_log imports paddle; the harness is only used where both frameworks are installed.
from reprod_log import ReprodDiffHelper, ReprodLogger  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Tol:
    atol: float = 0.0
    rtol: float = 0.0
    mean_atol: Optional[float] = None
    argmax_axis: Optional[int] = None     # also require identical argmax along this axis, where the reference's
    #                                       top-2 margin exceeds the tolerance (a closer pair is a near tie)
    exact: bool = False                   # bit-identical (metrics, round trips)
    allow_nan: bool = False               # NaN allowed at identical positions (metric NaN policy)
    rel_to_max: bool = False              # rtol scales max|ref| (features: near-zero values come from cancellation)

    def describe(self):
        if self.exact:
            return "exact"
        s = f"atol {self.atol:.0e}" + (f" + rtol {self.rtol:.0e}" if self.rtol else "")
        if self.rel_to_max:
            s += "*max|ref|"
        if self.mean_atol is not None:
            s += f", mean {self.mean_atol:.0e}"
        if self.argmax_axis is not None:
            s += ", argmax"
        return s


@dataclasses.dataclass(frozen=True)
class Check:
    """The declared tolerance of one compared key (or of every key matching a ``*`` pattern).

    ``what`` says in a few words what is compared (docs/parity.md shows it); ``known`` names a documented known
    divergence (align/known_divergences.py) that may account for a miss, within the bound it documents for the
    model and key; ``models`` restricts the declaration to some models of the family (first match wins)."""
    stage: str
    key: str
    tol: Tol
    what: str
    known: Optional[str] = None
    models: Tuple[str, ...] = ()

    def matches(self, stage, model, key):
        return (self.stage == stage and (not self.models or model in self.models)
                and (self.key == key or fnmatch.fnmatchcase(key, self.key)))


def find_check(checks: Sequence[Check], stage, model, key) -> Check:
    for c in checks:
        if c.matches(stage, model, key):
            return c
    raise KeyError(f"{stage} key {key!r} of {model} has no declared check: add a Check to its family's CHECKS "
                   f"(align/cases/<family>.py)")


@dataclasses.dataclass
class Result:
    stage: str
    model: str
    key: str
    shape: tuple
    dtype: str
    max_abs: float
    max_rel: float             # max over elements of |a - b| / |a|
    mean_abs: float
    tol: str
    status: str                # PASS | FAIL | KNOWN(Dn)
    note: str = ""
    rel_max: float = float("nan")   # max |a - b| / max |a|
    used: float = float("nan")      # the largest fraction of the tolerance any element uses (> 1: outside it)

    @property
    def ok(self):
        return self.status != "FAIL"


def _as_array(v):
    if hasattr(v, "detach"):
        v = v.detach().cpu().numpy()
    elif hasattr(v, "numpy") and not isinstance(v, np.ndarray):
        v = v.numpy()
    return np.asarray(v)


def compare(key, ref, got, tol: Tol, known: Optional[str] = None, stage="", model=""):
    """Compare torch ``ref`` with Paddle ``got`` strictly; returns a :class:`Result`."""
    ref, got = _as_array(ref), _as_array(got)
    base = dict(stage=stage, model=model, key=key, shape=tuple(ref.shape), dtype=str(ref.dtype), tol=tol.describe())
    nan = float("nan")
    if ref.shape != got.shape:
        return Result(**base, max_abs=nan, max_rel=nan, mean_abs=nan, status="FAIL",
                      note=f"shape {got.shape} != reference {ref.shape}")
    if ref.dtype.kind != got.dtype.kind or (ref.dtype.kind in "iub" and ref.dtype != got.dtype):
        return Result(**base, max_abs=nan, max_rel=nan, mean_abs=nan, status="FAIL",
                      note=f"dtype {got.dtype} != reference {ref.dtype}")
    a, b = ref.astype(np.float64), got.astype(np.float64)
    fin_a, fin_b = np.isfinite(a), np.isfinite(b)
    note = ""
    if not (fin_a.all() and fin_b.all()):
        same_nan = np.array_equal(np.isnan(a), np.isnan(b)) and np.array_equal(a[np.isinf(a)], b[np.isinf(b)]) \
            and np.array_equal(np.isinf(a), np.isinf(b))
        if not (tol.allow_nan and same_nan and not np.isinf(a).any()):
            return Result(**base, max_abs=nan, max_rel=nan, mean_abs=nan, status="FAIL",
                          note=f"non-finite values: reference {int((~fin_a).sum())}, paddle {int((~fin_b).sum())}")
        note = f"{int((~fin_a).sum())} NaN at identical positions (allowed)"
        mask = fin_a
        a, b = a[mask], b[mask]
    diff = np.abs(a - b)
    max_abs = float(diff.max()) if diff.size else 0.0
    mean_abs = float(diff.mean()) if diff.size else 0.0
    max_rel = float((diff / np.maximum(np.abs(a), 1e-12)).max()) if diff.size else 0.0
    amax = float(np.abs(a).max()) if a.size else 0.0
    rel_max = max_abs / amax if amax > 0 else (0.0 if max_abs == 0 else float("inf"))
    if tol.exact:
        ok = bool(np.array_equal(a, b))
        used = 0.0 if ok else float("inf")
    else:
        scale = amax if tol.rel_to_max else np.abs(a)
        allowed = tol.atol + tol.rtol * scale
        ok = bool((diff <= allowed).all())
        with np.errstate(divide="ignore", invalid="ignore"):
            frac = np.where(diff == 0, 0.0, diff / allowed)
        used = float(frac.max()) if frac.size else 0.0
        if tol.mean_atol is not None and mean_abs > tol.mean_atol:
            ok = False
            note = (note + "; " if note else "") + f"mean abs {mean_abs:.2e} > {tol.mean_atol:.0e}"
    if tol.argmax_axis is not None and ref.ndim > 0:
        agree, judged = argmax_agreement(ref, got, tol)
        if agree < 1.0:
            ok = False
        note = (note + "; " if note else "") + f"argmax agreement {agree:.4%}"
        if judged < ref.size // ref.shape[tol.argmax_axis]:
            note += f" where the top-2 margin exceeds the tolerance ({judged} positions; the others are near ties)"
    status = "PASS" if ok else "FAIL"
    if not ok and known is not None:
        kd = KNOWN[known]
        b = kd.bound_for(model, key)
        if b is None:
            note = (note + "; " if note else "") + f"{known} documents no bound for {model} / {key}"
        else:
            measured = {"abs": max_abs, "rel": max_rel, "rel_max": rel_max}[b.measure]
            if measured <= b.bound:
                status = f"KNOWN({known})"
                note = (note + "; " if note else "") + f"{kd.title}; documented bound {b.bound:.1e} {b.measure}"
            else:
                note = (note + "; " if note else "") + f"exceeds documented bound {b.bound:.1e} {b.measure} of {known}"
    return Result(**base, max_abs=max_abs, max_rel=max_rel, mean_abs=mean_abs, status=status, note=note,
                  rel_max=rel_max, used=used)


def near_ties(ref, tol: Tol):
    """Boolean mask over the positions of ``ref`` (class axis ``tol.argmax_axis`` removed) whose top-2 margin does
    not exceed the tolerance: where either class may win by rounding."""
    a = np.moveaxis(np.asarray(ref, np.float64), tol.argmax_axis, -1)
    top2 = np.sort(a, axis=-1)[..., -2:]
    scale = np.abs(a).max() if tol.rel_to_max else np.abs(top2).max(-1)
    return (top2[..., 1] - top2[..., 0]) <= tol.atol + tol.rtol * scale


def argmax_agreement(ref, got, tol: Tol):
    """``(agreement, judged)``: the fraction of positions whose argmax along ``tol.argmax_axis`` agrees, among the
    ``judged`` positions where the reference's top-2 margin exceeds the value tolerance. Where the two best classes
    of the reference lie closer than the tolerance allows the values to move, a flip is rounding, not a port
    defect; everywhere else it is a real disagreement (and, beyond twice the tolerance, also a value failure)."""
    axis = tol.argmax_axis
    a, b = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    if a.shape[axis] < 2:
        return 1.0, a.size
    judged = ~near_ties(a, tol)
    n = int(judged.sum())
    if n == 0:
        return 1.0, 0
    same = a.argmax(axis) == b.argmax(axis)
    return float(same[judged].mean()), n


def _git_sha():
    """The checkout's commit, with ``+dirty`` when tracked files differ from it."""
    try:
        here = os.path.dirname(__file__)
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=here,
                             timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=here, timeout=5).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except Exception:
        return "unknown"


def environment():
    import paddle
    import torch
    return {"paddle": paddle.__version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "device": "cpu",
            "torch_threads": torch.get_num_threads(), "git": _git_sha()}


class StageLog:
    """Collects one stage of one model: reprod_log files plus strict results.

    ``checks``: the declared :class:`Check` list of the model's family; every key added must match one."""

    def __init__(self, stage: str, model: str, out_dir: str, checks: Sequence[Check] = ()):
        self.stage, self.model = stage, model
        self.checks = list(checks)
        self.dir = os.path.join(out_dir, model)
        os.makedirs(self.dir, exist_ok=True)
        self.torch_log, self.paddle_log = ReprodLogger(), ReprodLogger()
        self.results: List[Result] = []
        self.notes: List[str] = []

    def add(self, key, ref, got):
        """Compare torch ``ref`` with Paddle ``got`` under the key's declared check."""
        c = find_check(self.checks, self.stage, self.model, key)
        ref_a, got_a = _as_array(ref), _as_array(got)
        self.torch_log.add(key, np.array(ref_a))
        self.paddle_log.add(key, np.array(got_a))
        r = compare(key, ref_a, got_a, c.tol, c.known, self.stage, self.model)
        self.results.append(r)
        return r

    def add_gap(self, key, gaps, labels: Optional[Sequence[str]] = None):
        """A key whose comparison was already reduced to non-negative normalised gaps (0 = identical), e.g. the
        per-step, per-tensor update gaps of align/training.py. The reprod_log files hold zeros (torch) and the gaps
        (Paddle), so the familiar diff log shows the largest gap; ``labels`` (one per element of ``gaps``) name the
        worst element in the note."""
        gaps = np.asarray(gaps, np.float64)
        r = self.add(key, np.zeros_like(gaps), gaps)
        r.max_rel = r.max_abs                 # a gap is already relative to its own scale
        if labels is not None and gaps.size and np.isfinite(gaps).all():
            worst = int(np.argmax(gaps.ravel()))
            r.note = (r.note + "; " if r.note else "") + f"largest at {labels[worst]}"
        return r

    def save(self):
        tpath = os.path.join(self.dir, f"{self.stage}_torch.npy")
        ppath = os.path.join(self.dir, f"{self.stage}_paddle.npy")
        self.torch_log.save(tpath)
        self.paddle_log.save(ppath)
        self._reprod_report(tpath, ppath)
        with open(os.path.join(self.dir, f"{self.stage}_strict.json"), "w") as f:
            json.dump({"environment": {**environment(), **getattr(self, "run_settings", {})}, "notes": self.notes,
                       "results": [dataclasses.asdict(r) for r in self.results]},
                      f, indent=1, default=str)
        return self.results

    def _reprod_report(self, tpath, ppath):
        """reprod_log's familiar diff log (max method), with its root-logger noise contained."""
        helper = ReprodDiffHelper()
        info_t, info_p = helper.load_info(tpath), helper.load_info(ppath)
        root = logging.getLogger()
        saved = list(root.handlers)
        root.handlers = []        # reprod_log logs through the root logger: keep it out of the console
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                helper.compare_info(info_t, info_p)
                helper.report(diff_method="max", diff_threshold=1e-5,
                              path=os.path.join(self.dir, f"{self.stage}_diff.log"))
        except Exception as e:   # reprod_log's own assertions (e.g. on shapes) must not hide our verdict
            with open(os.path.join(self.dir, f"{self.stage}_diff.log"), "a") as f:
                f.write(f"reprod_log could not diff this stage: {e!r}\n")
        finally:
            for h in list(root.handlers):
                h.close()
            root.handlers = saved


def print_summary(results: List[Result], title="", file=None):
    file = file or sys.stdout
    header = f"{'model':<18} {'stage':<9} {'key':<34} {'shape':<18} {'max_abs':>9} {'max_rel':>9} " \
             f"{'mean_abs':>9}  {'tolerance':<30} status"
    print(f"\n== {title} ==" if title else "", file=file)
    print(header, file=file)
    print("-" * len(header), file=file)
    for r in results:
        print(f"{r.model:<18} {r.stage:<9} {r.key[:34]:<34} {str(list(r.shape))[:18]:<18} {r.max_abs:9.2e} "
              f"{r.max_rel:9.2e} {r.mean_abs:9.2e}  {r.tol[:30]:<30} {r.status}"
              + (f"  ({r.note})" if r.note else ""), file=file)
    n_fail = sum(not r.ok for r in results)
    n_known = sum(r.status.startswith("KNOWN") for r in results)
    print(f"{len(results) - n_fail} passed, {n_fail} failed ({n_known} within documented known divergences)",
          file=file)
    return n_fail == 0
