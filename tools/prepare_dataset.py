#!/usr/bin/env python
"""Prepare segmentation or classification datasets from COCO instance annotations.

--task seg  COCO instances -> semantic masks (0 background, 1..K = categories in sorted category-id order,
            255 = crowd regions), optionally resized (--scale) and cut into tiles (--tile/--stride, windows
            as paddle_rs.data.sliding_windows, factseg.md §6.1). Writes images/, masks/, train.txt, val.txt
            (``<img_rel> <mask_rel>``, tipc.md §5.3), labels.txt.
--task cls  object-centred square crops of every non-crowd instance (context --margin), resized to --size,
            in the RSMamba datainfo layout: <class>/<file>.png, train.txt, val.txt, cls_names.txt,
            labels.txt, meanstd.txt (train statistics, 0–255 RGB).

Both write preview.png (first sample; seg: mask overlay) and info.json. List files are written last via a
temp file + os.replace, so an interrupted run leaves no half-written list.

  python tools/prepare_dataset.py --task seg --coco_root ../shared/data/nwpu_vhr10_mini --out out/nwpu_seg \
      --tile 512 --stride 384
  python tools/prepare_dataset.py --task cls --coco_root ../shared/data/nwpu_vhr10_mini --out out/nwpu_cls
"""
import argparse
import json
import os
import shutil
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from paddle_rs.data.datasets import (coco_category_map, coco_semantic_mask, format_meanstd, load_coco,  # noqa: E402
                                     object_crop_box, sliding_windows, write_text_atomic)
from paddle_rs.data.raster_io import make_palette, read_image, write_image_png, write_mask_png  # noqa: E402
from paddle_rs.data.transforms import resize_image, resize_label  # noqa: E402
from paddle_rs.utils.paths import shared_data_dir  # noqa: E402

DEFAULT_COCO_ROOT = os.path.join(shared_data_dir(ROOT), "nwpu_vhr10_mini")
SPLITS = ("train", "val")


def _tqdm(it, **kw):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a project dependency
        return it
    return tqdm(it, **kw)


def _split_images(coco: dict, max_images):
    images = sorted(coco["images"], key=lambda im: im["id"])
    return images[:max_images] if max_images else images


def _load_rgb(coco_root: str, im: dict) -> np.ndarray:
    img = read_image(os.path.join(coco_root, "images", im["file_name"]))
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    _expect_size(im, *img.shape[:2])
    return img


def _expect_size(im: dict, h: int, w: int) -> None:
    if (h, w) != (im["height"], im["width"]):
        raise ValueError(f"{im['file_name']}: image is {h}x{w}, the annotation says {im['height']}x{im['width']}")


def _check_size(coco_root: str, im: dict) -> None:
    from PIL import Image

    with Image.open(os.path.join(coco_root, "images", im["file_name"])) as f:     # reads the header only
        _expect_size(im, f.size[1], f.size[0])


def _overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    pal = np.asarray(make_palette(), dtype=np.float64).reshape(256, 3)
    out = image[:, :, :3].astype(np.float64)
    fg = mask > 0
    out[fg] = (1 - alpha) * out[fg] + alpha * pal[mask[fg]]
    return np.clip(out, 0, 255).astype(np.uint8)


def _check_categories(cocos: dict):
    cats = None
    for split, coco in cocos.items():
        c = sorted((x["id"], x["name"]) for x in coco["categories"])
        if cats is not None and c != cats:
            raise ValueError(f"annotations/{split}.json has different categories than the other split")
        cats = c
    return next(iter(cocos.values()))["categories"]


def prepare_seg(args, cocos: dict) -> dict:
    cat_map, labels = coco_category_map(_check_categories(cocos))
    lists, samples, px = {}, {}, np.zeros(256, dtype=np.int64)
    preview_done = False
    for split, coco in cocos.items():
        lines = []
        images = _split_images(coco, args.max_images)
        for im in _tqdm(images, desc=f"seg {split}", unit="img"):
            stem = os.path.splitext(im["file_name"])[0]
            anns = coco["anns_by_image"][im["id"]]
            mask = coco_semantic_mask(anns, im["height"], im["width"], cat_map, ignore_index=255)
            plain_copy = not args.tile and args.scale == 1.0
            image = None if plain_copy else _load_rgb(args.coco_root, im)
            if plain_copy:
                _check_size(args.coco_root, im)
            if args.scale != 1.0:
                size = (max(1, int(round(im["height"] * args.scale))), max(1, int(round(im["width"] * args.scale))))
                image, mask = resize_image(image, size, "bilinear"), resize_label(mask, size)
            if args.tile:
                windows = sliding_windows(mask.shape[0], mask.shape[1], args.tile, args.stride or args.tile)
            else:
                windows = [None]
            for win in windows:
                if win is None:
                    name, img_t, mask_t = stem, image, mask
                else:
                    name = f"{stem}_{win.y}_{win.x}"
                    img_t, mask_t = image[win.slices], mask[win.slices]
                ext = os.path.splitext(im["file_name"])[1].lower() if plain_copy else ".png"
                img_rel = f"images/{split}/{name}{ext}"
                mask_rel = f"masks/{split}/{name}.png"
                if plain_copy:
                    os.makedirs(os.path.dirname(os.path.join(args.out, img_rel)), exist_ok=True)
                    shutil.copyfile(os.path.join(args.coco_root, "images", im["file_name"]),
                                    os.path.join(args.out, img_rel))
                else:
                    write_image_png(os.path.join(args.out, img_rel), img_t)
                write_mask_png(os.path.join(args.out, mask_rel), mask_t)
                lines.append(f"{img_rel} {mask_rel}")
                px += np.bincount(mask_t.ravel(), minlength=256)
                if not preview_done:
                    if img_t is None:
                        img_t = _load_rgb(args.coco_root, im)
                    write_image_png(os.path.join(args.out, "preview.png"), _overlay(img_t, mask_t))
                    preview_done = True
        lists[split] = lines
        samples[split] = len(lines)
    pixels = {labels[i]: int(px[i]) for i in range(len(labels))}
    pixels["ignore(255)"] = int(px[255])
    info = dict(task="seg", num_classes=len(labels), ignore_index=255, labels=labels,
                category_to_label={str(k): v for k, v in cat_map.items()}, tile=args.tile,
                stride=args.stride or args.tile, scale=args.scale, samples=samples, pixels_per_class=pixels)
    _write_outputs(args.out, info, {"labels.txt": labels, **{f"{s}.txt": lines for s, lines in lists.items()}})
    return info


