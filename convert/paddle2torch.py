"""Convert a Paddle ``.pdparams`` of a registered model back into a torch state_dict (``.pth``).

    python convert/paddle2torch.py --model factseg --src model.pdparams --dst model.pth [--verify]

The inverse of torch2paddle.py: Linear weights transposed back, ``_mean``/``_variance``
renamed to ``running_mean``/``running_var``; ``num_batches_tracked`` and rebuilt
index buffers come from the reference model. The result loads into torch_ref
(and the upstream model) with ``strict=True``; torch -> paddle -> torch is
bit-exact. Written atomically; any key problem is an error and nothing is written.
The source is read without running pickled code (paddle_rs.utils.io.load_state_file);
``.safetensors`` is accepted as the source and written when ``--dst`` ends with it.
"""
import argparse
import sys

import cli_common  # noqa: F401  (puts the repo root on sys.path)


def main(argv=None):
    from paddle_rs.utils.io import WeightsFileError, load_state_file

    from convert.api import CheckpointError, build_pair, save_torch
    from convert.rules import paddle_to_torch
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1], formatter_class=argparse.RawTextHelpFormatter)
    cli_common.add_common(ap)
    ap.add_argument("--src", required=True, help="Paddle .pdparams or .safetensors")
    ap.add_argument("--dst", required=True, help="output torch .pth, or .safetensors")
    args = ap.parse_args(argv)
    opts = cli_common.parse_opts(args.opt)
    try:
        psd = load_state_file(args.src)
    except WeightsFileError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    try:
        tm, pm = build_pair(args.model, **opts)
        tsd = paddle_to_torch(psd, tm, pm)
    except (CheckpointError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    save_torch(tsd, args.dst)
    print(f"wrote {args.dst} ({len(tsd)} tensors)")
    if args.verify:
        cli_common.verify(args.model, tsd, psd, opts, args.input_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
