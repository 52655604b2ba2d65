"""Raster reading and writing: numpy in, numpy out (no paddle / torch).

Decode rules (tipc.md §7.2, upstream PaddleRS ``read_raw=True`` semantics, no contrast stretching):

- ``np.ndarray`` input is taken as HWC (a 2-D array becomes HW1);
- ``.png/.jpg/.jpeg/.bmp`` -> PIL -> RGB (high-bit-depth single-band PNGs are kept as HW1, since an RGB
  conversion would clip them; a grayscale image stays one band for a one-band model, and is otherwise replicated
  to RGB with a :class:`RasterWarning`, as an alpha band is dropped with one);
- ``.tif/.tiff`` -> tifffile; the layout is normalised to HWC from the series axes / TIFF planar
  configuration: tifffile returns (C,H,W) for planar-separate files and (H,W,C) for contiguous ones.
  rasterio is the fallback when tifffile cannot decode a file (e.g. JPEG-compressed GeoTIFFs);
- ``.img`` (ERDAS Imagine) -> rasterio (optional dependency);
- ``.npy`` -> ``np.load``, taken as HWC.

The dtype is returned unchanged (uint8, uint16, float32, ...). Any band count is accepted.
"""
import os
import warnings
from typing import Optional, Sequence, Union

import numpy as np

from ..utils.fs import finish_atomic

__all__ = [
    "IMAGE_EXTS", "TIFF_EXTS", "ISAID_COLOR_MAP",
    "read_image", "read_mask", "color_to_label", "write_mask_png", "write_image_png",
    "write_geotiff", "make_palette", "RasterWarning", "ImageReadError",
]

PIL_EXTS = (".png", ".jpg", ".jpeg", ".bmp")
TIFF_EXTS = (".tif", ".tiff")
RASTERIO_EXTS = (".img",)
IMAGE_EXTS = PIL_EXTS + TIFF_EXTS + RASTERIO_EXTS + (".npy",)

# iSAID colour map of FactSeg ``data/isaid.py`` (factseg.md §5): index = class id.
ISAID_COLOR_MAP = (
    (0, 0, 0), (0, 0, 63), (0, 191, 127), (0, 63, 0), (0, 63, 127), (0, 63, 191), (0, 63, 255),
    (0, 127, 63), (0, 127, 127), (0, 0, 127), (0, 0, 191), (0, 0, 255), (0, 63, 63), (0, 127, 191),
    (0, 127, 255), (0, 100, 155),
)

# GeoTIFF tags copied verbatim when a reference raster is given and rasterio is absent.
_GEOTIFF_TAGS = (33550, 33922, 34264, 34735, 34736, 34737, 42112, 42113)


def _ext(path) -> str:
    return os.path.splitext(str(path))[1].lower()


def _to_hwc(arr: np.ndarray, source: str) -> np.ndarray:
    if arr.ndim == 2:
        return arr[:, :, None]
    if arr.ndim != 3:
        raise ValueError(f"{source}: expected a 2-D or 3-D raster, got shape {arr.shape}")
    return arr


class ImageReadError(ValueError):
    """An image file that cannot be decoded; the message names the file."""


class RasterWarning(UserWarning):
    """An image was adapted to what the model expects (bands replicated or dropped); the message says how."""


_WARNED = set()


def _warn_once(kind: str, message: str) -> None:
    """One warning per kind and process (a dataset of grayscale tiles warns once, naming the first file)."""
    if kind not in _WARNED:
        _WARNED.add(kind)
        warnings.warn(message + " (reported once; later files are treated the same way)", RasterWarning,
                      stacklevel=3)


def _read_pil(path: str, expect_bands: Optional[int] = None) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            arr = np.array(im)              # keep the values; an RGB conversion would clip them
            return _to_hwc(arr, path)
        if im.mode in ("1", "L", "LA"):
            if expect_bands == 1:
                return np.array(im.convert("L"))[:, :, None]
            _warn_once("gray", f"{path}: a grayscale image (mode {im.mode}); its band is replicated to R, G and B"
                               + (" and the alpha band dropped" if im.mode == "LA" else ""))
        elif im.mode in ("RGBA", "PA") or (im.mode == "P" and "transparency" in im.info):
            _warn_once("alpha", f"{path}: an image with an alpha band (mode {im.mode}); the alpha band is dropped")
        return np.array(im.convert("RGB"))     # np.array: a writeable copy (asarray is read-only)


