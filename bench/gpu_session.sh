#!/usr/bin/env bash
# The GPU numbers of issues #14 (item 5) and #15 (item 4), as two device calls of about 6-8 minutes
# each. Run `bash bench/gpu_wheels.sh` here first (no device time), then, with the device tool:
#
#     run  command: "bash bench/gpu_session.sh model"   carry: [".whl"]   timeout_s: 540
#     run  command: "bash bench/gpu_session.sh serve"   carry: [".whl"]   timeout_s: 540
#
# model: the loop, ours and the floor for paper64 and paper (`afv bench extract`), the sketches against
#        exact AFVs on untrained paper64 (`afv bench sketch`; the goal is ≥ 50× the loop).
# serve: the bundled model's ingest rate on the GPU (images/s per GPU: what one Ray worker of
#        `--gpus-per-worker 1` runs; Ray's wheel is 79 MB, over a call's 64 MiB), and the service
#        under 32 clients on the GPU and, on the same machine, on its 16 CPU cores.
# Each step has its own time limit, and a step that fails or runs out does not stop the next one.
# Outputs land in $OUT (the device tool brings them back); copy them into docs/results.md.
set -uo pipefail
part=${1:?usage: gpu_session.sh model|serve}
export PYTHONUNBUFFERED=1 OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}  # DEVICE=cpu: a smoke run of the script itself on a machine without a GPU
if compgen -G ".whl/*.whl" > /dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

step() {  # step NAME SECONDS COMMAND...: run it into $OUT/NAME.txt, say how it ended
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s): $*"
  timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
  echo "== $name: exit $? after ${SECONDS}s in all"; tail -n 25 "$OUT/$name.txt"
}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > "$OUT/gpu.txt" 2>&1
$PY -c "import torch; print(torch.__version__, torch.cuda.is_available(), torch.cuda.get_device_name(0))" >> "$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"
case $part in
  model)
    step extract 300 $PY -m service.cli bench extract --preset paper64 --preset paper --device $DEVICE \
      --batch-size 64 --loop-images 64
    step sketch 200 $PY -m service.cli bench sketch --preset paper64 --images tests/fixtures/tinyimagenet64 \
      --normalization none --mode exact --mode sampled --mode fast -n 64 --device $DEVICE
    ;;
  serve)
    step ingest-$DEVICE 150 $PY bench/ingest_throughput.py --device $DEVICE --images 2048 --size 256
    step loadtest-$DEVICE 130 $PY bench/loadtest.py --device $DEVICE --concurrency 32 --duration 20
    step loadtest-cpu 130 $PY bench/loadtest.py --device cpu --concurrency 32 --duration 20
    ;;
  *) echo "unknown part $part (model or serve)"; exit 2 ;;
esac
