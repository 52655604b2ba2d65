"""File-system helpers without paddle or torch: the process umask and atomic writes that honour it."""
import os
import tempfile
from typing import Callable

__all__ = ["atomic_write_file", "atomic_target", "finish_atomic", "umask"]

_UMASK = None


def _umask() -> int:
    global _UMASK
    if _UMASK is None:                          # read once (os.umask is process-wide)
        _UMASK = os.umask(0o022)
        os.umask(_UMASK)
    return _UMASK


def atomic_write_file(path: str, writer: Callable[[str], None]) -> str:
    """``writer(tmp_path)`` then ``os.replace(tmp_path, path)``; the temporary file is removed on failure."""
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix="_" + os.path.basename(path), dir=d)
    os.close(fd)
    try:
        writer(tmp)
        os.chmod(tmp, 0o666 & ~_umask())            # mkstemp creates 0600
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def umask() -> int:
    return _umask()


def atomic_target(path: str, suffix: str = "") -> str:
    """A temporary file next to ``path`` (created 0600 by mkstemp) for :func:`finish_atomic`."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=suffix, dir=d)
    os.close(fd)
    return tmp


def finish_atomic(tmp: str, path: str) -> None:
    """Give ``tmp`` the permissions of a file created normally (0666 minus the umask), then rename it to
    ``path``."""
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)
