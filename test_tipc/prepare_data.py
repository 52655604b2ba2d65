#!/usr/bin/env python
"""TIPC data step (tipc.md §5.3): a tiny, deterministic segmentation or classification dataset for the lite chain.

  python test_tipc/prepare_data.py --config <train yaml> --mode <MODE> [--source auto|shared|synthetic]
                                   [--coco_root DIR] [--force]

Writes into the training YAML's ``data.root`` (relative paths are taken from the working directory, as the
trainer does; the runner works from the repository root):

- ``source=shared`` (the default when ``../shared/data/nwpu_vhr10_mini`` exists and the YAML's
  ``num_classes`` is 11, its background + 10 classes): ``tools/prepare_dataset.py --task seg`` on the first
  6 images of each split, scaled by 0.5 and cut into 128 x 128 tiles at stride 128, then 6 train / 2 val
  tiles chosen greedily (most new classes, then most foreground pixels; file order breaks ties). Masks:
  0 background, 1..10 classes, 255 on crowd regions.
- ``source=synthetic`` (otherwise): ``paddle_rs.data.datasets.make_synthetic_seg_dataset`` with the YAML's
  ``num_classes``, ``ignore_index`` and ``labels``: 6 train / 2 val RGB PNGs of 128 x 128, rectangles of the
  classes and a band of the ignore index (seed 0).

Classification configs (``task: cls``, or a model registered with task ``cls``) get the RSMamba ``datainfo``
layout instead (``<class>/<file>.png`` images, ``train.txt`` / ``val.txt`` with ``<class>/<file>`` lines,
``cls_names.txt`` = ``labels.txt``), 6 train / 2 val images:

- ``source=shared`` (default when the shared data exists and the YAML has its 10 classes):
  ``tools/prepare_dataset.py --task cls`` on the first 6 images of each split (224 x 224 object crops), then
  the crops picked round-robin over the classes (file order within a class);
- ``source=synthetic``: ``make_synthetic_cls_dataset`` (64 x 64 stripe images, one per class and split, seed 0),
  the first 6 train / 2 val of them in class order.

Either way the result has ``train.txt`` / ``val.txt`` (``<img_rel> <mask_rel>``), ``labels.txt`` and a stamp
file ``.tipc_data_stamp.json``. When the stamp matches the request the step is skipped ("up to date"). The
dataset is built in a temporary sibling directory and renamed into place, so an interrupted run never leaves
a half-written dataset. An existing ``data.root`` without a stamp is never overwritten (exit 1).

``TIPC_DATA_SOURCE`` (auto | shared | synthetic) and ``TIPC_COCO_ROOT`` set the defaults of ``--source`` and
``--coco_root``. No network access.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from paddle_rs.utils.paths import shared_data_dir  # noqa: E402

STAMP = ".tipc_data_stamp.json"
STAMP_VERSION = 1
SIZE = 128
N_TRAIN, N_VAL = 6, 2
SEED = 0
SHARED_MAX_IMAGES = 6            # per split
SHARED_SCALE = 0.5
DEFAULT_COCO_ROOT = os.path.join(shared_data_dir(ROOT), "nwpu_vhr10_mini")
NWPU_NUM_CLASSES = 11            # background + 10 COCO categories
NWPU_CLS_NUM_CLASSES = 10        # classification crops: the 10 COCO categories
CLS_SHARED_SIZE = 224            # tools/prepare_dataset.py --task cls crop size
CLS_SYNTHETIC_SIZE = 64


# ----------------------------------------------------------------------------------------------------------
# training config access (shared with test_tipc/infer.py)
# ----------------------------------------------------------------------------------------------------------
def load_train_config(path):
    """The training YAML with its ``_base_`` chain (paddle_rs.engine.config)."""
    from paddle_rs.engine.config import load_config

    return load_config(path)


def _resolve(path, root):
    """As SegDataset: absolute or existing paths are kept, others are relative to ``root``."""
    if os.path.isabs(path) or os.path.exists(path):
        return path
    return os.path.join(root, path)


def seg_data_info(cfg, config_path="<config>"):
    """``{root, train_list, val_list, num_classes, ignore_index, labels}`` from a training config."""
    d = cfg.get("data") or {}
    root = d.get("root")
    if not root:
        raise SystemExit(f"{config_path}: data.root is not set")
    labels = cfg.get("labels")
    num_classes = cfg.get("num_classes")
    if num_classes is None and labels:
        num_classes = len(labels)
    if num_classes is None:
        raise SystemExit(f"{config_path}: num_classes (or labels) is not set")
    if labels is not None and len(labels) != int(num_classes):
        raise SystemExit(f"{config_path}: {len(labels)} labels for num_classes={num_classes}")
    train_list = d.get("train_list") or "train.txt"
    val_list = d.get("val_list") or "val.txt"
    return dict(root=root, train_list=_resolve(train_list, root), val_list=_resolve(val_list, root),
                train_list_rel=train_list, val_list_rel=val_list, num_classes=int(num_classes),
                ignore_index=int(cfg.get("ignore_index", 255)), labels=list(labels) if labels else None,
                color_map=d.get("color_map"))


# ----------------------------------------------------------------------------------------------------------
# builders (write into an empty directory `out`)
# ----------------------------------------------------------------------------------------------------------
def build_synthetic(out, info):
    from paddle_rs.data.datasets import make_synthetic_seg_dataset

    make_synthetic_seg_dataset(out, num_classes=info["num_classes"], ignore_index=info["ignore_index"],
                               n_train=N_TRAIN, n_val=N_VAL, size=SIZE, seed=SEED, labels=info["labels"])


def _pick_tiles(lines, stage, n):
    """Greedy, deterministic choice of ``n`` tiles: most classes not yet covered, then most foreground."""
    import numpy as np

    from paddle_rs.data.raster_io import read_mask

    stats = []
    for k, line in enumerate(lines):
        mask = read_mask(os.path.join(stage, line.split()[1]))
        if mask.shape != (SIZE, SIZE):
            continue
        fg = (mask > 0) & (mask != 255)
        stats.append((k, set(np.unique(mask[fg]).tolist()), int(fg.sum())))
    chosen, covered = [], set()
    while stats and len(chosen) < n:
        best = max(stats, key=lambda s: (len(s[1] - covered), s[2], -s[0]))
        stats.remove(best)
        chosen.append(best[0])
        covered |= best[1]
    return [lines[k] for k in sorted(chosen)]


def build_shared(out, info, coco_root):
    from paddle_rs.data.datasets import write_text_atomic

    stage = tempfile.mkdtemp(prefix=".stage_", dir=out)
    try:
        cmd = [sys.executable, os.path.join(ROOT, "tools", "prepare_dataset.py"), "--task", "seg",
               "--coco_root", coco_root, "--out", stage, "--max_images", str(SHARED_MAX_IMAGES),
               "--scale", str(SHARED_SCALE), "--tile", str(SIZE), "--stride", str(SIZE)]
        print("[prepare_data] " + " ".join(cmd), flush=True)
        env = dict(os.environ, TQDM_DISABLE="1")
        r = subprocess.run(cmd, env=env)
        if r.returncode != 0:
            raise RuntimeError(f"tools/prepare_dataset.py failed with exit status {r.returncode}")
        lists = {}
        for split, n in (("train", N_TRAIN), ("val", N_VAL)):
            with open(os.path.join(stage, f"{split}.txt"), "r", encoding="utf-8") as f:
                lines = [ln.strip() for ln in f if ln.strip()]
            picked = _pick_tiles(lines, stage, n)
            if len(picked) < n:
                raise RuntimeError(f"only {len(picked)} {SIZE}x{SIZE} {split} tiles from {coco_root}, need {n}")
            for line in picked:
                for rel in line.split():
                    dst = os.path.join(out, rel)
                    os.makedirs(os.path.dirname(dst), exist_ok=True)
                    shutil.copyfile(os.path.join(stage, rel), dst)
            lists[split] = picked
        with open(os.path.join(stage, "labels.txt"), "r", encoding="utf-8") as f:
            labels = [ln.strip() for ln in f if ln.strip()]
        if len(labels) != info["num_classes"]:
            raise RuntimeError(f"{coco_root} gives {len(labels)} classes, the config wants {info['num_classes']}")
        write_text_atomic(os.path.join(out, "labels.txt"), info["labels"] or labels)
        write_text_atomic(os.path.join(out, "val.txt"), lists["val"])
        write_text_atomic(os.path.join(out, "train.txt"), lists["train"])
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def config_task(cfg):
    """``task`` of the YAML, else the registry entry's task of ``model.name`` (as the trainer decides)."""
    if cfg.get("task"):
        return cfg["task"]
    try:
        from paddle_rs.registry import get_entry
        return get_entry((cfg.get("model") or {}).get("name")).task
    except KeyError:
        return "seg"


