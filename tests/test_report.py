"""docs/parity.md is generated from the declared checks, the known divergences and the recorded run: the page in
the repository is what align/report.py renders, so its tolerances are the ones the align scripts apply."""
import json

from align import report
from align.harness import Check, Tol


def test_docs_parity_is_up_to_date():
    with open(report.DOC) as f:
        assert f.read() == report.render(), "docs/parity.md is out of date: run python align/report.py"


def test_every_recorded_key_was_measured_under_its_declared_tolerance():
    from align.harness import find_check
    res = report.load_measured()["results"]
    families = {m: f for f, models in report.FAMILIES for m in models}
    for model, stages in res.items():
        checks = report.family_checks(families[model])
        for stage, keys in stages.items():
            for key, r in keys.items():
                assert r["tol"] == find_check(checks, stage, model, key).tol.describe(), (model, stage, key)


def test_every_declared_check_of_a_default_model_was_measured():
    """No dead declaration: each check judged at least one recorded key of every model it applies to (a model is
    exempt where an earlier declaration of the same pattern for that model shadows it)."""
    from align.harness import find_check
    res = report.load_measured()["results"]
    for family, models in report.FAMILIES:
        checks = report.family_checks(family)
        for i, c in enumerate(checks):
            for m in c.models or models:
                if any(e.stage == c.stage and e.key == c.key and (not e.models or m in e.models)
                       for e in checks[:i]):
                    continue
                got = res.get(m, {}).get(c.stage, {})
                assert any(find_check(checks, c.stage, m, k) is c for k in got), \
                    f"{family} {c.stage} {c.key} ({m}) has no recorded measurement"


def test_render_and_collect_round_trip(tmp_path, monkeypatch):
    out = tmp_path / "out" / "factseg"
    out.mkdir(parents=True)
    (out / "loss_strict.json").write_text(json.dumps({"environment": {"paddle": "x"}, "results": [
        {"key": "joint_loss_fixed_logits", "max_abs": 1e-9, "max_rel": 2e-9, "rel_max": 2e-9, "used": 2e-3,
         "status": "PASS", "tol": "atol 0e+00 + rtol 1e-06"}]}))
    data = report.collect(str(tmp_path / "out"), str(tmp_path / "m.json"))
    text = report.render(data)
    row = next(ln for ln in text.splitlines() if ln.startswith("| `joint_loss_*`"))
    assert "rtol 1e-06" in row and "2.0e-09 (pass)" in row
    assert Check("loss", "k", Tol(exact=True), "x").tol.describe() == "exact"