def _read_tifffile(path: str) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        arr = series.asarray()
        axes = series.axes
        planar = getattr(tif.pages[0], "planarconfig", None)
    arr = np.squeeze(arr) if arr.ndim > 3 else arr
    if arr.ndim == 2:
        return arr[:, :, None]
    if arr.ndim != 3:
        raise ValueError(f"{path}: unsupported TIFF layout, shape {arr.shape} axes {axes!r}")
    if len(axes) == 3 and "Y" in axes and "X" in axes:
        band_axis = [i for i, a in enumerate(axes) if a not in "YX"][0]
        return np.moveaxis(arr, band_axis, -1)
    # Unknown axes labels: fall back on the planar configuration (2 = SEPARATE -> C,H,W).
    if planar is not None and int(planar) == 2:
        return np.moveaxis(arr, 0, -1)
    return arr


def _read_rasterio(path: str) -> np.ndarray:
    try:
        import rasterio
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(f"{path}: reading this format needs rasterio (pip install rasterio)") from e
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # NotGeoreferencedWarning for plain rasters
        with rasterio.open(path) as src:
            arr = src.read()                     # (C, H, W)
    return np.moveaxis(arr, 0, -1)


def read_image(path_or_array: Union[str, os.PathLike, np.ndarray],
               expect_bands: Optional[int] = None) -> np.ndarray:
    """Read an image as an HWC numpy array (dtype unchanged, any band count).

    ``expect_bands``: the band count the model was built for; a mismatch raises ``ValueError`` naming
    what was found, what is expected and how to resolve it.
    """
    if isinstance(path_or_array, np.ndarray):
        img, source = _to_hwc(path_or_array, "ndarray input"), "ndarray input"
    else:
        source = os.fspath(path_or_array)
        if not os.path.isfile(source):
            raise FileNotFoundError(f"image file not found: {source}")
        ext = _ext(source)
        if ext in PIL_EXTS:
            try:
                img = _read_pil(source, expect_bands)
            except (OSError, SyntaxError, ValueError) as e:       # PIL: unidentified / truncated / corrupt
                raise ImageReadError(f"{source}: cannot decode the image, the file is damaged or not a "
                                     f"{ext[1:].upper()} ({type(e).__name__}: {e})") from e
        elif ext in TIFF_EXTS:
            try:
                img = _read_tifffile(source)
            except Exception as tiff_err:        # e.g. compression tifffile cannot decode without imagecodecs
                try:
                    img = _read_rasterio(source)
                except Exception:
                    raise ImageReadError(f"{source}: cannot decode the image: tifffile could not read it "
                                         f"({tiff_err}) and the rasterio fallback failed as well") from tiff_err
        elif ext in RASTERIO_EXTS:
            img = _read_rasterio(source)
        elif ext == ".npy":
            try:
                arr = np.load(source)                 # allow_pickle=False: an object array is refused
            except ValueError as e:
                raise ImageReadError(f"{source}: not a numeric .npy array ({e})") from e
            img = _to_hwc(arr, source)
        else:
            raise ValueError(f"{source}: unsupported image extension {ext!r}; "
                             f"supported: {', '.join(IMAGE_EXTS)}")
    if expect_bands is not None and img.shape[2] != int(expect_bands):
        raise ValueError(
            f"{source}: found {img.shape[2]} band(s) (HWC shape {tuple(img.shape)}), but the model expects "
            f"{int(expect_bands)} band(s). Either build the model with in_channels={img.shape[2]} (and "
            f"Normalize statistics for {img.shape[2]} bands), or convert the data to {int(expect_bands)} "
            f"band(s) (select/stack bands) before training or inference.")
    return img


