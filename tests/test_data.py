"""Behaviour tests of the framework-neutral data layer (paddle_rs/data) and tools/prepare_dataset.py.

Shared data (NWPU VHR-10 mini) is looked up at $PADDLE_RS_SHARED_DATA or ../shared/data; tests that need it
skip with the reason when it is absent. Runs in a few seconds on two CPU cores; no paddle / torch import.
"""
import json
import os
import sys

import numpy as np
import pytest
from PIL import Image

from paddle_rs.data.datasets import (ClsDataset, SegDataset, Window, coco_category_map, coco_semantic_mask,
                                     format_meanstd, load_coco, make_synthetic_cls_dataset,
                                     make_synthetic_seg_dataset, object_crop_box, read_meanstd,
                                     sliding_windows, window_starts)
from paddle_rs.data.raster_io import (color_to_label, read_image, read_mask, write_geotiff, write_image_png,
                                      write_mask_png)
from paddle_rs.data.transforms import (AutoAugment, CenterCrop, Compose, FixedPad, Normalize, PadToMultiple,
                                       PhotoMetricDistortion, RandomCrop, RandomHorizontalFlip,
                                       RandomResize, RandomResizedCrop, RandomRotate90, RandomVerticalFlip,
                                       Resize, ResizeEdge, ToCHW, build_transforms, resize_image)

from conftest import HAVE_NWPU, NWPU, NWPU_REASON

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_nwpu = pytest.mark.requires(HAVE_NWPU, NWPU_REASON)

IMAGENET_NORM = dict(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225], min_val=[0, 0, 0],
                     max_val=[255, 255, 255])


def _rand_img(h, w, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, c)).astype(np.uint8)


# ------------------------------------------------------------------------------------------------ transforms
def test_normalize_equals_upstream_formula():
    img = _rand_img(17, 23)
    out = Normalize(**IMAGENET_NORM)({"image": img})["image"]
    ref = (img.astype(np.float64) - [123.675, 116.28, 103.53]) / [58.395, 57.12, 57.375]
    assert out.dtype == np.float32 and out.shape == img.shape
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5)
    # RSMamba form: 0-255 statistics with min 0 / max 1 is plain (x - mean) / std
    mean, std = [123.770241, 125.41281689, 115.35737613], [44.17314347, 41.63589266, 39.5737929]
    out = Normalize(mean, std, [0, 0, 0], [1, 1, 1])({"image": img})["image"]
    np.testing.assert_allclose(out, (img - np.array(mean)) / np.array(std), atol=1e-5)
    with pytest.raises(ValueError, match="statistics for 3 bands, the image has 4"):
        Normalize(**IMAGENET_NORM)({"image": _rand_img(4, 4, 4)})


def test_pad_to_multiple_values_and_trans_info():
    img, mask = _rand_img(100, 70), np.ones((100, 70), np.int64)
    s = PadToMultiple(32)({"image": img, "mask": mask, "trans_info": []})
    assert s["image"].shape == (128, 96, 3) and s["mask"].shape == (128, 96)
    assert np.array_equal(s["image"][:100, :70], img)
    assert (s["image"][100:] == 0).all() and (s["image"][:, 70:] == 0).all()
    assert (s["mask"][100:] == 255).all() and (s["mask"][:, 70:] == 255).all() and (s["mask"][:100, :70] == 1).all()
    assert s["trans_info"] == [("padding", (100, 70), (0, 0))]
    # already a multiple: nothing padded, nothing recorded
    s = PadToMultiple(32)({"image": _rand_img(64, 32), "trans_info": []})
    assert s["image"].shape == (64, 32, 3) and s["trans_info"] == []
    # after Normalize the pad value 0 lands in normalised space (factseg.md §6.1)
    s = Compose([Normalize(**IMAGENET_NORM), PadToMultiple(32, label_pad=5)])({"image": img, "mask": mask})
    assert s["image"].dtype == np.float32 and (s["image"][100:] == 0).all() and (s["mask"][100:] == 5).all()
    assert PadToMultiple(32).to_config() == {"PadToMultiple": {"divisor": 32, "pad_value": 0.0}}


