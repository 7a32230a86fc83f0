#!/usr/bin/env bash
# Strong scaling of the demo job on a borrowed 16-core machine with no network (the device
# machine), in one command of at most about 7 minutes. Not a test: run it there, from the
# repository root, with the wheels of the packages that machine lacks in .whl/ and the
# demo's data files in .devdata/ (both carried, both ignored by git):
#
#     OUT=/some/folder bash tests/benchmarks/device_scale.sh
#
# Steps, all output tee'd to $OUT/log.txt:
#   1. install .whl/*.whl into /tmp/site (--target: the machine's python3 is not ours);
#   2. $OUT/env.txt: Python, the key packages' versions and where they come from, the CPU;
#      importing calibrew's run path once also writes the .pyc files before any timing;
#   3. bench_scale.py: the demo job on 1 dataset (200 events, 2 workers; this also fills
#      numba's cache of the correction walker, so that no timed run compiles it), then the
#      strong scaling of the demo job at 50,000-event chunks on a resampled sample: 1, 16,
#      8, 4 and 2 single-threaded workers (the baseline first, then from the most workers
#      down: a run cut short by the time budget is then the 2-worker one, which a 2-core
#      machine measures too); $OUT/scaling.json (rows, written after every run),
#      $OUT/scaling.md (the tables), $OUT/reports.tar.gz (each run's report.json);
#   4. only if the time left allows it: bench.py's demo chain at 50,000- and 200,000-event
#      chunks (--chunk-pair) with the AK4 jet chain (one JES source, on half the events),
#      the read floors and one graph size, $OUT/chunk_pair.md.
#
# Sizes come from the environment, with these defaults (the device run's):
#   DEVICE_SCALE_EVENTS=400000      events made (DEVICE_SCALE_FILES files, made in parallel)
#   DEVICE_SCALE_FILES=4
#   DEVICE_SCALE_REPEAT=4           each file listed 4 times: 1.6M events, 32 chunks
#   DEVICE_SCALE_REPEAT_ONE=2       the one-worker run: 800k events, 16 chunks
#   DEVICE_SCALE_WORKERS=1,16,8,4,2
#   DEVICE_SCALE_CHUNKSIZE=50000
#   DEVICE_SCALE_BUDGET_S=420       seconds for the whole script; steps are cut to fit
#   DEVICE_SCALE_RUN_TIMEOUT_S=240  seconds for one run of the job
#   DEVICE_SCALE_PAIR_NEEDS_S=240   seconds that must be left to start step 4
#   DEVICE_SCALE_PAIR_EVENTS=400000 events of step 4 (its own sample, made in one process)

set -uo pipefail
: "${OUT:?OUT must name the folder for the results}"
cd "$(dirname "$0")/../.."

EVENTS=${DEVICE_SCALE_EVENTS:-400000}
FILES=${DEVICE_SCALE_FILES:-4}
REPEAT=${DEVICE_SCALE_REPEAT:-4}
REPEAT_ONE=${DEVICE_SCALE_REPEAT_ONE:-2}
WORKERS=${DEVICE_SCALE_WORKERS:-1,16,8,4,2}
CHUNKSIZE=${DEVICE_SCALE_CHUNKSIZE:-50000}
BUDGET=${DEVICE_SCALE_BUDGET_S:-420}
RUN_TIMEOUT=${DEVICE_SCALE_RUN_TIMEOUT_S:-240}
PAIR_NEEDS=${DEVICE_SCALE_PAIR_NEEDS_S:-240}
PAIR_EVENTS=${DEVICE_SCALE_PAIR_EVENTS:-400000}

export PYTHONUNBUFFERED=1
export CALIBREW_DATA=$PWD/.devdata CALIBREW_OFFLINE=1
export XDG_CACHE_HOME=/tmp/calibrew-xdg
SAMPLES=/tmp/calibrew-samples
REPORTS=/tmp/calibrew-reports

left() { echo $((BUDGET - SECONDS)); }
# seconds for a step that must end $1 s before the budget does (at least 1: timeout 0 never ends)
until_budget() { local t=$(($(left) - $1)); echo $((t < 1 ? 1 : t)); }

install() {
    echo "== install (.whl: $(ls .whl/*.whl | wc -l) wheels)"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || return 1
    export PYTHONPATH=/tmp/site:$PWD
}

