"""The strict diff harness catches what reprod_log lets through (porting.md §7.2)."""
import numpy as np
import pytest

from align.harness import StageLog, Tol, compare, print_summary
from align.known_divergences import KNOWN


def test_nan_fails_even_where_reprod_log_passes():
    a = np.ones(4, np.float32)
    b = a.copy()
    b[1] = np.nan
    r = compare("k", a, b, Tol(atol=1e-3))
    assert r.status == "FAIL" and "non-finite" in r.note


def test_nan_allowed_only_at_identical_positions():
    a = np.array([0.5, np.nan])
    assert compare("k", a, a.copy(), Tol(exact=True, allow_nan=True)).ok
    assert not compare("k", a, np.array([np.nan, 0.5]), Tol(exact=True, allow_nan=True)).ok


def test_transposed_and_broadcastable_shapes_fail():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert compare("k", a, a.T.copy(), Tol(atol=1.0)).status == "FAIL"
    assert compare("k", np.ones((1, 16)), np.ones(16), Tol(atol=1.0)).status == "FAIL"


def test_dtype_kind_mismatch_fails():
    assert not compare("k", np.zeros(3, np.int64), np.zeros(3, np.float32), Tol(atol=1)).ok
    assert not compare("k", np.zeros(3, np.uint8), np.zeros(3, np.int64), Tol(atol=1)).ok


def test_max_not_mean_decides():
    a = np.zeros(10)
    b = a.copy()
    b[3] = 10.0               # mean diff 1.0, one element far off
    r = compare("k", a, b, Tol(atol=2.0))
    assert r.status == "FAIL" and r.max_abs == 10.0


def test_relative_and_argmax():
    a = np.array([[1000.0, 1.0]])
    assert compare("k", a, a * (1 + 1e-6), Tol(rtol=1e-5)).ok
    assert not compare("k", a, a * (1 + 1e-4), Tol(rtol=1e-5)).ok
    r = compare("k", np.array([[0.5, 0.49]]), np.array([[0.49, 0.5]]), Tol(atol=0.1, argmax_axis=1))
    assert r.status == "FAIL" and "argmax agreement 0.0000%" in r.note


def test_known_divergence_is_bounded():
    a = np.zeros(3)
    inside = compare("k", a, a + KNOWN["D7"].bound / 2, Tol(atol=1e-5), known="D7")
    outside = compare("k", a, a + KNOWN["D7"].bound * 2, Tol(atol=1e-5), known="D7")
    assert inside.status == "KNOWN(D7)" and inside.ok
    assert outside.status == "FAIL" and "exceeds documented bound" in outside.note


def test_stage_log_writes_reprod_files_and_summary(tmp_path, capsys):
    log = StageLog("forward", "toy", str(tmp_path))
    log.add("good", np.ones(3), np.ones(3), Tol(atol=1e-6))
    log.add("bad", np.ones(3), np.ones(3) * 2, Tol(atol=1e-6))
    results = log.save()
    for f in ("forward_torch.npy", "forward_paddle.npy", "forward_diff.log", "forward_strict.json"):
        assert (tmp_path / "toy" / f).exists(), f
    from reprod_log import ReprodDiffHelper
    info = ReprodDiffHelper().load_info(str(tmp_path / "toy" / "forward_torch.npy"))
    assert set(info) == {"good", "bad"}
    assert print_summary(results) is False
    out = capsys.readouterr().out
    assert "1 passed, 1 failed" in out


@pytest.mark.parametrize("tol,expect", [(Tol(exact=True), "exact"), (Tol(atol=1e-5), "atol 1e-05")])
def test_tolerance_description(tol, expect):
    assert tol.describe().startswith(expect)


def test_known_divergence_relative_bound_per_key():
    bound, measure = KNOWN["D9"].bound_for("train_loss_per_step")
    assert measure == "rel"
    ref = np.array([3.0, 3.1])
    assert compare("train_loss_per_step", ref, ref * (1 + bound / 2), Tol(rtol=1e-5), known="D9").ok
    assert not compare("train_loss_per_step", ref, ref * (1 + bound * 2), Tol(rtol=1e-5), known="D9").ok
