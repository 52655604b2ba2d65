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


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_dir", required=True)
    p.add_argument("--image", required=True, help="image file or directory of images")
    p.add_argument("--save_dir", default="output/infer")
    p.add_argument("--device", default="cpu", choices=("cpu", "gpu"))
    p.add_argument("--gpu_id", type=int, default=0)
    p.add_argument("--cpu_threads", type=int, default=2)
    p.add_argument("--enable_mkldnn", type=_str2bool, default=None,
                   help="oneDNN on/off; default: what the export measured and recorded in model.yml "
                        "(_Attributes.predictor: oneDNN, and the IR passes to delete for known Paddle defects)")
    p.add_argument("--batch_size", type=int, default=1)
    p.add_argument("--tile", type=int, default=None, help="slider block size (forces slider_predict)")
    p.add_argument("--overlap", type=int, default=36, help="slider overlap in pixels")
    p.add_argument("--merge", default="accum", choices=("accum", "keep_first", "keep_last"))
    p.add_argument("--large_threshold", type=int, default=2048 * 2048,
                   help="images with more pixels than this use slider_predict")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the label colours")
    p.add_argument("--topk", type=int, default=5)
    return p


def _list_images(path):
    from paddle_rs.data.raster_io import IMAGE_EXTS

    if os.path.isdir(path):
        files = sorted(os.path.join(path, f) for f in os.listdir(path)
                       if os.path.splitext(f)[1].lower() in IMAGE_EXTS)
        if not files:
            raise SystemExit(f"no images ({', '.join(IMAGE_EXTS)}) in {path}")
        return files
    if not os.path.isfile(path):
        raise SystemExit(f"image not found: {path}")
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


def main(argv=None):
    args = build_parser().parse_args(argv)
    from tqdm import tqdm

    from paddle_rs.data.raster_io import (make_palette, read_image, write_geotiff, write_image_png,
                                          write_mask_png)
    from paddle_rs.deploy.predictor import Predictor
    from paddle_rs.utils.runtime import tune_cpu_malloc

    tune_cpu_malloc()   # reuse freed tensor memory (paddle_rs/utils/runtime.py); PADDLE_RS_TUNE_MALLOC=0: off
    pred = Predictor(args.model_dir, device=args.device, gpu_id=args.gpu_id, cpu_threads=args.cpu_threads,
                     enable_mkldnn=args.enable_mkldnn, topk=args.topk)
    files = _list_images(args.image)
    os.makedirs(args.save_dir, exist_ok=True)
    palette = make_palette()
    fixed = pred.fixed_input_shape
    block = args.tile or (int(fixed[2]) if fixed else 512)
    results = {}
    for path in tqdm(files, desc="infer", unit="img"):
        stem = os.path.splitext(os.path.basename(path))[0]
        if pred.task == "cls":
            r = pred.predict(path)[0]
            results[path] = r["topk"]
            top = ", ".join(f"{t['label']} ({t['class_id']}): {t['score']:.4f}" for t in r["topk"])
            tqdm.write(f"{path}: {top}")
            continue
        hw = _image_size(path)
        large = args.tile is not None or (hw is not None and hw[0] * hw[1] > args.large_threshold)
        if large:
            r = pred.slider_predict(path, block, args.overlap, merge_strategy=args.merge,
                                    batch_size=args.batch_size, return_scores=False)
        else:
            r = pred.predict(path)[0]
        label = r["label_map"]
        if label.max(initial=0) > 255:
            raise SystemExit(f"{path}: class ids above 255 cannot be written to an 8-bit PNG")
        write_mask_png(os.path.join(args.save_dir, f"{stem}_label.png"), label.astype(np.uint8), palette)
        if os.path.splitext(path)[1].lower() in (".tif", ".tiff"):     # keep the geo-referencing
            write_geotiff(os.path.join(args.save_dir, f"{stem}_label.tif"), label.astype(np.uint8), reference=path)
        write_image_png(os.path.join(args.save_dir, f"{stem}_overlay.png"),
                        overlay(to_display_rgb(read_image(path)), label, palette, args.alpha))
        counts = np.bincount(label.ravel(), minlength=1)
        hist = {int(c): int(n) for c, n in enumerate(counts) if n}
        tqdm.write(f"{path}: {label.shape[0]}x{label.shape[1]}{' (slider)' if large else ''} classes {hist}")
        results[path] = {"shape": list(label.shape), "histogram": hist}
    if pred.task == "cls":
        with open(os.path.join(args.save_dir, "results.json"), "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    print(f"[infer] {len(files)} image(s) -> {os.path.abspath(args.save_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
