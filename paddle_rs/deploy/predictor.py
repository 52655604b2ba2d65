"""Paddle Inference predictor for exported models (tipc.md §7, porting.md §5.1).

``Predictor(model_dir)`` reads ``model.yml`` (transforms, labels, model type), detects the program format
(``model.json`` = PIR, else legacy ``model.pdmodel``) and configures Paddle Inference per the recipe:

- CPU settings (``enable_mkldnn``): ``None`` (default) applies what the export measured and recorded in
  ``model.yml`` ``_Attributes.predictor`` (``onednn`` and ``delete_passes``: of the settings in
  :data:`CPU_SETTINGS` whose predictor reproduced the network within 1e-4, the faster on the export's sample
  input): oneDNN on, with the IR passes deleted that break the graph on Paddle 3.3.1 -- ``onednn_placement_pass``
  for any graph with a ``*_interp`` op (``ConvertPirAttribute2RuntimeAttribute not support
  ArrayAttribute<DoubleAttribute>``, Paddle#79749) and the fc fusions for Swin / ViTAE (they mis-shape a 3-D
  matmul) -- or oneDNN off, which can win for graphs of many small elementwise ops such as RSMamba's
  selective-scan loop (about equal on an idle machine, several times faster when other work shares the cores).
  ``True`` / ``False`` force oneDNN on (with the recorded deletions) / off.
  ``enable_memory_optim`` is declined for PIR programs (Paddle#75496); legacy programs allow it;
- custom ops (``model.yml`` ``_Attributes.custom_ops``) are registered before the program loads: the fused
  selective scan (``rs_selective_scan_fwd``, RSMamba) and the oneDNN convolution (``rs_conv2d_fwd``, which exports
  of models whose predictor runs without oneDNN carry; :func:`paddle_rs.deploy.export.resolve_conv_backend`) and
  paddle_rs's softmax / GELU / SiLU / LayerNorm / linear ops (``rs_softmax`` ...; ``resolve_ops_backend``). An
  op that cannot be built here is an error naming the export flag that avoids it (``--scan loop`` /
  ``--conv plain``);
- GPU when requested and available (otherwise a warning and CPU); TensorRT is refused for segmenters.

``predict(images)`` -> one dict per image:

- segmenter: ``{'label_map': HxW int32, 'score_map': HxWxC float32}`` at the decoded image's size (the
  transforms' ``trans_info`` is undone in reverse: padding -> crop, resize -> NEAREST labels / bilinear
  scores); the score map is the graph's probability map, unchanged (no softmax, no re-normalisation);
- classifier: ``{'scores': K float32, 'label': int, 'topk': [{'class_id', 'label', 'score'}, ...]}``.

``slider_predict(image, block_size, overlap, merge_strategy)`` tiles a large raster (tipc.md §7.4).
"""
import os
import time
import warnings
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from .model_yml import read_model_yml

__all__ = ["Predictor", "undo_trans_info", "resize_bilinear", "resize_nearest", "tile_starts", "CPU_SETTINGS",
           "configure_cpu", "run_program", "sample_input"]

_FC_PASSES = ("fc_fuse_pass", "fc_onednn_pass", "fc_act_onednn_fuse_pass", "matmul_add_act_fuse_pass")
# CPU predictor settings an export tries (paddle_rs.deploy.export._choose_predictor_settings): the first oneDNN
# entry that runs and reproduces the network, and oneDNN off; the faster of the two is recorded
CPU_SETTINGS = (
    {"onednn": True, "delete_passes": []},
    {"onednn": True, "delete_passes": ["onednn_placement_pass"]},                   # Paddle#79749 (interp ops)
    {"onednn": True, "delete_passes": ["onednn_placement_pass", *_FC_PASSES]},      # + the fc fusions
    {"onednn": False, "delete_passes": []},
)


def sample_input(attrs: Dict) -> np.ndarray:
    """The deterministic input an export is checked on (predictor settings, ONNX), from ``model.yml``
    ``_Attributes``: the fixed input shape, else 2 x C x 64 x 64 (a multiple of every model's size divisor)."""
    fixed = attrs.get("fixed_input_shape")
    c = int(attrs.get("in_channels") or 3)
    h, w = (int(fixed[2]), int(fixed[3])) if fixed else (64, 64)
    n = (int(fixed[0]) if fixed[0] > 0 else 1) if fixed else 2
    return np.random.default_rng(0).standard_normal((n, c, h, w)).astype("float32")


