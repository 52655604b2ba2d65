#!/usr/bin/env bash
# TIPC chain runner (tipc.md §5; interface per the project issue).
#
#   bash test_tipc/run.sh lite_train_lite_infer [MODEL]      # every test_tipc/configs/*/train_infer_python.txt,
#                                                           # or only test_tipc/configs/MODEL/
#   bash test_tipc/run.sh <config_file> [MODE]              # spec form; MODE defaults to lite_train_lite_infer
#
# Per model: data -> train -> (eval) -> export -> infer, each command run through run_command and followed by
# one status line appended to test_tipc/output/<model>/results_python.log (tipc.md §4). Step logs and training
# outputs go below test_tipc/output/<model>/<MODE>/ with the upstream names (tipc.md §3).
#
# Exit status: 0 every command of this invocation succeeded; 1 at least one `Run failed` line was written;
# 2 usage or parse error (nothing run, no status line written).
#
# Environment: TIPC_PYTHON overrides the interpreter of line 2 (e.g. TIPC_PYTHON=python3).
set -u

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(dirname "${SCRIPT_DIR}")"
# shellcheck source=test_tipc/common_func.sh
source "${SCRIPT_DIR}/common_func.sh"

DEFAULT_MODE="lite_train_lite_infer"
KNOWN_MODES="lite_train_lite_infer lite_train_whole_infer whole_train_whole_infer whole_infer"
SUPPORTED_MODES="lite_train_lite_infer lite_train_whole_infer"
NUM_LINES=53

function usage() {
    cat <<EOF
usage: bash test_tipc/run.sh MODE [MODEL]
       bash test_tipc/run.sh CONFIG_FILE [MODE]

  MODE         one of: ${SUPPORTED_MODES}
               (whole_train_whole_infer and whole_infer are not supported by this runner)
  MODEL        a directory name under test_tipc/configs/ (default: every directory holding a
               train_infer_python.txt)
  CONFIG_FILE  a 53-line train_infer_python.txt (tipc.md §2)

Results: test_tipc/output/<model>/results_python.log; logs and outputs: test_tipc/output/<model>/<MODE>/.
Exit status: 0 all commands succeeded, 1 some command failed, 2 usage or parse error.
EOF
}

function die_usage() {
    printf 'test_tipc/run.sh: error: %s\n' "$*" >&2
    printf "run 'bash test_tipc/run.sh --help' for usage\n" >&2
    exit 2
}

function is_in_list() {   # is_in_list WORD "w1 w2 ..."
    local w
    for w in $2; do
        [[ "$1" == "${w}" ]] && return 0
    done
    return 1
}

function gpu_available() {
    if [[ -z "${_GPU_AVAILABLE-}" ]]; then
        if command -v nvidia-smi > /dev/null 2>&1 && nvidia-smi > /dev/null 2>&1; then
            _GPU_AVAILABLE=1
        else
            _GPU_AVAILABLE=0
        fi
    fi
    [[ "${_GPU_AVAILABLE}" == 1 ]]
}