def color_to_label(mask_rgb: np.ndarray, color_map: Sequence[Sequence[int]] = ISAID_COLOR_MAP) -> np.ndarray:
    """Map an RGB colour mask to class ids (factseg.md §5 ``RemoveColorMap``).

    Colours are keyed by ``R + 2G + 3B`` as upstream; index in ``color_map`` = class id; unknown colours -> 0.
    """
    if mask_rgb.ndim != 3 or mask_rgb.shape[2] < 3:
        raise ValueError(f"color_to_label needs an HxWx3 mask, got shape {mask_rgb.shape}")
    weights = np.array([1, 2, 3], dtype=np.int64)
    q = mask_rgb[:, :, :3].astype(np.int64) @ weights
    keys = np.asarray(color_map, dtype=np.int64) @ weights
    out = np.zeros(q.shape, dtype=np.int64)
    for label, key in enumerate(keys):
        out[q == key] = label
    return out


def read_mask(path: Union[str, os.PathLike, np.ndarray],
              color_map: Optional[Sequence[Sequence[int]]] = None) -> np.ndarray:
    """Read a label map as HW int64.

    Single-channel PNG ('L', 'P' -> palette indices, 'I;16'), single-band TIFF or ``.npy``. An RGB mask is
    accepted when ``color_map`` is given (see :func:`color_to_label`) or when its three channels are equal.
    """
    if isinstance(path, np.ndarray):
        arr, source = path, "ndarray input"
    else:
        source = os.fspath(path)
        if not os.path.isfile(source):
            raise FileNotFoundError(f"mask file not found: {source}")
        if _ext(source) in PIL_EXTS:
            from PIL import Image

            with Image.open(source) as im:
                if im.mode == "RGBA":
                    im = im.convert("RGB")
                arr = np.array(im)
        else:
            arr = read_image(source)
    if arr.ndim == 3:
        if color_map is not None:
            return color_to_label(arr, color_map)
        if arr.shape[2] == 1:
            arr = arr[:, :, 0]
        elif np.array_equal(arr[:, :, 0:1].repeat(arr.shape[2], axis=2), arr):
            arr = arr[:, :, 0]
        else:
            raise ValueError(f"{source}: mask has {arr.shape[2]} differing channels; label maps must be "
                             f"single-channel (pass color_map=... to decode a colour-coded mask)")
    if arr.ndim != 2:
        raise ValueError(f"{source}: mask must be 2-D, got shape {arr.shape}")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
            raise ValueError(f"{source}: float mask holds non-integer values")
    return arr.astype(np.int64)


def _atomic_target(path: str):
    from ..utils.fs import atomic_target
    return atomic_target(path, suffix=_ext(path))


def make_palette(n: int = 256) -> list:
    """Flat 768-entry PIL palette: 0 black, 255 white, others distinct (PASCAL VOC bit scheme)."""
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    pal[255 * 3:256 * 3] = [255, 255, 255]
    return pal


