#!/usr/bin/env python
"""Export a model for Paddle Inference (tipc.md §5.4; recipe porting.md §5.1).

Two ways in:

  (a) by registry name
      python deploy/export_model.py --model factseg [--weights W.pdparams] --save_dir out/static \\
          [--input_shape 1,3,512,512 | 512,512] [--opt num_classes=10 ...]
      Without --weights the network keeps its random initialisation (said on stderr).

  (b) TIPC style, from a training output directory holding model.yml + model.pdparams
      python deploy/export_model.py --model_dir out/best_model --save_dir out/static \\
          [--fixed_input_shape=[-1,3,128,128] | [128,128]]

Weights are always loaded strictly: missing, unexpected or mis-shaped keys are an error that names them.
Writes model.json + model.pdiparams (PIR), model.yml (status: Infer) and pipeline.yml.

The graph is portable by default: Paddle's built-in ops only, served by any Paddle Inference build (CPU or GPU,
Python or C++) without paddle_rs. ``--cpu-kernels on`` puts paddle_rs's CPU custom ops into it instead (faster on
this kind of CPU; the serving process then needs paddle_rs and g++; recorded in model.yml). ``--onnx`` also
converts the portable graph to ``model.onnx`` with paddle2onnx.
"""
import argparse
import ast
import os
import subprocess
import sys
import tempfile

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)


