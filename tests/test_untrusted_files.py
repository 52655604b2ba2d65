"""Weight files never run code: every file kind and every entry point, with payloads that would create a marker.

A pickle can import and call any function while it loads. Each test below hands a crafted file to one loader or
tool and asserts three things: the marker file was never created (nothing ran), the error names the file, and
nothing was written. Formats: torch zip, torch legacy (payload in the data pickle and in the header pickle), plain
pickles, ``.pdparams`` / ``.pdopt`` / ``rng_state.pkl`` (``paddle.save`` pickles, protocols 0-4), and ``eval``
payloads disguised as Paddle's tensor record. Entry points: both converters, ``deploy/export_model.py``
(``--weights`` and ``--model_dir``), the weights / optimizer / RNG files of a resume, ``model.pretrained`` and
``model.backbone_pretrained`` of the trainer, ``tools/train.py`` and ``tools/eval.py`` (the last three in
test_engine.py, which has the training data).
"""
import importlib.util
import json
import os
import pickle
import re
import sys

import numpy as np
import paddle
import paddle.nn as nn
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from paddle_rs.engine import checkpoint as ckpt  # noqa: E402
from paddle_rs.utils.io import (WeightsFileError, load_pickle_file, load_state_file,  # noqa: E402
                                load_weights_strict, save_state_file)
from paddle_rs.utils.safe_pickle import UnsafePickleError, safe_loads  # noqa: E402


class Payload:
    """Unpickling it calls ``func(*args)``; the tests point it at a marker file."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def payloads(marker):
    m = str(marker)
    return {
        "os.system": Payload(os.system, f"touch {m}"),
        "open": Payload(open, m, "w"),
        "exec": Payload(exec, f"open({m!r}, 'w').close()"),
        "eval": Payload(eval, f"open({m!r}, 'w')"),                 # Paddle's tensor record also uses eval
        "eval_env": Payload(eval, "data", {"data": np.zeros(1), "__import__": __import__}),
    }


@pytest.fixture
def marker(tmp_path):
    m = tmp_path / "PAYLOAD_RAN"
    yield m
    assert not m.exists(), "a payload ran"


class Tiny(nn.Layer):
    def __init__(self, num_classes=3, in_channels=3):
        super().__init__()
        self.conv = nn.Conv2D(in_channels, num_classes, 1)

    def forward(self, x):
        return self.conv(x)


def _poisoned_state(kind, marker):
    sd = {k: v.numpy() for k, v in Tiny().state_dict().items()}
    sd["conv.bias"] = payloads(marker)[kind]
    return sd


# ----------------------------------------------------------------------------------------------------------
# the restricted unpickler
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("protocol", [0, 2, 4])
@pytest.mark.parametrize("kind", ["os.system", "open", "exec", "eval", "eval_env"])
def test_restricted_unpickler_refuses_payloads(kind, protocol, marker):
    data = pickle.dumps({"w": np.ones(2), "x": payloads(marker)[kind]}, protocol=protocol)
    with pytest.raises(pickle.UnpicklingError) as e:
        safe_loads(data, source="crafted.pdparams")
    if kind not in ("eval", "eval_env"):        # eval is resolved, then refuses anything but Paddle's record
        assert isinstance(e.value, UnsafePickleError) and "crafted.pdparams" in str(e.value)


def test_restricted_unpickler_reads_what_paddle_writes(tmp_path):
    """State dicts, optimizer states and tensors saved by paddle.save (all protocols), numpy scalars and dtypes,
    OrderedDicts, sets, bytes: read back equal to paddle.load's result."""
    net = Tiny()
    opt = paddle.optimizer.AdamW(parameters=net.parameters())
    net(paddle.randn([1, 3, 4, 4])).mean().backward()
    opt.step()
    for protocol in (2, 3, 4):
        for obj in (net.state_dict(), opt.state_dict(), paddle.to_tensor([1.5, 2.5])):
            p = str(tmp_path / f"f{protocol}.pd")
            paddle.save(obj, p, protocol=protocol)
            got, want = load_pickle_file(p), paddle.load(p, return_numpy=True)
            _assert_same(got, want)
    misc = {"a": np.float32(1.5), "b": np.dtype("int64"), "c": {1, 2}, "d": b"xy", "e": (1, 2.0, None)}
    import collections
    misc["f"] = collections.OrderedDict(z=np.arange(3))
    assert repr(safe_loads(pickle.dumps(misc, protocol=2))) == repr(misc)


