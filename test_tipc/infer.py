#!/usr/bin/env python
"""TIPC inference step (tipc.md §5.4): every line of the evaluation file list through the deploy Predictor.

  python test_tipc/infer.py --config=<train yaml> --device=cpu --enable_mkldnn=False --cpu_threads=2 \\
      --model_dir=<export dir> --batch_size=1 --benchmark=False --precision=fp32 --model_name=factseg \\
      [--save_dir=DIR] [--use_trt=False]

For each image of the validation list named by the training YAML it

- runs ``paddle_rs.deploy.predictor.Predictor.predict`` (``--batch_size`` images per call);
- checks the contract of the exported segmenter (tipc.md §7): ``label_map`` is H x W (the image's size),
  ``score_map`` is H x W x C with C = the model's class count, finite, sums to 1 over C (+-1e-4), and
  ``argmax(score_map) == label_map`` (ties of the top score tolerated);
- writes ``<stem>_label.png`` (palette PNG of the class ids) into ``--save_dir``
  (default ``<model_dir>/../infer_results``) and prints the shape and class histogram.

``--benchmark=True`` adds a built-in timer: 5 warm-up calls, then the mean preprocess / inference /
postprocess milliseconds per call over the list. Exit status 1 on any failed check, 2 on bad arguments.

Classifiers (``model_type: classifier``, e.g. RSMamba): the validation split of the ``datainfo`` layout
(``<class>/<file>`` lines, classes = the YAML's labels); per image the contract is ``scores`` of length K =
``num_classes``, finite, summing to 1 (+-1e-4), ``label == argmax(scores)`` (ties tolerated); it prints the top-k
with the ground truth, the top-1 over the list (information only) and writes ``predictions.json``.
"""
import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))
for _p in (ROOT, HERE):
    if _p not in sys.path:
        sys.path.insert(0, _p)

SUM_TOL = 1e-4
TIE_TOL = 1e-6
WARMUP = 5



def _print_benchmark(timings, batch_size, wall, n_images):
    """Mean per-call preprocess / inference / postprocess times (ms) and the end-to-end time per image."""
    mean = {k: float(np.mean([t[k] for t in timings])) for k in ("preprocess", "inference", "postprocess")}
    print(f"[infer] benchmark ({WARMUP} warm-up calls, {len(timings)} timed call(s) of batch {batch_size}): "
          f"preprocess {mean['preprocess']:.2f} ms, inference {mean['inference']:.2f} ms, postprocess "
          f"{mean['postprocess']:.2f} ms per call; {1e3 * wall / max(n_images, 1):.2f} ms per image end to end")

def _str2bool(v):
    if isinstance(v, bool):
        return v
    low = str(v).strip().lower()
    if low in ("true", "1", "yes", "y", "on"):
        return True
    if low in ("false", "0", "no", "n", "off", "null", "none", ""):
        return False
    raise argparse.ArgumentTypeError(f"boolean expected, got {v!r}")


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="training YAML; its validation file list is predicted")
    p.add_argument("--model_dir", required=True, help="exported model directory (model.json/.pdmodel + model.yml)")
    p.add_argument("--device", default="cpu", choices=("cpu", "gpu"))
    p.add_argument("--enable_mkldnn", type=_str2bool, default=False)
    p.add_argument("--cpu_threads", type=int, default=2)
    p.add_argument("--batch_size", type=int, default=1)
    p.add_argument("--use_trt", type=_str2bool, default=False)
    p.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "int8"))
    p.add_argument("--benchmark", type=_str2bool, default=False)
    p.add_argument("--model_name", default=None, help="name used in the report lines")
    p.add_argument("--save_dir", default=None, help="where the label PNGs go (default <model_dir>/../infer_results)")
    p.add_argument("--save_log_path", default=None, help="accepted for upstream compatibility; unused")
    return p


