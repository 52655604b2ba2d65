"""The strict diff harness catches what reprod_log lets through (porting.md §7.2), and every key is declared."""
import numpy as np
import pytest

from align.harness import Check, StageLog, Tol, compare, find_check, print_summary
from align.known_divergences import Bound, KnownDivergence


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
    assert r.status == "FAIL" and r.max_abs == 10.0 and r.used == pytest.approx(5.0)


def test_relative_tolerances():
    a = np.array([[1000.0, 1.0]])
    assert compare("k", a, a * (1 + 1e-6), Tol(rtol=1e-5)).ok
    assert not compare("k", a, a * (1 + 1e-4), Tol(rtol=1e-5)).ok
    # relative to the largest element: the small element may move by 1e-5 * 1000
    b = a + np.array([[0.0, 5e-3]])
    assert compare("k", a, b, Tol(rtol=1e-5, rel_to_max=True)).ok
    assert not compare("k", a, b, Tol(rtol=1e-5)).ok


def test_argmax_flip_fails_only_where_the_margin_exceeds_the_tolerance():
    """A near tie (top-2 margin below the tolerance) may flip by rounding; a clear flip is a failure even when
    every value is inside its tolerance."""
    tol = Tol(atol=0.1, argmax_axis=1)
    near = compare("k", np.array([[0.50, 0.49], [2.0, 0.0]]), np.array([[0.49, 0.50], [2.0, 0.0]]), tol)
    assert near.ok and "argmax agreement 100.0000%" in near.note and "near ties" in near.note
    clear = compare("k", np.array([[0.60, 0.45]]), np.array([[0.52, 0.53]]), tol)   # margin 0.15, values within 0.1
    assert clear.status == "FAIL" and "argmax agreement 0.0000%" in clear.note


def _bounded(bound):
    return {"DX": KnownDivergence("DX", "test divergence", "cause",
                                  bounds=(Bound("m*", "train_*", bound, bound / 2, "rel"),))}


def test_known_divergence_is_bounded_per_model_and_key(monkeypatch):
    import align.harness as h
    monkeypatch.setattr(h, "KNOWN", _bounded(1e-3))
    a = np.array([3.0, 3.1])
    inside = compare("train_loss", a, a * (1 + 5e-4), Tol(rtol=1e-5), known="DX", model="m1")
    outside = compare("train_loss", a, a * (1 + 2e-3), Tol(rtol=1e-5), known="DX", model="m1")
    other_model = compare("train_loss", a, a * (1 + 5e-4), Tol(rtol=1e-5), known="DX", model="other")
    other_key = compare("eval_loss", a, a * (1 + 5e-4), Tol(rtol=1e-5), known="DX", model="m1")
    assert inside.status == "KNOWN(DX)" and inside.ok
    assert outside.status == "FAIL" and "exceeds documented bound" in outside.note
    assert other_model.status == "FAIL" and "documents no bound" in other_model.note
    assert other_key.status == "FAIL"
    # a pass stays a pass: the divergence is only consulted on a miss
    assert compare("train_loss", a, a, Tol(rtol=1e-5), known="DX", model="m1").status == "PASS"


def test_every_key_needs_a_declared_check(tmp_path):
    checks = [Check("forward", "eval_*", Tol(atol=1e-5), "features"), Check("forward", "eval_logits", Tol(atol=1),
                                                                             "never reached: first match wins")]
    assert find_check(checks, "forward", "m", "eval_logits").tol.atol == 1e-5
    log = StageLog("forward", "toy", str(tmp_path), checks)
    with pytest.raises(KeyError, match="no declared check"):
        log.add("train_logits", np.ones(2), np.ones(2))
    with pytest.raises(KeyError):
        find_check(checks, "loss", "m", "eval_x")            # declared for another stage


def test_model_specific_checks_come_first():
    checks = [Check("backward", "loss", Tol(rtol=1e-5), "a", known="D14", models=("vit",)),
              Check("backward", "loss", Tol(rtol=1e-5), "b")]
    assert find_check(checks, "backward", "vit", "loss").known == "D14"
    assert find_check(checks, "backward", "r50", "loss").known is None


def test_stage_log_writes_reprod_files_and_summary(tmp_path, capsys):
    checks = [Check("forward", "*", Tol(atol=1e-6), "all"), Check("forward", "gap", Tol(atol=1e-3), "gaps")]
    log = StageLog("forward", "toy", str(tmp_path), checks[::-1])
    log.add("good", np.ones(3), np.ones(3))
    log.add("bad", np.ones(3), np.ones(3) * 2)
    r = log.add_gap("gap", np.array([[1e-4, 2e-3], [0.0, 1e-5]]), ["s0/a", "s0/b", "s1/a", "s1/b"])
    assert r.status == "FAIL" and "largest at s0/b" in r.note and r.max_abs == 2e-3
    results = log.save()
    for f in ("forward_torch.npy", "forward_paddle.npy", "forward_diff.log", "forward_strict.json"):
        assert (tmp_path / "toy" / f).exists(), f
    from reprod_log import ReprodDiffHelper
    info = ReprodDiffHelper().load_info(str(tmp_path / "toy" / "forward_torch.npy"))
    assert set(info) == {"good", "bad", "gap"}
    assert print_summary(results) is False
    out = capsys.readouterr().out
    assert "1 passed, 2 failed" in out


@pytest.mark.parametrize("tol,expect", [(Tol(exact=True), "exact"), (Tol(atol=1e-5), "atol 1e-05")])
def test_tolerance_description(tol, expect):
    assert tol.describe().startswith(expect)
