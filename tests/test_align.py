"""The align scripts end to end: exit status, files, and a planted port bug is caught by the key that shows it."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(script, out, *extra):
    return subprocess.run([sys.executable, f"align/{script}.py", "--model", "factseg", "--out", str(out), *extra],
                          cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT))


def test_metric_and_loss_scripts_pass_and_write_reprod_logs(tmp_path):
    for script, stage in (("02_metric", "metric"), ("03_loss", "loss")):
        r = _run(script, tmp_path, "--size", "64")
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert "0 failed" in r.stdout
        d = tmp_path / "factseg"
        for suffix in ("_torch.npy", "_paddle.npy", "_diff.log", "_strict.json"):
            assert (d / f"{stage}{suffix}").exists()
        report = json.loads((d / f"{stage}_strict.json").read_text())
        assert report["results"] and all(r["status"] != "FAIL" for r in report["results"])
        assert report["environment"]["paddle"].startswith("3.3")


def test_planted_bug_fails_the_forward_stage(tmp_path, monkeypatch, capsys):
    """A port whose fg classifier bias is off by 1e-3 for one class fails exactly the keys downstream of that bias
    (the fg logits and the CP probabilities), with a non-zero exit; the encoder features and the bi logits still
    pass. (The same offset on every class would leave the probabilities unchanged.)"""
    import convert.api as api
    from align import cli

    real = api.copy_torch_to_paddle

    def buggy(tm, pm):
        report = real(tm, pm)
        bias = pm.fg_cls.bias.numpy().copy()
        bias[3] += np.asarray(1e-3, bias.dtype)
        pm.fg_cls.bias.set_value(bias)
        return report

    monkeypatch.setattr(api, "copy_torch_to_paddle", buggy)
    monkeypatch.setattr(sys, "argv", ["01_forward.py", "--model", "factseg", "--out", str(tmp_path), "--size", "64"])
    with pytest.raises(SystemExit) as e:
        cli.main("forward", "test")
    assert e.value.code == 1
    report = json.loads((tmp_path / "factseg" / "forward_strict.json").read_text())
    failing = {r["key"] for r in report["results"] if r["status"] == "FAIL"}
    assert failing == {"eval_fg_logits", "eval_cp_prob", "train_fg_logits", "train_fg_logits_fp64"}, failing
    assert {"eval_c2", "eval_c5", "eval_bi_logits", "train_bi_logits"} <= \
        {r["key"] for r in report["results"] if r["status"] == "PASS"}
    assert "4 failed" in capsys.readouterr().out


def test_unknown_model_is_an_error_before_anything_runs(tmp_path):
    """``--model factseg,upernet_swim_t``: a usage error naming the typo and the nearest name, exit 2, before the
    valid model's (minutes long) comparison starts."""
    r = subprocess.run([sys.executable, "align/01_forward.py", "--model", "factseg,upernet_swim_t", "--out",
                        str(tmp_path)], cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT))
    assert r.returncode == 2 and "[forward] factseg" not in r.stdout
    assert "unknown model 'upernet_swim_t' (did you mean 'upernet_swin_t'?)" in r.stderr
    assert not list(tmp_path.iterdir())