def test_fixed_pad_factseg_style():
    img, mask = _rand_img(50, 60), np.zeros((50, 60), np.int64)
    s = FixedPad(64)({"image": img, "mask": mask})
    assert s["image"].shape == (64, 64, 3) and (s["mask"][50:] == 255).all() and (s["mask"][:50, :60] == 0).all()
    assert s["trans_info"] == [("padding", (50, 60), (0, 0))]
    with pytest.raises(ValueError, match="larger than the pad size"):
        FixedPad(32)({"image": img})


@pytest.mark.parametrize("op", [RandomHorizontalFlip(1.0), RandomVerticalFlip(1.0), RandomRotate90((1,)),
                                RandomRotate90((3,)), RandomCrop((20, 30)),
                                Compose([RandomHorizontalFlip(), RandomVerticalFlip(), RandomRotate90()])])
def test_geometric_ops_keep_image_and_mask_aligned(op):
    rng = np.random.default_rng(0)
    img = _rand_img(40, 56)
    mask = img[:, :, 0].astype(np.int64) % 7          # the mask is a function of the pixel
    for seed in range(8):
        s = Compose([op])({"image": img, "mask": mask}, rng=np.random.default_rng(seed + rng.integers(100)))
        assert s["mask"].shape == s["image"].shape[:2]
        assert np.array_equal(s["mask"], s["image"][:, :, 0].astype(np.int64) % 7)


def test_flip_rotate_semantics():
    img = _rand_img(4, 6)
    assert np.array_equal(RandomHorizontalFlip(1.0)({"image": img}, np.random.default_rng())["image"], img[:, ::-1])
    assert np.array_equal(RandomVerticalFlip(1.0)({"image": img}, np.random.default_rng())["image"], img[::-1])
    assert np.array_equal(RandomRotate90((1,))({"image": img}, np.random.default_rng())["image"], np.rot90(img))
    assert np.array_equal(RandomHorizontalFlip(0.0)({"image": img}, np.random.default_rng())["image"], img)


def test_resize_bilinear_nearest_and_trans_info():
    img = np.array([[0.0, 10.0]], np.float32)[:, :, None]            # 1x2 -> 1x4, half-pixel centres
    out = resize_image(img, (1, 4))[0, :, 0]
    np.testing.assert_allclose(out, [0.0, 2.5, 7.5, 10.0])
    mask = np.arange(12).reshape(3, 4)
    s = Resize([6, 2])({"image": _rand_img(3, 4), "mask": mask, "trans_info": []})
    assert s["image"].shape == (6, 2, 3) and s["image"].dtype == np.uint8
    assert np.array_equal(s["mask"], mask[[0, 0, 1, 1, 2, 2]][:, [0, 2]])   # floor(i * src / dst)
    assert s["trans_info"] == [("resize", (3, 4))]


def test_random_resize_and_crop_mmseg_semantics():
    s = RandomResize(64)({"image": _rand_img(100, 50)}, np.random.default_rng(0))     # keep ratio, fit 64x64
    assert s["image"].shape[:2] == (64, 32)
    sizes = {RandomResize(64, [0.5, 2.0])({"image": _rand_img(64, 64)}, np.random.default_rng(i))["image"].shape[0]
             for i in range(20)}
    assert min(sizes) >= 32 and max(sizes) <= 128 and len(sizes) > 5
    # cat_max_ratio: a crop that is mostly one class is re-drawn
    mask = np.zeros((100, 100), np.int64)
    mask[:, 50:] = 1                                   # ~70 % of the 60-px crops satisfy the ratio
    ok = lambda m: len(np.unique(m)) > 1 and np.bincount(m.ravel()).max() / m.size < 0.75  # noqa: E731
    draws = lambda op: [ok(op({"image": _rand_img(100, 100), "mask": mask},  # noqa: E731
                              np.random.default_rng(seed))["mask"]) for seed in range(20)]
    assert all(draws(RandomCrop(60, cat_max_ratio=0.75)))
    assert not all(draws(RandomCrop(60)))             # without the check some crops are one-class-heavy
    assert RandomCrop(60, 0.75)({"image": _rand_img(100, 100), "mask": mask * 0},  # one class only: gives up
                                np.random.default_rng(0))["mask"].shape == (60, 60)
    # smaller than the crop: kept whole, padded later by FixedPad
    s = Compose([RandomCrop(64), FixedPad(64, label_pad=5)])({"image": _rand_img(40, 50), "mask": mask[:40, :50]})
    assert s["image"].shape == (64, 64, 3) and (s["mask"][40:] == 5).all()


