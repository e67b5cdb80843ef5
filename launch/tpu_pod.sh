#!/usr/bin/env bash
# Train the LM on a Cloud TPU VM slice (single- or multi-host): the same `python -m
# launch.train` runs on every worker, one JAX process per host, joined by
# jax.distributed.initialize() (--multihost=true; JAX reads the slice topology from the TPU
# metadata). Each host feeds its own rows of every global batch.
#
#   export TPU_NAME=my-v5p-64 ZONE=us-east5-a PROJECT=my-project
#   export WORKDIR=gs://my-bucket/runs/gpa_8b       # shared by all hosts: checkpoints, logs
#   bash launch/tpu_pod.sh install                  # copy this checkout to every worker, install
#   bash launch/tpu_pod.sh train --config.train.num_steps=100000   # start (or resume) training
#   bash launch/tpu_pod.sh logs                     # tail worker 0's log
#   bash launch/tpu_pod.sh stop                     # SIGTERM: every host saves, then exits
#
# CONFIG defaults to configs/gpa_8b_pod.py; extra arguments after `train` go to
# launch.train. Rerunning `train` resumes from the newest checkpoint under $WORKDIR (model,
# optimizer and data-iterator state). WORKDIR must be storage every host sees (a gs://
# bucket): Orbax writes each host's shards and data-iterator state there.
# Multi-slice (several slices over DCN): create the slices as one queued resource, set
# --config.mesh.dcn_shape="(<slices>, 1, 1)"; the MEGASCALE_* variables the runtime sets
# are detected by --multihost as well.
# A lost worker (no heartbeat for --heartbeat_timeout seconds, default 30) stops the
# others with one line in their logs naming it and exit status 75; rerun `train` to
# resume from the last checkpoint.
# Optional: LIBTPU_INIT_ARGS (XLA/libtpu flags) is passed through to every host.
set -euo pipefail
cd "$(dirname "$0")/.."

: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
PROJECT_FLAG=()
[ -n "${PROJECT:-}" ] && PROJECT_FLAG=(--project="$PROJECT")
CONFIG=${CONFIG:-configs/gpa_8b_pod.py}
REMOTE_DIR=${REMOTE_DIR:-gpa_jax}          # relative to each worker's home directory
LOG=${LOG:-train.log}

on_all_workers() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" "${PROJECT_FLAG[@]}" \
    --worker=all --command="$1"
}

cmd=${1:-}
shift || true
case "$cmd" in
  install)
    # The working tree minus git-ignored files (.venv, runs/, caches), same on every worker.
    archive=$(mktemp /tmp/gpa_jax.XXXXXX.tar.gz)
    git ls-files -z --cached --others --exclude-standard \
      | tar --null --ignore-failed-read -czf "$archive" -T -
    gcloud compute tpus tpu-vm scp "$archive" "$TPU_NAME":/tmp/gpa_jax.tar.gz \
      --zone="$ZONE" "${PROJECT_FLAG[@]}" --worker=all
    rm -f "$archive"
    on_all_workers "mkdir -p $REMOTE_DIR && tar -xzf /tmp/gpa_jax.tar.gz -C $REMOTE_DIR \
      && cd $REMOTE_DIR && bash launch/setup_env.sh \
      && .venv/bin/python -m pip install -q -c constraints.txt -e '.[tpu]'"
    ;;
  train)
    : "${WORKDIR:?set WORKDIR (a gs:// path every host can reach)}"
    args=$(printf ' %q' "$@")
    on_all_workers "cd $REMOTE_DIR && { \
      LIBTPU_INIT_ARGS='${LIBTPU_INIT_ARGS:-}' TF_CPP_MIN_LOG_LEVEL=2 \
      nohup .venv/bin/python -m launch.train --config=$CONFIG --workdir=$WORKDIR \
      --multihost=true --progress=false$args > $LOG 2>&1 < /dev/null & echo \$! > train.pid; }"
    echo "started on all workers of $TPU_NAME; logs: bash launch/tpu_pod.sh logs"
    ;;
  logs)
    gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" "${PROJECT_FLAG[@]}" \
      --worker=0 --command="tail -n 50 -f $REMOTE_DIR/$LOG"
    ;;
  stop)
    # SIGTERM to the trainer on every host: each finishes its step, the hosts agree at the
    # next log step, save one checkpoint together and exit with status 143.
    on_all_workers "kill -TERM \$(cat $REMOTE_DIR/train.pid) || true"
    ;;
  *)
    echo "usage: bash launch/tpu_pod.sh {install|train [launch.train flags]|logs|stop}" >&2
    exit 2
    ;;
esac
