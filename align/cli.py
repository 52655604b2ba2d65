"""Shared command line of align/01_forward.py ... 04_backward.py."""
import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.dirname(HERE) not in sys.path:         # run as `python align/0x_*.py` from a checkout
    sys.path.insert(0, os.path.dirname(HERE))


def run_stage(stage, name, out, **case_kw):
    """One stage of one model, as the align scripts run it: the list of :class:`~align.harness.Result` (also saved
    under ``out/<model>/``) and the stage's notes."""
    from align.cases import get_case
    from align.harness import StageLog
    case = get_case(name, **case_kw)
    log = StageLog(stage, name, out, checks=case.CHECKS)
    log.run_settings = {"cpu_kernels": "on" if case.cpu_kernels else "off"}     # recorded in <stage>_strict.json
    getattr(case, stage)(log)
    return log.save(), log.notes, log.dir


def main(stage, description):
    from align.cases import default_models
    from align.harness import print_summary

    import paddle_rs
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--model", default=None,
                    help="model name, comma-separated names, or 'all' (default: each family's default models; "
                         f"known: {', '.join(paddle_rs.list_models())})")
    ap.add_argument("--out", default=os.path.join(HERE, "output"), help="output directory (default align/output)")
    ap.add_argument("--size", type=int, default=None, help="input size override (family default when omitted)")
    ap.add_argument("--full", action="store_true", help="full-size inputs (e.g. 896 for FactSeg); slow on CPU")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=10, help="training steps for 04_backward")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads for both frameworks")
    from paddle_rs.cpu_kernels import add_argument
    add_argument(ap, help_extra="; the parity must hold either way")
    args = ap.parse_args()
    if args.threads:
        import paddle
        import torch
        torch.set_num_threads(args.threads)
        paddle.base.core.set_num_threads(args.threads)      # Paddle's CPU math library (no public setter in 3.3)
    if args.model in (None, ""):
        names = default_models()
    elif args.model == "all":
        names = paddle_rs.list_models()
    else:
        names = [n.strip() for n in args.model.split(",") if n.strip()]
    unknown = [n for n in names if n not in paddle_rs.list_models()]
    if unknown:                       # before anything runs: a typo must not cost the other models' time
        import difflib
        hints = [f"{n!r}" + (f" (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(
            n, paddle_rs.list_models(), n=1)) else "") for n in unknown]
        ap.error(f"unknown model {', '.join(hints)}; known: {', '.join(paddle_rs.list_models())}")
    results, errors = [], []
    for name in names:
        t0 = time.time()
        print(f"[{stage}] {name} ...", flush=True)
        try:
            res, notes, out_dir = run_stage(stage, name, args.out, size=args.size, full=args.full, seed=args.seed,
                                            steps=args.steps, cpu_kernels=args.cpu_kernels)
        except Exception as e:  # a broken model must not hide the others; it still fails the run
            import traceback
            traceback.print_exc()
            errors.append(f"{name}: {type(e).__name__}: {e}")
            continue
        results += res
        for n in notes:
            print(f"  note: {n}")
        print(f"[{stage}] {name} done in {time.time() - t0:.1f}s; logs in {out_dir}", flush=True)
    ok = print_summary(results, title=f"{stage} parity (torch_ref vs paddle_rs)")
    for e in errors:
        print(f"ERROR {e}")
    sys.exit(0 if ok and not errors and results else 1)