def test_photometric_distortion_uint8():
    img = _rand_img(16, 16)
    outs = [PhotoMetricDistortion()({"image": img}, np.random.default_rng(i))["image"] for i in range(6)]
    assert all(o.dtype == np.uint8 and o.shape == img.shape for o in outs)
    assert any(not np.array_equal(o, img) for o in outs)
    with pytest.raises(ValueError, match="before Normalize"):
        PhotoMetricDistortion()({"image": img.astype(np.float32)}, np.random.default_rng(0))


def test_classification_ops():
    s = Compose([ResizeEdge(256), CenterCrop(224)])({"image": _rand_img(300, 400)})
    assert s["image"].shape == (224, 224, 3) and s["trans_info"] == [("resize", (300, 400))]
    big = np.arange(256 * 341).reshape(256, 341)                      # ResizeEdge gives 256 x int(256*400/300)
    assert CenterCrop(224)({"image": _rand_img(256, 341), "mask": big})["mask"][0, 0] == big[16, 58]
    train = Compose([RandomResizedCrop(64, scale=(0.4, 1.0)), RandomHorizontalFlip(), RandomVerticalFlip(),
                     AutoAugment(pad_val=[124, 125, 115])], seed=3)
    a = [train({"image": _rand_img(80, 100)})["image"] for _ in range(10)]
    assert all(x.shape == (64, 64, 3) and x.dtype == np.uint8 for x in a)
    train.reseed(3)
    b = [train({"image": _rand_img(80, 100)})["image"] for _ in range(10)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_config_round_trip_and_seeded_reproducibility():
    pipe = Compose([RandomResize(48, [0.5, 2.0]), RandomCrop(32, 0.75), RandomHorizontalFlip(),
                    RandomVerticalFlip(), RandomRotate90(), PhotoMetricDistortion(), Normalize(**IMAGENET_NORM),
                    FixedPad(32), ToCHW()])
    cfg = pipe.to_config()
    assert cfg[6] == {"Normalize": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                                    "min_val": [0.0, 0.0, 0.0], "max_val": [255.0, 255.0, 255.0]}}
    plain = (int, float, str, bool, type(None))
    walk = lambda v: all(map(walk, v.values())) if isinstance(v, dict) else (  # noqa: E731
        all(map(walk, v)) if isinstance(v, list) else isinstance(v, plain))
    assert walk({"c": cfg})
    rebuilt = build_transforms(cfg, seed=7)
    assert rebuilt.to_config() == cfg
    sample = {"image": _rand_img(48, 48), "mask": np.zeros((48, 48), np.int64)}
    x = rebuilt(sample)
    rebuilt.reseed(7)
    y = rebuilt(sample)
    assert x["image"].shape == (3, 32, 32) and x["image"].dtype == np.float32 and x["mask"].dtype == np.int64
    assert np.array_equal(x["image"], y["image"]) and np.array_equal(x["mask"], y["mask"])
    with pytest.raises(KeyError, match="unknown transform 'Nope'"):
        build_transforms([{"Nope": {}}])


