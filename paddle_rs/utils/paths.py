"""Where the shared remote-sensing data lives (NWPU VHR-10 mini, COCO format; ../shared/data in the workspace)."""
import os
import subprocess

__all__ = ["shared_data_dir"]


def shared_data_dir(root: str) -> str:
    """The shared data folder for the checkout at ``root``: ``$PADDLE_RS_SHARED_DATA``, else ``<root>/../shared/data``,
    else, for a clone of a local repository (a fresh CI clone in a temporary folder), ``../shared/data`` beside that
    repository. Returns the first candidate that exists (the ``../shared/data`` path when none does)."""
    env = os.environ.get("PADDLE_RS_SHARED_DATA")
    if env:
        return env
    default = os.path.join(os.path.dirname(os.path.abspath(root)), "shared", "data")
    if os.path.isdir(default):
        return default
    try:
        origin = subprocess.run(["git", "-C", root, "config", "--get", "remote.origin.url"], capture_output=True,
                                text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        origin = ""
    if origin and os.path.isdir(origin):
        beside = os.path.join(os.path.dirname(os.path.abspath(origin)), "shared", "data")
        if os.path.isdir(beside):
            return beside
    return default