environment() {
    echo "== environment"
    {
        date -u
        python3 -VV
        echo "nproc $(nproc); usable cores $(python3 -c 'import os; print(len(os.sched_getaffinity(0)))')"
        grep -m1 "model name" /proc/cpuinfo
        lscpu 2>/dev/null | grep -E "^(Thread|Core|Socket|CPU\(s\)|NUMA node\(s\)|L3)" || true
        grep -E "^(MemTotal|MemAvailable)" /proc/meminfo
        python3 - <<'EOF'
import importlib.metadata as md

KEY = ["calibrew", "numpy", "numba", "llvmlite", "awkward", "awkward-cpp", "uproot", "dask",
       "distributed", "dask-awkward", "dask-histogram", "coffea", "correctionlib", "hist",
       "boost-histogram", "zarr", "numcodecs", "pydantic", "omegaconf", "rich", "pandas",
       "pyarrow", "scipy", "fsspec", "cloudpickle", "msgpack", "psutil", "tornado", "bokeh",
       "matplotlib"]
for name in KEY:
    try:
        dist = md.distribution(name)
        print(f"{name:16s} {dist.version:14s} {dist.locate_file('')}")
    except md.PackageNotFoundError:
        print(f"{name:16s} (not installed)")
EOF
        echo "-- python3 -m pip list"
        python3 -m pip list 2>/dev/null
    } >"$OUT/env.txt" 2>&1
    sed -n '1,40p' "$OUT/env.txt"
    # calibrew's run path, imported once: fails early, and writes the .pyc files untimed
    python3 -c "import numba, numpy, pipeline.cli, pipeline.corrections.walker, \
pipeline.analysis.processor, pipeline.run.runner, coffea.nanoevents, distributed, \
dask_awkward, correctionlib, zarr; print('imports ok: numpy', numpy.__version__, \
'numba', numba.__version__)"
}

scaling() {
    echo "== strong scaling ($(left) s left)"
    mkdir -p "$SAMPLES" "$REPORTS"
    timeout -k 10 "$(until_budget 15)" python3 tests/benchmarks/bench_scale.py \
        --datasets 1 --workers "$WORKERS" --events "$EVENTS" --files "$FILES" \
        --make-jobs "$FILES" --repeat "$REPEAT" --repeat-one "$REPEAT_ONE" \
        --chunksize "$CHUNKSIZE" --sample-dir "$SAMPLES" --timeout "$RUN_TIMEOUT" \
        --out-json "$OUT/scaling.json" --keep-reports "$REPORTS"
    local status=$?
    # the tables; a benchmark cut short has the rows of its finished runs: their table
    python3 - "$OUT/scaling.json" "$OUT/scaling.md" "$FILES" "$CHUNKSIZE" <<'EOF'
import json, sys
from pathlib import Path

sys.path.insert(0, "tests/benchmarks")
from bench_scale import scaling_table

source, target = map(Path, sys.argv[1:3])
files, chunksize = map(int, sys.argv[3:5])
if source.exists():
    results = json.loads(source.read_text())
    tables = [results.get("datasets_table"), results.get("scaling_table")]
    if tables[1] is None and results.get("scaling"):
        tables[1] = "\n".join(scaling_table(results["scaling"], files, chunksize,
                                            results["command"] + " (cut short)"))
    target.write_text("\n\n".join(filter(None, tables)) + "\n")
EOF
    tar -czf "$OUT/reports.tar.gz" -C "$REPORTS" . 2>/dev/null
    return $status
}

chunk_pair() {
    if (( $(left) < PAIR_NEEDS )); then
        echo "== chunk pair skipped: $(left) s left, $PAIR_NEEDS s needed"
        return 0
    fi
    echo "== chunk pair ($(left) s left)"
    timeout -k 10 "$(until_budget 10)" python3 tests/benchmarks/bench.py \
        --events "$PAIR_EVENTS" --chunksize 200000 --chunk-pair 50000,200000 \
        --jes-sets 1 --jes-events "$((PAIR_EVENTS / 2))" --variations 2 >"$OUT/chunk_pair.md"
    local status=$?
    cat "$OUT/chunk_pair.md"
    return $status
}

main() {
    echo "device_scale.sh: events $EVENTS in $FILES files x $REPEAT (one worker: x $REPEAT_ONE),"\
         "workers $WORKERS, chunks of $CHUNKSIZE, budget $BUDGET s"
    install || { echo "install failed"; return 1; }
    environment || { echo "environment check failed"; return 1; }
    scaling || { echo "strong scaling ended with status $?"; return 1; }
    chunk_pair || echo "chunk pair ended with status $?"
    echo "== done in $SECONDS s"
}

mkdir -p "$OUT"
main 2>&1 | tee "$OUT/log.txt"