# ------------------------------------------------------------------------------------------------ raster io
def test_tiff_planar_and_contiguous_give_same_hwc(tmp_path):
    import tifffile

    arr = np.random.default_rng(0).integers(0, 4000, (12, 20, 5)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "contig.tif", arr, photometric="minisblack", planarconfig="contig")
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(arr, -1, 0), photometric="minisblack",
                     planarconfig="separate")
    with tifffile.TiffFile(tmp_path / "planar.tif") as t:
        assert t.series[0].shape == (5, 12, 20)            # tifffile itself returns C,H,W here
    for name in ("contig.tif", "planar.tif"):
        got = read_image(tmp_path / name)
        assert got.shape == (12, 20, 5) and got.dtype == np.uint16 and np.array_equal(got, arr), name
    write_geotiff(tmp_path / "w.tif", arr, planar="separate")
    assert np.array_equal(read_image(tmp_path / "w.tif"), arr)


def test_read_image_formats(tmp_path):
    rgb = _rand_img(9, 11)
    write_image_png(tmp_path / "a.png", rgb)
    Image.fromarray(rgb[:, :, 0]).save(tmp_path / "g.png")
    np.save(tmp_path / "a.npy", rgb[:, :, :2])
    assert np.array_equal(read_image(tmp_path / "a.png"), rgb)
    assert read_image(tmp_path / "g.png").shape == (9, 11, 3)              # PIL -> RGB
    assert read_image(tmp_path / "a.npy").shape == (9, 11, 2)
    assert read_image(rgb[:, :, 0]).shape == (9, 11, 1)                    # ndarray taken as HWC
    with pytest.raises(FileNotFoundError, match="missing.png"):
        read_image(tmp_path / "missing.png")


def test_band_count_mismatch_message():
    with pytest.raises(ValueError) as e:
        read_image(np.zeros((8, 8, 4), np.uint8), expect_bands=3)
    msg = str(e.value)
    assert "found 4 band(s)" in msg and "expects 3 band(s)" in msg and "in_channels=4" in msg


def test_masks_read_write(tmp_path):
    m = np.random.default_rng(0).integers(0, 11, (10, 12))
    m[0] = 255
    write_mask_png(tmp_path / "m.png", m)
    assert Image.open(tmp_path / "m.png").mode == "L"
    got = read_mask(tmp_path / "m.png")
    assert got.dtype == np.int64 and np.array_equal(got, m)
    with pytest.raises(ValueError, match="0..255"):
        write_mask_png(tmp_path / "bad.png", m + 300)
    # FactSeg RemoveColorMap: key R + 2G + 3B, unknown colours -> 0
    rgb = np.array([[[0, 0, 63], [0, 100, 155], [1, 2, 3]]], np.uint8)
    assert color_to_label(rgb).tolist() == [[1, 15, 0]]


def test_write_geotiff_keeps_georeferencing(tmp_path):
    import rasterio
    from rasterio.transform import from_origin

    tf = from_origin(500000, 4000000, 0.5, 0.5)
    with rasterio.open(tmp_path / "src.tif", "w", driver="GTiff", height=8, width=9, count=4, dtype="uint16",
                       crs="EPSG:32633", transform=tf) as dst:
        dst.write(np.ones((4, 8, 9), np.uint16))
    assert read_image(str(tmp_path / "src.tif")).shape == (8, 9, 4)
    write_geotiff(tmp_path / "pred.tif", np.zeros((8, 9), np.uint8), reference=str(tmp_path / "src.tif"))
    with rasterio.open(tmp_path / "pred.tif") as src:
        assert src.crs.to_epsg() == 32633 and src.transform == tf and src.count == 1


