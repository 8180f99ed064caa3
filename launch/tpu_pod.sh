#!/usr/bin/env bash
# Run vlmjax-train on every worker of a Cloud TPU VM slice (v4/v5e/v5p/v6e pods).
#
#   launch/tpu_pod.sh TPU_NAME ZONE [PROJECT] -- --config experiments/siglip_b16.py --workdir gs://BUCKET/run \
#       [--config.data.data_dir=gs://BUCKET/tfds --config.key=value ...]
#
# 1. Packs this checkout (the files `git ls-files --cached --others --exclude-standard` lists, so uncommitted edits
#    travel too, data/ and .venv/ do not) and copies it to ~/vlmjax on every worker.
# 2. On every worker: creates ~/vlmjax/.venv and installs vlmjax with jax[tpu], every version as constraints.txt pins.
#    VLMJAX_SKIP_SETUP=1 skips steps 1-2 (a re-run on the same slice, e.g. to resume after a preemption).
# 3. Runs `python -m vlmjax.cli --distributed=auto ARGS` on all workers at once (`--worker=all`); jax finds the
#    other hosts from the TPU metadata. Each worker writes ~/vlmjax/logs/<its hostname>.log; the output of all of
#    them also streams here into $VLMJAX_LOG_DIR/<TPU_NAME>-<date>.log (default logs/tpu_pod in this checkout).
#
# The workdir and the data must be storage every worker sees (gs://...). Re-running the same command resumes from
# the latest checkpoint. Exit status: gcloud's, i.e. non-zero if any worker failed.
# VLMJAX_DETACH=1 starts the trainers in the background (nohup) and returns at once, so that a dropped ssh
# connection does not kill a days-long run; follow it with the per-worker logs (the command is printed).
# VLMJAX_REMOTE_DIR (default vlmjax) moves the checkout under the workers' home directories.
set -euo pipefail

usage() {
  echo "usage: $0 TPU_NAME ZONE [PROJECT] -- VLMJAX_TRAIN_ARGS..." >&2
  echo "  e.g. $0 my-v5p-64 us-east5-a -- --config experiments/siglip_b16.py --workdir gs://bucket/siglip_b16" >&2
  exit 2
}

[ $# -ge 3 ] || usage
TPU_NAME=$1
ZONE=$2
shift 2
PROJECT=""
if [ "$1" != "--" ]; then
  PROJECT=$1
  shift
fi
[ $# -ge 1 ] && [ "$1" = "--" ] || usage
shift
[ $# -ge 1 ] || usage
TRAIN_ARGS=("$@")

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REMOTE_DIR=${VLMJAX_REMOTE_DIR:-vlmjax}
GCLOUD=(gcloud compute tpus tpu-vm)
WHERE=("--zone=$ZONE")
[ -n "$PROJECT" ] && WHERE+=("--project=$PROJECT")

on_all_workers() {  # the same command on every worker; gcloud returns non-zero if any of them failed
  "${GCLOUD[@]}" ssh "$TPU_NAME" "${WHERE[@]}" --worker=all --command="$1"
}

if [ "${VLMJAX_SKIP_SETUP:-0}" != "1" ]; then
  JAX_VERSION=$(sed -n 's/^jax==\([0-9.]*\)$/\1/p' "$ROOT/constraints.txt")
  [ -n "$JAX_VERSION" ] || { echo "$0: no \"jax==X\" pin found in $ROOT/constraints.txt" >&2; exit 1; }
  TARBALL=$(mktemp "${TMPDIR:-/tmp}/vlmjax.XXXXXX")
  trap 'rm -f "$TARBALL"' EXIT
  # Tracked files deleted in the working tree are left out (tar would stop on them).
  (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard |
    while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
    tar --null -T - -czf "$TARBALL")
  echo "copying $(du -h "$TARBALL" | cut -f1) of source to ~/$REMOTE_DIR on every worker of $TPU_NAME"
  "${GCLOUD[@]}" scp "$TARBALL" "$TPU_NAME:vlmjax-src.tgz" "${WHERE[@]}" --worker=all
  on_all_workers "set -euo pipefail; mkdir -p $REMOTE_DIR && tar -xzf vlmjax-src.tgz -C $REMOTE_DIR && \
cd $REMOTE_DIR && { [ -x .venv/bin/python ] || python3 -m venv .venv; } && \
.venv/bin/python -m pip install -q --upgrade pip && \
.venv/bin/python -m pip install -q -c constraints.txt -e . 'jax[tpu]==$JAX_VERSION'"
fi

# %q quotes every argument for the workers' bash, so values with spaces or globs arrive unchanged.
printf -v QUOTED ' %q' "${TRAIN_ARGS[@]}"
TRAIN=".venv/bin/python -m vlmjax.cli --distributed=auto$QUOTED"
if [ "${VLMJAX_DETACH:-0}" = "1" ]; then
  on_all_workers "cd $REMOTE_DIR && mkdir -p logs && \
nohup $TRAIN > logs/\$(hostname).log 2>&1 < /dev/null & echo \"\$(hostname): started pid \$!\""
  echo "started on every worker of $TPU_NAME; follow worker 0 with:"
  echo "  ${GCLOUD[*]} ssh $TPU_NAME ${WHERE[*]} --worker=0 --command='tail -f $REMOTE_DIR/logs/*.log'"
  exit 0
fi
RUN="set -o pipefail; cd $REMOTE_DIR && mkdir -p logs && $TRAIN 2>&1 | tee logs/\$(hostname).log"

LOG_DIR=${VLMJAX_LOG_DIR:-$ROOT/logs/tpu_pod}
mkdir -p "$LOG_DIR"
LOG="$LOG_DIR/$TPU_NAME-$(date +%Y%m%d-%H%M%S).log"
echo "running on every worker of $TPU_NAME (all output: $LOG; per worker: ~/$REMOTE_DIR/logs/<hostname>.log)"
on_all_workers "$RUN" 2>&1 | tee "$LOG"
