"""Build-and-cache machinery shared by paddle_rs's C++ CPU ops (selective scan, oneDNN conv2d and activations).

Each op module keeps its own sources, flags and fallback; this module holds what they share:

* :func:`cache_dir` -- a build directory keyed by the source and its local headers, the flags, extra keys, the
  Paddle version and the CPU's feature flags (``-march=native`` objects must not be reused on a different CPU), under
  ``$PADDLE_RS_EXT_DIR`` or ``~/.cache/paddle_rs/ops``;
* :func:`load_quietly` -- ``paddle.utils.cpp_extension.load`` under a file lock (concurrent processes build
  once), with its compiler chatter and warnings captured, checking that the expected ops got registered;
* :func:`load_once` -- the memoised "extension or ``None``" with one ``RuntimeWarning`` on any failure and an
  environment switch to disable it.
"""
import contextlib
import hashlib
import io
import os
import platform
import time
import warnings

import paddle


def cache_dir(prefix, source, flags, extra=(), depends=()):
    """The build directory for ``source`` (plus the headers in ``depends``) compiled with ``flags``."""
    h = hashlib.sha1()
    for path in (source, *depends):
        with open(path, "rb") as f:
            h.update(f.read())
    h.update(" ".join(list(flags) + [str(e) for e in extra] + [paddle.__version__, platform.machine()]).encode())
    try:
        with open("/proc/cpuinfo") as f:
            h.update(next((ln for ln in f if ln.startswith("flags")), "").encode())
    except OSError:
        pass
    root = os.environ.get("PADDLE_RS_EXT_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "paddle_rs", "ops")
    return os.path.join(root, f"{prefix}_{h.hexdigest()[:16]}")


def load_quietly(name, source, build_dir, ops, before_build=None, **load_kwargs):
    """Build (or reload) the extension in ``build_dir`` under a file lock; ``before_build()`` runs inside the lock
    and may return extra keyword arguments for ``load``. Raises when an op in ``ops`` is missing."""
    import fcntl

    with warnings.catch_warnings():   # "No ccache found" at import
        warnings.simplefilter("ignore")
        from paddle.utils.cpp_extension import load
    os.makedirs(build_dir, exist_ok=True)
    with open(os.path.join(build_dir, "build.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        kw = dict(load_kwargs, **((before_build() or {}) if before_build else {}))
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = load(name=name, sources=[source], build_directory=build_dir, verbose=False, **kw)
    missing = [op for op in ops if not hasattr(module, op)]
    if missing:
        raise RuntimeError(f"ops not registered: {missing}")
    return module


def load_once(state, env_var, what, fallback, build):
    """``state["module"]``: ``build()``'s module, or ``None`` when ``env_var=0``, off Linux, or on any failure
    (one ``RuntimeWarning`` naming ``what`` and the ``fallback`` used instead). ``state["build_s"]``: seconds."""
    if "module" in state:
        return state["module"]
    module = None
    if os.environ.get(env_var, "1") != "0" and platform.system() == "Linux":
        t0 = time.perf_counter()
        try:
            module = build()
        except Exception as e:   # noqa: BLE001 - any failure means: use the fallback
            msg = str(e).strip()
            warnings.warn(f"paddle_rs: {what} unavailable ({type(e).__name__}: "
                          f"{msg.splitlines()[-1][:200] if msg else ''}); using {fallback}", RuntimeWarning,
                          stacklevel=3)
            module = None
        state["build_s"] = time.perf_counter() - t0
    state["module"] = module
    return module


class StaticBackend:
    """Which implementation ``paddle.jit.to_static`` puts into a graph for an operator that also has a custom C++
    op: ``plain`` (pure Paddle ops, the default; runs in any Paddle Inference build) or ``custom`` (the op of the
    extension that ``loader()`` returns, ``None`` when it cannot be built). Used by the ``set_static_*``
    functions of :mod:`paddle_rs.ops.conv` and :mod:`paddle_rs.ops.selective_scan`."""

    def __init__(self, plain, custom, loader, what):
        self.plain, self.custom, self.loader, self.what = plain, custom, loader, what
        self.custom_on = False

    def set(self, backend):
        """Switch to ``backend``; returns the previous one. Raises ``ValueError`` for an unknown name and
        ``RuntimeError`` for ``custom`` when the extension is unavailable (the switch is then unchanged)."""
        if backend not in (self.plain, self.custom):
            raise ValueError(f"backend must be {self.plain!r} or {self.custom!r}, got {backend!r}")
        if backend == self.custom and self.loader() is None:
            raise RuntimeError(f"the {self.what} extension is unavailable (see the earlier warning)")
        prev = self.custom if self.custom_on else self.plain
        self.custom_on = backend == self.custom
        return prev
