"""test_tipc/: shell parsing helpers (via bash), runner argument / config validation, and one lite FactSeg chain.

The helper tests source ``test_tipc/common_func.sh`` in a ``bash -u`` subprocess. The end-to-end test runs
``bash test_tipc/run.sh lite_train_lite_infer factseg`` on a copy of the runner's inputs in a temporary
working tree, so the repository's ``test_tipc/output`` is left alone.
"""
import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMON = os.path.join(ROOT, "test_tipc", "common_func.sh")
RUN_SH = os.path.join(ROOT, "test_tipc", "run.sh")
FACTSEG_TXT = os.path.join(ROOT, "test_tipc", "configs", "factseg", "train_infer_python.txt")
ESC = "\x1b"

BASH = shutil.which("bash")
pytestmark = pytest.mark.skipif(BASH is None, reason="bash is not installed")


def sh(script, *args, env=None, cwd=None):
    """Run ``script`` with common_func.sh sourced under ``set -u``; returns CompletedProcess (text)."""
    full = f'set -u\nsource "{COMMON}"\n{script}'
    return subprocess.run([BASH, "-c", full, "bash", *args], capture_output=True, text=True,
                          env=env, cwd=cwd or ROOT)


def out(script, *args, **kw):
    r = sh(script, *args, **kw)
    assert r.returncode == 0, r.stderr
    return r.stdout


# ------------------------------------------------------------------------------------------------------------
# func_parser_key / func_parser_value / func_parser_field
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("line,key,value", [
    ("python:python", "python", "python"),
    ("--cpu_threads:2", "--cpu_threads", "2"),
    ("norm_train:test_tipc/run_task.py train seg", "norm_train", "test_tipc/run_task.py train seg"),
    ("--fixed_input_shape:[-1,3,128,128]", "--fixed_input_shape", "[-1,3,128,128]"),
    ("null:null", "null", "null"),
    ("===========================infer_params===========================",
     "===========================infer_params===========================", ""),
    ("url:http://host/x", "url", "http"),            # a value containing ':' is truncated (upstream)
    ("key:", "key", ""),
    ("key::b", "key", ""),
])
def test_parser_key_value(line, key, value):
    assert out('func_parser_key "$1"', line) == key + "\n"
    assert out('func_parser_value "$1"', line) == value + "\n"


def test_parser_field_model_name():
    assert out('func_parser_field "$1" 1; func_parser_field "$1" 2', "model_name:seg:factseg") == "seg\nfactseg\n"


def test_parser_no_glob_and_ifs_untouched(tmp_path):
    # a file that the unquoted upstream expansion of [-1,3,128,128] would glob to
    (tmp_path / "1").write_text("x")
    script = 'v=$(func_parser_value "$1"); printf "%s|" "$v"; printf "%q" "$IFS"'
    r = out(script, "--fixed_input_shape:[-1,3,128,128]", cwd=str(tmp_path))
    assert r == "[-1,3,128,128]|$' \\t\\n'"


# ------------------------------------------------------------------------------------------------------------
# func_parser_params: mode|value selection
# ------------------------------------------------------------------------------------------------------------
EPOCHS = "--num_epochs:lite_train_lite_infer=1|lite_train_whole_infer=3|whole_train_whole_infer=20"


@pytest.mark.parametrize("mode,expected", [
    ("lite_train_lite_infer", "1"),
    ("lite_train_whole_infer", "3"),
    ("whole_train_whole_infer", "20"),
    ("whole_infer", ""),                        # no item for the mode -> empty
])
def test_parser_params_mode_selection(mode, expected):
    assert out('func_parser_params "$1" "$2"', EPOCHS, mode) == expected + "\n"
    env = dict(os.environ, MODE=mode)          # upstream form: the mode comes from $MODE
    assert out('func_parser_params "$1"', EPOCHS, env=env) == expected + "\n"


def test_parser_params_paths_and_plain_values():
    line = ("--config:lite_train_lite_infer=./a/b.yaml|lite_train_whole_infer=./c.yaml")
    assert out('func_parser_params "$1" lite_train_whole_infer', line) == "./c.yaml\n"
    # a plain value (no mode=) selects nothing, as upstream
    assert out('func_parser_params "$1" lite_train_lite_infer', "--train_batch_size:2") == "\n"
    # value truncated at a second '=' (upstream splits on '=')
    assert out('func_parser_params "$1" m', "k:m=a=b|n=c") == "a\n"
    # works with MODE unset under set -u
    env = {k: v for k, v in os.environ.items() if k != "MODE"}
    assert out('func_parser_params "$1"', EPOCHS, env=env) == "\n"


