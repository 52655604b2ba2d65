"""What the fast paths dropped from the model files (issue 13, "plain, portable Paddle models") cost, op by op.

    python tools/benchmark_dropped.py [--threads 2] [--repeat 7] [--json out.json]

Before the model files became plain Paddle they called paddle_rs functions where Paddle 3.3.1's dygraph CPU
kernel is slow: a oneDNN softmax, dense transposes (``ops.layout.permute``), equal-shape broadcasts
(``ops.elementwise``), a crop through two ``split`` ops instead of a slice (its backward), and bilinear resizes
as two GEMMs with interpolation matrices. ``paddle_rs.accelerate`` swaps layers by type, so these functional
calls could not follow; each row below times one of them at the shapes the models use, Paddle's plain op
against the dropped fast form and torch, in alternating rounds (tools/benchmark.py's ``interleaved``), and
multiplies the difference by the number of such calls per forward (or training step) of the model named.

The GEMM resize is rebuilt here from its formula (``y = A_h @ x @ A_w^T``) only to time it; the model files
and exports use ``F.interpolate``.
"""
import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _interp_matrix(paddle, n_in, n_out, align_corners):
    """``[n_out, n_in]`` bilinear interpolation matrix (Paddle / torch index rules)."""
    import numpy as np
    dst = np.arange(n_out, dtype=np.float64)
    if align_corners:
        src = dst * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
    else:
        src = np.clip((dst + 0.5) * n_in / n_out - 0.5, 0, None)
    i0 = np.minimum(np.floor(src), n_in - 1).astype(int)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = src - i0
    m = np.zeros((n_out, n_in), np.float32)
    m[np.arange(n_out), i0] += 1 - w1
    m[np.arange(n_out), i1] += w1
    return paddle.to_tensor(m)


