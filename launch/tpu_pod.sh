#!/usr/bin/env bash
# Train the LM on a Cloud TPU VM slice (single- or multi-host): the same `python -m
# launch.train` runs on every worker, one JAX process per host, joined by
# jax.distributed.initialize() (--multihost=true; JAX reads the slice topology from the TPU
# metadata). Each host feeds its own rows of every global batch.
#
# Steps (each a subcommand; DRY_RUN=1 prints the commands instead of running them):
#   export TPU_NAME=my-v5p-64 ZONE=us-east5-a PROJECT=my-project
#   export WORKDIR=gs://my-bucket/runs/gpa      # shared by all hosts: data, checkpoints, logs
#   ACCELERATOR_TYPE=v5p-64 bash launch/tpu_pod.sh create   # the TPU VM slice
#   bash launch/tpu_pod.sh install             # copy this checkout to every worker, install
#   LOCAL_WORKDIR=runs/demo bash launch/tpu_pod.sh stage     # tokens + SentencePiece -> WORKDIR
#   bash launch/tpu_pod.sh train --config.train.num_steps=100000   # start (or resume)
#   bash launch/tpu_pod.sh logs                # tail worker 0's log
#   bash launch/tpu_pod.sh wait                # block until training ends; its exit status
#   bash launch/tpu_pod.sh stop                # SIGTERM: every host saves, then exits
#   bash launch/tpu_pod.sh delete              # release the slice (WORKDIR stays)
#
# create: ACCELERATOR_TYPE (required), RUNTIME_VERSION (default tpu-ubuntu2204-base),
#   SPOT=1 for a spot slice.
# stage: copies <LOCAL_WORKDIR>/tokens (the token shards and manifests `launch.tokenize`
#   wrote) and <LOCAL_WORKDIR>/spm (the SentencePiece model, if there is one) to the same
#   places under WORKDIR with `gcloud storage rsync`, so the default paths of the config
#   (tasks.token_dir, tasks.vocab.spm_model) find them there. Rerunning copies only what
#   changed.
# train: CONFIG defaults to configs/gpa_8b_pod.py; extra arguments go to launch.train.
#   Rerunning `train` resumes from the newest checkpoint under $WORKDIR (model, optimizer
#   and data position). WORKDIR must be storage every host sees (a gs:// bucket): Orbax
#   writes each host's shards there. Readers that need local files (ArrayRecord token
#   shards, the SentencePiece model) copy them once into a per-host cache,
#   GPA_JAX_CACHE_DIR (default ~/.cache/gpa_jax/remote on each worker); with GCSFUSE=1,
#   `install` mounts the bucket with gcsfuse at GCSFUSE_ROOT (default /tmp/gcsfuse) and
#   `train` reads through the mount instead (GPA_JAX_GCSFUSE_ROOT; gpa_jax/paths.py).
#   LIBTPU_INIT_ARGS (XLA/libtpu flags) is passed through to every host.
# Multi-slice (several slices over DCN): create the slices as one queued resource, set
# --config.mesh.dcn_shape="(<slices>, 1, 1)"; the MEGASCALE_* variables the runtime sets
# are detected by --multihost as well.
# A lost worker (no heartbeat for --heartbeat_timeout seconds, default 30) stops the
# others with one line in their logs naming it and exit status 75; rerun `train` to
# resume from the last checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."

usage="usage: bash launch/tpu_pod.sh {create|install|stage|train [launch.train flags]|logs|wait|stop|delete}"
cmd=${1:-}
shift || true
case "$cmd" in
  create|install|stage|train|logs|wait|stop|delete) ;;
  *) echo "$usage" >&2; exit 2 ;;
esac

: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
PROJECT_FLAG=()
[ -n "${PROJECT:-}" ] && PROJECT_FLAG=(--project="$PROJECT")
CONFIG=${CONFIG:-configs/gpa_8b_pod.py}
REMOTE_DIR=${REMOTE_DIR:-gpa_jax}          # relative to each worker's home directory
LOG=${LOG:-train.log}
GCSFUSE=${GCSFUSE:-0}
GCSFUSE_ROOT=${GCSFUSE_ROOT:-/tmp/gcsfuse}

# Runs a command, or with DRY_RUN=1 prints it (shell-quoted, one line) instead.
run() {
  if [ "${DRY_RUN:-0}" = 1 ]; then
    printf '%q' "$1"; shift
    [ $# -gt 0 ] && printf ' %q' "$@"
    printf '\n'
  else
    "$@"
  fi
}

on_workers() {  # on_workers <worker|all> <remote shell command>
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" "${PROJECT_FLAG[@]}" \
    --worker="$1" --command="$2"
}

need_gs_workdir() {
  : "${WORKDIR:?set WORKDIR (a gs:// path every host can reach)}"
  case "$WORKDIR" in
    gs://*) ;;
    *) echo "tpu_pod.sh: WORKDIR=$WORKDIR is not a gs:// path; the workers share only" \
         "Cloud Storage" >&2; exit 2 ;;
  esac
}