def prepare_cls(args, cocos: dict) -> dict:
    cat_map, labels = coco_category_map(_check_categories(cocos))
    class_names = [n.replace(" ", "_").replace("/", "_") for n in labels[1:]]     # label index = position
    lists, counts = {}, {}
    total, total_sq, n_px = np.zeros(3), np.zeros(3), 0
    preview_done = False
    for split, coco in cocos.items():
        lines = []
        per_class = [0] * len(class_names)
        for im in _tqdm(_split_images(coco, args.max_images), desc=f"cls {split}", unit="img"):
            anns = [a for a in coco["anns_by_image"][im["id"]] if not a.get("iscrowd", 0)]
            if not anns:
                continue
            image = _load_rgb(args.coco_root, im)
            stem = os.path.splitext(im["file_name"])[0]
            for ann in anns:
                bw, bh = ann["bbox"][2:]
                if max(bw, bh) < args.min_box:
                    continue
                y, x, side = object_crop_box(ann["bbox"], image.shape[0], image.shape[1], args.margin,
                                             args.min_side)
                crop = resize_image(image[y:y + side, x:x + side], (args.size, args.size), "bicubic")
                cls_idx = cat_map[ann["category_id"]] - 1
                rel = f"{class_names[cls_idx]}/{stem}_{ann['id']}.png"
                write_image_png(os.path.join(args.out, rel), crop)
                lines.append(rel)
                per_class[cls_idx] += 1
                if split == "train":
                    f = crop.reshape(-1, 3).astype(np.float64)
                    total += f.sum(0)
                    total_sq += (f * f).sum(0)
                    n_px += f.shape[0]
                if not preview_done:
                    write_image_png(os.path.join(args.out, "preview.png"), crop)
                    preview_done = True
        lists[split] = lines
        counts[split] = dict(zip(class_names, per_class))
    files = {"cls_names.txt": class_names, "labels.txt": class_names,
             **{f"{s}.txt": lines for s, lines in lists.items()}}
    info = dict(task="cls", num_classes=len(class_names), labels=class_names, size=args.size,
                margin=args.margin, min_side=args.min_side, samples_per_class=counts)
    if n_px:
        mean = total / n_px
        std = np.sqrt(np.maximum(total_sq / n_px - mean * mean, 0.0))
        files["meanstd.txt"] = [format_meanstd(mean, std)]
        info.update(mean=mean.tolist(), std=std.tolist())
    _write_outputs(args.out, info, files)
    return info


def _write_outputs(out: str, info: dict, files: dict) -> None:
    """info.json first, then the small metadata files, the split lists last (each atomically)."""
    write_text_atomic(os.path.join(out, "info.json"), json.dumps(info, indent=1).splitlines())
    order = sorted(files, key=lambda n: n in ("train.txt", "val.txt"))
    for name in order:
        write_text_atomic(os.path.join(out, name), files[name])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=("seg", "cls"), required=True)
    p.add_argument("--coco_root", default=DEFAULT_COCO_ROOT,
                   help="folder with images/ and annotations/{train,val}.json (default: %(default)s)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--max_images", type=int, default=0, help="use the first N images of each split (0 = all)")
    g = p.add_argument_group("seg")
    g.add_argument("--tile", type=int, default=0, help="tile size (0 = whole images)")
    g.add_argument("--stride", type=int, default=0, help="tile stride (default = --tile)")
    g.add_argument("--scale", type=float, default=1.0, help="resize factor applied before tiling")
    g = p.add_argument_group("cls")
    g.add_argument("--size", type=int, default=224, help="crop output size (default %(default)s)")
    g.add_argument("--margin", type=float, default=0.2, help="context on each side, fraction of the box's long side")
    g.add_argument("--min_side", type=int, default=32, help="smallest crop side in source pixels")
    g.add_argument("--min_box", type=float, default=0.0, help="skip instances whose long box side is smaller")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.scale <= 0:
        raise SystemExit("--scale must be > 0")
    if args.tile < 0 or args.stride < 0 or (args.stride and not args.tile):
        raise SystemExit("--stride needs --tile; both must be positive")
    ann_dir = os.path.join(args.coco_root, "annotations")
    try:
        cocos = {s: load_coco(os.path.join(ann_dir, f"{s}.json")) for s in SPLITS
                 if os.path.isfile(os.path.join(ann_dir, f"{s}.json"))}
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not cocos:
        raise SystemExit(f"no annotations/train.json or annotations/val.json under {args.coco_root}")
    os.makedirs(args.out, exist_ok=True)
    info = prepare_seg(args, cocos) if args.task == "seg" else prepare_cls(args, cocos)
    n = info["samples"] if args.task == "seg" else {s: sum(c.values()) for s, c in info["samples_per_class"].items()}
    print(f"wrote {args.out}: {info['num_classes']} classes, samples {n}; preview: "
          f"{os.path.join(args.out, 'preview.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