def _round_robin(lines, n):
    """``n`` datainfo lines picked round-robin over their classes (class order of first appearance, file order
    within a class): deterministic, and as many classes as possible."""
    by_class = {}
    for line in lines:
        by_class.setdefault(line.split("/")[0], []).append(line)
    picked, k = [], 0
    while len(picked) < n and any(k < len(v) for v in by_class.values()):
        picked += [v[k] for v in by_class.values() if k < len(v)][:n - len(picked)]
        k += 1
    return picked


def _copy_cls(out, stage, lists, class_names):
    from paddle_rs.data.datasets import write_text_atomic
    for lines in lists.values():
        for rel in lines:
            dst = os.path.join(out, rel)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copyfile(os.path.join(stage, rel), dst)
    write_text_atomic(os.path.join(out, "cls_names.txt"), class_names)
    write_text_atomic(os.path.join(out, "labels.txt"), class_names)
    write_text_atomic(os.path.join(out, "val.txt"), lists["val"])
    write_text_atomic(os.path.join(out, "train.txt"), lists["train"])


def build_synthetic_cls(out, info):
    from paddle_rs.data.datasets import make_synthetic_cls_dataset

    stage = tempfile.mkdtemp(prefix=".stage_", dir=out)
    try:
        paths = make_synthetic_cls_dataset(stage, num_classes=info["num_classes"], n_train_per_class=1,
                                           n_val_per_class=1, size=CLS_SYNTHETIC_SIZE, seed=SEED,
                                           class_names=info["labels"])
        lists = {}
        for split, n in (("train", N_TRAIN), ("val", N_VAL)):
            with open(paths[f"{split}_list"], "r", encoding="utf-8") as f:
                lists[split] = _round_robin([ln.strip() for ln in f if ln.strip()], n)
        with open(paths["cls_names"], "r", encoding="utf-8") as f:
            names = [ln.strip() for ln in f if ln.strip()]
        _copy_cls(out, stage, lists, names)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def build_shared_cls(out, info, coco_root):
    stage = tempfile.mkdtemp(prefix=".stage_", dir=out)
    try:
        cmd = [sys.executable, os.path.join(ROOT, "tools", "prepare_dataset.py"), "--task", "cls",
               "--coco_root", coco_root, "--out", stage, "--max_images", str(SHARED_MAX_IMAGES),
               "--size", str(CLS_SHARED_SIZE)]
        print("[prepare_data] " + " ".join(cmd), flush=True)
        r = subprocess.run(cmd, env=dict(os.environ, TQDM_DISABLE="1"))
        if r.returncode != 0:
            raise RuntimeError(f"tools/prepare_dataset.py failed with exit status {r.returncode}")
        lists = {}
        for split, n in (("train", N_TRAIN), ("val", N_VAL)):
            with open(os.path.join(stage, f"{split}.txt"), "r", encoding="utf-8") as f:
                lists[split] = _round_robin([ln.strip() for ln in f if ln.strip()], n)
            if len(lists[split]) < n:
                raise RuntimeError(f"only {len(lists[split])} {split} crops from {coco_root}, need {n}")
        with open(os.path.join(stage, "cls_names.txt"), "r", encoding="utf-8") as f:
            names = [ln.strip() for ln in f if ln.strip()]
        if len(names) != info["num_classes"]:
            raise RuntimeError(f"{coco_root} gives {len(names)} classes, the config wants {info['num_classes']}")
        if info["labels"] and list(info["labels"]) != names:
            raise RuntimeError(f"the config's labels {info['labels']} differ from the crops' classes {names}")
        _copy_cls(out, stage, lists, names)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------------
