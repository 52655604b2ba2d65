"""ONNX conversion of a portable export (``deploy/export_model.py --onnx``), with paddle2onnx.

:func:`export_onnx` converts ``save_dir/model.json`` + ``model.pdiparams`` (a graph of Paddle's built-in ops, the
default export) into ``save_dir/model.onnx`` and records it in ``model.yml`` (``_Attributes.onnx``). A graph
holding paddle_rs's custom ops (``--cpu-kernels on``) cannot be converted: those ops exist only in paddle_rs.
:func:`run_onnx` runs the file in onnxruntime with the export's input / output names, for the tests and for
users who serve with onnxruntime.
"""
import os
import subprocess
import sys
from typing import List, Optional

import numpy as np

__all__ = ["export_onnx", "run_onnx", "OPSET"]

OPSET = 17


def _check_against_paddle(save_dir, onnx_file, attrs, tol) -> float:
    """Largest score difference between onnxruntime and the Paddle Inference predictor (the settings the export
    recorded) on the export's sample input (:func:`~paddle_rs.deploy.predictor.sample_input`)."""
    from .predictor import run_program, sample_input
    x = sample_input(attrs)
    settings = attrs.get("predictor") or {"onednn": False, "delete_passes": []}
    want = run_program(save_dir, x, onednn=bool(settings.get("onednn")),
                       delete_passes=settings.get("delete_passes") or [])
    got = run_onnx(onnx_file, x)
    return float(np.abs(got[1].astype("float64") - want[1].astype("float64")).max())


def export_onnx(save_dir, opset: int = OPSET, save_file: Optional[str] = None, tol: float = 1e-4) -> str:
    """``save_dir`` (a portable export) -> path of the written ONNX file (default ``save_dir/model.onnx``).

    Raises ``RuntimeError`` naming the cause when paddle2onnx is missing, the export holds custom ops, the converter
    rejects an operator, or onnxruntime (where installed) cannot load the converted file (its message names the
    node) or its scores differ from Paddle Inference's by more than ``tol`` on a sample input (a converter that
    approximates an operator: no file is kept). Known on paddle2onnx 2.1 / onnxruntime 1.32: UperNet's pooling pyramid (adaptive average pooling to 3x3
    and 6x6, sizes that do not divide the feature map) becomes an ``AveragePool`` with non-positive strides; the
    selective scan's ``while_loop`` (RSMamba) becomes a ``Loop`` whose condition onnxruntime rejects (declared as a
    scalar, inferred as a 1-element tensor)."""
    from .model_yml import read_model_yml, write_model_yml

    save_dir = os.path.abspath(os.fspath(save_dir))
    program = os.path.join(save_dir, "model.json")
    if not os.path.isfile(program):
        program = os.path.join(save_dir, "model.pdmodel")
    params = os.path.join(save_dir, "model.pdiparams")
    if not (os.path.isfile(program) and os.path.isfile(params)):
        raise FileNotFoundError(f"{save_dir} holds no exported model (model.json / model.pdmodel + model.pdiparams): "
                                f"run deploy/export_model.py first")
    info = read_model_yml(save_dir)
    attrs = info.get("_Attributes") or {}
    if attrs.get("custom_ops"):
        raise RuntimeError(f"{save_dir} holds paddle_rs custom ops ({', '.join(attrs['custom_ops'])}), which ONNX "
                           f"cannot express: export again without --cpu-kernels on")
    try:
        import paddle2onnx
    except ImportError as e:                              # pragma: no cover - an optional dependency
        raise RuntimeError("ONNX export needs paddle2onnx: pip install paddle2onnx onnxruntime") from e
    out = os.path.abspath(save_file or os.path.join(save_dir, "model.onnx"))
    tmp = out + ".tmp"
    # in a child process: paddle2onnx aborts its process (SIGABRT) on an operator it does not support
    code = ("import sys, paddle2onnx; paddle2onnx.export(sys.argv[1], sys.argv[2], save_file=sys.argv[3], "
            "opset_version=int(sys.argv[4]), auto_upgrade_opset=True, enable_onnx_checker=True, "
            "enable_optimize=True, verbose=False, optimize_tool='none')")   # polygraphy folding: SIGFPE on UperNet
    r = subprocess.run([sys.executable, "-c", code, program, params, tmp, str(int(opset))], capture_output=True,
                       text=True)
    if r.returncode != 0 or not os.path.isfile(tmp):
        if os.path.exists(tmp):
            os.remove(tmp)
        log = (r.stdout + r.stderr).splitlines()
        errors = [ln.strip() for ln in log if "[ERROR]" in ln] or [ln.strip() for ln in log if ln.strip()][-3:]
        raise RuntimeError(f"paddle2onnx {paddle2onnx.__version__} could not convert {program} (exit "
                           f"{r.returncode}): {' | '.join(errors)}")
    try:                                    # a file onnxruntime cannot load is no export: say which node fails
        import onnxruntime as ort
    except ImportError:                     # pragma: no cover - checked where onnxruntime is installed
        ort = None
    checked = None
    if ort is not None:
        try:
            ort.InferenceSession(tmp, providers=["CPUExecutionProvider"])
        except Exception as e:
            os.remove(tmp)
            raise RuntimeError(f"paddle2onnx {paddle2onnx.__version__} converted {program}, but onnxruntime "
                               f"{ort.__version__} cannot load the result: {str(e).strip().splitlines()[0]}") from e
        checked = _check_against_paddle(save_dir, tmp, attrs, tol)
        if checked > tol:
            os.remove(tmp)
            raise RuntimeError(
                f"paddle2onnx {paddle2onnx.__version__} converted {program}, but the ONNX graph's scores differ from "
                f"Paddle Inference's by {checked:.2e} (> {tol:g}) on a sample input: an operator is converted "
                f"inexactly (known: adaptive average pooling to a size that does not divide the input, e.g. "
                f"UperNet's 3x3 / 6x6 pyramid pooling unless the stride-32 map is a multiple of 6, an input side "
                f"that is a multiple of 192). No model.onnx was written")
    os.replace(tmp, out)
    attrs["onnx"] = {"file": os.path.basename(out), "opset": int(opset), "paddle2onnx": paddle2onnx.__version__,
                     "checked_max_abs": checked}
    info["_Attributes"] = attrs
    write_model_yml(os.path.join(save_dir, "model.yml"), info)
    return out


def run_onnx(onnx_file, image: np.ndarray, threads: int = 0) -> List[np.ndarray]:
    """Outputs of ``onnx_file`` for ``image`` (float32 NCHW) in onnxruntime (CPU), in the export's output order."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
    sess = ort.InferenceSession(os.fspath(onnx_file), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return sess.run(None, {name: np.ascontiguousarray(image, dtype=np.float32)})
