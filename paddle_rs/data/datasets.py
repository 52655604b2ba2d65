"""Datasets, file lists, sliding windows, COCO rasterisation and synthetic data (numpy only).

- :class:`SegDataset`: file list of ``<img_rel> <mask_rel>`` lines (tipc.md §5.3) -> (image CHW float32,
  mask HW int64).
- :class:`ClsDataset`: the upstream RSMamba ``datainfo/`` format (rsmamba.md §7.1): ``cls_names.txt`` (one
  class per line, label = line index) and split files of ``<class>/<file>`` lines, the class being the
  first path component; the image is ``root/<line>`` -> (image CHW float32, label int64).
- :func:`sliding_windows`: factseg.md §6.1 window starts, shared by the evaluation of every seg model.
- COCO helpers used by ``tools/prepare_dataset.py``: :func:`load_coco`, :func:`coco_semantic_mask`,
  :func:`object_crop_box`.
- :func:`make_synthetic_seg_dataset` (tipc.md §5.3) and :func:`make_synthetic_cls_dataset`, for runs
  without the shared data.

The classes are plain map-style datasets (``__len__`` / ``__getitem__`` returning numpy); ``paddle.io.DataLoader``
accepts them as they are, so nothing here imports paddle.
"""
import math
import os
import re
import tempfile
from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from .raster_io import make_palette, read_image, read_mask, write_geotiff, write_image_png, write_mask_png
from .transforms import Compose, ToCHW, build_transforms

__all__ = [
    "SegDataset", "ClsDataset", "Window", "window_starts", "sliding_windows",
    "read_seg_file_list", "read_cls_split", "read_class_names", "read_meanstd", "format_meanstd",
    "write_text_atomic", "load_coco", "coco_category_map", "coco_semantic_mask", "object_crop_box",
    "make_synthetic_seg_dataset", "make_synthetic_cls_dataset",
]


