"""deploy/: model.yml I/O, static export + Paddle Inference parity, pre/post round trip, slider, strict reload.

tipc.md §7.5 checks. FactSeg (random init, seeded) is exported once per module (dynamic shape) and once with a
fixed shape; each export takes a few seconds on 2 CPU cores. Slider and CLI checks use a tiny net.
"""
import importlib.util
import re
import math
import os
import sys

import numpy as np
from conftest import assert_same_argmax, paddle_defect
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import paddle
import paddle.nn as nn  # noqa: E402
import paddle.nn.functional as F  # noqa: E402

from paddle_rs.deploy import model_yml as my  # noqa: E402
from paddle_rs.deploy.export import (InferNet, StrictLoadError, build_export_transforms, export,  # noqa: E402
                                     load_weights_strict, parse_input_shape)

PROB_TOL = 1e-4


def _load_script(name):
    spec = importlib.util.spec_from_file_location(f"_deploy_{name}", os.path.join(ROOT, "deploy", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ------------------------------------------------------------------------------------------------------------
# tiny deterministic nets
# ------------------------------------------------------------------------------------------------------------
class TinySeg(nn.Layer):
    """logits = W x + b + V mean_tile(x): the tile-mean context term makes overlapping tiles disagree."""
    outputs_probabilities = False

    def __init__(self, num_classes=3, in_channels=3):
        super().__init__()
        self.num_classes = num_classes
        self.conv = nn.Conv2D(in_channels, num_classes, 1)
        self.ctx = nn.Conv2D(in_channels, num_classes, 1, bias_attr=False)
        w = np.arange(num_classes * in_channels, dtype=np.float32).reshape(num_classes, in_channels, 1, 1)
        self.conv.weight.set_value(((w % 5) - 2.0) * 0.7)
        self.conv.bias.set_value(np.linspace(-0.3, 0.3, num_classes).astype(np.float32))
        self.ctx.weight.set_value(((w % 3) - 1.0) * 4.0)

    def forward(self, x):
        return self.conv(x) + self.ctx(x.mean(axis=[2, 3], keepdim=True))


def tiny_numpy(x_hwc, net):
    """Hand computation of TinySeg + softmax on one HWC tile."""
    w = net.conv.weight.numpy()[:, :, 0, 0].astype(np.float64)
    b = net.conv.bias.numpy().astype(np.float64)
    v = net.ctx.weight.numpy()[:, :, 0, 0].astype(np.float64)
    x = x_hwc.astype(np.float64)
    logits = x @ w.T + b + v @ x.mean(axis=(0, 1))
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


IDENTITY_NORM = [{"Normalize": {"mean": [0.0] * 3, "std": [1.0] * 3, "min_val": [0.0] * 3, "max_val": [1.0] * 3}}]


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    net = TinySeg()
    net.eval()
    d = export(net, tmp_path_factory.mktemp("tiny") / "static", None,
               {"task": "seg", "num_classes": 3, "transforms": IDENTITY_NORM, "labels": ["a", "b", "c"]})
    return net, d


# ------------------------------------------------------------------------------------------------------------
# FactSeg exports (shared)
# ------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def factseg():
    import paddle_rs

    paddle.seed(1234)
    m = paddle_rs.build_model("factseg")
    m.eval()
    return m


@pytest.fixture(scope="module")
def factseg_dynamic(factseg, tmp_path_factory):
    from paddle_rs.deploy.predictor import Predictor

    d = export(factseg, tmp_path_factory.mktemp("fs") / "dyn", None, {"model_name": "factseg"})
    return d, Predictor(d, cpu_threads=2)


@pytest.fixture(scope="module")
def factseg_fixed(factseg, tmp_path_factory):
    from paddle_rs.deploy.predictor import Predictor

    d = export(factseg, tmp_path_factory.mktemp("fs") / "fixed", [-1, 3, 64, 64], {"model_name": "factseg"})
    return d, Predictor(d, cpu_threads=2)


def _dygraph(model, x):
    with paddle.no_grad():
        return model(paddle.to_tensor(x)).numpy()


# ------------------------------------------------------------------------------------------------------------
# (1) model.yml round trip
# ------------------------------------------------------------------------------------------------------------
def _sample_info():
    return my.make_model_yml(
        "FactSeg",
        [{"Normalize": {"mean": [0.485, 0.456, 0.406], "std": (0.229, 0.224, 0.225),
                        "min_val": [0.0, 0.0, 0.0], "max_val": [255.0, 255.0, 255.0]}},
         {"PadToMultiple": {"divisor": 32, "pad_value": 0.0}},
         {"Resize": {"target_size": (128, 128)}}],
        num_classes=5, labels=["background", "ship", "yes", "1.5", "a: b #c"],
        init_params={"num_classes": 5, "in_channels": 3}, fixed_input_shape=(-1, 3, 128, 128),
        extra_attributes={"eval_metrics": {"miou": 1e-05, "big": 1e20, "neg": -2.5, "inf": math.inf},
                          "best_accuracy": np.float32(0.25), "best_model_epoch": np.int64(1),
                          "empty": {}, "none": None, "flag": True, "nested": [[1, 2], {"k": [3.0]}]},
        completed_epochs=1)


def _canon(v):
    if isinstance(v, dict):
        return {k: _canon(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_canon(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    return v


@pytest.mark.parametrize("with_pyyaml", [True, False])
def test_model_yml_round_trip(tmp_path, monkeypatch, with_pyyaml):
    info = _sample_info()
    path = my.write_model_yml(tmp_path, info)
    text = open(path, encoding="utf-8").read()
    assert "!!" not in text and "python" not in text
    assert "miou: 1.0e-05" in text and "big: 1.0e+20" in text and "divisor: 32" in text
    assert "best_accuracy: 0.25" in text and "target_size: [128, 128]" in text
    keys = [ln.split(":")[0] for ln in text.splitlines() if ln and not ln.startswith((" ", "-"))]
    assert keys == sorted(keys)
    if not with_pyyaml:
        monkeypatch.setitem(sys.modules, "yaml", None)          # `import yaml` -> ImportError
        with pytest.raises(ImportError):
            import yaml  # noqa: F401
    back = my.read_model_yml(tmp_path)
    assert back == _canon(info)
    assert isinstance(back["_Attributes"]["eval_metrics"]["miou"], float)
    assert isinstance(back["_Attributes"]["best_model_epoch"], int)
    assert my.dump_yaml(back) == text                            # write(read(write(x))) is stable
    pipe = my.read_pipeline_yml(my.write_pipeline_yml(tmp_path, "segmenter", model_dir=str(tmp_path / "x y")))
    assert pipe["pipeline_name"] == "segmenter" and pipe["version"] == "1.0.0"
    assert pipe["pipeline_nodes"][2]["predict0"]["init_params"]["model_dir"] == str(tmp_path / "x y")


def test_yaml_subset_reads_pyyaml_output():
    import yaml
    info = _canon(_sample_info())
    for kw in ({}, {"default_flow_style": True}, {"default_flow_style": None, "indent": 4}):
        assert my.load_yaml(yaml.safe_dump(info, sort_keys=True, **kw), use_pyyaml=False) == info
    assert my.load_yaml("a: 1e-05  # comment\nb: '1.0'\nc: ~\n", use_pyyaml=False) == \
        yaml.safe_load("a: 1e-05\nb: '1.0'\nc: ~\n")


# ------------------------------------------------------------------------------------------------------------
# (2) export + Paddle Inference vs dygraph
# ------------------------------------------------------------------------------------------------------------
def test_factseg_export_layout(factseg_dynamic):
    d, pred = factseg_dynamic
    files = set(os.listdir(d))
    assert {"model.json", "model.pdiparams", "model.yml", "pipeline.yml"} <= files
    assert "model.pdmodel" not in files and not any(f.startswith(".tmp") for f in os.listdir(os.path.dirname(d)))
    info = my.read_model_yml(d)
    assert info["status"] == "Infer" and info["Model"] == "FactSeg"
    assert info["_Attributes"]["fixed_input_shape"] is None
    assert info["_Attributes"]["score_kind"] == "probabilities"
    assert info["_Attributes"]["net_outputs"] == "probabilities"          # CP probabilities: no softmax
    assert [next(iter(t)) for t in info["Transforms"]] == ["Normalize", "PadToMultiple"]
    assert pred.is_pir and pred.input_name == "image" and len(pred.output_names) == 2


@pytest.mark.parametrize("shape", [(2, 3, 64, 64), (1, 3, 96, 64)])
def test_factseg_inference_matches_dygraph(factseg, factseg_dynamic, shape):
    _, pred = factseg_dynamic
    x = np.random.default_rng(shape[2]).standard_normal(shape).astype(np.float32)
    ref = _dygraph(factseg, x)
    label, score = pred.run_batch(x)
    assert label.dtype == np.int32 and label.shape == (shape[0],) + shape[2:]
    assert score.dtype == np.float32 and score.shape == (shape[0],) + shape[2:] + (16,)
    diff = np.abs(score - ref.transpose(0, 2, 3, 1)).max()
    print(f"FactSeg dynamic {shape}: max prob diff {diff:.3g}, argmax agreement "
          f"{(label == ref.argmax(1)).mean():.6f}")
    assert diff <= PROB_TOL
    assert np.array_equal(label, score.argmax(-1))
    assert_same_argmax(ref, score.transpose(0, 3, 1, 2), PROB_TOL)
    np.testing.assert_allclose(score.sum(-1), 1.0, atol=1e-4)       # no softmax on top of CP probabilities


def test_factseg_fixed_shape_export(factseg, factseg_fixed):
    d, pred = factseg_fixed
    info = my.read_model_yml(d)
    assert info["_Attributes"]["fixed_input_shape"] == [-1, 3, 64, 64]
    assert [next(iter(t)) for t in info["Transforms"]] == ["Resize", "Normalize"]
    for seed in (0, 1):
        x = np.random.default_rng(100 + seed).standard_normal((1 + seed, 3, 64, 64)).astype(np.float32)
        ref = _dygraph(factseg, x)
        label, score = pred.run_batch(x)
        diff = np.abs(score - ref.transpose(0, 2, 3, 1)).max()
        print(f"FactSeg fixed [-1,3,64,64] input {seed}: max prob diff {diff:.3g}, argmax agreement "
              f"{(label == ref.argmax(1)).mean():.6f}")
        assert diff <= PROB_TOL
        assert_same_argmax(ref, score.transpose(0, 3, 1, 2), PROB_TOL)
    # any image size runs: Resize to 64x64, post-processing resizes back
    img = np.random.default_rng(7).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    r = pred.predict(img)[0]
    assert r["label_map"].shape == (50, 70) and r["score_map"].shape == (50, 70, 16)


def test_infernet_softmax_rule():
    net = TinySeg()
    net.eval()
    x = paddle.to_tensor(np.random.default_rng(0).standard_normal((1, 3, 4, 5)).astype(np.float32))
    lab, sc = InferNet(net)(x)
    ref = paddle.nn.functional.softmax(net(x), axis=1).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(sc.numpy(), ref, rtol=1e-6, atol=1e-7)
    assert lab.dtype == paddle.int32
    lab2, sc2 = InferNet(net, outputs_probabilities=True)(x)                   # no softmax
    np.testing.assert_allclose(sc2.numpy(), net(x).numpy().transpose(0, 2, 3, 1), rtol=1e-6)
    label, scores = InferNet(nn.Sequential(nn.Flatten(), nn.Linear(60, 4)), task="cls")(x)
    assert label.dtype == paddle.int64 and scores.shape == [1, 4]
    np.testing.assert_allclose(scores.numpy().sum(-1), 1.0, rtol=1e-6)


class TinyCls(nn.Layer):
    def __init__(self, num_classes=4, in_channels=3):
        super().__init__()
        self.num_classes = num_classes
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x):
        return self.fc(x.mean(axis=[2, 3]))


def test_classifier_export_and_predict(tmp_path):
    from paddle_rs.deploy.predictor import Predictor

    paddle.seed(3)
    net = TinyCls()
    net.eval()
    d = export(net, tmp_path / "cls", None, {"task": "cls", "labels": ["w", "x", "y", "z"],
                                             "transforms": IDENTITY_NORM})
    info = my.read_model_yml(d)
    assert info["_Attributes"]["model_type"] == "classifier" and info["_Attributes"]["num_classes"] == 4
    pred = Predictor(d, topk=3)
    rng = np.random.default_rng(4)
    imgs = [rng.random((8, 8, 3)).astype(np.float32), rng.random((8, 8, 3)).astype(np.float32),
            rng.random((5, 7, 3)).astype(np.float32)]            # batched run + a single run
    res = pred.predict(imgs)
    for img, r in zip(imgs, res):
        with paddle.no_grad():
            ref = paddle.nn.functional.softmax(net(paddle.to_tensor(img.transpose(2, 0, 1)[None])), -1).numpy()[0]
        np.testing.assert_allclose(r["scores"], ref, atol=1e-6)
        assert r["label"] == int(ref.argmax()) and len(r["topk"]) == 3
        assert r["topk"][0]["class_id"] == r["label"] and r["topk"][0]["label"] == "wxyz"[r["label"]]
        assert [t["score"] for t in r["topk"]] == sorted((t["score"] for t in r["topk"]), reverse=True)


# ------------------------------------------------------------------------------------------------------------
# (3) pre/post round trip with padding only
# ------------------------------------------------------------------------------------------------------------
def test_padding_round_trip(factseg, factseg_dynamic):
    from paddle_rs.data.transforms import build_transforms

    d, pred = factseg_dynamic
    img = np.random.default_rng(3).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    r = pred.predict(img)[0]
    assert r["label_map"].shape == (70, 90) and r["score_map"].shape == (70, 90, 16)
    sample = build_transforms(my.read_model_yml(d)["Transforms"])({"image": img, "trans_info": []})
    assert sample["image"].shape == (96, 96, 3)
    (kind, (h, w), (x0, y0)), = sample["trans_info"]
    assert kind == "padding" and (h, w) == (70, 90)
    ref = _dygraph(factseg, sample["image"].transpose(2, 0, 1)[None])[0].transpose(1, 2, 0)
    ref = ref[y0:y0 + h, x0:x0 + w]
    assert np.abs(r["score_map"] - ref).max() <= PROB_TOL
    assert np.array_equal(r["label_map"], ref.argmax(-1))


# ------------------------------------------------------------------------------------------------------------
# (4) slider_predict vs a hand computation
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("merge", ["accum", "keep_first", "keep_last"])
def test_slider_predict_hand_computation(tiny_export, merge):
    from paddle_rs.deploy.predictor import Predictor, tile_starts

    net, d = tiny_export
    pred = Predictor(d)
    img = np.random.default_rng(5).random((40, 50, 3)).astype(np.float32)
    block, overlap = 16, 4
    out = pred.slider_predict(img, block, overlap, merge_strategy=merge, progress=False)
    ys, xs = tile_starts(40, 16, 12), tile_starts(50, 16, 12)
    assert ys == [0, 12, 24] and xs == [0, 12, 24, 34]
    acc = np.zeros((40, 50, 3))
    cnt = np.zeros((40, 50, 1))
    keep = np.full((40, 50, 3), np.nan)
    for y in ys:
        for x in xs:
            p = tiny_numpy(img[y:y + block, x:x + block], net)
            acc[y:y + block, x:x + block] += p
            cnt[y:y + block, x:x + block] += 1
            win = keep[y:y + block, x:x + block]
            if merge == "keep_last":
                keep[y:y + block, x:x + block] = p
            else:
                keep[y:y + block, x:x + block] = np.where(np.isnan(win), p, win)
    ref = acc / cnt if merge == "accum" else keep
    assert out["score_map"].shape == (40, 50, 3) and out["label_map"].shape == (40, 50)
    np.testing.assert_allclose(out["score_map"], ref, atol=1e-5)
    assert np.array_equal(out["label_map"], ref.argmax(-1))
    if merge == "accum":
        assert cnt.max() == 4                          # overlaps really were averaged
        whole = pred.slider_predict(img, 64, 4, merge_strategy="accum", progress=False)   # one tile
        np.testing.assert_allclose(whole["score_map"], pred.predict(img)[0]["score_map"], atol=1e-6)


class TinyInterp(TinySeg):
    """TinySeg with a raw ``F.interpolate`` round trip: its PIR program holds interp ops."""

    def forward(self, x):
        y = super().forward(x)
        h, w = paddle.shape(y)[2], paddle.shape(y)[3]
        return F.interpolate(F.interpolate(y, size=[h * 2, w * 2], mode="nearest"), size=[h, w], mode="nearest")


def _check_choice(rec):
    """The record's choice is the faster of the accurate settings it tried (times in the ``tried`` entries)."""
    from paddle_rs.deploy.predictor import CPU_SETTINGS
    ok = [t for t in rec["tried"] if " ms" in t["result"]]
    ms = {(t["onednn"], tuple(t["delete_passes"])): float(t["result"].split(", ")[1][:-3]) for t in ok}
    chosen = (rec["onednn"], tuple(rec["delete_passes"]))
    assert chosen in ms and ms[chosen] == min(ms.values()) and rec["checked_max_abs"] <= 1e-4
    assert {"onednn": False, "delete_passes": []} in [{k: t[k] for k in ("onednn", "delete_passes")} for t in ok]
    assert sum(t["onednn"] for t in ok) == 1                       # one working oneDNN variant was timed
    return [dict(c) for c in CPU_SETTINGS]


def test_predictor_settings_are_measured_at_export_and_applied(tmp_path, tiny_export):
    """The export records, of the first oneDNN setting whose predictor reproduces the network and oneDNN off, the
    faster on its sample input (model.yml ``_Attributes.predictor``); the Predictor applies it. With interp ops,
    oneDNN runs only once ``onednn_placement_pass`` is deleted (Paddle#79749) -- the record says the plain
    attempt failed."""
    from paddle_rs.deploy.model_yml import read_model_yml
    from paddle_rs.deploy.predictor import CPU_SETTINGS, Predictor

    info = {"task": "seg", "num_classes": 3, "transforms": IDENTITY_NORM}
    img = np.random.default_rng(1).random((9, 11, 3)).astype(np.float32)
    net, d = tiny_export
    rec = read_model_yml(d)["_Attributes"]["predictor"]
    _check_choice(rec)
    assert rec["tried"][0]["onednn"] and rec["tried"][0]["delete_passes"] == [] and " ms" in rec["tried"][0]["result"]
    pred = Predictor(d)
    assert pred.config.mkldnn_enabled() == rec["onednn"]
    assert pred.cpu_settings == {"onednn": rec["onednn"], "delete_passes": rec["delete_passes"]}
    np.testing.assert_allclose(pred.predict(img)[0]["score_map"], tiny_numpy(img, net), atol=1e-5)
    assert not Predictor(d, enable_mkldnn=False).config.mkldnn_enabled()
    assert Predictor(d, enable_mkldnn=True).config.mkldnn_enabled()

    net = TinyInterp()
    net.eval()
    d = export(net, tmp_path / "interp", None, info)
    attrs = read_model_yml(d)["_Attributes"]
    rec = attrs["predictor"]
    _check_choice(rec)
    assert "fails" in rec["tried"][0]["result"]
    assert rec["tried"][1]["delete_passes"] == CPU_SETTINGS[1]["delete_passes"] and " ms" in rec["tried"][1]["result"]
    assert attrs["onednn"] is rec["onednn"]
    pred = Predictor(d, enable_memory_optim=True)
    assert pred.cpu_settings == {"onednn": rec["onednn"], "delete_passes": rec["delete_passes"]}
    np.testing.assert_allclose(pred.predict(img)[0]["score_map"], tiny_numpy(img, net), atol=1e-5)


class _OnlyInterp(nn.Layer):
    def forward(self, x):
        return F.interpolate(x, scale_factor=2, mode="bilinear")


@paddle_defect("Paddle Inference cannot run a PIR program holding an interpolation op with oneDNN on "
               "(ConvertPirAttribute2RuntimeAttribute not support ArrayAttribute<DoubleAttribute>, Paddle#79749); "
               "set_onednn_op cannot keep the op off oneDNN either",
               "CPU_SETTINGS' 'delete onednn_placement_pass' entry (which leaves UperNet and FactSeg graphs without "
               "oneDNN kernels)")
def test_paddle_defect_onednn_runs_a_pir_interp_op(tmp_path):
    """The smallest reproducer: a one-op program, ``bilinear_interp``, saved as PIR and run with oneDNN."""
    from paddle_rs.deploy.predictor import run_program
    net = _OnlyInterp()
    net.eval()
    paddle.jit.save(paddle.jit.to_static(net, input_spec=[paddle.static.InputSpec([1, 1, 4, 4], "float32")],
                                         full_graph=True), str(tmp_path / "model"))
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    want = run_program(tmp_path, x, onednn=False)[0]
    np.testing.assert_allclose(run_program(tmp_path, x, onednn=True)[0], want, atol=1e-6)


# ------------------------------------------------------------------------------------------------------------
# (5) strict reload, CLIs
# ------------------------------------------------------------------------------------------------------------
def test_strict_reload_errors(tmp_path):
    net = TinySeg()
    path = str(tmp_path / "model.pdparams")
    paddle.save(net.state_dict(), path)
    load_weights_strict(TinySeg(), path)                                  # exact keys: fine
    sd = {k: v for k, v in net.state_dict().items()}
    bad = dict(sd)
    bad.pop("conv.bias")
    bad["head.weight"] = paddle.zeros([2])
    with pytest.raises(StrictLoadError, match=r"conv\.bias") as e:
        load_weights_strict(TinySeg(), bad)
    assert e.value.missing == ["conv.bias"] and e.value.unexpected == ["head.weight"]
    assert "head.weight" in str(e.value)
    with pytest.raises(StrictLoadError, match=r"conv\.weight file \[4, 3, 1, 1\] vs model \[3, 3, 1, 1\]"):
        load_weights_strict(TinySeg(), TinySeg(num_classes=4).state_dict())


@pytest.fixture
def tiny_registered(monkeypatch):
    from paddle_rs import registry

    registry.list_models()
    entry = registry.ModelEntry("_deploy_tiny", lambda **kw: TinySeg(**kw), "seg", "test",
                                {"num_classes": 3, "in_channels": 3})
    monkeypatch.setitem(registry._REGISTRY, "_deploy_tiny", entry)
    return entry


def test_export_cli_tipc_and_by_name(tmp_path, tiny_registered, capsys):
    cli = _load_script("export_model")
    best = tmp_path / "best_model"
    best.mkdir()
    net = TinySeg()
    paddle.save(net.state_dict(), str(best / "model.pdparams"))
    my.write_model_yml(best, my.make_model_yml(
        "TinySeg", IDENTITY_NORM + [{"PadToMultiple": {"divisor": 32, "pad_value": 0.0}}], num_classes=3,
        init_params={"num_classes": 3}, extra_attributes={"model_name": "_deploy_tiny"}, completed_epochs=1))
    out = tmp_path / "static"
    assert cli.main(["--model_dir", str(best), "--save_dir", str(out), "--fixed_input_shape=[-1,3,32,32]"]) == 0
    info = my.read_model_yml(out)
    assert info["status"] == "Infer" and info["completed_epochs"] == 1
    assert info["_Attributes"]["fixed_input_shape"] == [-1, 3, 32, 32]
    assert info["Transforms"][0] == {"Resize": {"target_size": [32, 32]}}
    assert [next(iter(t)) for t in info["Transforms"]] == ["Resize", "Normalize"]

    # strict: an unexpected and a missing key are named
    sd = net.state_dict()
    sd["extra.weight"] = sd.pop("conv.bias")
    paddle.save(sd, str(best / "model.pdparams"))
    capsys.readouterr()
    assert cli.main(["--model_dir", str(best), "--save_dir", str(tmp_path / "bad")]) == 2     # one-line error
    assert re.search(r"error: strict load .*missing keys \(1\): conv\.bias.*unexpected keys \(1\): extra\.weight",
                     capsys.readouterr().err)
    assert not (tmp_path / "bad").exists()

    # by name, random init, --opt override, [h, w] shape
    assert cli.main(["--model", "_deploy_tiny", "--save_dir", str(tmp_path / "byname"), "--opt", "num_classes=4",
                     "--input_shape", "24,24"]) == 0
    assert "RANDOM initialisation" in capsys.readouterr().err
    info = my.read_model_yml(tmp_path / "byname")
    assert info["_Attributes"]["num_classes"] == 4 and info["_init_params"]["num_classes"] == 4
    assert info["_Attributes"]["fixed_input_shape"] == [-1, 3, 24, 24]


def test_infer_cli(tmp_path, tiny_export):
    from PIL import Image

    cli = _load_script("infer")
    _, d = tiny_export
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(imgs / "a.png")
    Image.fromarray(rng.integers(0, 256, (20, 25, 3), dtype=np.uint8)).save(imgs / "b.png")
    out = tmp_path / "out"
    assert cli.main(["--model_dir", str(d), "--image", str(imgs), "--save_dir", str(out)]) == 0
    assert np.asarray(Image.open(out / "a_label.png")).shape == (30, 40)
    assert np.asarray(Image.open(out / "b_overlay.png")).shape == (20, 25, 3)
    assert cli.main(["--model_dir", str(d), "--image", str(imgs / "a.png"), "--save_dir", str(out / "t"),
                     "--tile", "16", "--overlap", "4"]) == 0
    assert np.asarray(Image.open(out / "t" / "a_label.png")).max() <= 2


def test_infer_cli_bad_images_are_reported_and_the_rest_done(tmp_path, tiny_export, capsys):
    """A corrupt or truncated image: one line naming it; in a directory the other images are still done and the
    run ends with a summary and exit 1. Grayscale into an RGB model and a uint16 scene into a model normalised
    for 0-255 are warnings that say what was done / what is wrong."""
    import warnings

    from PIL import Image

    from paddle_rs.data import raster_io

    cli = _load_script("infer")
    _, d = tiny_export
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(imgs / "good.png")
    (imgs / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    full = imgs / "full.png"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(full)
    (imgs / "truncated.png").write_bytes(full.read_bytes()[:200])
    full.unlink()
    out = tmp_path / "out"
    assert cli.main(["--model_dir", str(d), "--image", str(imgs), "--save_dir", str(out)]) == 1
    cap = capsys.readouterr()
    for name in ("corrupt.png", "truncated.png"):
        line = [ln for ln in cap.err.splitlines() if ln.startswith(f"error: {imgs / name}")]
        assert len(line) == 1 and "cannot decode the image" in line[0], cap.err
    assert "2 image(s) failed: corrupt.png, truncated.png" in cap.err and "1 of 3 image(s) done" in cap.out
    assert sorted(os.listdir(out)) == ["good_label.png", "good_overlay.png"]
    # a single corrupt file: exit 1, one line, nothing written
    assert cli.main(["--model_dir", str(d), "--image", str(imgs / "corrupt.png"), "--save_dir",
                     str(tmp_path / "one")]) == 1
    assert not (tmp_path / "one").exists()
    capsys.readouterr()

    # grayscale into an RGB model: replicated, with a warning saying so
    gray = tmp_path / "gray.png"
    Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(gray)
    raster_io._WARNED.discard("gray")
    with pytest.warns(raster_io.RasterWarning, match=r"gray\.png: a grayscale image.*replicated to R, G and B"):
        img = raster_io.read_image(str(gray), expect_bands=3)
    assert img.shape == (16, 16, 3) and np.array_equal(img[..., 0], img[..., 2])
    assert raster_io.read_image(str(gray), expect_bands=1).shape == (16, 16, 1)       # a 1-band model: kept
    # uint16 into a model whose Normalize expects 0-255
    from paddle_rs.deploy.predictor import Predictor
    pred = Predictor(d)
    scene = rng.integers(0, 60000, (16, 16, 3)).astype(np.uint16)
    with pytest.warns(RuntimeWarning, match=r"uint16 values in \[.*likely meaningless.*Rescale"):
        pred.predict(scene)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Predictor(d).predict(rng.integers(0, 256, (16, 16, 3)).astype(np.uint8))     # 8-bit: silent


def test_infer_and_export_argument_errors_are_one_line(tmp_path, tiny_export, tiny_registered, capsys):
    """Wrong directories and numbers: one line naming the value and the fix, exit 2, nothing written."""
    from PIL import Image
    infer, export_cli = _load_script("infer"), _load_script("export_model")
    _, d = tiny_export
    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img)
    a_file = tmp_path / "afile"
    a_file.write_text("x")
    empty = tmp_path / "empty"
    empty.mkdir()
    for argv, msg in (([str(empty), str(img), str(tmp_path / "o")], "has no model.yml"),
                      ([str(tmp_path / "nope"), str(img), str(tmp_path / "o")], "no such directory"),
                      ([str(d), str(img), str(a_file)], "is a file; pass a directory"),
                      ([str(d), str(tmp_path / "missing.png"), str(tmp_path / "o")], "no such file or directory")):
        assert infer.main(["--model_dir", argv[0], "--image", argv[1], "--save_dir", argv[2]]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and msg in err[0], err
    for flag, value in (("--tile", "-16"), ("--tile", "abc"), ("--overlap", "-1"), ("--cpu_threads", "0")):
        with pytest.raises(SystemExit) as e:
            infer.main(["--model_dir", str(d), "--image", str(img), flag, value])
        assert e.value.code == 2 and f"argument {flag}" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()

    for argv, msg in ((["--model", "_deploy_tiny", "--save_dir", str(a_file)], "is a file; pass a directory"),
                      (["--model_dir", str(empty), "--save_dir", str(tmp_path / "e")], "has no model.yml"),
                      (["--model", "_deploy_tiny", "--save_dir", str(tmp_path / "e"), "--input_shape", "abc"],
                       "--input_shape abc: input shape must be integers"),
                      (["--model", "_deploy_tiny", "--save_dir", str(tmp_path / "e"), "--input_shape", "0,512"],
                       "must be positive, or -1")):
        assert export_cli.main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and msg in err[0], err
    assert not (tmp_path / "e").exists()


def test_outputs_honour_the_umask(tmp_path, tiny_export, tiny_registered):
    """Exports and inference results are created like any other file (0666 minus the umask), not 0600."""
    from PIL import Image
    old = os.umask(0o022)
    try:
        from paddle_rs.utils import fs
        fs._UMASK = None
        assert _load_script("export_model").main(["--model", "_deploy_tiny", "--save_dir", str(tmp_path / "x"),
                                                  "--quiet"]) == 0
        img = tmp_path / "a.png"
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img)
        assert _load_script("infer").main(["--model_dir", str(tmp_path / "x"), "--image", str(img), "--save_dir",
                                           str(tmp_path / "y")]) == 0
        for folder in ("x", "y"):
            for name in os.listdir(tmp_path / folder):
                mode = os.stat(tmp_path / folder / name).st_mode & 0o777
                assert mode == 0o644, (folder, name, oct(mode))
    finally:
        os.umask(old)


def test_parse_input_shape_and_transforms():
    assert parse_input_shape(None) is None and parse_input_shape("null") is None
    assert parse_input_shape("[-1,3,-1,-1]") is None
    assert parse_input_shape("[128,96]") == [-1, 3, 128, 96]
    assert parse_input_shape([1, 3, 64, 64]) == [1, 3, 64, 64]
    with pytest.raises(ValueError):
        parse_input_shape([1, 4, 64, 64], in_channels=3)
    t = build_export_transforms(IDENTITY_NORM + [{"PadToMultiple": {"divisor": 32}}], [-1, 3, 64, 64])
    assert [next(iter(x)) for x in t] == ["Resize", "Normalize"]
    cls = [{"ResizeEdge": {"scale": 256}}, {"CenterCrop": {"crop_size": [224, 224]}}] + IDENTITY_NORM
    assert build_export_transforms(cls, [-1, 3, 224, 224]) == cls


@pytest.mark.slow
def test_legacy_twin_export(tmp_path, tiny_export):
    """FLAGS_enable_pir_api=0 export (model.pdmodel) runs with oneDNN in the predictor."""
    import subprocess

    from paddle_rs.deploy.predictor import Predictor

    net, _ = tiny_export
    w = tmp_path / "w.pdparams"
    paddle.save(net.state_dict(), str(w))
    code = ("import sys; sys.path.insert(0, %r); import paddle; from test_deploy import TinySeg;"
            "from paddle_rs.deploy.export import export, load_weights_strict; n = TinySeg();"
            "load_weights_strict(n, %r); export(n, %r, None, {'task': 'seg', 'num_classes': 3})"
            % (os.path.dirname(__file__), str(w), str(tmp_path / "legacy")))
    env = dict(os.environ, FLAGS_enable_pir_api="0", PYTHONPATH=ROOT)
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    assert os.path.exists(tmp_path / "legacy" / "model.pdmodel")
    pred = Predictor(tmp_path / "legacy", enable_mkldnn=True)
    assert not pred.is_pir
    x = np.random.default_rng(2).random((1, 3, 8, 8)).astype(np.float32)
    _, score = pred.run_batch(x)
    np.testing.assert_allclose(score[0], tiny_numpy(x[0].transpose(1, 2, 0), net), atol=1e-5)


def test_export_is_quiet_unless_verbose(capfd):
    """What C++ prints inside captured_native_output stays off the terminal (export's predictor measurement) unless
    shown, and is replayed when the block fails; the selective scan's softplus traces without Paddle's PIR
    ``place`` warning (48 of them per RSMamba export before)."""
    import warnings

    from paddle_rs.ops.selective_scan import softplus
    from paddle_rs.utils.runtime import captured_native_output

    with captured_native_output() as cap:
        os.write(1, b"native note\n")
        os.write(2, b"native warning\n")
    assert "native note" in cap.text and "native warning" in cap.text
    assert "native" not in "".join(capfd.readouterr())
    with captured_native_output(show=True):
        os.write(1, b"shown\n")
    assert "shown" in capfd.readouterr().out
    with pytest.raises(RuntimeError):
        with captured_native_output():
            os.write(2, b"why it failed\n")
            raise RuntimeError("x")
    assert "why it failed" in capfd.readouterr().err

    fn = paddle.jit.to_static(softplus, input_spec=[paddle.static.InputSpec([4], "float32")], full_graph=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn.get_concrete_program(paddle.static.InputSpec([4], "float32"))
    assert not [w for w in caught if "place" in str(w.message)]
