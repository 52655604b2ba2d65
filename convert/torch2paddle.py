"""Convert an upstream PyTorch checkpoint into a Paddle ``.pdparams`` for a registered model.

    python convert/torch2paddle.py --model factseg --src factseg50.pth --dst factseg50.pdparams [--verify]
    python convert/torch2paddle.py --model factseg --src factseg50.pth --dst factseg50.safetensors

Accepts a plain state_dict, or one wrapped under ``state_dict`` (mmengine/mmcv)
or ``model`` (SimpleCV), with or without DDP's ``module.`` prefix; mmengine
objects in the file are read without importing mmengine or running pickled
code: a file that asks for any other class or function is refused, naming it
(``--allow-class`` admits a trusted one as an inert record). ``.safetensors``
is accepted as the source and written when ``--dst`` ends with it. Linear weights are transposed (found from the torch reference's module
tree), BatchNorm statistics renamed, ``num_batches_tracked`` dropped, rebuilt
index buffers checked and dropped. Any missing, unexpected or mis-shaped key
is an error listing each one; nothing is written then. The output is written
atomically.
"""
import argparse
import sys

import cli_common  # noqa: F401  (puts the repo root on sys.path)


def main(argv=None):
    from convert.api import CheckpointError, convert_checkpoint, save_paddle
    from convert.checkpoint import load_torch_checkpoint, unwrap_state_dict
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1], formatter_class=argparse.RawTextHelpFormatter)
    cli_common.add_common(ap)
    ap.add_argument("--src", required=True, help="torch checkpoint (.pth/.pt, any torch format) or .safetensors")
    ap.add_argument("--dst", required=True, help="output .pdparams, or .safetensors")
    ap.add_argument("--allow-class", "--allow_class", dest="allow_class", action="append", default=[],
                    metavar="MODULE.CLASS", help="a pickled class of the source file to read as an inert record "
                                                 "(only for a file you trust; repeatable)")
    args = ap.parse_args(argv)
    opts = cli_common.parse_opts(args.opt)
    try:
        sd, report = convert_checkpoint(args.model, args.src, allow=tuple(args.allow_class), **opts)
    except (CheckpointError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    save_paddle(sd, args.dst)
    print(f"{args.model}: {report.summary()}")
    print(f"wrote {args.dst} ({len(sd)} tensors)")
    if args.verify:
        tsd = unwrap_state_dict(load_torch_checkpoint(args.src, allow=tuple(args.allow_class)), source=args.src)
        cli_common.verify(args.model, tsd, sd, opts, args.input_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