def _assert_same(got, want):
    if isinstance(want, dict):
        assert set(got) == set(want)
        for k in want:
            _assert_same(got[k], want[k])
    elif isinstance(want, (np.ndarray, paddle.Tensor)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    else:
        assert got == want


# ----------------------------------------------------------------------------------------------------------
# Paddle files: weights, optimizer, RNG, pretrained
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["os.system", "exec", "eval"])
def test_pdparams_payload_is_refused_by_every_paddle_loader(tmp_path, marker, kind):
    path = tmp_path / "model.pdparams"
    paddle.save(_poisoned_state(kind, marker), str(path))
    for load in (load_state_file, load_pickle_file, lambda p: load_weights_strict(Tiny(), p)):
        with pytest.raises(WeightsFileError, match=re.escape(str(path))):
            load(str(path))


def test_resume_refuses_payloads_in_each_checkpoint_file(tmp_path, marker):
    net = Tiny()
    opt = paddle.optimizer.Momentum(parameters=net.parameters(), learning_rate=0.1)
    net(paddle.randn([1, 3, 4, 4])).mean().backward()
    opt.step()
    path = ckpt.save_checkpoint(str(tmp_path / "run"), 1, net, opt)
    ckpt.load_checkpoint(path, Tiny(), paddle.optimizer.Momentum(parameters=Tiny().parameters()))   # clean: fine
    for name in ("model.pdparams", "model.pdopt", "rng_state.pkl"):
        f = os.path.join(path, name)
        original = open(f, "rb").read()
        with open(f, "wb") as fh:
            pickle.dump({"x": payloads(marker)["os.system"]}, fh)
        net2 = Tiny()
        before = {k: v.numpy().copy() for k, v in net2.state_dict().items()}
        with pytest.raises(WeightsFileError, match=re.escape(f)):
            ckpt.load_checkpoint(path, net2, paddle.optimizer.Momentum(parameters=net2.parameters()))
        if name == "model.pdparams":          # refused before anything was loaded into the model
            for k, v in net2.state_dict().items():
                np.testing.assert_array_equal(v.numpy(), before[k])
        with open(f, "wb") as fh:
            fh.write(original)


def test_rng_state_round_trip_through_the_restricted_loader(tmp_path):
    """rng_state.pkl holds Paddle's GeneratorState objects: admitted for that file, and a resume restores every
    generator exactly."""
    import random
    path = ckpt.save_checkpoint(str(tmp_path / "run"), 1, Tiny())
    want = (random.random(), float(np.random.rand()), float(paddle.rand([1])[0]))
    ckpt.load_checkpoint(path, Tiny())
    assert (random.random(), float(np.random.rand()), float(paddle.rand([1])[0])) == want


def test_non_weight_files_get_one_line_errors(tmp_path):
    text = tmp_path / "notes.pdparams"
    text.write_text("these are not weights\n")
    with pytest.raises(WeightsFileError, match=r"notes\.pdparams is not a Paddle weights file.*these are not"):
        load_state_file(str(text))
    import torch
    pth = tmp_path / "upstream.pth"
    torch.save({"w": torch.ones(1)}, str(pth))
    with pytest.raises(WeightsFileError, match=r"PyTorch checkpoint.*convert/torch2paddle\.py"):
        load_state_file(str(pth))
    with pytest.raises(WeightsFileError, match="no such file"):
        load_state_file(str(tmp_path / "missing.pdparams"))
    with pytest.raises(WeightsFileError, match="is a directory"):
        load_state_file(str(tmp_path))
    trunc = tmp_path / "trunc.pdparams"
    paddle.save(Tiny().state_dict(), str(trunc))
    trunc.write_bytes(trunc.read_bytes()[:40])
    with pytest.raises(WeightsFileError, match=r"trunc\.pdparams is damaged"):
        load_state_file(str(trunc))
    opt_like = tmp_path / "opt.pdparams"
    paddle.save({"w": np.ones(2), "LR_Scheduler": {"last_epoch": 3}}, str(opt_like))
    with pytest.raises(WeightsFileError, match=r"not arrays: LR_Scheduler"):
        load_state_file(str(opt_like))


def test_safetensors_weights(tmp_path):
    net = Tiny()
    path = save_state_file(net.state_dict(), str(tmp_path / "m.safetensors"))
    got = load_state_file(path)
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(got[k], v.numpy())
    load_weights_strict(Tiny(), path)


# ----------------------------------------------------------------------------------------------------------
# the tools
# ----------------------------------------------------------------------------------------------------------
def _script(path, name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, *path))
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, os.path.join(ROOT, path[0]))
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(os.path.join(ROOT, path[0]))
    return mod