def configure_cpu(cfg, threads: int = 2, onednn: bool = False, delete_passes: Sequence[str] = (),
                  mkldnn_cache_capacity: int = 10):
    """Apply CPU predictor settings to a ``paddle.inference.Config``."""
    cfg.disable_gpu()
    cfg.set_cpu_math_library_num_threads(int(threads))
    if onednn:
        cfg.enable_mkldnn()
        cfg.set_mkldnn_cache_capacity(int(mkldnn_cache_capacity))
        for name in delete_passes:
            cfg.delete_pass(name)
    else:
        cfg.disable_mkldnn()
    return cfg


def run_program(model_dir, image: np.ndarray, threads: int = 2, onednn: bool = False,
                delete_passes: Sequence[str] = (), repeat: int = 0):
    """Outputs of the exported program for ``image`` (float32 NCHW, no transforms) on CPU with these settings;
    with ``repeat`` > 0, ``(outputs, median seconds of repeat further runs)``."""
    import paddle.inference as pdi
    model_dir = os.fspath(model_dir)
    model_file = os.path.join(model_dir, "model.json")
    if not os.path.isfile(model_file):
        model_file = os.path.join(model_dir, "model.pdmodel")
    cfg = configure_cpu(pdi.Config(model_file, os.path.join(model_dir, "model.pdiparams")), threads, onednn,
                        delete_passes)
    cfg.switch_use_feed_fetch_ops(False)
    cfg.disable_glog_info()
    predictor = pdi.create_predictor(cfg)
    handle = predictor.get_input_handle(predictor.get_input_names()[0])
    handle.reshape(list(image.shape))
    handle.copy_from_cpu(np.ascontiguousarray(image, dtype=np.float32))
    predictor.run()
    outs = [predictor.get_output_handle(n).copy_to_cpu() for n in predictor.get_output_names()]
    if repeat <= 0:
        return outs
    times = []
    for _ in range(int(repeat)):
        t0 = time.perf_counter()
        predictor.run()
        times.append(time.perf_counter() - t0)
    return outs, float(np.median(times))

_SKIP_OPS = ("ToCHW", "ArrangeSegmenter", "ArrangeClassifier", "ArrangeDetector", "ArrangeChangeDetector",
             "ArrangeRestorer")


# --------------------------------------------------------------------------------------------------------
# post-processing helpers (numpy only)
# --------------------------------------------------------------------------------------------------------
def resize_nearest(label: np.ndarray, h: int, w: int) -> np.ndarray:
    """HW label nearest-neighbour resize, the project's rule (``transforms.resize_label``, cv2 NEAREST)."""
    from paddle_rs.data.transforms import resize_label
    return resize_label(label, (h, w))


def resize_bilinear(score: np.ndarray, h: int, w: int) -> np.ndarray:
    """HW / HWC float bilinear resize, half-pixel centres, no antialiasing (``transforms.resize_image``)."""
    from paddle_rs.data.transforms import resize_image
    return resize_image(np.asarray(score, dtype=np.float32), (h, w), "bilinear")


def undo_trans_info(label: np.ndarray, score: np.ndarray, trans_info: Sequence):
    """Undo geometric transforms in reverse order: ``('padding', (h, w), (x, y))`` -> crop
    ``[y:y+h, x:x+w]``; ``('resize', (h, w))`` -> labels NEAREST, scores bilinear (skipped if same size)."""
    for op in reversed(list(trans_info or [])):
        kind = op[0]
        if kind == "padding":
            (h, w), (x, y) = op[1], op[2]
            h, w, x, y = int(h), int(w), int(x), int(y)
            label = label[y:y + h, x:x + w]
            score = score[y:y + h, x:x + w]
        elif kind == "resize":
            h, w = int(op[1][0]), int(op[1][1])
            if label.shape[:2] != (h, w):
                label = resize_nearest(label, h, w)
                score = resize_bilinear(score, h, w)
        else:
            raise ValueError(f"unknown trans_info entry {op!r}")
    return np.ascontiguousarray(label), np.ascontiguousarray(score)


def tile_starts(size: int, block: int, stride: int) -> List[int]:
    """Tile origins along one axis: every ``stride``, the last tile flush with the edge (so every tile is a
    full block when ``size >= block``)."""
    if size <= block:
        return [0]
    starts = list(range(0, size - block + 1, stride))
    if starts[-1] + block < size:
        starts.append(size - block)
    return starts


