#!/usr/bin/env python
"""Run an exported model (deploy/export_model.py) on images with Paddle Inference.

  python deploy/infer.py --model_dir out/static --image img.png|dir/ [--save_dir out/infer]
                         [--device cpu|gpu] [--cpu_threads 2] [--tile 512 --overlap 36 --merge accum]

Segmenters: writes <stem>_label.png (class ids, palette PNG) and <stem>_overlay.png (colour overlay) per image,
plus <stem>_label.tif (geo-referencing of the input kept) for GeoTIFF inputs.
Rasters larger than --large_threshold pixels (or any image when --tile is given) go through slider_predict.
Classifiers: prints the top-k classes per image (and writes results.json into --save_dir).
"""
import argparse
import json
import os
import sys

import numpy as np

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)


def _str2bool(v):
    if isinstance(v, bool):
        return v
    if v.lower() in ("true", "1", "yes", "y"):
        return True
    if v.lower() in ("false", "0", "no", "n"):
        return False
    if v.lower() == "auto":
        return None
    raise argparse.ArgumentTypeError(f"boolean expected, got {v!r}")


def _positive_int(v):
    try:
        n = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a positive integer expected, got {v!r}")
    if n <= 0:
        raise argparse.ArgumentTypeError(f"a positive integer expected, got {v!r}")
    return n


def _non_negative_int(v):
    try:
        n = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"an integer >= 0 expected, got {v!r}")
    if n < 0:
        raise argparse.ArgumentTypeError(f"an integer >= 0 expected, got {v!r}")
    return n


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_dir", required=True)
    p.add_argument("--image", required=True, help="image file or directory of images")
    p.add_argument("--save_dir", default="output/infer")
    p.add_argument("--device", default="cpu", choices=("cpu", "gpu"))
    p.add_argument("--gpu_id", type=int, default=0)
    p.add_argument("--cpu_threads", type=_positive_int, default=2)
    p.add_argument("--enable_mkldnn", type=_str2bool, default=None,
                   help="oneDNN on/off; default: what the export measured and recorded in model.yml "
                        "(_Attributes.predictor: oneDNN, and the IR passes to delete for known Paddle defects)")
    p.add_argument("--batch_size", type=_positive_int, default=1)
    p.add_argument("--tile", type=_positive_int, default=None, help="slider block size (forces slider_predict)")
    p.add_argument("--overlap", type=_non_negative_int, default=36, help="slider overlap in pixels")
    p.add_argument("--merge", default="accum", choices=("accum", "keep_first", "keep_last"))
    p.add_argument("--large_threshold", type=_positive_int, default=2048 * 2048,
                   help="images with more pixels than this use slider_predict")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the label colours")
    p.add_argument("--topk", type=_positive_int, default=5)
    return p


def _list_images(path):
    from paddle_rs.data.raster_io import IMAGE_EXTS

    if os.path.isdir(path):
        files = sorted(os.path.join(path, f) for f in os.listdir(path)
                       if os.path.splitext(f)[1].lower() in IMAGE_EXTS)
        if not files:
            raise SystemExit(f"error: no images ({', '.join(IMAGE_EXTS)}) in {path}")
        return files
    if not os.path.isfile(path):
        raise SystemExit(f"error: --image {path}: no such file or directory")
    return [path]


def _image_size(path):
    """(H, W) without decoding the pixels where possible."""
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext in (".tif", ".tiff"):
            import tifffile
            with tifffile.TiffFile(path) as tif:
                page = tif.pages[0]
                return int(page.imagelength), int(page.imagewidth)
        if ext == ".npy":
            arr = np.load(path, mmap_mode="r")
            return int(arr.shape[0]), int(arr.shape[1])
        from PIL import Image
        with Image.open(path) as im:
            return im.size[1], im.size[0]
    except Exception:
        return None


def to_display_rgb(img):
    """HWC raster -> uint8 RGB for display: first three bands (grey replicated), 2-98 % stretch if not uint8."""
    img = np.asarray(img)
    if img.ndim == 2:
        img = img[:, :, None]
    img = img[:, :, :3] if img.shape[2] >= 3 else np.repeat(img[:, :, :1], 3, axis=2)
    if img.dtype == np.uint8:
        return np.ascontiguousarray(img)
    f = img.astype(np.float32)
    out = np.empty(f.shape, np.uint8)
    for c in range(3):
        band = f[:, :, c]
        lo, hi = np.percentile(band[np.isfinite(band)], (2, 98)) if np.isfinite(band).any() else (0.0, 1.0)
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        out[:, :, c] = np.clip((band - lo) * scale, 0, 255).astype(np.uint8)
    return out


def overlay(rgb, label, palette, alpha=0.5):
    pal = np.asarray(palette, np.uint8).reshape(-1, 3)
    colours = pal[np.clip(label, 0, len(pal) - 1)]
    return (rgb.astype(np.float32) * (1 - alpha) + colours.astype(np.float32) * alpha).round().astype(np.uint8)