# ------------------------------------------------------------------------------------------------ windows
@pytest.mark.parametrize("length,size,stride,starts", [
    (1000, 896, 512, [0, 104]),              # n = ceil(104/512) = 1
    (2000, 896, 512, [0, 512, 1024, 1104]),  # n = ceil(1104/512) = 3, last clamped to L - k
    (1408, 896, 512, [0, 512]),              # exact fit
    (1409, 896, 512, [0, 512, 513]),
    (896, 896, 512, [0]),
    (600, 896, 512, [0]),                    # k = min(896, L): one smaller window
    (896, 512, 384, [0, 384]),               # rsp_upernet.md §8: an 896 patch gives windows at {0, 384}
])
def test_window_starts_hand_computed(length, size, stride, starts):
    assert window_starts(length, size, stride) == starts


def test_sliding_windows_product_and_coverage():
    wins = sliding_windows(600, 2000, 896, 512)
    assert wins[:2] == [Window(0, 0, 600, 896), Window(0, 512, 600, 896)] and len(wins) == 4
    cover = np.zeros((1000, 1500), int)
    for w in sliding_windows(1000, 1500, 896, 512):
        assert w.h == 896 and w.w == 896
        cover[w.slices] += 1
    assert cover.min() >= 1


# ------------------------------------------------------------------------------------------------ datasets
def test_synthetic_seg_dataset_deterministic_and_complete(tmp_path):
    a = make_synthetic_seg_dataset(tmp_path / "a", num_classes=16, ignore_index=255)
    b = make_synthetic_seg_dataset(tmp_path / "b", num_classes=16, ignore_index=255)
    lines = open(a["train_list"]).read().splitlines()
    assert len(lines) == 6 and len(open(a["val_list"]).read().splitlines()) == 2
    assert all(len(line.split(" ")) == 2 for line in lines)
    assert len(open(a["labels"]).read().splitlines()) == 16
    for rel in [p for line in lines for p in line.split(" ")]:
        assert open(os.path.join(a["root"], rel), "rb").read() == open(os.path.join(b["root"], rel), "rb").read()
    ds = SegDataset(a["root"], "train.txt", [Normalize(**IMAGENET_NORM)], num_classes=16)
    seen = set()
    for i in range(len(ds)):
        img, mask = ds[i]
        assert img.shape == (3, 128, 128) and img.dtype == np.float32 and mask.dtype == np.int64
        assert Image.open(ds.items[i][1]).mode == "L" and read_image(ds.items[i][0]).shape == (128, 128, 3)
        seen |= set(np.unique(mask).tolist())
    assert seen == set(range(16)) | {255}
    # Potsdam style: 5 classes, ignore 5
    p = make_synthetic_seg_dataset(tmp_path / "p", num_classes=5, ignore_index=5, n_train=2, n_val=1, size=64)
    vals = set()
    for img, mask in SegDataset(p["root"], p["train_list"], num_classes=5, ignore_index=5):
        vals |= set(np.unique(mask).tolist())
    assert vals == {0, 1, 2, 3, 4, 5}
    with pytest.raises(ValueError, match="collides"):
        make_synthetic_seg_dataset(tmp_path / "x", num_classes=6, ignore_index=5)


def test_seg_dataset_errors_name_file_and_line(tmp_path):
    d = make_synthetic_seg_dataset(tmp_path, num_classes=4, ignore_index=255, n_train=2, n_val=1, size=32)
    bad = tmp_path / "bad.txt"
    bad.write_text("train/images/000.png train/masks/000.png\n\ntrain/images/001.png\n")
    with pytest.raises(ValueError, match=r"bad.txt:3: expected '<img_rel> <mask_rel>'"):
        SegDataset(d["root"], str(bad))
    bad.write_text("train/images/000.png train/masks/nope.png\n")
    with pytest.raises(FileNotFoundError, match=r"bad.txt:1: mask file not found: .*nope.png"):
        SegDataset(d["root"], str(bad))
    ds = SegDataset(d["root"], "train.txt", num_classes=3)               # class 3 present but num_classes 3
    with pytest.raises(ValueError, match=r"label values \[3\] are outside 0..2"):
        [ds[i] for i in range(len(ds))]
    with pytest.raises(ValueError, match="expects 4 band"):
        SegDataset(d["root"], "train.txt", expect_bands=4)[0]


