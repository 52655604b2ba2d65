"""Shared test helpers.

**Skips that must not happen.** A test that needs something an ordinary CPU machine with this repository and the
shared data has (a compiled CPU extension, the shared NWPU data) is marked ``@pytest.mark.requires(ok, reason)``
or calls :func:`require`. It is skipped with the reason where the thing is missing, unless the environment sets
``PADDLE_RS_STRICT_SKIPS=1`` (as ``.ci/run`` does): then the missing thing is a test failure, so CI cannot pass
while silently testing less.

**Paddle defects.** A test that documents a defect of Paddle itself is decorated with :func:`paddle_defect`: it
asserts the *correct* behaviour and is an expected failure while the defect exists; once Paddle is fixed it
passes, which fails the run (strict xfail) with a message saying which workaround can go.
"""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

STRICT_SKIPS = os.environ.get("PADDLE_RS_STRICT_SKIPS") == "1"
from paddle_rs.utils.paths import shared_data_dir  # noqa: E402

SHARED = shared_data_dir(ROOT)
NWPU = os.path.join(SHARED, "nwpu_vhr10_mini")
HAVE_NWPU = os.path.isfile(os.path.join(NWPU, "annotations", "val.json"))
NWPU_REASON = f"shared data absent: {NWPU} (set PADDLE_RS_SHARED_DATA)"


def require(ok, reason):
    """Skip the running test with ``reason`` unless ``ok``; under PADDLE_RS_STRICT_SKIPS=1 fail instead."""
    if ok:
        return
    if STRICT_SKIPS:
        pytest.fail(f"{reason} -- PADDLE_RS_STRICT_SKIPS=1: this must not be skipped on a CPU machine with the "
                    f"shared data", pytrace=False)
    pytest.skip(reason)


def pytest_runtest_setup(item):
    for m in item.iter_markers("requires"):
        require(bool(m.args[0]), m.args[1] if len(m.args) > 1 else m.kwargs.get("reason", "requirement not met"))


def paddle_defect(what, workaround):
    """Mark a test that asserts what Paddle should do but, by a defect of its own, does not (yet)."""
    import paddle
    return pytest.mark.xfail(strict=True, reason=f"Paddle {paddle.__version__} defect: {what}. If this test "
                                                 f"passes, Paddle fixed it, and {workaround} can go.")


@pytest.fixture
def ext_calls(monkeypatch):
    """``ext_calls(module, fn, *args)``: the names ``fn(*args)`` looked up on paddle_rs's dygraph-ops extension
    through ``module.dygraph_ext`` (swapped for a recording proxy during the call), e.g. ``["rs_softmax"]``."""
    from paddle_rs.ops._dygraph_ext import dygraph_ext

    def run(module, fn, *args):
        ext, called = dygraph_ext(), []

        class Spy:
            def __getattr__(self, name):
                called.append(name)
                return getattr(ext, name)

        with monkeypatch.context() as m:
            m.setattr(module, "dygraph_ext", lambda: Spy())
            fn(*args)
        return called

    return run


def assert_same_argmax(ref, got, atol, axis=1):
    """The class maps of ``ref`` and ``got`` (scores along ``axis``) agree wherever ``ref``'s two best scores are
    more than ``atol`` apart; a closer pair is a near tie that rounding may decide either way (align/harness.py)."""
    import numpy as np

    from align.harness import Tol, argmax_agreement
    ref, got = np.asarray(ref), np.asarray(got)
    agree, judged = argmax_agreement(ref, got, Tol(atol=atol, argmax_axis=axis))
    assert agree == 1.0, f"argmax differs at {1 - agree:.4%} of the {judged} positions with a clear top-2 margin"