def _torch_payload_files(tmp_path, marker):
    """The same poisoned dict in torch's zip and legacy formats, a legacy file whose header pickle is the
    payload, and a plain pickle."""
    import torch
    obj = {"state_dict": {"a": torch.ones(2)}, "meta": payloads(marker)["os.system"]}
    files = {"zip": tmp_path / "zip.pth", "legacy": tmp_path / "legacy.pth", "legacy_header": tmp_path / "hdr.pth",
             "plain_pickle": tmp_path / "plain.pkl"}
    torch.save(obj, str(files["zip"]))
    torch.save(obj, str(files["legacy"]), _use_new_zipfile_serialization=False)
    with open(files["legacy_header"], "wb") as f:
        pickle.dump(payloads(marker)["os.system"], f, protocol=2)       # where the legacy magic number goes
        f.write(b"rest of a legacy file")
    with open(files["plain_pickle"], "wb") as f:          # (torch tensors in a plain pickle are refused as well)
        pickle.dump({"state_dict": {"a": np.ones(2)}, "meta": obj["meta"]}, f)
    return files


def test_torch2paddle_refuses_payloads_in_every_torch_format(tmp_path, marker, capsys):
    t2p = _script(("convert", "torch2paddle.py"), "_t2p_untrusted")
    for kind, src in _torch_payload_files(tmp_path, marker).items():
        dst = tmp_path / f"{kind}.pdparams"
        assert t2p.main(["--model", "factseg", "--src", str(src), "--dst", str(dst)]) == 1, kind
        err = capsys.readouterr().err
        assert str(src) in err and "posix.system" in err and "refused" in err, (kind, err)
        assert not dst.exists()


def test_paddle2torch_refuses_a_payload(tmp_path, marker, capsys):
    p2t = _script(("convert", "paddle2torch.py"), "_p2t_untrusted")
    src = tmp_path / "m.pdparams"
    paddle.save(_poisoned_state("os.system", marker), str(src))
    dst = tmp_path / "m.pth"
    assert p2t.main(["--model", "factseg", "--src", str(src), "--dst", str(dst)]) == 1
    err = capsys.readouterr().err
    assert str(src) in err and "posix.system" in err and not dst.exists()


@pytest.fixture
def tiny_registered(monkeypatch):
    from paddle_rs import registry
    registry.list_models()
    entry = registry.ModelEntry("_untrusted_tiny", lambda **kw: Tiny(**kw), "seg", "test",
                                {"num_classes": 3, "in_channels": 3})
    monkeypatch.setitem(registry._REGISTRY, "_untrusted_tiny", entry)
    return entry