def choose_source(requested, info, coco_root, task="seg"):
    shared_ok = os.path.isfile(os.path.join(coco_root, "annotations", "train.json")) and \
        os.path.isfile(os.path.join(coco_root, "annotations", "val.json"))
    if task == "cls":
        fits = info["num_classes"] == NWPU_CLS_NUM_CLASSES
        nwpu_classes = NWPU_CLS_NUM_CLASSES
    else:
        fits = info["num_classes"] == NWPU_NUM_CLASSES and info["ignore_index"] == 255 and not info["color_map"]
        nwpu_classes = NWPU_NUM_CLASSES
    if requested == "shared":
        if not shared_ok:
            raise SystemExit(f"[prepare_data] --source shared: no COCO annotations under {coco_root}")
        if not fits:
            raise SystemExit(f"[prepare_data] --source shared: the config wants num_classes="
                             f"{info['num_classes']}, ignore_index={info['ignore_index']}; the shared data "
                             f"has {nwpu_classes} classes" + ("" if task == "cls" else " and ignore index 255"))
        return "shared"
    if requested == "synthetic":
        return "synthetic"
    if shared_ok and fits:
        return "shared"
    why = "no shared data at " + coco_root if not shared_ok else \
        f"the config's classes ({info['num_classes']}) do not match the shared data's ({nwpu_classes})"
    print(f"[prepare_data] using synthetic data: {why}")
    return "synthetic"