def _parse_opt(items):
    """``key=value`` pairs; values parsed as Python literals when possible (10, 0.5, [1,2], True)."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise SystemExit(f"--opt expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = ast.literal_eval(v.strip())
        except (ValueError, SyntaxError):
            low = v.strip().lower()
            out[k.strip()] = {"true": True, "false": False, "null": None, "none": None}.get(low, v.strip())
    return out


def _read_labels(path):
    with open(path, "r", encoding="utf-8") as f:
        return [ln.strip() for ln in f if ln.strip()]


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="registry name (paddle_rs.list_models())")
    src.add_argument("--model_dir", help="directory with model.yml + model.pdparams (TIPC)")
    p.add_argument("--weights", help="(a) .pdparams to load strictly; (b) overrides model_dir/model.pdparams")
    p.add_argument("--save_dir", required=True, help="output directory")
    p.add_argument("--input_shape", "--fixed_input_shape", dest="input_shape", default=None,
                   help="[n,c,h,w] or [h,w] (n=-1: dynamic batch); omitted/null: dynamic [None,3,-1,-1]")
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="(a) constructor override passed to build_model, repeatable (e.g. num_classes=10)")
    p.add_argument("--labels", help="(a) labels.txt, one class name per line")
    p.add_argument("--cpu-kernels", "--cpu_kernels", dest="cpu_kernels", choices=("off", "on"), default="off",
                   help="off (default): a portable graph of Paddle's own ops; on: paddle_rs's CPU custom ops where "
                        "they apply (the serving process needs paddle_rs and g++; recorded in model.yml)")
    p.add_argument("--onnx", action="store_true",
                   help="also convert the portable graph to save_dir/model.onnx with paddle2onnx")
    p.add_argument("--scan", choices=("auto", "fused", "loop"), default=None,
                   help="advanced, per op family (default: from --cpu-kernels): selective scan of Mamba models, "
                        "the fused custom op or the pure-Paddle loop")
    p.add_argument("--conv", choices=("auto", "onednn", "plain"), default=None,
                   help="advanced: convolutions (kernels > 1x1), the oneDNN custom op or Paddle's conv2d")
    p.add_argument("--ops", choices=("auto", "custom", "plain"), default=None,
                   help="advanced: GELU / SiLU / ReLU / LayerNorm / Linear, paddle_rs's custom ops or Paddle's")
    p.add_argument("--legacy_twin", action="store_true",
                   help="also write a legacy model.pdmodel export into <save_dir>_legacy (FLAGS_enable_pir_api=0)")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--verbose", action="store_true",
                   help="show Paddle's own notes and warnings (IR passes, PIR tracing), hidden by default")
    return p


def _check_args(args):
    """One-line errors for arguments that are wrong before anything is built or written."""
    from paddle_rs.deploy.export import parse_input_shape
    if os.path.exists(args.save_dir) and not os.path.isdir(args.save_dir):
        raise ValueError(f"--save_dir {args.save_dir} is a file; pass a directory")
    if args.model_dir:
        if not os.path.isdir(args.model_dir):
            raise ValueError(f"--model_dir {args.model_dir}: no such directory")
        if not os.path.isfile(os.path.join(args.model_dir, "model.yml")):
            raise ValueError(f"--model_dir {args.model_dir} has no model.yml (pass a training output's best_model/ "
                             f"or iter_N/ directory, or use --model NAME --weights FILE)")
    try:
        parse_input_shape(args.input_shape)        # channel count checked again against the model later
    except ValueError as e:
        if "channels" not in str(e):
            raise ValueError(f"--input_shape {args.input_shape}: {e}") from None


def main(argv=None):
    args = build_parser().parse_args(argv)
    from paddle_rs.utils.io import StrictLoadError, WeightsFileError
    try:
        _check_args(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        return _main(args)
    except (WeightsFileError, StrictLoadError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _main(args):
    import paddle  # noqa: F401  (after argparse so --help is fast)

    from paddle_rs.deploy.export import build_from_model_dir, export, load_weights_strict
    from paddle_rs.deploy.model_yml import read_model_yml
    from paddle_rs.registry import build_model, get_entry

    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr))
    if args.model_dir:
        if args.opt:
            raise SystemExit("--opt applies to --model only; --model_dir rebuilds from model.yml _init_params")
        model, info = build_from_model_dir(args.model_dir, args.weights)
        log(f"[export] built {info['Model']} from {args.model_dir}/model.yml, weights loaded strictly")
        model_info = info
    else:
        entry = get_entry(args.model)
        opts = _parse_opt(args.opt)
        if entry.defaults.get("perm_seed", 0) is None and "perm_seed" not in opts:
            opts["perm_seed"] = 0       # a fixed, seeded shuffle-permutation set (RSMamba); recorded in model.yml
            log(f"[export] {args.model}: perm_seed=0 (fixed permutations; --opt perm_seed=N to choose another set)")
        model = build_model(args.model, **opts)
        if args.weights:
            load_weights_strict(model, args.weights)
            log(f"[export] {args.model}: weights {args.weights} loaded strictly")
        else:
            log(f"[export] WARNING: no --weights given; exporting {args.model} with RANDOM initialisation")
        init_params = dict(entry.defaults)
        init_params.update(opts)
        model_info = {"model_name": args.model, "task": entry.task, "init_params": init_params}
        for k in ("in_channels", "num_classes"):
            if k in init_params:
                model_info[k] = init_params[k]
        if args.labels:
            model_info["labels"] = _read_labels(args.labels)
    model.eval()
    out = export(model, args.save_dir, input_shape=args.input_shape, model_info=model_info,
                 cpu_kernels=args.cpu_kernels, scan=args.scan, conv=args.conv, ops=args.ops, verbose=args.verbose)
    attrs = read_model_yml(out).get("_Attributes") or {}
    scan = attrs.get("scan_backend")
    if scan:
        log(f"[export] selective scan in the graph: {scan}" + (" (custom op rs_selective_scan_fwd; Predictor "
                                                               "registers it)" if scan == "fused" else ""))
    if attrs.get("conv_backend"):
        log(f"[export] convolutions in the graph: {attrs['conv_backend']}" +
            (" (custom op rs_conv2d_fwd; Predictor registers it)" if attrs["conv_backend"] == "onednn" else ""))
    if attrs.get("ops_backend"):
        custom = [op for op in attrs.get("custom_ops") or [] if op not in ("rs_conv2d_fwd", "rs_selective_scan_fwd")]
        log("[export] softmax / GELU / SiLU / ReLU / LayerNorm / Linear / transposes in the graph: "
            f"{attrs['ops_backend']}" +
            (f" (custom ops {', '.join(custom)}; Predictor registers them)" if custom else ""))
    if args.onnx:
        from paddle_rs.deploy.onnx import export_onnx
        if attrs.get("cpu_kernels") == "on":
            raise SystemExit("--onnx converts the portable graph: export without --cpu-kernels on")
        onnx_path = export_onnx(out)
        log(f"[export] ONNX: {onnx_path}")
    log(f"[export] wrote {', '.join(sorted(os.listdir(out)))} to {out}")

    if args.legacy_twin and os.environ.get("FLAGS_enable_pir_api", "1") not in ("0", "false", "False"):
        twin = out.rstrip(os.sep) + "_legacy"
        with tempfile.TemporaryDirectory() as td:
            cmd = [sys.executable, os.path.abspath(__file__), "--save_dir", twin, "--quiet",
                   "--cpu-kernels", args.cpu_kernels]
            for flag in ("scan", "conv", "ops"):
                if getattr(args, flag):
                    cmd += [f"--{flag}", getattr(args, flag)]
            if args.model_dir:
                cmd += ["--model_dir", args.model_dir] + (["--weights", args.weights] if args.weights else [])
            else:
                w = os.path.join(td, "weights.pdparams")
                paddle.save(model.state_dict(), w)          # same weights, random init included
                cmd += ["--model", args.model, "--weights", w] + [f"--opt={o}" for o in args.opt]
                if args.labels:
                    cmd += ["--labels", args.labels]
            if args.input_shape:
                cmd += [f"--input_shape={args.input_shape}"]
            env = dict(os.environ, FLAGS_enable_pir_api="0")
            r = subprocess.run(cmd, env=env)
        if r.returncode != 0:
            log(f"[export] legacy twin export failed (exit {r.returncode}); the PIR export is unaffected")
            return 1
        log(f"[export] legacy twin written to {twin}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
