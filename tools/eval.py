#!/usr/bin/env python
"""Evaluate a segmentation model on the config's validation list (paddle_rs.engine.evaluator).

  python tools/eval.py --config configs/factseg/isaid.yaml --weights output/factseg_isaid/best_model/model.pdparams
                       [--mode whole|slide] [--window N] [--stride N] [--flip] [--nan_policy nan|zero|nanmean]
                       [--val_list FILE] [--max_samples N] [--out result.json] [--opt key=value ...]

Weights are loaded strictly (missing, unexpected or mis-shaped keys are an error naming them). Prints the
per-class IoU / F1 / precision / recall table and mIoU, and writes the full result (per-class values,
confusion matrix, settings) as JSON to --out (default: eval_result.json next to the weights).
"""
import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--config", required=True)
    p.add_argument("--weights", required=True, help=".pdparams (e.g. save_dir/best_model/model.pdparams)")
    p.add_argument("--mode", choices=("whole", "slide"), default=None, help="default: the config's eval.mode")
    p.add_argument("--window", type=int, default=None)
    p.add_argument("--stride", type=int, default=None)
    p.add_argument("--flip", action="store_true", help="average with the horizontally flipped view")
    p.add_argument("--nan_policy", choices=("nan", "zero", "nanmean"), default=None)
    p.add_argument("--val_list", default=None, help="file list to evaluate instead of data.val_list")
    p.add_argument("--max_samples", type=int, default=None)
    p.add_argument("--out", default=None, help="result JSON path")
    p.add_argument("--no_progress", action="store_true")
    from paddle_rs.cpu_kernels import add_argument
    add_argument(p)
    return p


def main(argv=None):
    args, rest = build_parser().parse_known_args(argv)
    from paddle_rs.engine.config import ConfigError, load_config, parse_cli_overrides

    try:
        overrides = parse_cli_overrides(rest)
        for key, val in (("mode", args.mode), ("window", args.window), ("stride", args.stride),
                         ("nan_policy", args.nan_policy)):
            if val is not None:
                overrides.append(f"eval.{key}={val}")
        if args.flip:
            overrides.append("eval.flip=true")
        cfg = load_config(args.config, overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    import paddle

    from paddle_rs.utils.io import StrictLoadError, WeightsFileError, load_weights_strict
    from paddle_rs.engine.checkpoint import atomic_write_json
    from paddle_rs.engine.trainer import TASKS, model_init_params, resolve_config
    from paddle_rs.registry import get_entry
    from paddle_rs.utils.runtime import tune_cpu_malloc

    tune_cpu_malloc()   # reuse freed tensor memory (paddle_rs/utils/runtime.py); PADDLE_RS_TUNE_MALLOC=0: off

    cfg = resolve_config(cfg)
    device = cfg.get("device", "auto")
    if device in (None, "auto"):
        device = "gpu" if paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0 else "cpu"
    paddle.set_device(device)
    entry = get_entry(cfg["model"]["name"])
    task = TASKS[cfg.get("task") or entry.task](cfg)
    model = entry.builder(**model_init_params(cfg, entry))
    try:
        load_weights_strict(model, args.weights)
    except (WeightsFileError, StrictLoadError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from paddle_rs.cpu_kernels import accelerate, resolve
    if resolve(args.cpu_kernels, device):
        accelerate(model)
    model.eval()
    dataset = task.build_val_dataset(args.val_list)
    evaluator = task.build_evaluator(progress=not args.no_progress)
    t0 = time.perf_counter()
    result = evaluator.evaluate(model, dataset, max_samples=args.max_samples or cfg["eval"].get("max_samples"))
    result["seconds"] = time.perf_counter() - t0
    result.update(weights=os.path.abspath(args.weights), config=cfg.get("_config_path"))
    print(task.format(result))
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.weights)), "eval_result.json")
    atomic_write_json(out, result)
    print(f"result: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