def check_result(res, image_hw, num_classes):
    """List of problems of one Predictor result (empty when the result honours the contract)."""
    problems = []
    label, score = res.get("label_map"), res.get("score_map")
    if label is None or score is None:
        return [f"result has keys {sorted(res)}; expected label_map and score_map"]
    label, score = np.asarray(label), np.asarray(score)
    if label.shape != tuple(image_hw):
        problems.append(f"label_map shape {label.shape} != image size {tuple(image_hw)}")
    if score.ndim != 3 or score.shape[:2] != label.shape:
        problems.append(f"score_map shape {score.shape} does not match label_map {label.shape} (H x W x C)")
        return problems
    if num_classes is not None and score.shape[2] != int(num_classes):
        problems.append(f"score_map has {score.shape[2]} channels, model.yml says num_classes={num_classes}")
    if not np.isfinite(score).all():
        problems.append("score_map holds non-finite values")
        return problems
    s = score.astype(np.float64).sum(axis=2)
    err = float(np.abs(s - 1.0).max()) if s.size else 0.0
    if err > SUM_TOL:
        problems.append(f"score_map does not sum to 1 over C: max |sum-1| = {err:.3e} > {SUM_TOL:.0e}")
    if label.size and (label.min() < 0 or label.max() >= score.shape[2]):
        problems.append(f"label_map values {int(label.min())}..{int(label.max())} outside 0..{score.shape[2] - 1}")
        return problems
    am = score.argmax(axis=2)
    diff = am != label
    if diff.any():
        top = score.max(axis=2)
        at_label = np.take_along_axis(score, label[..., None].astype(np.int64), axis=2)[..., 0]
        real = diff & (at_label < top - TIE_TOL)          # ties of the top score are not a mismatch
        if real.any():
            problems.append(f"argmax(score_map) != label_map at {int(real.sum())} pixel(s)")
    return problems


def check_cls_result(res, num_classes):
    """List of problems of one classifier result (empty when it honours the contract)."""
    if "scores" not in res or "label" not in res:
        return [f"result has keys {sorted(res)}; expected scores and label"]
    score, label = np.asarray(res["scores"]), int(res["label"])
    if score.ndim != 1:
        return [f"scores shape {score.shape}, expected (K,)"]
    problems = []
    if num_classes is not None and score.shape[0] != int(num_classes):
        problems.append(f"{score.shape[0]} scores, model.yml says num_classes={num_classes}")
    if not np.isfinite(score).all():
        return problems + ["scores hold non-finite values"]
    err = abs(float(score.astype(np.float64).sum()) - 1.0)
    if err > SUM_TOL:
        problems.append(f"scores do not sum to 1: |sum-1| = {err:.3e} > {SUM_TOL:.0e}")
    if not 0 <= label < score.shape[0]:
        problems.append(f"label {label} outside 0..{score.shape[0] - 1}")
    elif score[label] < score.max() - TIE_TOL:
        problems.append(f"label {label} is not argmax(scores) = {int(score.argmax())}")
    return problems