def test_export_refuses_payload_weights(tmp_path, marker, capsys, tiny_registered):
    from paddle_rs.deploy import model_yml as my
    cli = _script(("deploy", "export_model.py"), "_export_untrusted")
    bad = tmp_path / "m.pdparams"
    paddle.save(_poisoned_state("exec", marker), str(bad))
    out = tmp_path / "out"
    assert cli.main(["--model", "_untrusted_tiny", "--weights", str(bad), "--save_dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "builtins.exec" in err and not out.exists()
    best = tmp_path / "best_model"
    best.mkdir()
    paddle.save(_poisoned_state("os.system", marker), str(best / "model.pdparams"))
    my.write_model_yml(best, my.make_model_yml("Tiny", [], num_classes=3, init_params={"num_classes": 3},
                                               extra_attributes={"model_name": "_untrusted_tiny"}))
    assert cli.main(["--model_dir", str(best), "--save_dir", str(out)]) == 2
    assert "model.pdparams" in capsys.readouterr().err and not out.exists()


def test_no_unrestricted_loads_in_the_project():
    """Static guard: outside the safe loaders, no module of the product or its tools calls ``paddle.load``,
    ``pickle.load(s)``, ``torch.load`` without the restricted module, or ``np.load`` with pickles allowed."""
    allowed = {os.path.join("paddle_rs", "utils", "safe_pickle.py"), os.path.join("convert", "checkpoint.py")}
    pattern = re.compile(r"\b(paddle\.load|pickle\.loads?|torch\.load|yaml\.load)\s*\(|allow_pickle\s*=\s*True")
    offenders = []
    for top in ("paddle_rs", "convert", "deploy", "tools", "test_tipc", "align"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, top)):
            for name in files:
                if not name.endswith(".py"):
                    continue
                rel = os.path.relpath(os.path.join(dirpath, name), ROOT)
                if rel in allowed:
                    continue
                for i, line in enumerate(open(os.path.join(ROOT, rel), encoding="utf-8"), 1):
                    code = line.split("#", 1)[0]
                    if pattern.search(code):
                        offenders.append(f"{rel}:{i}: {line.strip()}")
    assert not offenders, "unrestricted loads:\n" + "\n".join(offenders)


# ----------------------------------------------------------------------------------------------------------
# damaged checkpoints and interrupted writes
# ----------------------------------------------------------------------------------------------------------
def test_damaged_train_state_is_named(tmp_path):
    path = ckpt.save_checkpoint(str(tmp_path / "run"), 2, Tiny())
    state = os.path.join(path, "train_state.json")
    text = open(state).read()
    open(state, "w").write(text[: len(text) // 2])                       # truncated
    with pytest.raises(ckpt.CheckpointError, match=re.escape(state) + r" is damaged .*--resume"):
        ckpt.load_checkpoint(path, Tiny())
    open(state, "w").write(json.dumps([1, 2]))
    with pytest.raises(ckpt.CheckpointError, match="holds no training state"):
        ckpt.load_checkpoint(path, Tiny())


def test_resume_cleans_what_an_interrupted_write_left(tmp_path):
    """Leftovers of a killed atomic write: temporary entries go, a moved-aside copy whose replacement never
    arrived is put back, one whose replacement is complete goes."""
    save = tmp_path / "run"
    ckpt.save_checkpoint(str(save), 1, Tiny())
    ckpt.save_best_model(str(save), Tiny(), None)
    (save / ".tmp_iter_2_abc").mkdir()
    (save / ".tmp_iter_2_abc" / "model.pdparams").write_bytes(b"half")
    (save / ".tmp_xyz_latest").write_text("iter_2")
    os.replace(save / "best_model", save / ".old_best_model_q1w2")          # died between the two renames
    (save / ".old_iter_1_zz").mkdir()                                       # died after the swap
    done = ckpt.clean_interrupted_writes(str(save))
    assert sorted(os.listdir(save)) == ["best_model", "iter_1", "latest"]
    assert ("restored", ".old_best_model_q1w2 -> best_model") in done and len(done) == 4
    assert os.path.isfile(save / "best_model" / "model.pdparams")


# ----------------------------------------------------------------------------------------------------------
# attacks through the admitted globals themselves (found in review)
# ----------------------------------------------------------------------------------------------------------
def _binunicode(text):
    import struct
    b = text.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def test_object_arrays_cannot_forge_pointers():
    """``numpy.ndarray((1,), dtype('O'), <8 bytes>)`` would read the bytes as a PyObject pointer: the name resolves
    to a marker that cannot be called, object dtypes are refused, and so are arrays holding them."""
    import struct
    ptr = struct.pack("<Q", id(Ellipsis))
    forged = (b"\x80\x03cnumpy\nndarray\nK\x01\x85cnumpy\ndtype\nX\x02\x00\x00\x00O8\x89\x88\x87R"
              b"C\x08" + ptr + b"\x87R.")
    with pytest.raises(pickle.UnpicklingError, match="object"):
        safe_loads(forged)
    for obj in (np.array([None, 1], dtype=object), np.zeros(2, dtype=[("a", "O")])):
        with pytest.raises(pickle.UnpicklingError):
            safe_loads(pickle.dumps(obj, protocol=2))


def test_build_cannot_modify_an_admitted_function_or_class():
    """BUILD on a global (here the eval stand-in and OrderedDict) would change it for the whole process."""
    import collections

    from paddle_rs.utils import safe_pickle
    for glob in (b"cbuiltins\neval\n", b"ccollections\nOrderedDict\n"):
        data = b"\x80\x02" + glob + b"N}(" + _binunicode("__name__") + _binunicode("/tmp/x") + b"u\x86b."
        with pytest.raises(pickle.UnpicklingError, match="sets the state of"):
            safe_loads(data)
    assert collections.OrderedDict.__name__ == "OrderedDict" and safe_pickle._paddle_dense_tensor.__name__ == \
        "_paddle_dense_tensor"                                         # unchanged


def test_legacy_torch_module_record_writes_nothing(tmp_path, monkeypatch):
    """torch's legacy format knows ``('module', ...)`` persistent records, whose loading writes a source patch file
    next to a path the record names: refused; and a TorchScript archive is refused before torch sees it."""
    import torch

    from convert.checkpoint import CheckpointError, load_torch_checkpoint
    monkeypatch.chdir(tmp_path)
    target = tmp_path / "written_by_weights_file"
    main = (b"\x80\x02ccollections\nOrderedDict\n)R"                   # a harmless object to reference
            b"q\x000(" + _binunicode("module") + b"h\x00" + _binunicode("x.py") + _binunicode(f"# {target}\n")
            + b"tQ.")
    path = tmp_path / "evil_legacy.pth"
    with open(path, "wb") as f:
        pickle.dump(0x1950a86a20f9469cfc6c, f, protocol=2)
        pickle.dump(1001, f, protocol=2)
        pickle.dump({"protocol_version": 1001, "little_endian": True, "type_sizes": {}}, f, protocol=2)
        f.write(main)
        pickle.dump([], f, protocol=2)
    with pytest.raises(CheckpointError, match=re.escape(str(path)) + ".*persistent record other than a tensor"):
        load_torch_checkpoint(str(path))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("written") or p.suffix == ".patch"]

    class Net(torch.nn.Module):
        def forward(self, x):
            return x + 1
    scripted = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(Net()), str(scripted))
    with pytest.raises(CheckpointError, match="TorchScript archive"):
        load_torch_checkpoint(str(scripted))
