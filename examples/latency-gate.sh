#!/bin/sh
# Latency gate for any CI system (POSIX sh): export the model of this commit and of the main branch,
# then A/B them on this machine with `vitedge bench --against` (docs/latency-gate.md).
#
#   usage: examples/latency-gate.sh NEW_CHECKOUT BASE_CHECKOUT [OUT_DIR]
#
#   NEW_CHECKOUT   this commit's working tree;  BASE_CHECKOUT  the main branch's (e.g. `git worktree add`)
#   OUT_DIR        exports, venvs and reports (default: ./latency-gate)
#
# Environment (all optional):
#   BUDGET_MS        latency budget of the export and of the gate's budget check (ms)   [2.0]
#   MAX_REGRESSION   tolerated slow-down of new vs base, "5%" or "0.05"                   [5%]
#   THREADS          runtime threads for export and bench; 1 is steadiest on shared CI   [1]
#   EXPORT_ARGS      extra `vitedge export` arguments, e.g. "--checkpoint model.safetensors"
#   INSTALL          1: each checkout exports with its own code in its own venv (pip install -e);
#                    0: use the `vitedge` on PATH for both (only the model/weights differ)  [1]
#   RETRIES          re-runs of the gate when it exits 3 (unstable or inconclusive)     [1]
#   PYTHON           interpreter for the venvs                                            [python3]
#   VITEDGE_CACHE    calibration / latency-table cache shared by both exports           [OUT_DIR/cache]
#
# Exit: the gate's code. 0 pass, 1 regression or over budget, 2 bad input, 3 unstable/inconclusive.
# Reports: OUT_DIR/latency-gate.xml (JUnit) and OUT_DIR/latency-gate.json.
set -eu

NEW=${1:?usage: latency-gate.sh NEW_CHECKOUT BASE_CHECKOUT [OUT_DIR]}
BASE=${2:?usage: latency-gate.sh NEW_CHECKOUT BASE_CHECKOUT [OUT_DIR]}
OUT=${3:-latency-gate}
BUDGET_MS=${BUDGET_MS:-2.0}
MAX_REGRESSION=${MAX_REGRESSION:-5%}
THREADS=${THREADS:-1}
EXPORT_ARGS=${EXPORT_ARGS:-}
INSTALL=${INSTALL:-1}
RETRIES=${RETRIES:-1}
PYTHON=${PYTHON:-python3}

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
VITEDGE_CACHE=${VITEDGE_CACHE:-$OUT/cache}
export VITEDGE_CACHE

# vitedge_of SIDE: the vitedge command that exports SIDE (its own venv when INSTALL=1)
vitedge_of() {
    if [ "$INSTALL" = 1 ]; then
        echo "$OUT/venv-$1/bin/vitedge"
    else
        command -v vitedge
    fi
}

# export_side SIDE CHECKOUT: OUT/SIDE/model.onnx, exported by CHECKOUT's code
export_side() {
    side=$1
    dir=$2
    if [ "$INSTALL" = 1 ] && [ ! -x "$OUT/venv-$side/bin/vitedge" ]; then
        "$PYTHON" -m venv "$OUT/venv-$side"
        "$OUT/venv-$side/bin/python" -m pip install -q -e "$dir"
    fi
    rm -rf "$OUT/$side"
    # shellcheck disable=SC2086  # EXPORT_ARGS is a list of words on purpose
    (cd "$dir" && "$(vitedge_of "$side")" export --quiet --threads "$THREADS" --budget-ms "$BUDGET_MS" \
        $EXPORT_ARGS -o "$OUT/$side")
}

export_side base "$BASE"
export_side new "$NEW"

# the gate runs with the new side's vitedge: both models in one process, interleaved
gate() {
    "$(vitedge_of new)" bench "$OUT/new/model.onnx" --against "$OUT/base/model.onnx" \
        --threads "$THREADS" --max-regression "$MAX_REGRESSION" --budget-ms "$BUDGET_MS" \
        --junit "$OUT/latency-gate.xml" -o "$OUT/latency-gate.json"
}

try=0
while :; do
    status=0
    gate || status=$?
    if [ "$status" -ne 3 ] || [ "$try" -ge "$RETRIES" ]; then
        break
    fi
    try=$((try + 1))
    echo "latency gate: unstable or inconclusive (exit 3), re-running ($try/$RETRIES)" >&2
done
exit "$status"
