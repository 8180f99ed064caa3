#!/usr/bin/env bash
# The one prepared command for a lent GPU (../shared/DEVICE.md): issue 15's step benchmark and issue 19's input
# pipeline benchmark, then XLA flag trials while time is left. Every phase writes its JSON under $OUT as it ends.
#   run: bash benchmarks/device_run.sh            (carry .whl: the wheels DEVICE.md lists; benchmarks/device_wheels.sh
#                                                 fills it)
#   CPU rehearsal: OUT=/tmp/dev ACC_ARGS="--size tiny --cpu" PIPE_ARGS="--parts jpeg" TOTAL_S=400 \
#                  bash benchmarks/device_run.sh
set -u
OUT=${OUT:?set OUT}
TOTAL_S=${TOTAL_S:-570}
ACC_ARGS=${ACC_ARGS:-}
PIPE_ARGS=${PIPE_ARGS:-}
PY=${PY:-python3}
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
if [ -d .whl ] && [ -z "${SKIP_WHEELS:-}" ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
(nvidia-smi; nproc; $PY -c "import jax, flax; print(jax.__version__, flax.__version__, jax.devices())") \
  > "$OUT/machine.txt" 2>&1
left() { echo $((TOTAL_S - SECONDS)); }

timeout 95 $PY benchmarks/input_pipeline.py --quick --out "$OUT" $PIPE_ARGS > "$OUT/input_pipeline.log" 2>&1
echo "input pipeline done at ${SECONDS}s (exit $?)"

budget=$(( $(left) - 45 ))
timeout $(( $(left) - 10 )) $PY benchmarks/accelerator_step.py --out "$OUT" --budget_s "$budget" $ACC_ARGS \
  > "$OUT/accelerator_step.log" 2>&1
echo "accelerator step done at ${SECONDS}s (exit $?)"
tail -30 "$OUT/accelerator_step.log"

# XLA GPU flags, one process each (flags are read when the backend starts), on the pod config's step.
for flags in "--xla_gpu_enable_while_loop_double_buffering=true" "--xla_gpu_enable_triton_gemm=false" \
             "--xla_gpu_enable_command_buffer="; do
  [ "$(left)" -lt 75 ] && break
  name=$(echo "$flags" | tr -c 'a-z0-9_\n' '_' | cut -c3-40)
  mkdir -p "$OUT/$name"
  XLA_FLAGS="$flags" timeout $(( $(left) - 5 )) $PY benchmarks/accelerator_step.py --phases siglip_pod \
    --out "$OUT/$name" $ACC_ARGS > "/tmp/$name.log" 2>&1
  echo "flags $flags done at ${SECONDS}s"; grep -E "^\s+pod " "/tmp/$name.log"
done
cat "$OUT/input_pipeline.log" | tail -15