def infer_cls(args, cfg, data, pred, name):
    """Classifier branch: predict the datainfo validation split, check each result, print top-k."""
    import json

    from paddle_rs.data.datasets import read_cls_split
    classes = data["labels"] or pred.labels
    items = read_cls_split(data["val_list"], data["root"], classes)
    save_dir = args.save_dir or os.path.join(os.path.dirname(os.path.normpath(args.model_dir)), "infer_results")
    os.makedirs(save_dir, exist_ok=True)
    print(f"[infer] {name}: {len(items)} image(s) from {data['val_list']}, classifier {args.model_dir} "
          f"(device {pred.device}, {'PIR' if pred.is_pir else 'legacy'} program, batch {args.batch_size}, "
          f"threads {args.cpu_threads}, mkldnn {args.enable_mkldnn}, precision {args.precision})")
    paths = [p for p, _ in items]
    batches = [list(range(i, min(i + args.batch_size, len(items)))) for i in range(0, len(items), args.batch_size)]
    if args.benchmark and batches:
        for _ in range(WARMUP):
            pred.predict([paths[k] for k in batches[0]])
    timings, failures, correct, out = [], 0, 0, {}
    t0 = time.perf_counter()
    for batch in batches:
        results = pred.predict([paths[k] for k in batch])
        timings.append(dict(pred.last_timings))
        if len(results) != len(batch):
            print(f"[infer] FAIL: {len(batch)} image(s) in, {len(results)} result(s) out")
            failures += len(batch)
            continue
        for k, res in zip(batch, results):
            path, gt = items[k]
            problems = check_cls_result(res, pred.num_classes)
            top = ", ".join(f"{t['label']} {t['score']:.4f}" for t in res.get("topk", []))
            status = "ok" if not problems else "FAIL: " + "; ".join(problems)
            print(f"[infer] {os.path.relpath(path, data['root'])}: gt {classes[gt]} -> top-k [{top}] -> {status}")
            if problems:
                failures += 1
                continue
            correct += int(res["label"] == gt)
            out[os.path.relpath(path, data["root"])] = {"gt": int(gt), "label": int(res["label"]),
                                                         "topk": res["topk"]}
    wall = time.perf_counter() - t0
    with open(os.path.join(save_dir, "predictions.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1)
    print(f"[infer] top-1 {100.0 * correct / max(len(items), 1):.2f} % over {len(items)} image(s) "
          f"(information only; the lite chain does not check accuracy)")
    if args.benchmark and timings:
        _print_benchmark(timings, args.batch_size, wall, len(paths))
    if failures:
        print(f"[infer] {failures} of {len(items)} image(s) failed the checks")
        return 1
    print(f"[infer] all {len(items)} image(s) passed; predictions in {save_dir}")
    return 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        print("[infer] --batch_size must be >= 1", file=sys.stderr)
        return 2
    from prepare_data import load_train_config, seg_data_info  # test_tipc/prepare_data.py

    cfg = load_train_config(args.config)
    data = seg_data_info(cfg, args.config)
    from paddle_rs.data.datasets import read_seg_file_list
    from paddle_rs.data.raster_io import make_palette, write_mask_png
    from paddle_rs.deploy.predictor import Predictor

    name = args.model_name or os.path.basename(os.path.normpath(args.model_dir))
    pred = Predictor(args.model_dir, device=args.device, cpu_threads=args.cpu_threads,
                     enable_mkldnn=args.enable_mkldnn, use_trt=args.use_trt, precision=args.precision,
                     max_batch_size=args.batch_size)
    if pred.task == "cls":
        return infer_cls(args, cfg, data, pred, name)
    items = read_seg_file_list(data["val_list"], data["root"])
    if pred.task != "seg":
        print(f"[infer] {args.model_dir}: model_type {pred.model_type!r}; this TIPC step checks segmenters",
              file=sys.stderr)
        return 1
    save_dir = args.save_dir or os.path.join(os.path.dirname(os.path.normpath(args.model_dir)), "infer_results")
    os.makedirs(save_dir, exist_ok=True)
    palette = make_palette()
    print(f"[infer] {name}: {len(items)} image(s) from {data['val_list']}, model {args.model_dir} "
          f"(device {pred.device}, {'PIR' if pred.is_pir else 'legacy'} program, batch {args.batch_size}, "
          f"threads {args.cpu_threads}, mkldnn {args.enable_mkldnn}, precision {args.precision})")

    from paddle_rs.data.raster_io import read_image
    paths = [img for img, _ in items]
    batches = [paths[i:i + args.batch_size] for i in range(0, len(paths), args.batch_size)]
    if args.benchmark and batches:
        for _ in range(WARMUP):
            pred.predict(batches[0])
    timings, failures, total_hist = [], 0, {}
    t0 = time.perf_counter()
    for batch in batches:
        results = pred.predict(batch)
        timings.append(dict(pred.last_timings))
        if len(results) != len(batch):
            print(f"[infer] FAIL: {len(batch)} image(s) in, {len(results)} result(s) out")
            failures += len(batch)
            continue
        for path, res in zip(batch, results):
            hw = read_image(path).shape[:2]
            problems = check_result(res, hw, pred.num_classes)
            label = np.asarray(res["label_map"])
            counts = np.bincount(label.ravel().astype(np.int64), minlength=1) if label.size else np.zeros(0)
            hist = {int(c): int(n) for c, n in enumerate(counts) if n}
            for c, n in hist.items():
                total_hist[c] = total_hist.get(c, 0) + n
            shape = "x".join(str(v) for v in label.shape)
            score_shape = "x".join(str(v) for v in np.asarray(res["score_map"]).shape)
            status = "ok" if not problems else "FAIL: " + "; ".join(problems)
            print(f"[infer] {os.path.relpath(path, data['root'])}: label {shape}, score {score_shape}, "
                  f"classes {hist} -> {status}")
            if problems:
                failures += 1
                continue
            if label.max(initial=0) <= 255:
                stem = os.path.splitext(os.path.basename(path))[0]
                write_mask_png(os.path.join(save_dir, f"{stem}_label.png"), label.astype(np.uint8), palette)
    wall = time.perf_counter() - t0
    print(f"[infer] class histogram over {len(paths)} image(s): {dict(sorted(total_hist.items()))}")
    if args.benchmark and timings:
        _print_benchmark(timings, args.batch_size, wall, len(paths))
    if failures:
        print(f"[infer] {failures} of {len(paths)} image(s) failed the checks")
        return 1
    print(f"[infer] all {len(paths)} image(s) passed; label PNGs in {save_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