def _check_dirs(args):
    """One-line errors for the directories, before the predictor is built or anything is written."""
    if not os.path.isdir(args.model_dir):
        raise SystemExit(f"error: --model_dir {args.model_dir}: no such directory (pass the --save_dir of "
                         f"deploy/export_model.py)")
    if not os.path.isfile(os.path.join(args.model_dir, "model.yml")):
        raise SystemExit(f"error: --model_dir {args.model_dir} has no model.yml: it is not an export of "
                         f"deploy/export_model.py (a training best_model/ must be exported first)")
    if os.path.exists(args.save_dir) and not os.path.isdir(args.save_dir):
        raise SystemExit(f"error: --save_dir {args.save_dir} is a file; pass a directory")
    if args.tile is not None and args.overlap >= args.tile:
        raise SystemExit(f"error: --overlap {args.overlap} must be smaller than --tile {args.tile}")


def _infer_one(pred, path, args, palette, block, write):
    """Predict ``path`` and write its outputs; returns the line to print and the JSON record."""
    from paddle_rs.data.raster_io import read_image, write_geotiff, write_image_png, write_mask_png

    stem = os.path.splitext(os.path.basename(path))[0]
    if pred.task == "cls":
        r = pred.predict(path)[0]
        top = ", ".join(f"{t['label']} ({t['class_id']}): {t['score']:.4f}" for t in r["topk"])
        return f"{path}: {top}", r["topk"]
    hw = _image_size(path)
    large = args.tile is not None or (hw is not None and hw[0] * hw[1] > args.large_threshold)
    if large:
        r = pred.slider_predict(path, block, args.overlap, merge_strategy=args.merge,
                                batch_size=args.batch_size, return_scores=False)
    else:
        r = pred.predict(path)[0]
    label = r["label_map"]
    if label.max(initial=0) > 255:
        raise ValueError(f"{path}: class ids above 255 cannot be written to an 8-bit PNG")
    write()
    write_mask_png(os.path.join(args.save_dir, f"{stem}_label.png"), label.astype(np.uint8), palette)
    if os.path.splitext(path)[1].lower() in (".tif", ".tiff"):     # keep the geo-referencing
        write_geotiff(os.path.join(args.save_dir, f"{stem}_label.tif"), label.astype(np.uint8), reference=path)
    write_image_png(os.path.join(args.save_dir, f"{stem}_overlay.png"),
                    overlay(to_display_rgb(read_image(path)), label, palette, args.alpha))
    counts = np.bincount(label.ravel(), minlength=1)
    hist = {int(c): int(n) for c, n in enumerate(counts) if n}
    line = f"{path}: {label.shape[0]}x{label.shape[1]}{' (slider)' if large else ''} classes {hist}"
    return line, {"shape": list(label.shape), "histogram": hist}


def main(argv=None):
    """Exit status: 0 every image done; 1 some image could not be read or predicted (the others are done and a
    summary names the failures); 2 bad arguments / model directory (nothing written)."""
    args = build_parser().parse_args(argv)
    try:
        _check_dirs(args)
        files = _list_images(args.image)
    except SystemExit as e:
        msg = str(e.code)
        print(msg if msg.startswith("error:") else f"error: {msg}", file=sys.stderr)
        return 2
    from tqdm import tqdm

    from paddle_rs.data.raster_io import make_palette
    from paddle_rs.deploy.predictor import Predictor
    from paddle_rs.utils.io import atomic_write_file
    from paddle_rs.utils.runtime import tune_cpu_malloc

    tune_cpu_malloc()   # reuse freed tensor memory (paddle_rs/utils/runtime.py); PADDLE_RS_TUNE_MALLOC=0: off
    try:
        pred = Predictor(args.model_dir, device=args.device, gpu_id=args.gpu_id, cpu_threads=args.cpu_threads,
                         enable_mkldnn=args.enable_mkldnn, topk=args.topk)
    except (OSError, ValueError, RuntimeError) as e:
        print(f"error: {args.model_dir}: cannot load the exported model ({e})", file=sys.stderr)
        return 2
    palette = make_palette()
    fixed = pred.fixed_input_shape
    block = args.tile or (int(fixed[2]) if fixed else 512)
    results, failed = {}, []

    def make_save_dir():
        os.makedirs(args.save_dir, exist_ok=True)

    for path in tqdm(files, desc="infer", unit="img", disable=len(files) == 1):
        try:
            line, record = _infer_one(pred, path, args, palette, block, make_save_dir)
        except (OSError, ValueError) as e:           # unreadable / corrupt image, wrong band count, ...
            failed.append((path, str(e)))
            msg = str(e)
            tqdm.write(f"error: {msg if path in msg else f'{path}: {msg}'}", file=sys.stderr)
            continue
        results[path] = record
        tqdm.write(line)
    if pred.task == "cls" and results:
        make_save_dir()
        def write_json(tmp):
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(results, f, indent=1)
        atomic_write_file(os.path.join(args.save_dir, "results.json"), write_json)
    print(f"[infer] {len(results)} of {len(files)} image(s) done -> {os.path.abspath(args.save_dir)}")
    if failed:
        print(f"[infer] {len(failed)} image(s) failed: " + ", ".join(os.path.basename(p) for p, _ in failed),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