bucket() {  # gs://bucket/some/path -> bucket
  local rest=${WORKDIR#gs://}
  echo "${rest%%/*}"
}

case "$cmd" in
  create)
    : "${ACCELERATOR_TYPE:?set ACCELERATOR_TYPE (e.g. v5p-64, v4-8)}"
    SPOT_FLAG=()
    [ "${SPOT:-0}" = 1 ] && SPOT_FLAG=(--spot)
    run gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" "${PROJECT_FLAG[@]}" \
      --accelerator-type="$ACCELERATOR_TYPE" \
      --version="${RUNTIME_VERSION:-tpu-ubuntu2204-base}" "${SPOT_FLAG[@]}"
    ;;
  install)
    # The working tree minus git-ignored files (.venv, runs/, caches), same on every worker.
    archive=${ARCHIVE:-/tmp/gpa_jax-$TPU_NAME.tar.gz}
    if [ "${DRY_RUN:-0}" = 1 ]; then
      echo "# git ls-files -z --cached --others --exclude-standard | tar --null -czf $archive -T -"
    else
      git ls-files -z --cached --others --exclude-standard \
        | tar --null --ignore-failed-read -czf "$archive" -T -
    fi
    run gcloud compute tpus tpu-vm scp "$archive" "$TPU_NAME":/tmp/gpa_jax.tar.gz \
      --zone="$ZONE" "${PROJECT_FLAG[@]}" --worker=all
    [ "${DRY_RUN:-0}" = 1 ] || rm -f "$archive"
    # [gcs]: Orbax asks google-cloud-storage about the bucket before it checkpoints to gs://.
    on_workers all "mkdir -p $REMOTE_DIR && tar -xzf /tmp/gpa_jax.tar.gz -C $REMOTE_DIR \
&& cd $REMOTE_DIR && bash launch/setup_env.sh \
&& .venv/bin/python -m pip install -q -c constraints.txt -e '.[tpu,gcs]'"
    if [ "$GCSFUSE" = 1 ]; then
      need_gs_workdir
      b=$(bucket)
      # gcsfuse from Google's apt repository, then the bucket at GCSFUSE_ROOT/<bucket>
      # (the layout gpa_jax.paths.local_path expects). Caches are unbounded: the inputs
      # are written once, before training.
      on_workers all "set -e; if ! command -v gcsfuse >/dev/null; then \
echo 'deb https://packages.cloud.google.com/apt gcsfuse-'\$(lsb_release -c -s)' main' \
| sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null; \
curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo apt-key add -; \
sudo apt-get update -qq && sudo apt-get install -y -qq gcsfuse; fi; \
mkdir -p $GCSFUSE_ROOT/$b; mountpoint -q $GCSFUSE_ROOT/$b || gcsfuse --implicit-dirs \
--stat-cache-max-size-mb=-1 --type-cache-max-size-mb=-1 $b $GCSFUSE_ROOT/$b"
    fi
    ;;
  stage)
    need_gs_workdir
    : "${LOCAL_WORKDIR:?set LOCAL_WORKDIR (the local work dir with tokens/ and spm/)}"
    if [ ! -d "$LOCAL_WORKDIR/tokens" ]; then
      echo "tpu_pod.sh: $LOCAL_WORKDIR/tokens does not exist; write the token shards with" \
        "python -m launch.tokenize --workdir=$LOCAL_WORKDIR first" >&2
      exit 2
    fi
    run gcloud storage rsync --recursive "$LOCAL_WORKDIR/tokens" "$WORKDIR/tokens"
    if [ -d "$LOCAL_WORKDIR/spm" ]; then
      run gcloud storage rsync --recursive "$LOCAL_WORKDIR/spm" "$WORKDIR/spm"
    else
      echo "# no $LOCAL_WORKDIR/spm: nothing to stage for a byte-level text vocabulary" >&2
    fi
    ;;
  train)
    need_gs_workdir
    args=$(printf ' %q' "--config=$CONFIG" "--workdir=$WORKDIR" --multihost=true \
      --progress=false "$@")
    envs="TF_CPP_MIN_LOG_LEVEL=2 LIBTPU_INIT_ARGS=$(printf '%q' "${LIBTPU_INIT_ARGS:-}")"
    [ -n "${GPA_JAX_CACHE_DIR:-}" ] && envs+=" GPA_JAX_CACHE_DIR=$(printf '%q' "$GPA_JAX_CACHE_DIR")"
    [ "$GCSFUSE" = 1 ] && envs+=" GPA_JAX_GCSFUSE_ROOT=$(printf '%q' "$GCSFUSE_ROOT")"
    # A background subshell that ignores SIGHUP (as nohup would) survives the ssh session;
    # train.rc holds the trainer's exit status once it ends (`wait` reads it).
    on_workers all "cd $REMOTE_DIR && rm -f train.rc && { ( trap '' HUP; $envs \
.venv/bin/python -m launch.train$args; echo \$? > train.rc ) > $LOG 2>&1 < /dev/null & \
echo \$! > train.pid; }"
    echo "started on all workers of $TPU_NAME; logs: bash launch/tpu_pod.sh logs" >&2
    ;;
  logs)
    on_workers 0 "tail -n 50 -f $REMOTE_DIR/$LOG"
    ;;
  wait)
    # Polls worker 0 until its trainer has ended, then exits with the trainer's status.
    on_workers 0 "cd $REMOTE_DIR && while [ ! -f train.rc ]; do sleep ${POLL_SECONDS:-60}; \
done; tail -n 3 $LOG; exit \$(cat train.rc)"
    ;;
  stop)
    # SIGTERM to the trainer on every host: each finishes its step, the hosts agree at the
    # next log step, save one checkpoint together and exit with status 143.
    on_workers all "pkill -TERM -P \$(cat $REMOTE_DIR/train.pid) || true"
    ;;
  delete)
    run gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE" "${PROJECT_FLAG[@]}" --quiet
    ;;
esac
