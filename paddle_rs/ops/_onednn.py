"""Building a paddle_rs C++ extension against the oneDNN library that Paddle ships (conv2d, activations).

The Paddle wheel ships ``libdnnl.so.3`` (oneDNN 3.6) but only forwarding stubs of the oneDNN headers. The ops need
the real ``oneapi/dnnl/dnnl.hpp`` of oneDNN 3.x, looked up in ``PADDLE_RS_ONEDNN_INCLUDE``, Paddle's include
tree, the installed torch wheel's include tree (torch is not imported; it has 3.x headers), then
``/usr/include`` and ``/usr/local/include``; only ``oneapi/dnnl`` is copied into the build directory. A header
release newer than the library is handled by ``csrc/onednn_common.h`` (creating memory objects through the C API
of every 3.x release) and by linking with ``-z now`` (a symbol the library lacks fails the load, and paddle_rs
falls back to Paddle's own op, instead of crashing at the first call).
"""
import importlib.util
import os
import re

import paddle

from ._build import cache_dir, load_quietly

__all__ = ["onednn_include", "build_onednn_extension"]

CSRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc")
COMMON_HEADER = os.path.join(CSRC, "onednn_common.h")
CFLAGS = ["-O3", "-march=native"]


def _paddle_dir():
    return os.path.dirname(os.path.abspath(paddle.__file__))


def _header_version(include_dir):
    """``(major, minor, patch)`` of the oneDNN headers under ``include_dir``, or ``None`` if incomplete."""
    if not os.path.isfile(os.path.join(include_dir, "oneapi", "dnnl", "dnnl.hpp")):
        return None
    try:
        with open(os.path.join(include_dir, "oneapi", "dnnl", "dnnl_version.h")) as f:
            text = f.read()
        return tuple(int(re.search(rf"#define DNNL_VERSION_{k}\s+(\d+)", text).group(1))
                     for k in ("MAJOR", "MINOR", "PATCH"))
    except (OSError, AttributeError):
        return None


def onednn_include():
    """The first include directory with complete oneDNN 3.x headers (see the module docstring), and their
    version. Raises ``RuntimeError`` when there is none."""
    candidates = [os.environ.get("PADDLE_RS_ONEDNN_INCLUDE"),
                  os.path.join(_paddle_dir(), "include", "third_party", "install", "onednn", "include")]
    spec = importlib.util.find_spec("torch")
    if spec is not None and spec.origin:
        candidates.append(os.path.join(os.path.dirname(spec.origin), "include"))
    candidates += ["/usr/include", "/usr/local/include"]
    for d in candidates:
        if d and (v := _header_version(d)) is not None and v[0] == 3:
            return d, v
    raise RuntimeError("no oneDNN 3.x headers (oneapi/dnnl/dnnl.hpp) found; set PADDLE_RS_ONEDNN_INCLUDE")


def _copy_headers(include_dir, build_dir):
    """Copy ``oneapi/dnnl`` alone into ``build_dir/include`` and return that directory: adding a whole foreign
    include tree (torch's) to the search path could shadow headers of Paddle's own (it has torch-compatible
    ones)."""
    import shutil

    dst = os.path.join(build_dir, "include")
    if not os.path.isfile(os.path.join(dst, "oneapi", "dnnl", "dnnl.hpp")):
        tmp = dst + f".tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(os.path.join(include_dir, "oneapi", "dnnl"), os.path.join(tmp, "oneapi", "dnnl"))
        shutil.rmtree(dst, ignore_errors=True)
        os.rename(tmp, dst)
    return dst


def build_onednn_extension(name, source, ops):
    """Build (or reload from the cache) the extension ``paddle_rs_<name>`` from ``csrc/<source>`` (which includes
    ``onednn_common.h``), linked against Paddle's ``libdnnl.so.3``; raises ``RuntimeError`` when an op in ``ops``
    is missing or the headers / library cannot be found."""
    include_dir, version = onednn_include()
    lib_dir = os.path.join(_paddle_dir(), "libs")
    if not os.path.exists(os.path.join(lib_dir, "libdnnl.so.3")):
        raise RuntimeError(f"{lib_dir}/libdnnl.so.3 not found")
    path = os.path.join(CSRC, source)
    build_dir = cache_dir(name, path, CFLAGS, (include_dir, version), depends=(COMMON_HEADER,))
    # libdnnl.so.3 has no unversioned symlink: link it by file name; -z now turns a symbol the library lacks
    # into a load error instead of a crash at the first call
    return load_quietly(
        f"paddle_rs_{name}", path, build_dir, ops,
        before_build=lambda: {"extra_include_paths": [_copy_headers(include_dir, build_dir)]},
        extra_cxx_cflags=CFLAGS,
        extra_ldflags=[f"-L{lib_dir}", "-l:libdnnl.so.3", f"-Wl,-rpath,{lib_dir}", "-Wl,-z,now"])
