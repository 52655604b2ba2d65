"""FactSeg: upstream key layout and sizes, the forward contract, CP fusion at every batch size, loss."""
import numpy as np
import paddle
import pytest
import torch
from conftest import assert_same_argmax

import paddle_rs
import torch_ref
from convert.api import build_pair, copy_torch_to_paddle
from paddle_rs.losses.joint_loss import JointLoss as PJointLoss
from paddle_rs.models.factseg import cp_fuse as p_cp_fuse
from torch_ref.losses.joint_loss import JointLoss as TJointLoss
from torch_ref.models.factseg import cp_fuse as t_cp_fuse


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    tm, pm = build_pair("factseg")
    copy_torch_to_paddle(tm, pm)
    tm.eval(), pm.eval()
    return tm, pm


def test_registry_lists_and_rejects_unknown():
    assert "factseg" in paddle_rs.list_models() and paddle_rs.list_models() == torch_ref.list_models()
    with pytest.raises(KeyError, match="known models: .*factseg"):
        paddle_rs.build_model("factsag")


def test_sizes_and_keys_match_spec(pair):
    tm, pm = pair
    sd = tm.state_dict()
    assert len(sd) == 438 and len(pm.state_dict()) == 371
    assert sum(p.numel() for p in tm.parameters()) == 33_446_609
    assert sum(int(np.prod(p.shape)) for p in pm.parameters() if not p.stop_gradient) == 33_446_609
    assert sd["resencoder.resnet.conv1.weight"].shape == (64, 3, 7, 7)
    assert sd["fgfpn.fpn_inner4.weight"].shape == (256, 2048, 1, 1)
    assert sd["bi_decoder.blocks.3.2.0.weight"].shape == (128, 128, 3, 3)
    assert sd["fg_cls.weight"].shape == (16, 128, 1, 1) and sd["bi_cls.weight"].shape == (1, 128, 1, 1)
    assert not any(k.startswith("resencoder.resnet.fc") for k in sd)
    bn_stats = {k.replace("running_mean", "_mean").replace("running_var", "_variance") for k in sd
                if not k.endswith("num_batches_tracked")}
    assert bn_stats == set(pm.state_dict())


def test_eval_contract_and_parity(pair):
    tm, pm = pair
    x = np.random.RandomState(1).randn(2, 3, 64, 96).astype("float32")
    with torch.no_grad():
        a = tm(torch.from_numpy(x)).numpy()
    with paddle.no_grad():
        b = pm(paddle.to_tensor(x)).numpy()
    assert a.shape == b.shape == (2, 16, 64, 96)
    np.testing.assert_allclose(b.sum(1), 1.0, atol=1e-5)
    assert np.abs(a - b).max() <= 1e-5
    assert_same_argmax(a, b, 1e-5)


def test_cp_fuse_is_per_image_at_every_batch_size():
    """Upstream defect #1: without keepdim, B=16 silently divides channel c by image c's Z."""
    rs = np.random.RandomState(0)
    fg, bi = rs.randn(16, 16, 4, 4).astype("float32"), rs.randn(16, 1, 4, 4).astype("float32")
    batched = p_cp_fuse(paddle.to_tensor(fg), paddle.to_tensor(bi)).numpy()
    singles = np.concatenate([p_cp_fuse(paddle.to_tensor(fg[i:i + 1]), paddle.to_tensor(bi[i:i + 1])).numpy()
                              for i in range(16)])
    np.testing.assert_allclose(batched, singles, rtol=1e-6)
    t = t_cp_fuse(torch.from_numpy(fg), torch.from_numpy(bi)).numpy()
    np.testing.assert_allclose(t, batched, atol=1e-6)
    # the formula itself: background q0(1-f), foreground qc*f, normalised
    q = np.exp(fg) / np.exp(fg).sum(1, keepdims=True)
    f = 1 / (1 + np.exp(-bi))
    ref = np.concatenate([q[:, :1] * (1 - f), q[:, 1:] * f], 1)
    np.testing.assert_allclose(batched, ref / ref.sum(1, keepdims=True), rtol=1e-5)


def test_train_mode_returns_logit_pair(pair):
    _, pm = pair
    pm.train()
    try:
        out = pm(paddle.randn([2, 3, 64, 64]))
    finally:
        pm.eval()
    assert isinstance(out, tuple) and [o.shape for o in out] == [[2, 16, 64, 64], [2, 1, 64, 64]]


def test_size_not_multiple_of_32_is_clear_error(pair):
    tm, pm = pair
    with pytest.raises(ValueError, match="multiples of 32"):
        pm(paddle.randn([1, 3, 70, 64]))
    with pytest.raises(ValueError, match="multiples of 32"):
        tm(torch.randn(1, 3, 70, 64))


def test_joint_loss_som_semantics():
    """SOM: mean of the non-zero values among the top 10% pixel losses; ignored pixels contribute 0."""
    rs = np.random.RandomState(0)
    fg, bi = rs.randn(2, 16, 8, 8).astype("float32"), rs.randn(2, 1, 8, 8).astype("float32")
    y = rs.randint(0, 16, (2, 8, 8))
    y[:, :6] = 255                        # 96 of 128 pixels ignored, K = 12 > 32 valid? no: 12 <= 32
    p = t_cp_fuse(torch.from_numpy(fg), torch.from_numpy(bi)).numpy()
    nll = np.where(y == 255, 0.0, -np.log(np.take_along_axis(p, np.where(y == 255, 0, y)[:, None], 1)[:, 0]))
    top = np.sort(nll.ravel())[::-1][:int(0.1 * nll.size)]
    expected = top[top != 0].sum() / ((top != 0).sum() + 1e-6)
    lt = TJointLoss()(torch.from_numpy(fg), torch.from_numpy(bi), torch.from_numpy(y)).item()
    lp = float(PJointLoss()(paddle.to_tensor(fg), paddle.to_tensor(bi), paddle.to_tensor(y)))
    assert lt == pytest.approx(expected, rel=1e-6) and lp == pytest.approx(expected, rel=1e-6)
    y_all = np.full_like(y, 255)
    assert float(PJointLoss()(paddle.to_tensor(fg), paddle.to_tensor(bi), paddle.to_tensor(y_all))) == 0.0
