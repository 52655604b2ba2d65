import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


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
