"""Strict torch <-> Paddle conversion: every key accounted for, Linear by module type, atomic output."""
import os
import pickle
import subprocess
import sys

import numpy as np
import paddle
import pytest
import torch

from convert.api import atomic_save, build_pair, copy_torch_to_paddle, load_paddle_strict, save_paddle
from convert.checkpoint import CheckpointError, load_torch_checkpoint, unwrap_state_dict
from convert.rules import ConversionError, paddle_to_torch, torch_to_paddle

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class TorchToy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(5, 4)          # 2-D, must NOT be transposed
        self.fc = torch.nn.Linear(4, 3)              # must be transposed
        self.bn = torch.nn.BatchNorm1d(3)
        self.register_buffer("index", torch.arange(6).reshape(2, 3))   # rebuilt by the Paddle side


class PaddleToy(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.emb = paddle.nn.Embedding(5, 4)
        self.fc = paddle.nn.Linear(4, 3)
        self.bn = paddle.nn.BatchNorm1D(3)
        self.register_buffer("index", paddle.arange(6).reshape([2, 3]), persistable=False)


def _toy():
    torch.manual_seed(0)
    t = TorchToy()
    t.bn.running_mean.uniform_()
    return t, PaddleToy()


def test_linear_transposed_by_module_type_embedding_copied():
    t, p = _toy()
    sd, report = torch_to_paddle(t.state_dict(), t, p)
    assert report.transposed == ["fc.weight"]
    np.testing.assert_array_equal(sd["fc.weight"], t.fc.weight.detach().numpy().T)
    np.testing.assert_array_equal(sd["emb.weight"], t.emb.weight.detach().numpy())
    np.testing.assert_array_equal(sd["bn._mean"], t.bn.running_mean.numpy())
    assert "bn.num_batches_tracked" in report.dropped and report.dropped["index"] == "rebuilt buffer"


def test_round_trip_is_bit_exact_and_keys_equal():
    t, p = _toy()
    sd, _ = torch_to_paddle(t.state_dict(), t, p)
    back = paddle_to_torch(sd, t, p)
    assert list(back) == list(t.state_dict())
    for k, v in t.state_dict().items():
        assert torch.equal(back[k], v), k


def test_missing_unexpected_misshaped_are_named():
    t, p = _toy()
    sd = dict(t.state_dict())
    del sd["fc.bias"]
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(ConversionError) as e:
        torch_to_paddle(sd, t, p)
    assert "fc.bias" in str(e.value)
    sd = dict(t.state_dict())
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(ConversionError, match="extra.weight"):
        torch_to_paddle(sd, t, p)
    sd = dict(t.state_dict())
    sd["fc.weight"] = torch.zeros(3, 5)
    with pytest.raises(ConversionError, match=r"fc.weight.*\[5, 3\] vs model \[4, 3\]"):
        torch_to_paddle(sd, t, p)


def test_rebuilt_buffer_must_equal_reference():
    t, p = _toy()
    sd = dict(t.state_dict())
    sd["index"] = sd["index"] + 1
    with pytest.raises(ConversionError, match="rebuilt"):
        torch_to_paddle(sd, t, p)


def test_unwrap_variants():
    sd = {"a.weight": torch.ones(1)}
    for obj in (sd, {"state_dict": sd, "meta": {}}, {"model": {"module.a.weight": torch.ones(1)}, "opt": {}}):
        assert list(unwrap_state_dict(obj)) == ["a.weight"]
    with pytest.raises(CheckpointError, match="no state_dict"):
        unwrap_state_dict({"optimizer": {}})


class Record:   # a class of the test module: unknown to the loader, like a framework class it does not list
    def __init__(self):
        self.data = [1, 2]


def test_unknown_class_is_refused_unless_allowed(tmp_path):
    """A class outside the allow-lists is refused, naming it; ``allow`` admits it as an inert record (it does not
    become the real class, and its data is kept)."""
    path = tmp_path / "mm.pth"
    torch.save({"meta": {"epoch": 3, "arr": np.arange(3)}, "state_dict": {"head.fc.weight": torch.ones(2, 2)},
                "message_hub": {"log": Record()}}, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    qualname = f"{Record.__module__}.Record"
    with pytest.raises(CheckpointError, match=f"{str(path)}.*asks for '{qualname}'.*--allow-class {qualname}"):
        load_torch_checkpoint(str(path))
    obj = load_torch_checkpoint(str(path), allow=(qualname,))
    rec = obj["message_hub"]["log"]
    assert type(rec).__name__ == "Record" and not isinstance(rec, Record) and rec.state == {"data": [1, 2]}
    assert list(unwrap_state_dict(obj)) == ["head.fc.weight"]


def test_unreadable_checkpoint_is_clear_error(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_torch_checkpoint(str(bad))
    with pytest.raises(CheckpointError, match="does not exist"):
        load_torch_checkpoint(str(tmp_path / "missing.pth"))


def test_atomic_save_leaves_nothing_on_failure(tmp_path):
    dst = tmp_path / "out.pdparams"

    def broken(obj, path):
        with open(path, "wb") as f:
            f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_save({}, str(dst), broken)
    assert list(tmp_path.iterdir()) == []


def test_strict_paddle_loader_names_problems():
    _, p = _toy()
    sd = {k: v.numpy() for k, v in p.state_dict().items()}
    sd.pop("fc.bias")
    sd["fc.weight"] = np.zeros((3, 4), np.float32)
    with pytest.raises(CheckpointError) as e:
        load_paddle_strict(p, sd)
    assert "fc.bias" in str(e.value) and "fc.weight" in str(e.value)


def test_factseg_cli_round_trip(tmp_path):
    """Upstream SimpleCV wrapping + module. prefix -> Paddle -> torch, bit-exact; strict load in torch_ref."""
    tm, _ = build_pair("factseg")
    src = tmp_path / "factseg_upstream.pth"
    torch.save({"model": {f"module.{k}": v for k, v in tm.state_dict().items()}, "opt": {}, "global_step": 5}, src)
    env = dict(os.environ, PYTHONPATH=ROOT)
    dst = tmp_path / "factseg.pdparams"
    r = subprocess.run([sys.executable, "convert/torch2paddle.py", "--model", "factseg", "--src", str(src),
                        "--dst", str(dst)], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "67 num_batches_tracked" in r.stdout
    back = tmp_path / "back.pth"
    r = subprocess.run([sys.executable, "convert/paddle2torch.py", "--model", "factseg", "--src", str(dst),
                        "--dst", str(back)], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    sd = torch.load(back, weights_only=True)
    tm2, _ = build_pair("factseg")
    tm2.load_state_dict(sd, strict=True)
    for k, v in tm.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(sd[k], v), k
    # a mismatching option is refused and writes nothing
    bad = tmp_path / "bad.pdparams"
    r = subprocess.run([sys.executable, "convert/torch2paddle.py", "--model", "factseg", "--opt", "num_classes=10",
                        "--src", str(src), "--dst", str(bad)], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 1 and "fg_cls.weight" in r.stderr and not bad.exists()


def test_safetensors_in_and_out_of_both_converters(tmp_path, capsys):
    """torch .safetensors -> Paddle .safetensors -> torch .safetensors, bit-exact, through the CLIs' mains; the
    Paddle file loads strictly into paddle_rs."""
    import importlib.util

    from safetensors.torch import load_file, save_file

    from paddle_rs.utils.io import load_weights_strict

    def script(name):
        spec = importlib.util.spec_from_file_location(f"_{name}_st", os.path.join(ROOT, "convert", f"{name}.py"))
        mod = importlib.util.module_from_spec(spec)
        sys.path.insert(0, os.path.join(ROOT, "convert"))
        try:
            spec.loader.exec_module(mod)
        finally:
            sys.path.remove(os.path.join(ROOT, "convert"))
        return mod

    tm, pm = build_pair("factseg")
    src, mid, back = tmp_path / "t.safetensors", tmp_path / "p.safetensors", tmp_path / "b.safetensors"
    save_file({k: v.contiguous() for k, v in tm.state_dict().items()}, str(src))
    assert script("torch2paddle").main(["--model", "factseg", "--src", str(src), "--dst", str(mid)]) == 0
    load_weights_strict(pm, str(mid))
    assert script("paddle2torch").main(["--model", "factseg", "--src", str(mid), "--dst", str(back)]) == 0
    sd = load_file(str(back))
    assert set(sd) == set(tm.state_dict())
    for k, v in tm.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(sd[k], v), k