# ----------------------------------------------------------------------------------------------------------
# text files
# ----------------------------------------------------------------------------------------------------------
def write_text_atomic(path: str, lines: Sequence[str]) -> None:
    """Write ``lines`` (newline-terminated) to ``path`` via a temp file + ``os.replace``: a crash never
    leaves a half-written list."""
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=".txt", dir=d)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.writelines(f"{line}\n" for line in lines)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _iter_lines(path: str):
    """(line_number, stripped line) for non-empty, non-comment lines."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"list file not found: {path}")
    with open(path, "r", encoding="utf-8") as f:
        for no, raw in enumerate(f, 1):
            line = raw.strip()
            if line and not line.startswith("#"):
                yield no, line


def read_class_names(path: str) -> List[str]:
    """``cls_names.txt`` / ``labels.txt``: one class name per line (label = index)."""
    names = [line for _, line in _iter_lines(path)]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"{path}: duplicate class names {dup}")
    return names


def read_seg_file_list(list_path: str, root: str, check_exists: bool = True) -> List[Tuple[str, str]]:
    """Parse ``<img_rel> <mask_rel>`` lines; paths are relative to ``root`` (absolute paths kept)."""
    items = []
    for no, line in _iter_lines(list_path):
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{list_path}:{no}: expected '<img_rel> <mask_rel>' (two paths separated by "
                             f"one space, no spaces inside paths), got {line!r}")
        paths = tuple(os.path.join(root, p) for p in parts)
        if check_exists:
            for kind, p in zip(("image", "mask"), paths):
                if not os.path.isfile(p):
                    raise FileNotFoundError(f"{list_path}:{no}: {kind} file not found: {p}")
        items.append(paths)
    if not items:
        raise ValueError(f"{list_path}: the file list is empty")
    return items


def read_cls_split(split_path: str, root: str, classes: Sequence[str],
                   check_exists: bool = True) -> List[Tuple[str, int]]:
    """Parse a datainfo split file: ``<class>/<file>`` per line -> [(root/line, class index)]."""
    index = {c: i for i, c in enumerate(classes)}
    items = []
    for no, line in _iter_lines(split_path):
        if "/" not in line:
            raise ValueError(f"{split_path}:{no}: expected '<class>/<file>' (one relative path per line, the "
                             f"class folder first), got {line!r}")
        cls = line.split("/")[0]
        if cls not in index:
            raise ValueError(f"{split_path}:{no}: class {cls!r} is not in the class list "
                             f"({len(classes)} classes: {', '.join(classes[:8])}{', ...' if len(classes) > 8 else ''})")
        path = os.path.join(root, line)
        if check_exists and not os.path.isfile(path):
            raise FileNotFoundError(f"{split_path}:{no}: image file not found: {path}")
        items.append((path, index[cls]))
    if not items:
        raise ValueError(f"{split_path}: the split file is empty")
    return items


_FLOATS = r"\[([^\]]*)\]"


def read_meanstd(path: str) -> Tuple[List[float], List[float]]:
    """Parse datainfo ``meanstd.txt`` (``mean: [m1 m2 m3], std: [s1 s2 s3]``, 0–255 RGB)."""
    with open(path, "r", encoding="utf-8") as f:
        text = f.read()
    m = re.search(r"mean\s*:\s*" + _FLOATS, text)
    s = re.search(r"std\s*:\s*" + _FLOATS, text)
    if not m or not s:
        raise ValueError(f"{path}: expected 'mean: [..], std: [..]', got {text.strip()[:80]!r}")
    parse = lambda g: [float(v) for v in re.split(r"[\s,]+", g.strip()) if v]  # noqa: E731
    return parse(m.group(1)), parse(s.group(1))


def format_meanstd(mean, std) -> str:
    """The datainfo ``meanstd.txt`` line (numpy array printing, as upstream)."""
    fmt = lambda v: np.array2string(np.asarray(v, dtype=np.float64), precision=8, separator=" ")  # noqa: E731
    return f"mean: {fmt(mean)}, std: {fmt(std)}"


# ----------------------------------------------------------------------------------------------------------
# datasets
# ----------------------------------------------------------------------------------------------------------
def _resolve(path: str, root: str) -> str:
    path = os.fspath(path)
    if os.path.isabs(path) or os.path.exists(path):
        return path
    return os.path.join(root, path)


class _BaseDataset:
    def __init__(self, transforms, seed: Optional[int]):
        self.transforms = build_transforms(transforms) if transforms is not None else Compose([])
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """With ``seed`` set, sample ``i`` of epoch ``e`` always gets the same augmentation, whatever the
        number of loader workers (the generator is seeded with ``(seed, epoch, i)``)."""
        self.epoch = int(epoch)

    def _rng(self, idx: int):
        if self.seed is None:
            return None                          # the Compose generator (stateful, seedable)
        return np.random.default_rng([int(self.seed), self.epoch, int(idx)])

    @staticmethod
    def _finish(sample: dict) -> dict:
        return ToCHW()(sample)


class SegDataset(_BaseDataset):
    """Semantic segmentation from a file list (tipc.md §5.3).

    ``file_list``: path (absolute, relative to cwd, or relative to ``root``) of ``<img_rel> <mask_rel>`` lines.
    ``transforms``: :class:`Compose`, list of ops or ``[{OpName: {args}}]``; the result is converted to CHW
    float32 if the pipeline does not end with ToCHW. Masks must hold ``0..num_classes-1`` or
    ``ignore_index``; anything else raises naming the file. ``expect_bands`` checks the image band count.
    """

    def __init__(self, root: str, file_list: str, transforms=None, num_classes: Optional[int] = None,
                 ignore_index: int = 255, expect_bands: Optional[int] = None, seed: Optional[int] = None,
                 color_map=None):
        super().__init__(transforms, seed)
        self.root = os.fspath(root)
        self.file_list = _resolve(file_list, self.root)
        self.items = read_seg_file_list(self.file_list, self.root)
        self.num_classes = num_classes
        self.ignore_index = int(ignore_index)
        self.expect_bands = expect_bands
        self.color_map = color_map

    def __len__(self):
        return len(self.items)

    def load(self, idx: int) -> dict:
        """The raw sample (no transforms): image HWC, mask HW int64, paths, empty trans_info."""
        img_path, mask_path = self.items[idx]
        image = read_image(img_path, expect_bands=self.expect_bands)
        mask = read_mask(mask_path, color_map=self.color_map)
        if mask.shape != image.shape[:2]:
            raise ValueError(f"{mask_path}: mask is {mask.shape[0]}x{mask.shape[1]} but image {img_path} is "
                             f"{image.shape[0]}x{image.shape[1]}")
        if self.num_classes is not None:
            bad = (mask < 0) | ((mask >= self.num_classes) & (mask != self.ignore_index))
            if bad.any():
                vals = np.unique(mask[bad])[:10].tolist()
                raise ValueError(f"{mask_path}: label values {vals} are outside 0..{self.num_classes - 1} "
                                 f"and are not the ignore index {self.ignore_index}")
        return dict(image=image, mask=mask, trans_info=[], image_path=img_path, mask_path=mask_path)

    def get_sample(self, idx: int, rng=None) -> dict:
        """Transformed sample dict (image CHW float32, mask, trans_info, paths)."""
        sample = self.transforms(self.load(idx), rng if rng is not None else self._rng(idx))
        return self._finish(sample)

    def __getitem__(self, idx: int):
        s = self.get_sample(idx)
        return s["image"], s["mask"]


class ClsDataset(_BaseDataset):
    """Scene classification in the upstream RSMamba ``datainfo/`` format (rsmamba.md §7.1).

    ``classes``: list of names or the path of ``cls_names.txt``; ``split_file``: path of ``train.txt`` /
    ``val.txt`` (lines ``<class>/<file>``). Returns (image CHW float32, label int64).
    """

    def __init__(self, root: str, split_file: str, classes: Union[str, Sequence[str]], transforms=None,
                 expect_bands: Optional[int] = None, seed: Optional[int] = None):
        super().__init__(transforms, seed)
        self.root = os.fspath(root)
        if isinstance(classes, (str, os.PathLike)):
            classes = read_class_names(_resolve(classes, self.root))
        self.classes = list(classes)
        self.split_file = _resolve(split_file, self.root)
        self.items = read_cls_split(self.split_file, self.root, self.classes)
        self.expect_bands = expect_bands

    def __len__(self):
        return len(self.items)

    def get_sample(self, idx: int, rng=None) -> dict:
        path, label = self.items[idx]
        sample = dict(image=read_image(path, expect_bands=self.expect_bands), trans_info=[],
                      image_path=path, label=label)
        sample = self.transforms(sample, rng if rng is not None else self._rng(idx))
        return self._finish(sample)

    def __getitem__(self, idx: int):
        s = self.get_sample(idx)
        return s["image"], np.int64(s["label"])


# ----------------------------------------------------------------------------------------------------------
# sliding windows (factseg.md §6.1)
# ----------------------------------------------------------------------------------------------------------
class Window(NamedTuple):
    """A window ``[y, y+h) x [x, x+w)``."""
    y: int
    x: int
    h: int
    w: int

    @property
    def slices(self):
        return slice(self.y, self.y + self.h), slice(self.x, self.x + self.w)


def window_starts(length: int, size: int, stride: int) -> List[int]:
    """``k = min(size, L)``, ``n = ceil((L - k) / stride)``, starts ``min(i * stride, L - k)`` for i = 0..n."""
    if length < 1 or size < 1 or stride < 1:
        raise ValueError(f"length, size and stride must be >= 1 (got {length}, {size}, {stride})")
    k = min(size, length)
    n = -(-(length - k) // stride)                  # exact integer ceil
    return [min(i * stride, length - k) for i in range(n + 1)]


def sliding_windows(height: int, width: int, size, stride) -> List[Window]:
    """Cartesian product of the row and column starts (rows outer), each window ``min(size, L)`` long.

    ``size`` / ``stride``: int or (h, w). E.g. 896/512 on a 1000-px axis gives starts [0, 104].
    """
    sh, sw = (size, size) if isinstance(size, int) else tuple(size)
    th, tw = (stride, stride) if isinstance(stride, int) else tuple(stride)
    kh, kw = min(sh, height), min(sw, width)
    return [Window(y, x, kh, kw) for y in window_starts(height, sh, th) for x in window_starts(width, sw, tw)]


# ----------------------------------------------------------------------------------------------------------
# COCO -> semantic masks / object crops
# ----------------------------------------------------------------------------------------------------------
def load_coco(path: str) -> dict:
    """Load a COCO instances JSON; adds ``anns_by_image`` (image id -> annotations, file order)."""
    import json

    try:
        with open(path, "r", encoding="utf-8") as f:
            coco = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not readable as COCO JSON, the file is truncated or damaged ({e})") from e
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco, dict) or key not in coco:
            raise ValueError(f"{path}: not a COCO instances file (no {key!r})")
    by_image = {im["id"]: [] for im in coco["images"]}
    for ann in coco["annotations"]:
        if ann["image_id"] not in by_image:
            raise ValueError(f"{path}: annotation {ann.get('id')} refers to unknown image {ann['image_id']}")
        by_image[ann["image_id"]].append(ann)
    coco["anns_by_image"] = by_image
    return coco


def coco_category_map(categories: Sequence[dict]) -> Tuple[dict, List[str]]:
    """COCO category id -> label 1..K in sorted category-id order; names = ['background', ...]."""
    cats = sorted(categories, key=lambda c: c["id"])
    return {c["id"]: i + 1 for i, c in enumerate(cats)}, ["background"] + [c["name"] for c in cats]


def _rle_counts(rle: dict) -> List[int]:
    counts = rle["counts"]
    if isinstance(counts, list):
        return counts
    s = counts.encode() if isinstance(counts, str) else counts
    out, p = [], 0                               # COCO maskApi rleFrString
    while p < len(s):
        x = k = 0
        more = 1
        while more:
            c = s[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = c & 0x20
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(out) > 2:
            x += out[-2]
        out.append(x)
    return out


def _rle_decode(rle: dict, h: int, w: int) -> np.ndarray:
    rh, rw = rle.get("size", (h, w))
    flat = np.zeros(rh * rw, dtype=bool)
    pos, val = 0, False
    for n in _rle_counts(rle):
        if val:
            flat[pos:pos + n] = True
        pos += n
        val = not val
    return flat.reshape(rw, rh).T                # column-major


def _instance_mask(ann: dict, h: int, w: int) -> np.ndarray:
    """Boolean mask of one COCO instance. Polygons: a pixel is in if its centre is inside (COCO pixel
    ``(r, c)`` covers ``[c, c+1) x [r, r+1)``), via ``skimage.draw.polygon`` on coordinates shifted by -0.5."""
    from skimage.draw import polygon as draw_polygon

    seg = ann.get("segmentation")
    m = np.zeros((h, w), dtype=bool)
    if isinstance(seg, list) and seg:
        for poly in seg:
            xy = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
            if len(xy) < 3:
                continue
            rr, cc = draw_polygon(xy[:, 1] - 0.5, xy[:, 0] - 0.5, shape=(h, w))
            m[rr, cc] = True
    elif isinstance(seg, dict) and "counts" in seg:
        m = _rle_decode(seg, h, w)
    else:                                        # no segmentation: fall back on the box
        x, y, bw, bh = ann["bbox"]
        m[max(0, int(round(y))):int(round(y + bh)), max(0, int(round(x))):int(round(x + bw))] = True
    return m


def coco_semantic_mask(anns: Sequence[dict], height: int, width: int, cat_map: dict,
                       ignore_index: int = 255) -> np.ndarray:
    """Rasterise COCO instances to an HW uint8 class map: 0 background, ``cat_map[category_id]`` for
    instances, ``ignore_index`` on crowd regions not covered by a non-crowd instance.

    Overlaps: instances are painted largest area first, so a smaller object on top of a larger one stays
    visible; ties keep file order.
    """
    out = np.zeros((height, width), dtype=np.uint8)
    crowd = np.zeros((height, width), dtype=bool)
    regular = [a for a in anns if not a.get("iscrowd", 0)]
    for ann in anns:
        if ann.get("iscrowd", 0):
            crowd |= _instance_mask(ann, height, width)
    covered = np.zeros((height, width), dtype=bool)
    for ann in sorted(regular, key=lambda a: -float(a.get("area", 0.0))):
        m = _instance_mask(ann, height, width)
        out[m] = cat_map[ann["category_id"]]
        covered |= m
    out[crowd & ~covered] = ignore_index
    return out


def object_crop_box(bbox, img_h: int, img_w: int, margin: float = 0.2, min_side: int = 32):
    """Square crop centred on a COCO bbox ``[x, y, w, h]``: side ``max(w, h) * (1 + 2*margin)`` (at least
    ``min_side``, at most the image's short side), shifted to lie inside the image. Returns (y, x, side)."""
    x, y, w, h = [float(v) for v in bbox]
    side = max(w, h) * (1.0 + 2.0 * margin)
    side = int(round(min(max(side, min_side), img_h, img_w)))
    cx, cy = x + w / 2.0, y + h / 2.0
    x0 = int(round(min(max(cx - side / 2.0, 0), img_w - side)))
    y0 = int(round(min(max(cy - side / 2.0, 0), img_h - side)))
    return y0, x0, side


# ----------------------------------------------------------------------------------------------------------
# synthetic data
# ----------------------------------------------------------------------------------------------------------
def _class_colours(n: int) -> np.ndarray:
    pal = np.asarray(make_palette(), dtype=np.int64).reshape(256, 3)
    return pal[:n]


def make_synthetic_seg_dataset(out_dir: str, num_classes: int, ignore_index: int = 255, n_train: int = 6,
                               n_val: int = 2, size: int = 128, seed: int = 0,
                               labels: Optional[Sequence[str]] = None, with_geotiff: bool = False) -> dict:
    """Write a deterministic tiny segmentation dataset (tipc.md §5.3).

    Layout: ``train/images/NNN.png`` (RGB), ``train/masks/NNN.png`` (single-channel: background 0,
    non-overlapping rectangles of classes 1..N-1, and one horizontal band of ``ignore_index``), the same
    under ``val/``; ``train.txt`` / ``val.txt`` with ``<img_rel> <mask_rel>`` lines and ``labels.txt``
    (written last, atomically). Every class 1..N-1 occurs in train. Image colours follow the class so a
    model can learn something. ``with_geotiff`` adds ``extra/multiband.tif`` (4-band uint16, planar
    separate) to exercise the band-reading path. Returns a dict of the paths.
    """
    if num_classes < 2:
        raise ValueError("num_classes must be >= 2 (background + at least one class)")
    if 0 <= ignore_index < num_classes:
        raise ValueError(f"ignore_index {ignore_index} collides with a class id (0..{num_classes - 1})")
    if not 0 <= ignore_index <= 255:
        raise ValueError("ignore_index must fit an 8-bit PNG (0..255)")
    if labels is None:
        labels = ["background"] + [f"class_{i}" for i in range(1, num_classes)]
    if len(labels) != num_classes:
        raise ValueError(f"{len(labels)} labels for {num_classes} classes")
    rng = np.random.default_rng(seed)
    colours = _class_colours(num_classes)
    band_h = max(2, size // 16)
    top = size - band_h - 2                       # rectangles live above the ignore band
    grid = 4
    cell_h, cell_w = top // grid, size // grid
    fg = list(range(1, num_classes))
    per_image = max(3, -(-len(fg) // max(n_train, 1)))
    if per_image > grid * grid:
        raise ValueError(f"{len(fg)} classes do not fit {n_train} train images of {size}px; raise n_train")
    if min(cell_h, cell_w) < 6:
        raise ValueError(f"size {size} is too small")
    out_dir = os.fspath(out_dir)
    lists = {}
    for split, n in (("train", n_train), ("val", n_val)):
        lines = []
        for i in range(n):
            if split == "train":
                classes = [fg[(i * per_image + j) % len(fg)] for j in range(per_image)]
            else:
                classes = rng.choice(fg, size=min(per_image, len(fg)), replace=False).tolist()
            mask = np.zeros((size, size), dtype=np.uint8)
            cells = rng.choice(grid * grid, size=len(classes), replace=False)
            for cls, cell in zip(classes, cells):
                r0, c0 = (cell // grid) * cell_h, (cell % grid) * cell_w
                rh = int(rng.integers(cell_h // 2, cell_h - 1))
                rw = int(rng.integers(cell_w // 2, cell_w - 1))
                y = r0 + int(rng.integers(0, cell_h - rh))
                x = c0 + int(rng.integers(0, cell_w - rw))
                mask[y:y + rh, x:x + rw] = cls
            mask[size - band_h - 1:size - 1, :] = ignore_index
            base = np.where(mask[..., None] == ignore_index, 128, colours[np.minimum(mask, num_classes - 1)])
            base = np.where(mask[..., None] == 0, np.array([70, 100, 60]), base)
            image = np.clip(base + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
            img_rel = f"{split}/images/{i:03d}.png"
            mask_rel = f"{split}/masks/{i:03d}.png"
            write_image_png(os.path.join(out_dir, img_rel), image)
            write_mask_png(os.path.join(out_dir, mask_rel), mask)
            lines.append(f"{img_rel} {mask_rel}")
            if with_geotiff and split == "train" and i == 0:
                nir = np.clip(rng.normal(30000, 3000, (size, size, 1)), 0, 65535)
                bands = np.concatenate([image.astype(np.float64) * 257, nir], -1).astype(np.uint16)
                write_geotiff(os.path.join(out_dir, "extra", "multiband.tif"), bands, planar="separate")
        lists[split] = lines
    paths = dict(root=out_dir, train_list=os.path.join(out_dir, "train.txt"),
                 val_list=os.path.join(out_dir, "val.txt"), labels=os.path.join(out_dir, "labels.txt"))
    write_text_atomic(paths["labels"], labels)
    write_text_atomic(paths["val_list"], lists["val"])
    write_text_atomic(paths["train_list"], lists["train"])
    if with_geotiff:
        paths["geotiff"] = os.path.join(out_dir, "extra", "multiband.tif")
    return paths


def make_synthetic_cls_dataset(out_dir: str, num_classes: int = 3, n_train_per_class: int = 4,
                               n_val_per_class: int = 2, size: int = 64, seed: int = 0,
                               class_names: Optional[Sequence[str]] = None) -> dict:
    """Write a deterministic tiny classification dataset in the RSMamba ``datainfo`` layout.

    ``<class>/<class>_NN.png`` (RGB; each class a distinct stripe orientation/frequency and tint),
    ``train.txt`` / ``val.txt`` (``<class>/<file>`` lines), ``cls_names.txt`` (= ``labels.txt``) and
    ``meanstd.txt`` (train statistics, 0–255 RGB). Returns a dict of the paths.
    """
    if class_names is None:
        class_names = [f"class{i}" for i in range(num_classes)]
    class_names = list(class_names)
    if len(class_names) != num_classes or len(set(class_names)) != num_classes:
        raise ValueError("class_names must hold num_classes distinct names")
    rng = np.random.default_rng(seed)
    colours = _class_colours(num_classes + 1)[1:]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    out_dir = os.fspath(out_dir)
    splits = {"train": [], "val": []}
    total, total_sq, count = np.zeros(3), np.zeros(3), 0
    for k, name in enumerate(class_names):
        theta = math.pi * k / num_classes
        freq = 2 * math.pi * (2 + k % 3) / size
        for j in range(n_train_per_class + n_val_per_class):
            phase = rng.uniform(0, 2 * math.pi)
            wave = 0.5 + 0.5 * np.sin(freq * (xx * math.cos(theta) + yy * math.sin(theta)) + phase)
            img = wave[..., None] * (0.5 * colours[k] + 100) + rng.normal(0, 10, (size, size, 3))
            img = np.clip(img, 0, 255).astype(np.uint8)
            rel = f"{name}/{name}_{j:02d}.png"
            write_image_png(os.path.join(out_dir, rel), img)
            split = "train" if j < n_train_per_class else "val"
            splits[split].append(rel)
            if split == "train":
                f = img.reshape(-1, 3).astype(np.float64)
                total += f.sum(0)
                total_sq += (f * f).sum(0)
                count += f.shape[0]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean * mean, 0))
    paths = dict(root=out_dir, train_list=os.path.join(out_dir, "train.txt"),
                 val_list=os.path.join(out_dir, "val.txt"), cls_names=os.path.join(out_dir, "cls_names.txt"),
                 labels=os.path.join(out_dir, "labels.txt"), meanstd=os.path.join(out_dir, "meanstd.txt"))
    write_text_atomic(paths["cls_names"], class_names)
    write_text_atomic(paths["labels"], class_names)
    write_text_atomic(paths["meanstd"], [format_meanstd(mean, std)])
    write_text_atomic(paths["val_list"], splits["val"])
    write_text_atomic(paths["train_list"], splits["train"])
    return paths