def test_split_list():
    assert out('split_list "$1"', "cpu|gpu") == "cpu\ngpu\n"
    assert out('split_list "$1"', "-1") == "-1\n"
    assert out('split_list "$1"', "0|0,1") == "0\n0,1\n"


# ------------------------------------------------------------------------------------------------------------
# func_set_params
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("key,value,expected", [
    ("--epochs", "2", "--epochs=2"),
    ("null", "2", " "),
    ("--epochs", "null", " "),
    ("--epochs", "", " "),
    ("--epochs", " ", " "),
    ("null", "null", " "),
    ("--save_dir", "./out/a b", "--save_dir=./out/a b"),
])
def test_set_params(key, value, expected):
    assert out('func_set_params "$1" "$2"', key, value) == expected + "\n"


def test_set_params_missing_args_set_u():
    assert out("func_set_params; func_set_params --k") == " \n \n"


def test_command_spacing_matches_upstream():
    # tipc.md §3 example: null parameters leave runs of spaces in the command
    script = r'''
    set_config=$(func_set_params "--config" "./c.yaml")
    set_use_gpu=$(func_set_params "use_gpu" "null")
    set_save=$(func_set_params "--save_dir" "./o")
    set_epoch=$(func_set_params "--num_epochs" "3")
    set_pre=$(func_set_params "--model_path" "null")
    set_ac=$(func_set_params "null" "null")
    set_bs=$(func_set_params "--train_batch_size" "4")
    printf '%s' "python t.py ${set_config} ${set_use_gpu} ${set_save} ${set_epoch} ${set_pre} ${set_ac} ${set_bs}"
    '''
    assert out(script) == "python t.py --config=./c.yaml   --save_dir=./o --num_epochs=3     --train_batch_size=4"


# ------------------------------------------------------------------------------------------------------------
# status_check / run_command
# ------------------------------------------------------------------------------------------------------------
def test_status_check_format(tmp_path):
    log = tmp_path / "results_python.log"
    cmd = r"python x.py --a=1   --b=C:\path"
    r = sh('status_check 0 "$1" "$2" factseg; echo "rc=$?"; status_check 3 "$1" "$2" factseg; echo "rc=$?"',
           cmd, str(log))
    assert r.returncode == 0, r.stderr
    lines = log.read_text().splitlines()
    assert lines == [
        f"{ESC}[33m Run successfully with command - factseg - {cmd}!  {ESC}[0m",
        f"{ESC}[33m Run failed with command - factseg - {cmd}!  {ESC}[0m",
    ]
    assert r.stdout.splitlines() == [lines[0], "rc=0", lines[1], "rc=1"]


def test_run_command_pipestatus(tmp_path):
    log = tmp_path / "sub" / "step.log"
    r = sh('run_command "echo hello; echo oops >&2; exit 7" "$1"; echo "rc=$?"', str(log))
    assert r.stdout.splitlines()[-1] == "rc=7"          # the command's status, not tee's
    assert log.read_text().splitlines() == ["hello", "oops"]
    r = sh('run_command "true" "$1"; echo "rc=$?"', str(log))
    assert r.stdout.splitlines()[-1] == "rc=0"
    r = sh('run_command "exit 3"; echo "rc=$?"')
    assert r.stdout.splitlines()[-1] == "rc=3"


# ------------------------------------------------------------------------------------------------------------
# the runner: config validation and usage errors (exit 2, no status lines)
# ------------------------------------------------------------------------------------------------------------
def _factseg_lines():
    with open(FACTSEG_TXT, "r", encoding="utf-8") as f:
        return f.read().splitlines()


def test_factseg_config_is_53_lines_and_consistent():
    lines = [ln for ln in _factseg_lines() if ln]
    assert len(lines) == 53
    assert lines[1] == "model_name:seg:factseg"
    assert lines[29] == "--fixed_input_shape:[-1,3,128,128]"
    assert lines[51] == "--model_name:factseg"
    cfg = out('func_parser_params "$1" lite_train_lite_infer', lines[10]).strip()
    assert os.path.isfile(os.path.join(ROOT, cfg)), cfg
    assert out('func_parser_params "$1" lite_train_lite_infer', lines[8]) == "2\n"


