#!/usr/bin/env python
"""TIPC training entry point (tipc.md §5.4), a thin wrapper over the project's training engine.

  python test_tipc/run_task.py train seg|cls --config=<yaml> [--save_dir=DIR] [--num_epochs=N]
                               [--train_batch_size=N] [--model_path=W.pdparams] [--precision=null|fp32|amp]
                               [--<key>=<value> ...] [--<a.b>=<value> ...]

- ``--config``: YAML with ``_base_`` inheritance (paddle_rs.engine.config); every other ``--key=value`` is a
  config override of that (top-level or dotted) key. The PaddleRS TIPC keys are aliases understood by the
  trainer: ``num_epochs`` -> ``train.epochs``, ``train_batch_size`` -> ``train.batch_size``, ``model_path``
  -> ``model.pretrained`` (loaded strictly).
- ``--save_dir``: output directory (default: the config's ``save_dir``).
- ``--precision`` (line 5 of train_infer_python.txt, the autocast list): ``null`` / ``fp32`` train in fp32,
  ``amp`` enables ``train.amp`` (GPU builds only).
- Seeding (``seed``, default 1024), datasets, model + loss, optimizer, scheduler and clipping all come from
  ``paddle_rs.engine.trainer.Trainer``, which evaluates after the last iteration and writes
  ``<save_dir>/best_model/{model.pdparams, model.yml, eval_details.json}``.

Exit status: 0 success; 1 training failed or best_model/ is incomplete; 2 bad arguments / config;
3 the loss became NaN/Inf.
"""
import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

COMMANDS = ("train",)
TASKS = ("seg", "cls")


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("cmd", choices=COMMANDS, help="only 'train' (evaluation runs inside training)")
    p.add_argument("task", choices=TASKS, help="task type (seg | cls)")
    p.add_argument("--config", required=True, help="training YAML")
    p.add_argument("--save_dir", default=None, help="output directory (default: the config's save_dir)")
    p.add_argument("--precision", default=None, help="autocast: null / fp32 (fp32 training) or amp")
    p.add_argument("--use_gpu", default=None, help="accepted for upstream compatibility; the device comes "
                                                   "from the config's `device` and CUDA_VISIBLE_DEVICES")
    p.add_argument("--no_progress", action="store_true", help="no tqdm progress bar")
    return p


def main(argv=None):
    args, rest = build_parser().parse_known_args(argv)
    from paddle_rs.engine.config import ConfigError, load_config, parse_cli_overrides

    try:
        overrides = parse_cli_overrides(rest)
        prec = (args.precision or "null").strip().lower()
        if prec in ("null", "none", "fp32", "float32"):
            pass
        elif prec == "amp":
            overrides.append("train.amp.enable=true")
        else:
            raise ConfigError(f"--precision must be null, fp32 or amp, got {args.precision!r}")
        cfg = load_config(args.config, overrides)
    except ConfigError as e:
        print(f"[run_task] error: {e}", file=sys.stderr)
        return 2
    print(f"[run_task] {args.cmd} {args.task}: config {args.config}"
          + (f", overrides {' '.join(overrides)}" if overrides else ""), flush=True)

    from paddle_rs.engine.checkpoint import BEST_DIR
    from paddle_rs.engine.trainer import NonFiniteLossError, Trainer

    task = cfg.get("task")
    if task is None:                 # the registry entry's task (the trainer's default)
        from paddle_rs.registry import get_entry
        try:
            task = get_entry((cfg.get("model") or {}).get("name")).task
        except KeyError:
            task = None
    if task is not None and task != args.task:
        print(f"[run_task] error: the config's task is {task!r}, the command line says {args.task!r}",
              file=sys.stderr)
        return 2
    try:
        trainer = Trainer(cfg, save_dir=args.save_dir, resume=False,
                          progress=False if args.no_progress else None)
        summary = trainer.train()
    except NonFiniteLossError as e:
        print(f"[run_task] error: {e}", file=sys.stderr)
        return 3
    if not trainer.is_main:
        return 0
    best_dir = summary.get("best_model_dir") or os.path.join(trainer.save_dir, BEST_DIR)
    missing = [f for f in ("model.pdparams", "model.yml") if not os.path.isfile(os.path.join(best_dir, f))]
    if missing:
        print(f"[run_task] error: {best_dir} lacks {', '.join(missing)}", file=sys.stderr)
        return 1
    last = summary.get("last_eval") or {}
    metrics = ", ".join(f"{k}={v:.4f}" for k, v in last.items() if k != "iter" and isinstance(v, float))
    print(f"[run_task] done: {summary['iters']} iterations; best model {best_dir}"
          + (f"; last eval {metrics}" if metrics else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
