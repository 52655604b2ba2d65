#!/usr/bin/env bash
# Shared helpers of the TIPC runner (test_tipc/run.sh), compatible with upstream PaddleRS
# test_tipc/common_func.sh (tipc.md §2.1, §3, §4).
#
# Differences from upstream, all on the side of robustness (the results are the same for valid configs):
#   - no function changes the caller's IFS, and no field is subject to pathname expansion
#     (upstream splits with a global IFS and unquoted expansions, so `[-1,3,128,128]` could be globbed);
#   - `func_parser_params` takes the mode as an optional second argument (default: $MODE);
#   - `status_check` writes with printf, so backslashes in a command are logged verbatim;
#   - `run_command` sends stderr to the log too and returns the command's own status (PIPESTATUS[0]).
# Every function is `set -u` safe.

# func_parser_key "key:value" -> key  (field 0 of the ':' split)
function func_parser_key() {
    local IFS=":"
    local -a array=()
    read -r -a array <<< "${1-}"
    printf '%s\n' "${array[0]-}"
}

# func_parser_value "key:value" -> value  (field 1 of the ':' split; a value containing ':' is truncated)
function func_parser_value() {
    local IFS=":"
    local -a array=()
    read -r -a array <<< "${1-}"
    printf '%s\n' "${array[1]-}"
}

# func_parser_field "a:b:c" N -> field N of the ':' split (line 1: task = 1, model = 2)
function func_parser_field() {
    local IFS=":"
    local -a array=()
    read -r -a array <<< "${1-}"
    printf '%s\n' "${array[${2-0}]-}"
}

# func_parser_params "key:mode1=v1|mode2=v2" [MODE] -> the value whose mode equals MODE (default $MODE);
# empty when no item matches (upstream behaviour, so a plain value without `mode=` selects nothing).
function func_parser_params() {
    local mode_wanted="${2-${MODE-}}"
    local value
    value=$(func_parser_value "${1-}")
    local IFS="|"
    local -a items=()
    read -r -a items <<< "${value}"
    local item mode val
    for item in "${items[@]+"${items[@]}"}"; do
        mode="${item%%=*}"
        if [[ "${item}" == *=* ]]; then
            val="${item#*=}"
            val="${val%%=*}"             # upstream splits on '=' and keeps field 1
        else
            val=""
        fi
        if [[ -n "${mode_wanted}" && "${mode}" == "${mode_wanted}" ]]; then
            printf '%s\n' "${val}"
            return 0
        fi
    done
    printf '\n'
}

# func_set_params KEY VALUE -> " " when KEY is null or VALUE is null / " " / empty, else "KEY=VALUE"
function func_set_params() {
    local key="${1-}"
    local value="${2-}"
    if [[ "${key}" == "null" ]]; then
        printf '%s\n' " "
    elif [[ "${value}" == "null" || "${value}" == " " || ${#value} -le 0 ]]; then
        printf '%s\n' " "
    else
        printf '%s\n' "${key}=${value}"
    fi
}

# split_list "a|b|c" -> one item per line (for `while read` / mapfile loops over '|' lists)
function split_list() {
    local IFS="|"
    local -a items=()
    read -r -a items <<< "${1-}"
    local item
    for item in "${items[@]+"${items[@]}"}"; do
        printf '%s\n' "${item}"
    done
}

# status_check STATUS "CMD" STATUS_LOG MODEL_NAME: append (and echo) one PaddleRS-style status line (tipc.md §4)
function status_check() {
    local last_status="${1-1}"
    local run_cmd="${2-}"
    local run_log="${3-}"
    local model_name="${4-}"
    local word="failed"
    if [[ "${last_status}" =~ ^[0-9]+$ ]] && [[ "${last_status}" -eq 0 ]]; then
        word="successfully"
    fi
    local line
    line=$(printf '\033[33m Run %s with command - %s - %s!  \033[0m' "${word}" "${model_name}" "${run_cmd}")
    if [[ -n "${run_log}" ]]; then
        printf '%s\n' "${line}" | tee -a "${run_log}"
    else
        printf '%s\n' "${line}"
    fi
    [[ "${word}" == "successfully" ]]
}

# run_command "CMD" [LOG]: evaluate CMD (pathname expansion off), stdout+stderr through `tee LOG`;
# returns the status of CMD itself, not tee's.
function run_command() {
    local cmd="${1-}"
    local log_path="${2-}"
    local rc
    if [[ -n "${log_path}" ]]; then
        mkdir -p "$(dirname "${log_path}")"
        ( set -f; eval "${cmd}" ) 2>&1 | tee "${log_path}"
        rc=${PIPESTATUS[0]}
    else
        ( set -f; eval "${cmd}" )
        rc=$?
    fi
    return "${rc}"
}