def run_runner(*args, cwd=ROOT, env=None, timeout=120):
    """``bash test_tipc/run.sh ARGS`` in ``cwd`` (the repository or a scratch tree; the runner works in the
    tree that holds the script)."""
    return subprocess.run([BASH, os.path.join("test_tipc", "run.sh"), *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)


def _write_cfg(tmp_path, lines, name="bad.txt"):
    p = tmp_path / name
    p.write_text("\n".join(lines) + "\n")
    return str(p)


def _status_logs():
    out_dir = os.path.join(ROOT, "test_tipc", "output")
    found = {}
    if os.path.isdir(out_dir):
        for d in os.listdir(out_dir):
            p = os.path.join(out_dir, d, "results_python.log")
            if os.path.isfile(p):
                found[p] = os.path.getsize(p)
    return found


@pytest.mark.parametrize("mutate,msg", [
    (lambda ls: ls[:-1], "52 non-blank lines"),
    (lambda ls: ls + ["extra:1"], "54 non-blank lines"),
    (lambda ls: ls[:14] + [ls[15], ls[14]] + ls[16:], "line index 14"),
    (lambda ls: ls[:14] + ["trainer:pact"] + ls[15:], "trainer 'pact'"),
    (lambda ls: ls[:1] + ["model_name:factseg"] + ls[2:], "model_name:<task>:<model>"),
    (lambda ls: ls[:10] + ["--config:lite_train_lite_infer=./nope.yaml"] + ls[11:], "does not exist"),
    (lambda ls: ls[:10] + ["--config:whole_infer=./x.yaml"] + ls[11:], "no value for MODE"),
])
def test_runner_bad_config_exit_2(tmp_path, mutate, msg):
    before = _status_logs()
    cfg = _write_cfg(tmp_path, mutate(_factseg_lines()))
    # invoked from another directory by absolute path: the runner resolves the file before it cd's
    r = subprocess.run([BASH, RUN_SH, os.path.basename(cfg)], capture_output=True, text=True, cwd=str(tmp_path),
                       timeout=60)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert msg in r.stderr
    assert "Run successfully" not in r.stdout and "Run failed" not in r.stdout
    assert _status_logs() == before                      # no status line written anywhere


def test_runner_blank_lines_and_crlf_do_not_count(tmp_path):
    # blank lines are skipped (IFS=$'\n' upstream) and CRLF endings are tolerated: the file is valid, so the
    # runner gets past validation; an unsupported MODE then stops it with exit 2 before anything runs
    lines = _factseg_lines()
    text = "\r\n".join(lines[:20] + ["", ""] + lines[20:])      # no trailing newline on the last line
    p = tmp_path / "ok.txt"
    p.write_bytes(text.encode())
    r = run_runner(str(p), "whole_infer")
    assert r.returncode == 2 and "not supported" in r.stderr, r.stderr
    r = run_runner(str(p), "no_such_mode")
    assert r.returncode == 2 and "unknown MODE" in r.stderr, r.stderr


@pytest.mark.parametrize("args,msg", [
    ((), "usage"),
    (("bogus_mode",), "neither an existing config file nor a mode"),
    (("lite_train_lite_infer", "no_such_model"), "no config for model"),
    (("lite_train_lite_infer", "../factseg"), "bad model name"),
    (("whole_train_whole_infer",), "not supported"),
    (("lite_train_lite_infer", "factseg", "extra"), "too many arguments"),
])
def test_runner_usage_errors(args, msg):
    before = _status_logs()
    r = run_runner(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert msg in r.stderr
    assert _status_logs() == before


def test_runner_help():
    r = run_runner("--help")
    assert r.returncode == 0 and "lite_train_lite_infer" in r.stdout


# ------------------------------------------------------------------------------------------------------------
# the chain with a stand-in interpreter (no training): command strings, log layout, append, exit codes
# ------------------------------------------------------------------------------------------------------------
STATUS_RE = re.compile(r"^\x1b\[33m Run (successfully|failed) with command - (\S+) - (.*)!  \x1b\[0m$")
SAVE_DIR = "./test_tipc/output/factseg/lite_train_lite_infer/norm_gpus_-1_autocast_null"
TRAIN_CFG = "./test_tipc/configs/factseg/factseg_tipc.yaml"


def _scratch_tree(tmp_path):
    """Symlink the repository's top-level entries into tmp_path/repo, except test_tipc/ (copied without its
    output/ and data/), so a run writes its data and output below tmp_path. ../shared is linked too."""
    dst = tmp_path / "repo"
    dst.mkdir()
    for name in os.listdir(ROOT):
        if name == "test_tipc" or name.startswith("."):
            continue
        os.symlink(os.path.join(ROOT, name), dst / name)
    shutil.copytree(os.path.join(ROOT, "test_tipc"), dst / "test_tipc",
                    ignore=shutil.ignore_patterns("output", "data", "__pycache__"))
    shared = os.path.join(os.path.dirname(ROOT), "shared")
    if os.path.isdir(shared):
        os.symlink(shared, tmp_path / "shared")               # ../shared/data as seen from the project
    return dst


def _status(log):
    lines = log.read_text().splitlines()
    return lines, [STATUS_RE.match(ln) for ln in lines]


def _expected_cmds(py):
    return [
        f"{py} test_tipc/prepare_data.py --config {TRAIN_CFG} --mode lite_train_lite_infer",
        f"{py} test_tipc/run_task.py train seg --config={TRAIN_CFG}   --save_dir={SAVE_DIR} --num_epochs=1     "
        f"--train_batch_size=2   ",
        f"{py} deploy/export_model.py --model_dir={SAVE_DIR}/best_model --save_dir={SAVE_DIR}/static "
        f"--fixed_input_shape=[-1,3,128,128]",
        f"{py} test_tipc/infer.py --config={TRAIN_CFG} --device=cpu --enable_mkldnn=False --cpu_threads=2 "
        f"--model_dir={SAVE_DIR}/static/ --batch_size=1 --benchmark=False --precision=fp32 --model_name=factseg  ",
    ]


def test_runner_chain_with_stub_interpreter(tmp_path):
    repo = _scratch_tree(tmp_path)
    stub = tmp_path / "fakepy"
    stub.write_text('#!/usr/bin/env bash\necho "stub $*"\ncase "$*" in *export_model*) exit 3;; esac\nexit 0\n')
    stub.chmod(0o755)
    env = dict(os.environ, TIPC_PYTHON=str(stub))
    r = run_runner("lite_train_lite_infer", "factseg", cwd=str(repo), env=env)
    assert r.returncode == 1, r.stdout + r.stderr                 # the export step failed
    assert "3 succeeded, 1 failed" in r.stdout
    log = repo / "test_tipc" / "output" / "factseg" / "results_python.log"
    lines, status = _status(log)
    assert lines[0] == "------------------------ lite_train_lite_infer ------------------------"
    assert all(status[1:]), lines
    assert [m.group(3) for m in status[1:]] == _expected_cmds(str(stub))
    assert [m.group(1) for m in status[1:]] == ["successfully", "successfully", "failed", "successfully"]
    assert {m.group(2) for m in status[1:]} == {"factseg"}
    mode_dir = repo / "test_tipc" / "output" / "factseg" / "lite_train_lite_infer"
    for name in ("prepare_data.log", "norm_gpus_-1_autocast_null_nodes_1.log",
                 "norm_gpus_-1_autocast_null_nodes_1_export.log",
                 "python_infer_cpu_usemkldnn_False_threads_2_precision_fp32_batchsize_1.log"):
        assert (mode_dir / name).read_text().startswith("stub "), name

    # the spec form appends a new header; exit 0 when every command of *this* invocation succeeded
    ok = tmp_path / "okpy"
    ok.write_text("#!/usr/bin/env bash\nexit 0\n")
    ok.chmod(0o755)
    cfg = os.path.join("test_tipc", "configs", "factseg", "train_infer_python.txt")
    r = run_runner(cfg, cwd=str(repo), env=dict(os.environ, TIPC_PYTHON=str(ok)))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "4 succeeded, 0 failed" in r.stdout
    lines2, status2 = _status(log)
    assert lines2[:len(lines)] == lines and len(lines2) == 2 * len(lines)
    assert lines2[len(lines)] == lines[0]
    assert [m.group(3) for m in status2[len(lines) + 1:]] == _expected_cmds(str(ok))

    # all steps failing: exit 1, one failed line per step
    r = run_runner("lite_train_lite_infer", "factseg", cwd=str(repo), env=dict(os.environ, TIPC_PYTHON="false"))
    assert r.returncode == 1 and "0 succeeded, 4 failed" in r.stdout, r.stdout


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="expects a machine without a GPU")
def test_runner_loops_and_skips_on_cpu(tmp_path):
    """gpu_list -1|0, autocast null|amp, --device cpu|gpu, mkldnn True|False, precision fp32|fp16 on a CPU
    machine: GPU entries are skipped with a notice, amp on CPU is a logged failure, fp16 on CPU is skipped,
    enable_mkldnn=False is not skipped."""
    repo = _scratch_tree(tmp_path)
    lines = _factseg_lines()
    lines[3], lines[5] = "gpu_list:-1|0", "--precision:null|amp"
    lines[41], lines[42], lines[46] = "--device:cpu|gpu", "--enable_mkldnn:True|False", "--precision:fp32|fp16"
    cfg = _write_cfg(tmp_path, lines, "loops.txt")
    r = run_runner(cfg, "lite_train_lite_infer", cwd=str(repo), env=dict(os.environ, TIPC_PYTHON="true"))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "5 succeeded, 1 failed" in r.stdout
    assert "skip: gpu_list entry '0'" in r.stdout and "skip: --device=gpu inference" in r.stdout
    assert "skip: precision fp16 on CPU" in r.stdout
    _, status = _status(repo / "test_tipc" / "output" / "factseg" / "results_python.log")
    got = [(m.group(1), m.group(3)) for m in status[1:]]
    assert [g[0] for g in got] == ["successfully"] * 5 + ["failed"]
    assert "--enable_mkldnn=True" in got[3][1] and "--enable_mkldnn=False" in got[4][1]
    assert "--precision=amp" in got[5][1] and "autocast_amp" in got[5][1]
    assert not (repo / "test_tipc" / "output" / "factseg" / "lite_train_lite_infer" /
                "norm_gpus_-1_autocast_amp_nodes_1.log").exists()       # amp on CPU is not run


def test_runner_missing_interpreter_exit_2(tmp_path):
    repo = _scratch_tree(tmp_path)
    r = run_runner("lite_train_lite_infer", "factseg", cwd=str(repo),
                   env=dict(os.environ, TIPC_PYTHON="no-such-python-xyz"))
    assert r.returncode == 2 and "not found" in r.stderr
    assert not (repo / "test_tipc" / "output").exists()


# ------------------------------------------------------------------------------------------------------------
# end to end: the lite FactSeg chain (data -> train -> export -> infer) on a scratch copy of the tree
# ------------------------------------------------------------------------------------------------------------
def test_lite_chain_factseg_end_to_end(tmp_path):
    import paddle  # noqa: F401
    repo = _scratch_tree(tmp_path)
    env = dict(os.environ, TIPC_PYTHON=sys.executable)
    r = run_runner("lite_train_lite_infer", "factseg", cwd=str(repo), env=env, timeout=900)
    log = repo / "test_tipc" / "output" / "factseg" / "results_python.log"
    assert log.is_file(), r.stdout[-3000:] + r.stderr[-3000:]
    lines, status = _status(log)
    assert all(status[1:]), lines
    detail = "\n".join(lines) + "\n" + r.stdout[-6000:] + r.stderr[-2000:]
    assert r.returncode == 0, detail
    assert [m.group(1) for m in status[1:]] == ["successfully"] * 4, detail
    assert [m.group(3) for m in status[1:]] == _expected_cmds(sys.executable)
    best = repo / "test_tipc" / "output" / "factseg" / "lite_train_lite_infer" / "norm_gpus_-1_autocast_null" / \
        "best_model"
    assert (best / "model.pdparams").is_file() and (best / "model.yml").is_file()
    infer_log = (repo / "test_tipc" / "output" / "factseg" / "lite_train_lite_infer" /
                 "python_infer_cpu_usemkldnn_False_threads_2_precision_fp32_batchsize_1.log").read_text()
    assert "passed" in infer_log and "classes {" in infer_log