def test_seg_dataset_seeded_augmentation_is_order_independent(tmp_path):
    d = make_synthetic_seg_dataset(tmp_path, num_classes=4, ignore_index=255, n_train=3, n_val=1, size=32)
    ops = [RandomHorizontalFlip(), RandomVerticalFlip(), RandomRotate90()]
    ds1 = SegDataset(d["root"], "train.txt", ops, seed=5)
    ds2 = SegDataset(d["root"], "train.txt", ops, seed=5)
    fwd = [ds1[i][1] for i in range(3)]
    bwd = [ds2[i][1] for i in (2, 1, 0)][::-1]
    assert all(np.array_equal(x, y) for x, y in zip(fwd, bwd))


def test_cls_split_file_parsing(tmp_path):
    paths = make_synthetic_cls_dataset(tmp_path / "syn", num_classes=3, n_train_per_class=2,
                                       n_val_per_class=1, size=32)
    assert open(paths["train_list"]).read().splitlines()[:2] == ["class0/class0_00.png", "class0/class0_01.png"]
    mean, std = read_meanstd(paths["meanstd"])
    assert len(mean) == 3 and len(std) == 3 and all(s > 0 for s in std)
    # upstream datainfo style: label = index in cls_names.txt, class = first path component, no final newline
    root = tmp_path / "syn"
    (root / "cls_names.txt").write_text("class2\nclass0\nclass1")
    (root / "val.txt").write_text("class1/class1_02.png\nclass2/class2_02.png")
    ds = ClsDataset(str(root), "val.txt", "cls_names.txt", [Resize(16)])
    assert [lab for _, lab in ds.items] == [2, 0]
    img, label = ds[1]
    assert img.shape == (3, 16, 16) and img.dtype == np.float32 and label == 0 and label.dtype == np.int64
    (root / "bad.txt").write_text("class0/class0_00.png\nforest/forest01.tif\n")
    with pytest.raises(ValueError, match=r"bad.txt:2: class 'forest' is not in the class list"):
        ClsDataset(str(root), "bad.txt", ["class0", "class1", "class2"])
    (root / "bad.txt").write_text("class0/missing.png\n")
    with pytest.raises(FileNotFoundError, match=r"bad.txt:1: image file not found"):
        ClsDataset(str(root), "bad.txt", ["class0", "class1", "class2"])
    text = format_meanstd([123.770241, 125.41281689, 115.35737613], [44.17314347, 41.63589266, 39.5737929])
    (root / "ms.txt").write_text(text)
    assert np.allclose(read_meanstd(str(root / "ms.txt"))[0], [123.770241, 125.41281689, 115.35737613])


# ------------------------------------------------------------------------------------------------ COCO
def test_coco_rasterisation_synthetic_crowd_and_order():
    cat_map, names = coco_category_map([{"id": 7, "name": "b"}, {"id": 3, "name": "a"}])
    assert cat_map == {3: 1, 7: 2} and names == ["background", "a", "b"]
    anns = [
        {"category_id": 3, "segmentation": [[0, 0, 10, 0, 10, 10, 0, 10]], "area": 100, "bbox": [0, 0, 10, 10]},
        {"category_id": 7, "segmentation": [[2, 2, 4, 2, 4, 4, 2, 4]], "area": 4, "bbox": [2, 2, 2, 2]},
        {"category_id": 3, "iscrowd": 1, "segmentation": {"size": [12, 12], "counts": [132, 12]},
         "area": 12, "bbox": [11, 0, 1, 12]},
    ]
    m = coco_semantic_mask(anns, 12, 12, cat_map)
    assert (m[:10, :10][m[:10, :10] != 2] == 1).all() and (m[2:4, 2:4] == 2).all() and (m == 2).sum() == 4
    assert (m[:, 11] == 255).all() and (m[10:, :11] == 0).all()
    assert object_crop_box([100, 50, 20, 10], 200, 300, margin=0.5) == (35, 90, 40)
    assert object_crop_box([0, 0, 10, 10], 200, 300, margin=0.5, min_side=32) == (0, 0, 32)