def cases(paddle, torch):
    """(name, model and count per forward, shapes, plain fn, fast fn, torch fn, make inputs) rows."""
    import numpy as np
    import paddle.nn.functional as F
    import torch.nn.functional as TF

    from paddle_rs.ops.act import softmax as fast_softmax
    from paddle_rs.ops.elementwise import broadcast_add
    from paddle_rs.ops.layout import permute

    rng = np.random.default_rng(0)

    def arr(*shape):
        return rng.standard_normal(shape).astype("float32")

    rows = []
    # Swin-T at 512 x 512 (UperNet): windows of 7 x 7 tokens, 361 / 100 / 25 / 9 windows, 3 / 6 / 12 / 24 heads
    for stage, (nw, nh, depth) in enumerate([(361, 3, 2), (100, 6, 2), (25, 12, 6), (9, 24, 2)], 1):
        a = arr(nw, nh, 49, 49)
        rows.append((f"softmax, Swin-T stage {stage} attention", f"upernet_swin_t x{depth}", [a],
                     lambda x: F.softmax(x, axis=-1), lambda x: fast_softmax(x, axis=-1),
                     lambda x: TF.softmax(x, dim=-1)))
        b = arr(1, nh, 49, 49)
        rows.append((f"attn + rel. position bias, stage {stage}", f"upernet_swin_t x{depth}", [a, b],
                     lambda x, y: x + y, broadcast_add, lambda x, y: x + y))
        c = 96 * 2 ** (stage - 1)
        q = arr(nw, 49, 3, nh, c // nh)
        rows.append((f"qkv transpose, stage {stage}", f"upernet_swin_t x{depth}", [q],     # (dygraph transposes
                     lambda x: x.transpose([2, 0, 3, 1, 4]).contiguous(),                 # are views: the copy
                     lambda x: permute(x, [2, 0, 3, 1, 4]).contiguous(),                  # is what costs)
                     lambda x: x.permute(2, 0, 3, 1, 4).contiguous()))
    x = arr(1, 133, 133, 96)
    rows.append(("crop of the padded map, stage 1 (fwd + bwd)", "upernet_swin_t x2 (training)", [x],
                 lambda t: t[:, :128, :128, :],
                 lambda t: paddle.split(paddle.split(t, [128, 5], axis=1)[0], [128, 5], axis=2)[0],
                 lambda t: t[:, :128, :128, :].contiguous(), True))
    # FactSeg at 2 x 3 x 256 x 256: class softmax over axis 1, the CP fusion, the FPN and decoder resizes
    p = arr(2, 16, 256, 256)
    rows.append(("softmax over classes (axis 1)", "factseg x2", [p], lambda t: F.softmax(t, axis=1),
                 lambda t: fast_softmax(t, axis=1), lambda t: TF.softmax(t, dim=1)))
    for n_in, n_out, ch, count in ((8, 16, 256, 1), (16, 32, 256, 1), (32, 64, 256, 1), (64, 256, 16, 2)):
        ah, aw = _interp_matrix(paddle, n_in, n_out, True), _interp_matrix(paddle, n_in, n_out, True)
        ah_t, aw_t = (torch.from_numpy(m.numpy()) for m in (ah, aw))
        r = arr(2, ch, n_in, n_in)
        rows.append((f"bilinear resize {n_in} -> {n_out}, {ch} ch (align_corners)", f"factseg x{count}", [r],
                     lambda t, n=n_out: F.interpolate(t, size=[n, n], mode="bilinear", align_corners=True),
                     lambda t, a=ah, b=aw: paddle.matmul(paddle.matmul(a, t), b, transpose_y=True),
                     lambda t, n=n_out: TF.interpolate(t, size=(n, n), mode="bilinear", align_corners=True),
                     True))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import paddle
    import torch

    from paddle_rs.utils.runtime import tune_cpu_malloc
    from tools.benchmark import interleaved
    tune_cpu_malloc()
    torch.set_num_threads(args.threads)
    paddle.base.core.set_num_threads(args.threads)

    out = []
    print(f"{'dropped fast path':<48} {'used in':<28} {'plain ms':>9} {'fast ms':>8} {'torch ms':>9} "
          f"{'plain/fast':>10} {'lost ms':>8}")
    for row in cases(paddle, torch):
        name, where, arrays, plain, fast, ref = row[:6]
        backward = len(row) > 6 and row[6]
        pins = [paddle.to_tensor(a, stop_gradient=not backward) for a in arrays]
        tins = [torch.from_numpy(a).requires_grad_(backward) for a in arrays]

        def run(fn, ins, fw):
            def call():
                y = fn(*ins)
                if backward:
                    (y * y).sum().backward()
                    for t in ins:
                        if fw == "torch":
                            t.grad = None
                        else:
                            t.clear_gradient()
            return call
        if not backward:
            with paddle.no_grad(), torch.no_grad():
                t = interleaved([run(plain, pins, "p"), run(fast, pins, "p"), run(ref, tins, "torch")], args.repeat)
        else:
            t = interleaved([run(plain, pins, "p"), run(fast, pins, "p"), run(ref, tins, "torch")], args.repeat)
        count = int(where.split(" x")[1].split(" ")[0])
        lost = count * (t[0] - t[1]) * 1e3
        rec = {"path": name, "used_in": where, "plain_ms": t[0] * 1e3, "fast_ms": t[1] * 1e3, "torch_ms": t[2] * 1e3,
               "plain_over_fast": t[0] / t[1], "lost_ms_per_call_site": lost, "backward": bool(backward)}
        out.append(rec)
        print(f"{name:<48} {where:<28} {rec['plain_ms']:9.2f} {rec['fast_ms']:8.2f} {rec['torch_ms']:9.2f} "
              f"{rec['plain_over_fast']:10.2f} {lost:8.1f}", flush=True)
    by_model = {}
    for r in out:
        m = r["used_in"].split(" x")[0]
        by_model[m] = by_model.get(m, 0.0) + r["lost_ms_per_call_site"]
    for m, v in by_model.items():
        print(f"total lost per forward (training rows: per step) of {m}: {v:.1f} ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": out, "by_model_ms": by_model}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