def _pair(v, name):
    if isinstance(v, (list, tuple)):
        if len(v) != 2:
            raise ValueError(f"{name} must be an int or (h, w), got {v}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


def has_interp_ops(program_file) -> bool:
    """Whether a PIR ``model.json`` holds a ``*_interp`` op (oneDNN cannot run those, Paddle#79749)."""
    with open(program_file, "r", encoding="utf-8", errors="replace") as f:
        return "_interp" in f.read()


# --------------------------------------------------------------------------------------------------------
# predictor
# --------------------------------------------------------------------------------------------------------
class Predictor:
    """Paddle Inference predictor for a directory written by :func:`paddle_rs.deploy.export.export`.

    Attributes: ``info`` (model.yml dict), ``task`` ('seg' | 'cls'), ``labels``, ``num_classes``,
    ``in_channels``, ``fixed_input_shape``, ``is_pir``, ``device`` (actually used), ``last_timings``
    (ms of the last ``predict`` call: preprocess / inference / postprocess).
    """

    def __init__(self, model_dir, device: str = "cpu", gpu_id: int = 0, cpu_threads: int = 2,
                 enable_mkldnn: Optional[bool] = None, mkldnn_cache_capacity: int = 10, use_trt: bool = False,
                 precision: str = "fp32", enable_memory_optim: bool = False, ir_optim: bool = True,
                 gpu_mem_mb: int = 200, max_batch_size: int = 1, topk: int = 5):
        import paddle.inference as pdi

        self.model_dir = os.path.abspath(os.fspath(model_dir))
        self.info = read_model_yml(self.model_dir)
        attrs = self.info.get("_Attributes") or {}
        self.model_type = attrs.get("model_type", "segmenter")
        self.task = {"segmenter": "seg", "classifier": "cls"}.get(self.model_type)
        if self.task is None:
            raise ValueError(f"{self.model_dir}: unsupported model_type {self.model_type!r}")
        self.in_channels = int(attrs.get("in_channels") or 3)
        self.num_classes = attrs.get("num_classes")
        self.labels = list(attrs.get("labels") or [])
        self.fixed_input_shape = attrs.get("fixed_input_shape")
        self.topk = int(topk)
        self.transforms = self._build_transforms(self.info.get("Transforms") or [])
        self.last_timings: Dict[str, float] = {}

        json_path = os.path.join(self.model_dir, "model.json")
        pdmodel_path = os.path.join(self.model_dir, "model.pdmodel")
        params_path = os.path.join(self.model_dir, "model.pdiparams")
        if os.path.isfile(json_path):
            self.is_pir, model_file = True, json_path
        elif os.path.isfile(pdmodel_path):
            self.is_pir, model_file = False, pdmodel_path
        else:
            raise FileNotFoundError(f"{self.model_dir}: neither model.json (PIR) nor model.pdmodel (legacy)")
        if not os.path.isfile(params_path):
            raise FileNotFoundError(f"{self.model_dir}: model.pdiparams is missing")

        self._register_custom_ops(attrs.get("custom_ops") or [])
        cfg = pdi.Config(model_file, params_path)
        self.device = "cpu"
        if device == "gpu":
            import paddle
            if paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0:
                self.device = "gpu"
            else:
                warnings.warn("device='gpu' requested but no CUDA device is available; running on CPU")
        elif device != "cpu":
            raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")

        if self.device == "gpu":
            if precision == "fp16" and not use_trt:
                cfg.enable_use_gpu(gpu_mem_mb, gpu_id, pdi.PrecisionType.Half)
            else:
                cfg.enable_use_gpu(gpu_mem_mb, gpu_id)
            if use_trt:
                if self.task == "seg":
                    warnings.warn("TensorRT is not supported for segmenters (as upstream); use_trt ignored")
                else:
                    prec = {"fp32": pdi.PrecisionType.Float32, "fp16": pdi.PrecisionType.Half,
                            "int8": pdi.PrecisionType.Int8}[precision]
                    cfg.enable_tensorrt_engine(workspace_size=1 << 30, max_batch_size=max_batch_size,
                                               min_subgraph_size=3, precision_mode=prec, use_static=False,
                                               use_calib_mode=False)
        else:
            if precision not in ("fp32", None):
                warnings.warn(f"precision={precision!r} is not supported on CPU; using fp32")
            recorded = attrs.get("predictor") or {"onednn": bool(attrs.get("onednn", False)), "delete_passes": []}
            passes = list(recorded.get("delete_passes") or [])
            if enable_mkldnn is None:          # what the export measured
                enable_mkldnn = bool(recorded.get("onednn", False))
            elif enable_mkldnn and self.is_pir and has_interp_ops(model_file) and \
                    "onednn_placement_pass" not in passes:
                passes.append("onednn_placement_pass")      # Paddle#79749: oneDNN cannot place interp ops
            configure_cpu(cfg, cpu_threads, bool(enable_mkldnn), passes, mkldnn_cache_capacity)
            self.cpu_settings = {"onednn": bool(enable_mkldnn), "delete_passes": passes if enable_mkldnn else []}
        if enable_memory_optim:
            if self.is_pir:
                warnings.warn("enable_memory_optim declined: it fails with PIR programs (Paddle#75496)")
            else:
                cfg.enable_memory_optim()
        cfg.switch_ir_optim(bool(ir_optim))
        cfg.switch_use_feed_fetch_ops(False)
        cfg.disable_glog_info()
        self.config = cfg
        self.predictor = pdi.create_predictor(cfg)
        names = self.predictor.get_input_names()
        self.input_name = "image" if "image" in names else names[0]
        self.output_names = list(self.predictor.get_output_names())

    def _register_custom_ops(self, ops):
        """Load the libraries of the custom ops an export recorded (``model.yml`` ``_Attributes.custom_ops``)
        before the program is loaded; Paddle Inference cannot resolve them otherwise."""
        from paddle_rs.ops._dygraph_ext import OPS as DYGRAPH_OPS
        from paddle_rs.ops.conv import CONV_OP
        known = {
            "rs_selective_scan_fwd": ("paddle_rs.ops.selective_scan", "fused_ext", "the fused selective-scan op",
                                      "g++ with OpenMP", "--scan loop"),
            CONV_OP: ("paddle_rs.ops.conv", "onednn_ext", "the oneDNN convolution op",
                      "g++ and oneDNN 3.x headers (from the torch wheel or PADDLE_RS_ONEDNN_INCLUDE)", "--conv plain"),
        }
        for op in DYGRAPH_OPS:
            known[op] = ("paddle_rs.ops._dygraph_ext", "dygraph_ext", "paddle_rs's softmax / GELU / SiLU / LayerNorm / "
                         "linear ops", "g++ and oneDNN 3.x headers (from the torch wheel or PADDLE_RS_ONEDNN_INCLUDE)",
                         "--ops plain")
        unknown = [op for op in ops if op not in known]
        if unknown:
            raise RuntimeError(f"{self.model_dir}: model.yml lists custom ops this paddle_rs does not provide: "
                               f"{unknown}")
        import importlib
        for op in ops:
            module, loader, what, needs, flag = known[op]
            if getattr(importlib.import_module(module), loader)() is None:
                raise RuntimeError(
                    f"{self.model_dir} was exported with {what} ({op}), whose C++ extension cannot be built on "
                    f"this machine (see the warning above; it needs {needs}). Install what it needs, or re-export "
                    f"without `--cpu-kernels on` (the default export is portable; `{flag}` drops this op alone)")

    # ----------------------------------------------------------------------------------------------------
    @staticmethod
    def _build_transforms(ops: List[Dict]):
        ops = [op for op in ops if next(iter(op)) not in _SKIP_OPS]
        if not ops:
            return None
        from paddle_rs.data.transforms import build_transforms
        return build_transforms(ops)

    def _decode(self, image) -> np.ndarray:
        from paddle_rs.data.raster_io import read_image
        return read_image(image, expect_bands=self.in_channels)

    def _eight_bit_reach(self):
        """The largest magnitude the export's Normalize gives an 8-bit image (values 0..255); None without one."""
        for op in self.info.get("Transforms") or []:
            name, a = next(iter(op.items()))
            if name == "Normalize":
                a = a or {}
                mean, std = np.asarray(a.get("mean", [0.5]), float), np.asarray(a.get("std", [0.5]), float)
                lo = np.asarray(a.get("min_val") or [0.0], float)
                hi = np.asarray(a.get("max_val") or [255.0], float)
                return float(max(np.abs(((v - lo) / (hi - lo) - mean) / std).max() for v in (0.0, 255.0)))
        return None

    def _check_values(self, raw, x, source):
        """Warn (once per predictor) when the normalised input lies far outside what an 8-bit image reaches under
        the export's Normalize, e.g. a uint16 scene fed to a model normalised for 0-255: predictions on such an
        input are meaningless. The bound is 4x the 8-bit reach (about 10 for ImageNet statistics)."""
        reach = self._eight_bit_reach()
        if reach is None or getattr(self, "_range_warned", False) or x.size == 0:
            return
        zmax = float(np.nanmax(np.abs(x)))
        if zmax > 4.0 * max(reach, 1.0):
            self._range_warned = True
            warnings.warn(
                f"{source}: {raw.dtype} values in [{float(np.nanmin(raw)):g}, {float(np.nanmax(raw)):g}] are "
                f"normalised to magnitudes up to {zmax:.3g} by the model's Normalize (model.yml), while 8-bit "
                f"images reach {reach:.3g}: predictions on this input are likely meaningless. Rescale the raster as "
                f"the training data was (e.g. to 0-255) before inference.", RuntimeWarning, stacklevel=3)

    def _preprocess_one(self, image):
        img = self._decode(image)
        sample = {"image": img, "trans_info": []}
        if self.transforms is not None:
            sample = self.transforms(sample)
        x = np.asarray(sample["image"])
        if x.ndim == 2:
            x = x[:, :, None]
        x = np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)
        if self.transforms is not None:
            self._check_values(img, x, os.fspath(image) if isinstance(image, (str, os.PathLike)) else "array input")
        return x, list(sample.get("trans_info") or []), img.shape[:2]

    def _run(self, batch: np.ndarray) -> List[np.ndarray]:
        h = self.predictor.get_input_handle(self.input_name)
        h.reshape(list(batch.shape))
        h.copy_from_cpu(batch)
        self.predictor.run()
        return [self.predictor.get_output_handle(n).copy_to_cpu() for n in self.output_names]

    def run_batch(self, batch: np.ndarray):
        """Raw graph call on an already pre-processed NCHW float32 batch: ``(label, score)`` as exported
        (seg: [N,H,W] int32, [N,H,W,C] float32; cls: [N] int64, [N,K] float32). No pre/post-processing."""
        return self._split_outputs(self._run(np.ascontiguousarray(batch, dtype=np.float32)))

    def _split_outputs(self, outs):
        """(label, score) arrays, identified by rank so the output order does not matter."""
        if self.task == "seg":
            label = next(o for o in outs if o.ndim == 3)
            score = next(o for o in outs if o.ndim == 4)
        else:
            label = next(o for o in outs if o.ndim == 1)
            score = next(o for o in outs if o.ndim == 2)
        return label, score

    def _batches(self, xs: List[np.ndarray]):
        """Consecutive same-shape runs, at most the exported fixed batch size each."""
        fixed_n = None
        if self.fixed_input_shape and int(self.fixed_input_shape[0]) > 0:
            fixed_n = int(self.fixed_input_shape[0])
        i = 0
        while i < len(xs):
            j = i + 1
            while j < len(xs) and xs[j].shape == xs[i].shape and (fixed_n is None or j - i < fixed_n):
                j += 1
            yield i, j
            i = j

    def predict(self, images: Union[str, np.ndarray, Sequence]) -> List[Dict]:
        """Predict one image (path or HWC array) or a list of them; returns a list of result dicts."""
        if isinstance(images, (str, os.PathLike, np.ndarray)):
            images = [images]
        images = list(images)
        t0 = time.perf_counter()
        pre = [self._preprocess_one(im) for im in images]
        t1 = time.perf_counter()
        xs = [p[0] for p in pre]
        labels, scores = [None] * len(xs), [None] * len(xs)
        for i, j in self._batches(xs):
            lab, sc = self._split_outputs(self._run(np.stack(xs[i:j])))
            for k in range(i, j):
                labels[k], scores[k] = lab[k - i], sc[k - i]
        t2 = time.perf_counter()
        results = []
        for k, (_, trans_info, _) in enumerate(pre):
            if self.task == "seg":
                lab, sc = undo_trans_info(labels[k], scores[k], trans_info)
                results.append({"label_map": lab, "score_map": sc})
            else:
                sc = np.asarray(scores[k], dtype=np.float32)
                order = np.argsort(-sc, kind="stable")[:min(self.topk, sc.shape[0])]
                results.append({
                    "scores": sc, "label": int(labels[k]),
                    "topk": [{"class_id": int(c), "label": self._label_name(int(c)), "score": float(sc[c])}
                             for c in order]})
        t3 = time.perf_counter()
        self.last_timings = {"preprocess": (t1 - t0) * 1e3, "inference": (t2 - t1) * 1e3,
                             "postprocess": (t3 - t2) * 1e3, "images": len(images)}
        return results

    def _label_name(self, c: int) -> str:
        return str(self.labels[c]) if c < len(self.labels) else f"class_{c}"

    # ----------------------------------------------------------------------------------------------------
    def slider_predict(self, image, block_size, overlap=36, merge_strategy: str = "keep_last",
                       batch_size: int = 1, return_scores: bool = True, progress: bool = True) -> Dict:
        """Predict a large raster tile by tile (tipc.md §7.4).

        Tiles of ``block_size`` (int or (h, w)) start every ``block - overlap`` pixels; the last tile of a
        row / column is flush with the edge, so all tiles are full blocks when the raster is larger than a
        block (a raster smaller than a block is one tile, handled by the model's transforms).
        ``merge_strategy``: ``'accum'`` averages the tiles' probabilities per pixel and takes the argmax;
        ``'keep_first'`` / ``'keep_last'`` keep the first / last tile's prediction where tiles overlap.
        Memory: the merge works on a strip of one tile row, so besides the raster only the outputs are
        held (``return_scores=False`` drops the HxWxC score map). Returns ``{'label_map', 'score_map'}``.
        """
        if self.task != "seg":
            raise ValueError("slider_predict is for segmenters")
        if merge_strategy not in ("accum", "keep_first", "keep_last"):
            raise ValueError(f"merge_strategy must be 'accum', 'keep_first' or 'keep_last', got {merge_strategy!r}")
        from tqdm import tqdm

        img = self._decode(image)
        H, W = img.shape[:2]
        bh, bw = _pair(block_size, "block_size")
        oh, ow = _pair(overlap, "overlap")
        if not (0 <= oh < bh and 0 <= ow < bw):
            raise ValueError(f"overlap {overlap} must be >= 0 and smaller than block_size {block_size}")
        ys = tile_starts(H, bh, bh - oh)
        xs = tile_starts(W, bw, bw - ow)
        label_out = np.zeros((H, W), np.int32)
        score_out = None
        acc = cnt = lab = written = None     # strip buffers covering rows [top, top + len)
        top = 0
        bar = tqdm(total=len(ys) * len(xs), desc="slider_predict", unit="tile", disable=not progress)
        try:
            for r, y in enumerate(ys):
                th = min(bh, H - y)
                tiles = [(x, img[y:y + th, x:x + min(bw, W - x)]) for x in xs]
                preds = []
                for b in range(0, len(tiles), max(1, int(batch_size))):
                    preds += self.predict([t for _, t in tiles[b:b + max(1, int(batch_size))]])
                    bar.update(len(tiles[b:b + max(1, int(batch_size))]))
                if acc is None:
                    C = preds[0]["score_map"].shape[-1]
                    acc = np.zeros((0, W, C), np.float32)
                    cnt = np.zeros((0, W), np.float32)
                    lab = np.zeros((0, W), np.int32)
                    written = np.zeros((0, W), bool)
                    if return_scores:
                        score_out = np.zeros((H, W, C), np.float32)
                grow = y + th - top - acc.shape[0]
                if grow > 0:
                    acc = np.concatenate([acc, np.zeros((grow,) + acc.shape[1:], np.float32)])
                    cnt = np.concatenate([cnt, np.zeros((grow, W), np.float32)])
                    lab = np.concatenate([lab, np.zeros((grow, W), np.int32)])
                    written = np.concatenate([written, np.zeros((grow, W), bool)])
                for (x, tile), pred in zip(tiles, preds):
                    p, l = pred["score_map"], pred["label_map"]
                    sl = (slice(y - top, y - top + tile.shape[0]), slice(x, x + tile.shape[1]))
                    if merge_strategy == "accum":
                        acc[sl] += p
                        cnt[sl] += 1.0
                    elif merge_strategy == "keep_last":
                        acc[sl] = p
                        lab[sl] = l
                    else:
                        m = ~written[sl]
                        acc[sl][m] = p[m]
                        lab[sl][m] = l[m]
                        written[sl] = True
                nxt = ys[r + 1] if r + 1 < len(ys) else H
                k = nxt - top
                if merge_strategy == "accum":
                    prob = acc[:k] / cnt[:k, :, None]
                    label_out[top:nxt] = np.argmax(prob, axis=-1)
                else:
                    prob = acc[:k]
                    label_out[top:nxt] = lab[:k]
                if return_scores:
                    score_out[top:nxt] = prob
                acc, cnt, lab, written = acc[k:], cnt[k:], lab[k:], written[k:]
                top = nxt
        finally:
            bar.close()
        out = {"label_map": label_out}
        if return_scores:
            out["score_map"] = score_out
        return out
