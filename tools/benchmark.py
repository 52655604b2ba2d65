"""Time the Paddle port against the torch reference in one run, on the same threads, and report ratios.

    python tools/benchmark.py --model factseg [--batch 2] [--size 256] [--threads 2] [--repeat 5]
    python tools/benchmark.py --model rsmamba_b --scan_scaling [--lengths 196,784,3136]

Measures, with the same weights and inputs: torch eager forward (eval), Paddle dygraph forward (eval) of the
plain model and with the CPU kernels (paddle_rs.cpu_kernels, when they build here), one training step each
(forward + the model's real loss + backward + optimizer step), and the portable export (the default
deploy/export_model.py graph) in Paddle Inference (CPU settings as the export measured them, model.yml) and in
onnxruntime. The timings of one table row are taken in alternating rounds (torch / plain / accelerated;
torch / dygraph / inference / onnxruntime), so both sides of a ratio see the same machine load. Prints medians
and the ratios to torch (< 1 means faster than torch); ``--json`` writes them to a file.

``--scan_scaling``: instead, the family's ``scan_scaling`` hook (align/cases/<family>.py) times its sequence
operator alone at several lengths, forward and forward + backward in both frameworks (RSMamba: the selective
scan of one layer), and prints one row per length.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


PAUSE_S = 0.3


def timeit(fn, repeat, warmup=2):
    return interleaved([fn], repeat, warmup)[0]


def interleaved(fns, repeat, warmup=2, pause=PAUSE_S):
    """Median seconds of each function, timed in alternating rounds (A B A B ...): on shared cores the machine's
    speed drifts by 10-30 % over a minute, which would bias a ratio of two blocks timed one after the other.

    Each timed call starts ``pause`` seconds after the previous one ended: Paddle runs
    on Intel OpenMP, whose idle workers spin for 200 ms (``KMP_BLOCKTIME``) after a parallel region, and torch
    on GNU OpenMP; without the pause one framework's spinning threads take cores from the other's timed call
    (measured on UperNet-Swin-T: the Paddle/torch forward ratio reads 1.12 without the pause, 1.19 with it)."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times = [[] for _ in fns]
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            time.sleep(pause)
            t0 = time.perf_counter()
            fn()
            times[i].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--size", type=int, default=None, help="input size (family default when omitted)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--no_train", action="store_true", help="skip the training-step timing")
    ap.add_argument("--no_inference", action="store_true", help="skip the Paddle Inference timing")
    ap.add_argument("--no_onnx", action="store_true", help="skip the onnxruntime timing of the portable graph")
    ap.add_argument("--malloc", choices=("tuned", "default"), default="tuned",
                    help="glibc allocator thresholds for the whole process, both frameworks "
                         "(paddle_rs.utils.runtime.tune_cpu_malloc, as train/eval/infer use; 'default': glibc's)")
    ap.add_argument("--json", default=None, help="write the results to this JSON file")
    ap.add_argument("--scan_scaling", action="store_true",
                    help="time the family's sequence operator alone at --lengths (case hook scan_scaling)")
    ap.add_argument("--lengths", default=None, help="comma-separated lengths for --scan_scaling (hook default)")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    from paddle_rs.utils.runtime import tune_cpu_malloc
    malloc = tune_cpu_malloc() if args.malloc == "tuned" else None

    import paddle
    import torch

    from align.cases import get_case
    torch.set_num_threads(args.threads)
    case = get_case(args.model, size=args.size, cpu_kernels="off")
    if args.scan_scaling:
        return scan_scaling(case, args)
    x, y = case.bench_batch(args.batch)
    tm, pm = case.build_pair()                         # plain Paddle model (case built with cpu_kernels off)
    tx, px = case.to_torch(x), case.to_paddle(x)
    from paddle_rs.cpu_kernels import accelerated, resolve
    kernels = resolve("auto")
    res = {"model": args.model, "batch": args.batch, "input": list(x.shape), "threads": args.threads,
           "malloc": malloc or "glibc default", "cpu_kernels_available": kernels}

    tm.eval(), pm.eval()

    def t_fwd():
        with torch.no_grad():
            tm(tx)

    def p_fwd():
        with paddle.no_grad():
            pm(px).numpy()

    def p_fwd_fast():
        with accelerated(pm), paddle.no_grad():
            pm(px).numpy()

    fns = [t_fwd, p_fwd] + ([p_fwd_fast] if kernels else [])
    times = interleaved(fns, args.repeat)
    res["torch_forward_s"], res["paddle_forward_s"] = times[:2]
    if kernels:
        res["paddle_forward_cpu_kernels_s"] = times[2]
    if not args.no_train:
        t_step, p_step = case.train_step_fns(tm, pm, x, y)

        def p_step_fast():
            with accelerated(pm):
                p_step()

        fns = [t_step, p_step] + ([p_step_fast] if kernels else [])
        times = interleaved(fns, args.repeat, warmup=1)
        res["torch_train_step_s"], res["paddle_train_step_s"] = times[:2]
        if kernels:
            res["paddle_train_step_cpu_kernels_s"] = times[2]
        tm.eval(), pm.eval()
    if not args.no_inference:
        from paddle_rs.deploy.export import export
        from paddle_rs.deploy.predictor import Predictor
        with tempfile.TemporaryDirectory() as d:
            out = export(pm, os.path.join(d, "static"), input_shape=list(x.shape),
                         model_info={"model_name": args.model})          # the portable default export
            pred = Predictor(out, cpu_threads=args.threads)
            fns, names = [t_fwd, p_fwd, lambda: pred.run_batch(x)], ["torch", "paddle", "inference"]
            if not args.no_onnx:
                try:
                    import onnxruntime as ort

                    from paddle_rs.deploy.onnx import export_onnx
                    opts = ort.SessionOptions()
                    opts.intra_op_num_threads = args.threads
                    sess = ort.InferenceSession(export_onnx(out), opts, providers=["CPUExecutionProvider"])
                    feed = {sess.get_inputs()[0].name: x}
                    fns.append(lambda: sess.run(None, feed))
                    names.append("onnxruntime")
                except Exception as e:             # a converter gap is reported, not fatal
                    res["onnx_error"] = str(e).splitlines()[0][:300]
            # torch, dygraph and the predictors alternate (the ratios' sides under the same load)
            times = dict(zip(names, interleaved(fns, args.repeat)))
            res["torch_forward_vs_inference_s"] = times["torch"]
            res["paddle_forward_vs_inference_s"] = times["paddle"]
            res["inference_forward_s"] = times["inference"]
            if "onnxruntime" in times:
                res["onnxruntime_forward_s"] = times["onnxruntime"]
            res["inference_settings"] = pred.cpu_settings
    res["ratio_forward_paddle_over_torch"] = res["paddle_forward_s"] / res["torch_forward_s"]
    if "paddle_forward_cpu_kernels_s" in res:
        res["ratio_forward_paddle_cpu_kernels_over_torch"] = res["paddle_forward_cpu_kernels_s"] / res["torch_forward_s"]
    if "paddle_train_step_s" in res:
        res["ratio_train_step_paddle_over_torch"] = res["paddle_train_step_s"] / res["torch_train_step_s"]
    if "paddle_train_step_cpu_kernels_s" in res:
        res["ratio_train_step_paddle_cpu_kernels_over_torch"] = \
            res["paddle_train_step_cpu_kernels_s"] / res["torch_train_step_s"]
    if "inference_forward_s" in res:
        res["ratio_inference_over_dygraph"] = res["inference_forward_s"] / res["paddle_forward_vs_inference_s"]
        res["ratio_inference_over_torch"] = res["inference_forward_s"] / res["torch_forward_vs_inference_s"]
    if "onnxruntime_forward_s" in res:
        res["ratio_onnxruntime_over_torch"] = res["onnxruntime_forward_s"] / res["torch_forward_vs_inference_s"]
    print(f"\n{args.model}: input {res['input']}, {args.threads} threads, median of {args.repeat}, "
          f"malloc {'tuned' if malloc else 'glibc default'}, CPU kernels {'built' if kernels else 'unavailable'}")
    for k, v in res.items():
        if k.endswith("_s"):
            print(f"  {k[:-2]:<36} {v * 1000:9.1f} ms")
    if "inference_settings" in res:
        print(f"  inference (portable graph): {res['inference_settings']}")
    if "onnx_error" in res:
        print(f"  ONNX: {res['onnx_error']}")
    for k, v in res.items():
        if k.startswith("ratio_"):
            print(f"  {k:<48} {v:6.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


def scan_scaling(case, args):
    if not hasattr(case, "scan_scaling"):
        print(f"error: the parity case of {args.model} has no scan_scaling hook", file=sys.stderr)
        return 2
    kw = {"repeat": args.repeat, "timeit": lambda fn, n: timeit(fn, n, warmup=1)}
    if args.lengths:
        kw["lengths"] = tuple(int(v) for v in args.lengths.split(","))
    rows = case.scan_scaling(**kw)
    keys = [k for k in rows[0] if k.endswith("_s")]
    print(f"\n{args.model}: sequence-operator scaling, {args.threads} threads, median of {args.repeat} (ms)")
    diffs = [k for k in rows[0] if k.startswith("max_") and k.endswith("_diff")]
    print(f"{'L':>6} " + " ".join(f"{k[:-2]:>16}" for k in keys) + f" {'fwd p/t':>8} {'f+b p/t':>8} "
          + " ".join(f"{k:>12}" for k in diffs))
    for r in rows:
        print(f"{r['L']:>6} " + " ".join(f"{r[k] * 1e3:16.1f}" for k in keys)
              + f" {r['paddle_fwd_s'] / r['torch_fwd_s']:8.2f} {r['paddle_fwd_bwd_s'] / r['torch_fwd_bwd_s']:8.2f} "
              + " ".join(f"{r[k]:12.2e}" for k in diffs))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "threads": args.threads, "scan_scaling": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
