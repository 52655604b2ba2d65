#!/usr/bin/env python
"""Train a model from a YAML config (paddle_rs.engine.trainer).

  python tools/train.py --config configs/factseg/isaid.yaml [--save_dir DIR] [--iters N] [--batch_size N]
                        [--resume [CKPT_DIR]] [--num_workers N] [--no_progress] [--opt key=value ...]
                        [--a.b=value ...]

Multi-GPU:  python -m paddle.distributed.launch --gpus 0,1 tools/train.py --config ... (rank 0 writes).

Writes into save_dir: iter_N/ checkpoints (+ `latest`), best_model/{model.pdparams, model.yml,
eval_details.json}, train_log.jsonl, train_curve.png, config.yaml (the resolved config).
Exit status: 0 done; 1 error; 3 the loss became NaN/Inf (the message names the iteration; the last good
checkpoint is untouched, fix the cause and rerun with --resume).
"""
import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--config", required=True, help="YAML config (with optional _base_)")
    p.add_argument("--save_dir", default=None, help="output directory (default: the config's save_dir)")
    p.add_argument("--iters", type=int, default=None, help="total iterations (overrides train.iters/epochs)")
    p.add_argument("--batch_size", type=int, default=None, help="per-device batch size")
    p.add_argument("--num_workers", type=int, default=None, help="DataLoader workers")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="CKPT_DIR",
                   help="continue from save_dir's latest checkpoint (or from CKPT_DIR)")
    p.add_argument("--no_progress", action="store_true", help="no tqdm progress bar")
    from paddle_rs.cpu_kernels import add_argument
    add_argument(p)
    return p


def main(argv=None):
    args, rest = build_parser().parse_known_args(argv)
    from paddle_rs.engine.config import ConfigError, load_config, parse_cli_overrides

    try:
        overrides = parse_cli_overrides(rest)
        if args.iters is not None:
            overrides += [f"train.iters={args.iters}", "train.epochs=null"]
        if args.batch_size is not None:
            overrides.append(f"train.batch_size={args.batch_size}")
        if args.num_workers is not None:
            overrides.append(f"data.num_workers={args.num_workers}")
        overrides.append(f"train.cpu_kernels={args.cpu_kernels}")
        cfg = load_config(args.config, overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    from paddle_rs.engine.checkpoint import CheckpointError
    from paddle_rs.engine.trainer import NonFiniteLossError, Trainer
    from paddle_rs.utils.io import StrictLoadError, WeightsFileError
    from paddle_rs.utils.runtime import tune_cpu_malloc

    tune_cpu_malloc()   # reuse freed tensor memory (paddle_rs/utils/runtime.py); PADDLE_RS_TUNE_MALLOC=0: off

    try:
        trainer = Trainer(cfg, save_dir=args.save_dir, resume=args.resume,
                          progress=False if args.no_progress else None)
        summary = trainer.train()
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except (WeightsFileError, StrictLoadError, CheckpointError) as e:     # pretrained / resume files
        print(f"error: {e}", file=sys.stderr)
        return 2
    if trainer.is_main:
        print(f"best model: {summary['best_model_dir']}  latest checkpoint: {summary['latest_checkpoint']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
