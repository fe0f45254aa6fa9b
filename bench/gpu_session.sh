#!/usr/bin/env bash
# The GPU numbers of issues #14 (item 5) and #15 (item 4) in ONE device call. A drawn task has 15 minutes
# of device time in all, the machine's start (a minute or more) included, and no machine starts with under
# 4 minutes left, so there is room for one full call and no second try. Run `bash bench/gpu_wheels.sh`
# here first (no device time), then, with the device tool:
#
#     run  command: "bash bench/gpu_session.sh"   carry: [".whl"]   timeout_s: 540
#
# Steps, in this order (`gpu_session.sh STEP…` runs only those):
#   gpu-tests        the suite's `-m gpu` tests, which no session has run yet (CI has no GPU): AFVs, sketches,
#                    bfloat16, an index, the server and a training run on CUDA against the CPU
#   extract          the loop, ours and the floor for paper64 and paper (`afv bench extract`; #14 item 5)
#   sketch-paper64   exact, sampled and fast sketches of untrained paper64 against exact AFVs, images/s
#   sketch-paper     the same for paper (32 px); the goal is the fast sketch at ≥ 50× the loop
#   ingest           the bundled model's ingest rate on the GPU: images/s per GPU, what one Ray worker of
#                    `--gpus-per-worker 1` runs (#15 item 4; Ray's wheel, 79 MB, is over a call's 64 MiB)
#   loadtest-gpu     the service under 32 clients on the GPU (#14 item 5)
#   loadtest-cpu     the same on the machine's 16 CPU cores, for the GPU-against-CPU ratio
# Each step has its own time limit, cut to what is left of BUDGET seconds (default 500, which leaves the
# wheels' install and a margin inside timeout_s), so the script always ends, and its files come back,
# before the call's limit. A step that fails or runs out does not stop the next one. Each step's output
# lands in $OUT/STEP.txt (the device tool brings them back); copy the numbers into docs/results.md.
#
# SMOKE=1 DEVICE=cpu bash bench/gpu_session.sh: the whole script at small sizes on a machine without a
# GPU (about 3 minutes on 2 cores), to check it before device time is spent on it.
set -uo pipefail
export PYTHONUNBUFFERED=1 OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
BUDGET=${BUDGET:-500}
if [[ ${SMOKE:-0} == 1 ]]; then  # sizes for a check of the script, not for numbers
  LOOP=4 REPEATS=1 N=8 IMAGES=128 SECONDS_OF_LOAD=3 PRESETS=(--preset tiny) P64=tiny P32=tiny
else
  LOOP=64 REPEATS=3 N=64 IMAGES=2048 SECONDS_OF_LOAD=10 PRESETS=(--preset paper64 --preset paper) P64=paper64 P32=paper
fi
if compgen -G ".whl/*.whl" > /dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
START=$SECONDS
GPU_TESTS=(tests/model/test_sampled.py tests/model/test_sketch.py tests/model/test_precision.py tests/model/test_train.py
           tests/service/test_model_index.py tests/service/test_engine.py)  # every `gpu` test; no Ray, Selenium there

step() {  # step NAME SECONDS COMMAND...: run it into $OUT/NAME.txt within what is left of BUDGET
  local name=$1 limit=$2; shift 2
  local left=$((BUDGET - (SECONDS - START)))
  ((limit > left)) && limit=$left
  if ((limit < 10)); then echo "== $name: skipped, ${left}s of the budget left"; return; fi
  echo "== $name (limit ${limit}s): $*"
  timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
  echo "== $name: exit $? after $((SECONDS - START))s in all"; tail -n 25 "$OUT/$name.txt"
}

run_step() {
  case $1 in
    gpu-tests) step gpu-tests 60 $PY -m pytest -m gpu -p no:cacheprovider "${GPU_TESTS[@]}" ;;
    extract) step extract 120 $PY -m service.cli bench extract "${PRESETS[@]}" --device "$DEVICE" \
      --batch-size 64 --loop-images $LOOP --repeats $REPEATS ;;
    sketch-paper64) step sketch-paper64 60 $PY -m service.cli bench sketch --preset $P64 \
      --images tests/fixtures/tinyimagenet64 --normalization none --mode exact --mode sampled --mode fast -n $N \
      --device "$DEVICE" ;;
    sketch-paper) step sketch-paper 45 $PY -m service.cli bench sketch --preset $P32 --images tests/fixtures/cifar10 \
      --normalization none --mode exact --mode sampled --mode fast -n $N --device "$DEVICE" ;;
    ingest) step ingest 60 $PY bench/ingest_throughput.py --device "$DEVICE" --images $IMAGES --size 256 ;;
    loadtest-gpu) step loadtest-gpu 75 $PY bench/loadtest.py --device "$DEVICE" --concurrency 32 \
      --duration $SECONDS_OF_LOAD ;;
    loadtest-cpu) step loadtest-cpu 75 $PY bench/loadtest.py --device cpu --concurrency 32 \
      --duration $SECONDS_OF_LOAD ;;
    *) echo "unknown step $1 (gpu-tests extract sketch-paper64 sketch-paper ingest loadtest-gpu loadtest-cpu)"; exit 2 ;;
  esac
}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > "$OUT/gpu.txt" 2>&1
$PY -c "import torch; print(torch.__version__, torch.cuda.is_available(), torch.get_num_threads(), 'threads')" \
  >> "$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"
(($# == 0)) && set -- gpu-tests extract sketch-paper64 sketch-paper ingest loadtest-gpu loadtest-cpu
for s in "$@"; do run_step "$s"; done