# ------------------------------------------------------------------------------------------------------------
# arguments
# ------------------------------------------------------------------------------------------------------------
if [[ $# -lt 1 ]]; then
    usage >&2
    exit 2
fi
if [[ "$1" == "-h" || "$1" == "--help" ]]; then
    usage
    exit 0
fi

CONFIGS=()
if [[ -f "$1" ]]; then                                   # spec form: CONFIG_FILE [MODE]
    [[ $# -le 2 ]] || die_usage "too many arguments"
    cfg_abs="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
    CONFIGS=("${cfg_abs}")
    MODE="${2-${DEFAULT_MODE}}"
else                                                     # issue form: MODE [MODEL]
    [[ $# -le 2 ]] || die_usage "too many arguments"
    MODE="$1"
    if ! is_in_list "${MODE}" "${KNOWN_MODES}"; then
        die_usage "'${MODE}' is neither an existing config file nor a mode (${KNOWN_MODES})"
    fi
    if [[ $# -eq 2 ]]; then
        [[ -n "$2" && "$2" != */* && "$2" != .* ]] || die_usage "bad model name '$2'"
        cfg="${SCRIPT_DIR}/configs/$2/train_infer_python.txt"
        [[ -f "${cfg}" ]] || die_usage "no config for model '$2' (expected ${cfg#"${REPO_ROOT}"/})"
        CONFIGS=("${cfg}")
    else
        for cfg in "${SCRIPT_DIR}"/configs/*/train_infer_python.txt; do
            [[ -f "${cfg}" ]] && CONFIGS+=("${cfg}")
        done
        [[ ${#CONFIGS[@]} -gt 0 ]] || die_usage "no test_tipc/configs/*/train_infer_python.txt found"
    fi
fi
is_in_list "${MODE}" "${KNOWN_MODES}" || die_usage "unknown MODE '${MODE}' (known: ${KNOWN_MODES})"
is_in_list "${MODE}" "${SUPPORTED_MODES}" || die_usage "MODE '${MODE}' is not supported (supported: ${SUPPORTED_MODES})"
export MODE

cd "${REPO_ROOT}" || die_usage "cannot cd to ${REPO_ROOT}"
trap 'printf "\n[tipc] interrupted\n" >&2; exit 130' INT TERM

# ------------------------------------------------------------------------------------------------------------
# config loading and validation (tipc.md §2.1: blank lines do not count, 53 lines, order is the format)
# ------------------------------------------------------------------------------------------------------------
LINES=()
function load_config() {      # load_config FILE -> LINES; prints the reason and returns 1 when invalid
    local file="$1" raw
    LINES=()
    if [[ ! -r "${file}" ]]; then
        echo "${file}: not readable"
        return 1
    fi
    while IFS= read -r raw || [[ -n "${raw}" ]]; do
        raw="${raw%$'\r'}"
        [[ -n "${raw}" ]] && LINES+=("${raw}")
    done < "${file}"
    if [[ ${#LINES[@]} -ne ${NUM_LINES} ]]; then
        echo "${file}: ${#LINES[@]} non-blank lines, expected ${NUM_LINES} (tipc.md §2)"
        return 1
    fi
    local spec idx key got
    for spec in 1:model_name 2:python 3:gpu_list 11:train_model_name 14:trainer 15:norm_train 23:eval \
                30:norm_export 40:inference; do
        idx="${spec%%:*}"
        key="${spec#*:}"
        got="$(func_parser_key "${LINES[idx]}")"
        if [[ "${got}" != "${key}" ]]; then
            echo "${file}: line index ${idx} should be '${key}:...', got '${LINES[idx]}' (lines out of order?)"
            return 1
        fi
    done
    local task model
    task="$(func_parser_field "${LINES[1]}" 1)"
    model="$(func_parser_field "${LINES[1]}" 2)"
    if [[ -z "${task}" || -z "${model}" || "${model}" == */* || "${model}" == .* ]]; then
        echo "${file}: line index 1 must be 'model_name:<task>:<model>', got '${LINES[1]}'"
        return 1
    fi
    local trainer
    while IFS= read -r trainer; do
        if [[ "${trainer}" != "norm" ]]; then
            echo "${file}: trainer '${trainer}' is not supported (only 'norm')"
            return 1
        fi
    done < <(split_list "$(func_parser_value "${LINES[14]}")")
    local norm_train
    norm_train="$(func_parser_value "${LINES[15]}")"
    if [[ -z "${norm_train}" || "${norm_train}" == "null" ]]; then
        echo "${file}: norm_train is null"
        return 1
    fi
    local train_cfg
    train_cfg="$(func_parser_params "${LINES[10]}" "${MODE}")"
    if [[ -z "${train_cfg}" || "${train_cfg}" == "null" ]]; then
        echo "${file}: line index 10 (--config) has no value for MODE ${MODE}"
        return 1
    fi
    if [[ ! -f "${train_cfg}" ]]; then
        echo "${file}: training config '${train_cfg}' (line index 10, MODE ${MODE}) does not exist"
        return 1
    fi
    return 0
}

PYTHON_OVERRIDE="${TIPC_PYTHON-}"
for cfg in "${CONFIGS[@]}"; do
    if ! reason="$(load_config "${cfg}")"; then
        die_usage "${reason}"
    fi
    load_config "${cfg}" > /dev/null
    py="${PYTHON_OVERRIDE:-$(func_parser_value "${LINES[2]}")}"
    command -v "${py}" > /dev/null 2>&1 || die_usage "${cfg}: interpreter '${py}' not found (set TIPC_PYTHON)"
done

# ------------------------------------------------------------------------------------------------------------
# the chain
# ------------------------------------------------------------------------------------------------------------
N_OK=0
N_FAIL=0
function check() {            # check STATUS "CMD": status line + counters
    if status_check "$1" "$2" "${status_log}" "${model_name}"; then
        N_OK=$((N_OK + 1))
    else
        N_FAIL=$((N_FAIL + 1))
    fi
}

function step() {             # step "CMD" LOG: print, run, log status
    local cmd="$1" log="$2" rc
    printf '\n[tipc] %s\n' "${cmd}"
    run_command "${cmd}" "${log}"
    rc=$?
    check "${rc}" "${cmd}"
    return "${rc}"
}

function func_inference() {   # func_inference PYTHON SCRIPT MODEL_DIR LOG_DIR
    local _python="$1" _script="$2" _model_dir="$3" _log_path="$4"
    local set_model_dir set_benchmark set_infer_params1 set_infer_params2 set_device
    set_model_dir="$(func_set_params "${infer_model_key}" "${_model_dir}")"
    set_benchmark="$(func_set_params "${benchmark_key}" "${benchmark_value}")"
    set_infer_params1="$(func_set_params "${infer_key1}" "${infer_value1}")"
    set_infer_params2="$(func_set_params "${infer_key2}" "${infer_value2}")"
    local device use_mkldnn precision threads batch_size use_trt cmd log
    local set_mkldnn set_precision set_cpu_threads set_batchsize set_tensorrt
    while IFS= read -r device; do
        set_device="$(func_set_params "${use_gpu_key}" "${device}")"
        if [[ "${device}" == "False" || "${device}" == "cpu" ]]; then
            while IFS= read -r use_mkldnn; do          # the project does not skip enable_mkldnn=False
                while IFS= read -r precision; do
                    if [[ "${precision}" != "fp32" ]]; then
                        echo "[tipc] skip: precision ${precision} on CPU (fp32 only)"
                        continue
                    fi
                    while IFS= read -r threads; do
                        while IFS= read -r batch_size; do
                            log="${_log_path}/python_infer_cpu_usemkldnn_${use_mkldnn}_threads_${threads}_precision_${precision}_batchsize_${batch_size}.log"
                            set_mkldnn="$(func_set_params "${use_mkldnn_key}" "${use_mkldnn}")"
                            set_precision="$(func_set_params "${precision_key}" "${precision}")"
                            set_cpu_threads="$(func_set_params "${cpu_threads_key}" "${threads}")"
                            set_batchsize="$(func_set_params "${batch_size_key}" "${batch_size}")"
                            cmd="${_python} ${_script} ${set_config} ${set_device} ${set_mkldnn} ${set_cpu_threads} ${set_model_dir} ${set_batchsize} ${set_benchmark} ${set_precision} ${set_infer_params1} ${set_infer_params2}"
                            step "${cmd}" "${log}" < /dev/null
                        done < <(split_list "${batch_size_list}")
                    done < <(split_list "${cpu_threads_list}")
                done < <(split_list "${precision_list}")
            done < <(split_list "${use_mkldnn_list}")
        elif [[ "${device}" == "True" || "${device}" == "gpu" ]]; then
            if ! gpu_available; then
                echo "[tipc] skip: --device=${device} inference (nvidia-smi does not work on this machine)"
                continue
            fi
            while IFS= read -r use_trt; do
                while IFS= read -r precision; do
                    if [[ "${precision}" == "fp16" && "${use_trt}" == "False" ]]; then
                        echo "[tipc] skip: fp16 on GPU without TensorRT"
                        continue
                    fi
                    while IFS= read -r batch_size; do
                        log="${_log_path}/python_infer_gpu_usetrt_${use_trt}_precision_${precision}_batchsize_${batch_size}.log"
                        set_tensorrt="$(func_set_params "${use_trt_key}" "${use_trt}")"
                        set_precision="$(func_set_params "${precision_key}" "${precision}")"
                        set_batchsize="$(func_set_params "${batch_size_key}" "${batch_size}")"
                        cmd="${_python} ${_script} ${set_config} ${set_device} ${set_tensorrt} ${set_precision} ${set_model_dir} ${set_batchsize} ${set_benchmark} ${set_infer_params2}"
                        step "${cmd}" "${log}" < /dev/null
                    done < <(split_list "${batch_size_list}")
                done < <(split_list "${precision_list}")
            done < <(split_list "${use_trt_list}")
        else
            echo "[tipc] skip: device '${device}' (only cpu and gpu are supported)"
        fi
    done < <(split_list "${use_gpu_list}")
}

function run_model() {        # run_model CONFIG_FILE
    local cfg="$1"
    load_config "${cfg}" > /dev/null || return 1
    local t_start=${SECONDS}
    local ok0=${N_OK} fail0=${N_FAIL}
    # --- parse (tipc.md §2.2); names follow upstream test_train_inference_python.sh
    task_name="$(func_parser_field "${LINES[1]}" 1)"
    model_name="$(func_parser_field "${LINES[1]}" 2)"
    python="${PYTHON_OVERRIDE:-$(func_parser_value "${LINES[2]}")}"
    gpu_list="$(func_parser_value "${LINES[3]}")"
    train_use_gpu_key="$(func_parser_key "${LINES[4]}")"
    train_use_gpu_value="$(func_parser_value "${LINES[4]}")"
    autocast_list="$(func_parser_value "${LINES[5]}")"
    autocast_key="$(func_parser_key "${LINES[5]}")"
    epoch_key="$(func_parser_key "${LINES[6]}")"
    epoch_value="$(func_parser_params "${LINES[6]}" "${MODE}")"
    save_model_key="$(func_parser_key "${LINES[7]}")"
    train_batch_key="$(func_parser_key "${LINES[8]}")"
    train_batch_value="$(func_parser_params "${LINES[8]}" "${MODE}")"
    pretrain_model_key="$(func_parser_key "${LINES[9]}")"
    pretrain_model_value="$(func_parser_value "${LINES[9]}")"
    train_config_key="$(func_parser_key "${LINES[10]}")"
    train_config_value="$(func_parser_params "${LINES[10]}" "${MODE}")"
    train_model_name="$(func_parser_value "${LINES[11]}")"
    train_param_key1="$(func_parser_key "${LINES[12]}")"
    train_param_value1="$(func_parser_value "${LINES[12]}")"
    norm_trainer="$(func_parser_value "${LINES[15]}")"
    eval_py="$(func_parser_value "${LINES[23]}")"
    eval_key1="$(func_parser_key "${LINES[24]}")"
    eval_value1="$(func_parser_value "${LINES[24]}")"
    save_infer_key="$(func_parser_key "${LINES[27]}")"
    export_weight="$(func_parser_key "${LINES[28]}")"
    export_shape_key="$(func_parser_key "${LINES[29]}")"
    export_shape_value="$(func_parser_value "${LINES[29]}")"
    norm_export="$(func_parser_value "${LINES[30]}")"
    inference_dir="$(func_parser_value "${LINES[36]}")"
    inference_py="$(func_parser_value "${LINES[40]}")"
    use_gpu_key="$(func_parser_key "${LINES[41]}")"
    use_gpu_list="$(func_parser_value "${LINES[41]}")"
    use_mkldnn_key="$(func_parser_key "${LINES[42]}")"
    use_mkldnn_list="$(func_parser_value "${LINES[42]}")"
    cpu_threads_key="$(func_parser_key "${LINES[43]}")"
    cpu_threads_list="$(func_parser_value "${LINES[43]}")"
    batch_size_key="$(func_parser_key "${LINES[44]}")"
    batch_size_list="$(func_parser_value "${LINES[44]}")"
    use_trt_key="$(func_parser_key "${LINES[45]}")"
    use_trt_list="$(func_parser_value "${LINES[45]}")"
    precision_key="$(func_parser_key "${LINES[46]}")"
    precision_list="$(func_parser_value "${LINES[46]}")"
    infer_model_key="$(func_parser_key "${LINES[47]}")"
    benchmark_key="$(func_parser_key "${LINES[50]}")"
    benchmark_value="$(func_parser_value "${LINES[50]}")"
    infer_key1="$(func_parser_key "${LINES[51]}")"
    infer_value1="$(func_parser_value "${LINES[51]}")"
    infer_key2="$(func_parser_key "${LINES[52]}")"
    infer_value2="$(func_parser_value "${LINES[52]}")"

    # --- output layout: test_tipc/output/<model>/{results_python.log, <MODE>/...}
    local out_root="./test_tipc/output/${model_name}"
    OUT_PATH="${out_root}/${MODE}"
    status_log="${out_root}/results_python.log"
    mkdir -p "${OUT_PATH}"
    echo "------------------------ ${MODE} ------------------------" >> "${status_log}"
    printf '\n[tipc] ===== %s (%s, %s) =====\n' "${model_name}" "${cfg#"${REPO_ROOT}"/}" "${MODE}"

    # --- 1. data
    set_config="$(func_set_params "${train_config_key}" "${train_config_value}")"
    step "${python} test_tipc/prepare_data.py --config ${train_config_value} --mode ${MODE}" \
        "${OUT_PATH}/prepare_data.log" < /dev/null

    # --- 2.-5. per gpu x autocast x trainer
    local -a use_gpu_values=()
    IFS="|" read -r -a use_gpu_values <<< "${train_use_gpu_value}"
    local count=0 gpu train_use_gpu autocast trainer env_cvd launch nodes save_dir log_path cmd
    local set_autocast set_epoch set_pretrain set_batchsize set_train_params1 set_use_gpu set_save_model
    local set_eval_pretrain set_eval_params1 save_infer_path set_export_weight set_export_shape
    local set_save_infer_key infer_model_dir rc
    while IFS= read -r gpu; do
        train_use_gpu="${use_gpu_values[count]-}"
        count=$((count + 1))
        launch=""
        if [[ "${gpu}" == "-1" ]]; then
            # CPU: on a machine with a GPU hide it, so that '-1' really trains on the CPU
            if gpu_available; then env_cvd=""; else env_cvd="unset"; fi
        elif ! gpu_available; then
            echo "[tipc] skip: gpu_list entry '${gpu}' (nvidia-smi does not work on this machine)"
            continue
        elif [[ ${#gpu} -le 1 ]]; then
            env_cvd="${gpu}"
        elif [[ ${#gpu} -le 15 ]]; then
            env_cvd="unset"
            launch="-m paddle.distributed.launch --gpus=${gpu} "
        else
            echo "[tipc] skip: gpu_list entry '${gpu}' (multi-machine training is not supported)"
            continue
        fi
        while IFS= read -r autocast; do
            while IFS= read -r trainer; do
                [[ "${trainer}" == "norm" ]] || continue
                local run_train="${norm_trainer}" run_export="${norm_export}"
                set_autocast="$(func_set_params "${autocast_key}" "${autocast}")"
                set_epoch="$(func_set_params "${epoch_key}" "${epoch_value}")"
                set_pretrain="$(func_set_params "${pretrain_model_key}" "${pretrain_model_value}")"
                set_batchsize="$(func_set_params "${train_batch_key}" "${train_batch_value}")"
                set_train_params1="$(func_set_params "${train_param_key1}" "${train_param_value1}")"
                set_use_gpu="$(func_set_params "${train_use_gpu_key}" "${train_use_gpu}")"
                nodes=1
                save_dir="${OUT_PATH}/${trainer}_gpus_${gpu}_autocast_${autocast}"
                log_path="${OUT_PATH}/${trainer}_gpus_${gpu}_autocast_${autocast}_nodes_${nodes}.log"
                set_save_model="$(func_set_params "${save_model_key}" "${save_dir}")"
                cmd="${python} ${launch}${run_train} ${set_config} ${set_use_gpu} ${set_save_model} ${set_epoch} ${set_pretrain} ${set_autocast} ${set_batchsize} ${set_train_params1} "

                # supported autocast: null / fp32, and amp on a GPU
                if [[ "${autocast}" == "amp" && "${gpu}" == "-1" ]] || \
                   ! is_in_list "${autocast}" "null fp32 amp"; then
                    echo "[tipc] autocast '${autocast}' is not supported with gpu '${gpu}' (null/fp32; amp on GPU only)"
                    check 1 "${cmd}"
                    continue
                fi

                # a fresh save_dir (inside OUT_PATH), so that a failed training cannot export stale weights
                if [[ "${save_dir}" != *..* && "${save_dir}" == "${OUT_PATH}/"?* ]]; then
                    rm -rf -- "${save_dir}"
                fi
                if [[ "${env_cvd}" == "unset" ]]; then
                    ( unset CUDA_VISIBLE_DEVICES; step "${cmd}" "${log_path}" < /dev/null ) && rc=0 || rc=$?
                else
                    ( export CUDA_VISIBLE_DEVICES="${env_cvd}"; step "${cmd}" "${log_path}" < /dev/null ) && rc=0 || rc=$?
                fi
                # the subshell's counters are lost: count here
                if [[ ${rc} -eq 0 ]]; then N_OK=$((N_OK + 1)); else N_FAIL=$((N_FAIL + 1)); fi

                set_eval_pretrain="$(func_set_params "${pretrain_model_key}" "${save_dir}/${train_model_name}/model.pdparams")"
                if [[ "${eval_py}" != "null" ]]; then
                    log_path="${OUT_PATH}/${trainer}_gpus_${gpu}_autocast_${autocast}_nodes_${nodes}_eval.log"
                    set_eval_params1="$(func_set_params "${eval_key1}" "${eval_value1}")"
                    cmd="${python} ${eval_py} ${set_eval_pretrain} ${set_use_gpu} ${set_eval_params1}"
                    step "${cmd}" "${log_path}" < /dev/null
                fi
                if [[ "${run_export}" != "null" ]]; then
                    log_path="${OUT_PATH}/${trainer}_gpus_${gpu}_autocast_${autocast}_nodes_${nodes}_export.log"
                    save_infer_path="${save_dir}/static"
                    set_export_weight="$(func_set_params "${export_weight}" "${save_dir}/${train_model_name}")"
                    set_export_shape="$(func_set_params "${export_shape_key}" "${export_shape_value}")"
                    set_save_infer_key="$(func_set_params "${save_infer_key}" "${save_infer_path}")"
                    cmd="${python} ${run_export} ${set_export_weight} ${set_save_infer_key} ${set_export_shape}"
                    step "${cmd}" "${log_path}" < /dev/null
                    if [[ "${inference_dir}" != "null" && "${inference_dir}" != "##" ]]; then
                        infer_model_dir="${save_infer_path}/${inference_dir}"
                    else
                        infer_model_dir="${save_infer_path}"
                    fi
                    if [[ -n "${inference_py}" && "${inference_py}" != "null" ]]; then
                        func_inference "${python}" "${inference_py}" "${infer_model_dir}" "${OUT_PATH}"
                    fi
                fi
            done < <(split_list "$(func_parser_value "${LINES[14]}")")
        done < <(split_list "${autocast_list}")
    done < <(split_list "${gpu_list}")

    printf '\n[tipc] %s: %d succeeded, %d failed in %ds; status lines in %s\n' "${model_name}" \
        $((N_OK - ok0)) $((N_FAIL - fail0)) $((SECONDS - t_start)) "${status_log#./}"
}

# The train step runs in a subshell (CUDA_VISIBLE_DEVICES); `step` prints and logs from there, and run_model
# counts it from the exit status. The status line is written by that subshell, so nothing is lost.
for cfg in "${CONFIGS[@]}"; do
    run_model "${cfg}"
done

printf '\n[tipc] summary (%s): %d succeeded, %d failed\n' "${MODE}" "${N_OK}" "${N_FAIL}"
if [[ ${N_FAIL} -gt 0 ]]; then
    exit 1
fi
exit 0