@needs_nwpu
def test_coco_to_masks_on_shared_data():
    from paddle_rs.data.datasets import _instance_mask

    coco = load_coco(os.path.join(NWPU, "annotations", "val.json"))
    cat_map, labels = coco_category_map(coco["categories"])
    assert len(labels) == 11 and cat_map == {i: i for i in range(1, 11)}
    seen = set()
    for im in coco["images"]:
        anns = coco["anns_by_image"][im["id"]]
        mask = coco_semantic_mask(anns, im["height"], im["width"], cat_map)
        seen |= set(np.unique(mask).tolist())
        for ann in anns:                                  # each polygon lands where its bbox says
            inst = _instance_mask(ann, im["height"], im["width"])
            ys, xs = np.nonzero(inst)
            x, y, w, h = ann["bbox"]
            assert xs.min() >= np.floor(x) and xs.max() <= np.ceil(x + w) - 1
            assert ys.min() >= np.floor(y) and ys.max() <= np.ceil(y + h) - 1
            # ... and fills it: IoU of the pixels' extent box with the bbox (pointed vertices lose a few rows)
            ext = (xs.max() + 1 - xs.min()) * (ys.max() + 1 - ys.min())
            assert ext / (w * h) >= 0.85
            assert 0.8 <= inst.sum() / ann["area"] <= 1.05
            assert (mask[inst] == cat_map[ann["category_id"]]).mean() > 0.5
    assert seen == set(range(11))


@needs_nwpu
def test_prepare_dataset_cli_seg_and_cls(tmp_path):
    sys.path.insert(0, os.path.join(REPO, "tools"))
    try:
        import prepare_dataset
    finally:
        sys.path.pop(0)
    out = tmp_path / "seg"
    assert prepare_dataset.main(["--task", "seg", "--coco_root", NWPU, "--out", str(out), "--max_images", "2",
                                 "--tile", "512", "--stride", "384", "--scale", "0.5"]) == 0
    info = json.loads((out / "info.json").read_text())
    assert info["num_classes"] == 11 and (out / "preview.png").is_file()
    assert (out / "labels.txt").read_text().splitlines()[0] == "background"
    ds = SegDataset(str(out), "train.txt", num_classes=11)
    assert len(ds) == info["samples"]["train"] > 0
    img, mask = ds[0]
    assert img.shape[0] == 3 and max(img.shape[1:]) <= 512 and mask.shape == img.shape[1:]
    assert not list(out.glob("**/.tmp_*"))
    out = tmp_path / "cls"
    assert prepare_dataset.main(["--task", "cls", "--coco_root", NWPU, "--out", str(out), "--max_images", "2",
                                 "--size", "64"]) == 0
    names = (out / "cls_names.txt").read_text().splitlines()
    assert names[0] == "airplane" and len(names) == 10
    cds = ClsDataset(str(out), "val.txt", "cls_names.txt")
    img, label = cds[0]
    assert img.shape == (3, 64, 64) and 0 <= label < 10
    assert len(read_meanstd(str(out / "meanstd.txt"))[0]) == 3


def test_prepare_dataset_names_a_truncated_coco_file(tmp_path, capsys):
    sys.path.insert(0, os.path.join(REPO, "tools"))
    try:
        import prepare_dataset
    finally:
        sys.path.remove(os.path.join(REPO, "tools"))
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    bad = root / "annotations" / "train.json"
    bad.write_text('{"images": [{"id": 1, "file_name": "a.jpg"')
    out = tmp_path / "out"
    assert prepare_dataset.main(["--task", "seg", "--coco_root", str(root), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {bad}: not readable as COCO JSON, the file is truncated")
    assert not out.exists()
