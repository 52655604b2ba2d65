"""Process-wide CPU runtime settings applied by the command-line tools (train, eval, infer, benchmark).

:func:`tune_cpu_malloc` -- keep freed tensor memory in the process instead of handing it back to the kernel.
:class:`captured_native_output` -- keep what C++ libraries print off the terminal unless asked (``--verbose``).

Why: Paddle's CPU allocator takes every tensor from glibc ``posix_memalign``, and with glibc's default
thresholds a buffer of more than a few MB comes from a fresh ``mmap`` and goes back with ``munmap`` when it is
freed. Every new activation then pays a page fault per 4 KiB page on first touch (~0.25 ms per MB), which on CPU
costs as much as the arithmetic of an elementwise op: adding two ``[1, 256, 128, 128]`` tensors (16 MB) takes
4.8 ms with the defaults and 0.94 ms with the tuned thresholds (torch 2.13 in the same process: 0.9 ms; its
allocation pattern already lets glibc's adaptive threshold reuse such buffers, but not 32 MB ones: 10.6 -> 1.9
ms for both frameworks). UperNet-Swin-T at 512x512 (2 threads), Paddle / torch forward ratio in one process
(medians of 6 interleaved rounds, two runs each): 1.06 / 1.05 with glibc's defaults, 1.02 / 0.99 tuned.

What it does: ``mallopt(M_MMAP_THRESHOLD, 1 GiB)`` (requests below it come from the heap, which reuses freed
blocks) and ``mallopt(M_TRIM_THRESHOLD, 1 GiB)`` (free memory at the heap's top is returned to the kernel only
beyond that). The price is memory: the process keeps up to its peak working set (plus fragmentation) instead
of shrinking between steps -- what a training or inference loop reaches every iteration anyway. The settings
are process-wide and affect every library in it, torch included, so a benchmark that times both frameworks in
one process still compares them under the same allocator.

``PADDLE_RS_TUNE_MALLOC=0`` turns it off; glibc's own ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``
environment variables, when set, win (nothing is changed). Other C libraries (musl, macOS, Windows): no-op.
"""
import ctypes
import os
import sys

__all__ = ["tune_cpu_malloc", "captured_native_output"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_STATE = {}


def tune_cpu_malloc(threshold=1 << 30):
    """Apply the glibc thresholds above (idempotent). Returns ``{"mmap_threshold": n, "trim_threshold": n}`` as
    set, or ``None`` when nothing was changed (disabled, user-set glibc variables, not glibc)."""
    if "result" in _STATE:
        return _STATE["result"]
    result = None
    user_set = any(os.environ.get(k) for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"))
    if os.environ.get("PADDLE_RS_TUNE_MALLOC", "1") != "0" and not user_set and sys.platform.startswith("linux"):
        try:
            mallopt = ctypes.CDLL(None).mallopt
        except (OSError, AttributeError):   # not glibc
            mallopt = None
        if mallopt is not None:
            mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
            # glibc < 2.26 caps the mmap threshold at 32 MiB (HEAP_MAX_SIZE / 2) and rejects more
            for value in (threshold, min(threshold, 32 << 20)):
                if mallopt(_M_MMAP_THRESHOLD, value) == 1:
                    mallopt(_M_TRIM_THRESHOLD, max(value, threshold))
                    result = {"mmap_threshold": value, "trim_threshold": max(value, threshold)}
                    break
    _STATE["result"] = result
    return result


class captured_native_output:
    """``with captured_native_output(show=False) as cap:`` -- what C++ libraries print to file descriptors 1 and 2
    inside the block (Paddle Inference's IR-pass notes, one line per matched pattern: ~70 lines for an RSMamba
    export) goes to a temporary file instead of the terminal. ``cap.text`` holds it afterwards; ``show=True``
    (a tool's ``--verbose``) passes it through, and it is replayed on stderr when the block raises."""

    def __init__(self, show: bool = False):
        self.show, self.text = show, ""

    def __enter__(self):
        if self.show:
            return self
        import tempfile
        sys.stdout.flush()
        sys.stderr.flush()
        self._file = tempfile.TemporaryFile(mode="w+b")
        self._saved = [os.dup(1), os.dup(2)]
        os.dup2(self._file.fileno(), 1)
        os.dup2(self._file.fileno(), 2)
        return self

    def __exit__(self, exc_type, exc, tb):
        if self.show:
            return False
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(self._saved[0], 1)
        os.dup2(self._saved[1], 2)
        for fd in self._saved:
            os.close(fd)
        self._file.seek(0)
        self.text = self._file.read().decode("utf-8", "replace")
        self._file.close()
        if exc_type is not None and self.text:
            sys.stderr.write(self.text)
        return False