def _read_stamp(root):
    try:
        with open(os.path.join(root, STAMP), "r", encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="training YAML (data.root, num_classes, ignore_index, labels)")
    p.add_argument("--mode", default="lite_train_lite_infer",
                   help="TIPC mode; every supported mode uses the same tiny dataset")
    p.add_argument("--source", choices=("auto", "shared", "synthetic"),
                   default=os.environ.get("TIPC_DATA_SOURCE") or "auto")
    p.add_argument("--coco_root", default=os.environ.get("TIPC_COCO_ROOT") or DEFAULT_COCO_ROOT,
                   help="NWPU VHR-10 mini (COCO layout) used by --source shared/auto")
    p.add_argument("--force", action="store_true", help="rebuild even if the stamp matches")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.source not in ("auto", "shared", "synthetic"):
        print(f"[prepare_data] bad source {args.source!r}", file=sys.stderr)
        return 2
    cfg = load_train_config(args.config)
    info = seg_data_info(cfg, args.config)
    task = config_task(cfg)
    root = info["root"]
    coco_root = os.path.abspath(args.coco_root)
    source = choose_source(args.source, info, coco_root, task)
    size = SIZE if task != "cls" else (CLS_SHARED_SIZE if source == "shared" else CLS_SYNTHETIC_SIZE)
    want = dict(version=STAMP_VERSION, source=source, num_classes=info["num_classes"],
                ignore_index=info["ignore_index"], labels=info["labels"], size=size, n_train=N_TRAIN,
                n_val=N_VAL, seed=SEED)
    if task == "cls":
        want.update(task="cls")
    if source == "shared":
        want.update(coco_root=coco_root, max_images=SHARED_MAX_IMAGES,
                    scale=SHARED_SCALE if task != "cls" else 1.0)
    lists = (os.path.join(root, "train.txt"), os.path.join(root, "val.txt"))
    stamp = _read_stamp(root)
    if stamp == want and all(os.path.isfile(p) for p in lists) and not args.force:
        print(f"[prepare_data] {root}: up to date ({source}, stamp {STAMP} matches); nothing to do")
        return 0
    if os.path.exists(root) and stamp is None and (not os.path.isdir(root) or os.listdir(root)):
        print(f"[prepare_data] {root} exists and was not written by test_tipc/prepare_data.py (no {STAMP}); "
              f"refusing to overwrite it. Remove it or point data.root elsewhere.", file=sys.stderr)
        return 1
    if info["train_list_rel"] != "train.txt" or info["val_list_rel"] != "val.txt":
        print(f"[prepare_data] the config's data lists must be train.txt / val.txt under data.root "
              f"(got {info['train_list_rel']}, {info['val_list_rel']})", file=sys.stderr)
        return 1

    parent = os.path.dirname(os.path.abspath(root))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(root))}.tmp_", dir=parent)
    try:
        print(f"[prepare_data] building {source} {task} data ({N_TRAIN} train / {N_VAL} val, {size}x{size}, "
              f"{info['num_classes']} classes" + (f", ignore {info['ignore_index']}" if task != "cls" else "")
              + f") -> {root}", flush=True)
        if task == "cls" and source == "shared":
            build_shared_cls(tmp, info, coco_root)
        elif task == "cls":
            build_synthetic_cls(tmp, info)
        elif source == "shared":
            build_shared(tmp, info, coco_root)
        else:
            build_synthetic(tmp, info)
        with open(os.path.join(tmp, STAMP), "w", encoding="utf-8") as f:
            json.dump(want, f, indent=1, sort_keys=True)
        if os.path.isdir(root):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(root))}.old_", dir=parent)
            os.rename(root, os.path.join(old, "d"))
            os.rename(tmp, root)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, root)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)

    from paddle_rs.data.datasets import read_class_names, read_cls_split, read_seg_file_list
    if task == "cls":
        names = read_class_names(os.path.join(root, "cls_names.txt"))
        n_tr, n_va = len(read_cls_split(lists[0], root, names)), len(read_cls_split(lists[1], root, names))
    else:
        n_tr = len(read_seg_file_list(lists[0], root))
        n_va = len(read_seg_file_list(lists[1], root))
    print(f"[prepare_data] done: {n_tr} train / {n_va} val samples in {root} (source {source})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