def write_mask_png(path: Union[str, os.PathLike], mask: np.ndarray, palette: Optional[Sequence[int]] = None) -> None:
    """Write an HW label map (values 0..255) as a single-channel 8-bit PNG, atomically.

    With ``palette`` (flat list of up to 768 ints, e.g. :func:`make_palette`) the PNG is mode 'P'; the stored
    values are still the class ids, so :func:`read_mask` returns them unchanged.
    """
    from PIL import Image

    path = os.fspath(path)
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"{path}: mask must be HW, got shape {mask.shape}")
    if mask.size and (mask.min() < 0 or mask.max() > 255):
        raise ValueError(f"{path}: mask values must be within 0..255 for an 8-bit PNG "
                         f"(found {mask.min()}..{mask.max()})")
    im = Image.fromarray(mask.astype(np.uint8))                     # mode 'L'
    if palette is not None:
        im = Image.frombytes("P", im.size, im.tobytes())            # same indices, palette attached
        im.putpalette(list(palette))
    tmp = _atomic_target(path)
    try:
        im.save(tmp, format="PNG")
        finish_atomic(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_image_png(path: Union[str, os.PathLike], image: np.ndarray, compress_level: int = 1) -> None:
    """Write an HWC (1, 3 or 4 band) or HW uint8 image as PNG, atomically.

    ``compress_level`` 1 by default: photos barely compress further and level 6 is about 4x slower.
    """
    from PIL import Image

    path = os.fspath(path)
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
        raise ValueError(f"{path}: PNG images must be uint8 HW / HWx3 / HWx4, got {image.dtype} {image.shape}")
    tmp = _atomic_target(path)
    try:
        Image.fromarray(image).save(tmp, format="PNG", compress_level=int(compress_level))
        finish_atomic(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _reference_geotags(reference: str, shape_hw):
    """GeoTIFF tags of ``reference`` as tifffile ``extratags`` (only if the raster size matches)."""
    import tifffile

    tags = []
    try:
        with tifffile.TiffFile(reference) as tif:
            page = tif.pages[0]
            if (page.imagelength, page.imagewidth) != tuple(shape_hw):
                warnings.warn(f"write_geotiff: {reference} is {page.imagelength}x{page.imagewidth}, output is "
                              f"{shape_hw[0]}x{shape_hw[1]}; geo-referencing not copied")
                return []
            for code in _GEOTIFF_TAGS:
                tag = page.tags.get(code)
                if tag is not None:
                    value = tag.value
                    if isinstance(value, (tuple, list)):
                        count = len(value)
                    elif isinstance(value, str):
                        count = len(value) + 1
                    else:
                        count = 1
                    tags.append((code, tag.dtype, count, value, True))
    except Exception as e:  # pragma: no cover - unreadable reference is not fatal
        warnings.warn(f"write_geotiff: could not read geo tags of {reference}: {e}")
        return []
    return tags


def _write_with_rasterio(rasterio, tmp: str, arr: np.ndarray, reference: str, planar: str) -> bool:
    """Write ``arr`` with the geo-referencing of ``reference``; False if there is none to keep."""
    h, w, c = arr.shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(reference) as src:
            georef = src.crs is not None or not src.transform.is_identity
            same_size = (src.height, src.width) == (h, w)
            profile = src.profile.copy()
    if not georef:
        return False
    if not same_size:
        warnings.warn(f"write_geotiff: {reference} is {profile['height']}x{profile['width']}, output is "
                      f"{h}x{w}; geo-referencing not copied")
        return False
    profile.update(driver="GTiff", height=h, width=w, count=c, dtype=arr.dtype.name,
                   interleave="pixel" if planar == "contig" else "band")
    for k in ("blockxsize", "blockysize", "tiled", "photometric", "compress"):
        profile.pop(k, None)
    with rasterio.open(tmp, "w", **profile) as dst:
        dst.write(np.moveaxis(arr, -1, 0))
    return True


def write_geotiff(path: Union[str, os.PathLike], array: np.ndarray, reference: Optional[str] = None,
                  planar: str = "contig") -> None:
    """Write an HW or HWC array as a (Geo)TIFF, atomically.

    ``reference``: a source raster of the same size whose geo-referencing is kept, through rasterio when it
    is installed (CRS, transform, nodata), else by copying its GeoTIFF tags with tifffile. Without a
    reference a plain TIFF is written by tifffile. ``planar``: 'contig' (H,W,C samples) or 'separate'
    (band-sequential, what GDAL writes with INTERLEAVE=BAND).
    """
    import tifffile

    path = os.fspath(path)
    arr = np.asarray(array)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise ValueError(f"{path}: write_geotiff needs HW or HWC, got shape {arr.shape}")
    if planar not in ("contig", "separate"):
        raise ValueError(f"planar must be 'contig' or 'separate', got {planar!r}")
    h, w, c = arr.shape
    tmp = _atomic_target(path)
    try:
        written, extratags = False, []
        if reference is not None:
            try:
                import rasterio
            except ImportError:
                rasterio = None
            if rasterio is None:
                extratags = _reference_geotags(reference, (h, w))
            else:
                written = _write_with_rasterio(rasterio, tmp, arr, reference, planar)
        if not written:
            data = arr[:, :, 0] if c == 1 else arr
            kwargs = dict(extratags=extratags)
            if c == 1:
                kwargs["photometric"] = "minisblack"
            elif planar == "separate":
                data = np.moveaxis(arr, -1, 0)
                kwargs.update(photometric="minisblack", planarconfig="separate")
            else:
                rgb = c == 3 and arr.dtype == np.uint8
                kwargs.update(photometric="rgb" if rgb else "minisblack", planarconfig="contig")
            tifffile.imwrite(tmp, data, **kwargs)
        finish_atomic(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
