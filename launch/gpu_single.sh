#!/usr/bin/env bash
# Train the LM on the NVIDIA GPUs of one node: one JAX process drives every visible GPU
# (no jax.distributed needed on a single node), the batch split over them by the mesh.
#
#   bash launch/gpu_single.sh                                   # gpa_0p3b, all GPUs
#   NUM_GPUS=1 bash launch/gpu_single.sh                        # only the first GPU
#   CONFIG=configs/gpa_tiny.py WORKDIR=runs/tiny_gpu bash launch/gpu_single.sh \
#       --config.train.num_steps=2000 --config.train.batch_size=64
#   WORKDIR=gs://my-bucket/runs/gpa bash launch/gpu_single.sh   # work dir on Cloud Storage
#   INSTALL=1 bash launch/gpu_single.sh ...                     # first time: venv + jax[cuda12]
#   DRY_RUN=1 bash launch/gpu_single.sh ...                     # print environment + command
#
# Extra arguments go to `python -m launch.train` (config overrides, --progress=false, ...).
# Rerunning the same command resumes from <WORKDIR>/checkpoints; Ctrl-C / SIGTERM saves first.
# The global batch (config.train.batch_size) must divide by the number of GPUs.
#
# Environment (each may be overridden from the caller's environment):
#   NUM_GPUS  use GPUs 0..NUM_GPUS-1 (sets CUDA_VISIBLE_DEVICES unless that is set);
#       default: every GPU `nvidia-smi -L` lists.
#   MESH="(-1, 1, 1)"  config.mesh.shape (data, fsdp, tensor); -1 = all GPUs on that axis.
#       Plain data parallelism by default; "(1, -1, 1)" shards parameters and optimizer
#       state over the GPUs (FSDP) when a model does not fit one GPU's memory.
#   XLA_PYTHON_CLIENT_MEM_FRACTION=0.9  JAX may take 90% of GPU memory up front (default
#       75%); the rest stays for cuDNN/cuBLAS/NCCL workspaces.
#   XLA_FLAGS (appended to any you set):
#     --xla_gpu_enable_latency_hiding_scheduler=true  schedule collectives/async copies to
#         overlap compute (the gradient all-reduce between GPUs)
#     --xla_gpu_enable_triton_gemm=false              matmuls through cuBLAS rather than Triton
#     --xla_gpu_enable_command_buffer=FUSION,CUSTOM_CALL  CUDA graphs for fusions and
#         library calls: less kernel-launch overhead for small models
#   JAX_COMPILATION_CACHE_DIR  persistent XLA cache: restarts skip recompiling the step.
#   GPA_JAX_CACHE_DIR / GPA_JAX_GCSFUSE_ROOT  with a gs:// WORKDIR: where the token shards
#       and SentencePiece model are read locally (gpa_jax/paths.py).
# Config overrides applied here: the mesh above, bfloat16 compute and cuDNN flash
# attention (jax.nn.dot_product_attention implementation="cudnn"); later arguments win.
set -euo pipefail
cd "$(dirname "$0")/.."

CONFIG=${CONFIG:-configs/gpa_0p3b.py}
WORKDIR=${WORKDIR:-runs/gpu_single}
PYTHON=${PYTHON:-.venv/bin/python}
MESH=${MESH:-(-1, 1, 1)}

if [ "${INSTALL:-0}" = 1 ] && [ "${DRY_RUN:-0}" != 1 ]; then
  bash launch/setup_env.sh
  # [gcs]: Orbax asks google-cloud-storage about the bucket before it checkpoints to gs://.
  .venv/bin/python -m pip install -q -c constraints.txt -e ".[cuda,gcs]"
fi

if [ -z "${NUM_GPUS:-}" ]; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    NUM_GPUS=$(nvidia-smi -L | grep -c '^GPU ' || true)
  fi
  if [ -z "${NUM_GPUS:-}" ] || [ "$NUM_GPUS" -lt 1 ]; then
    echo "gpu_single.sh: no GPU found by nvidia-smi; set NUM_GPUS to run anyway" >&2
    exit 2
  fi
elif [ -z "${CUDA_VISIBLE_DEVICES:-}" ]; then
  CUDA_VISIBLE_DEVICES=$(seq -s, 0 $((NUM_GPUS - 1)))
  export CUDA_VISIBLE_DEVICES
fi

export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_latency_hiding_scheduler=true \
--xla_gpu_enable_triton_gemm=false --xla_gpu_enable_command_buffer=FUSION,CUSTOM_CALL"
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$HOME/.cache/gpa_jax/xla}
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}

cmd=("$PYTHON" -m launch.train
  --config="$CONFIG"
  --workdir="$WORKDIR"
  --multihost=false
  --config.mesh.shape="$MESH"
  --config.model.dtype=bfloat16
  --config.model.attention_impl=cudnn
  "$@")

if [ "${DRY_RUN:-0}" = 1 ]; then
  # The environment the trainer would get, then its command line (shell-quoted).
  echo "# $NUM_GPUS GPU(s), mesh $MESH"
  for name in CUDA_VISIBLE_DEVICES XLA_PYTHON_CLIENT_MEM_FRACTION XLA_FLAGS \
      JAX_COMPILATION_CACHE_DIR TF_CPP_MIN_LOG_LEVEL GPA_JAX_CACHE_DIR GPA_JAX_GCSFUSE_ROOT; do
    [ -n "${!name:-}" ] && printf 'export %s=%q\n' "$name" "${!name}"
  done
  printf '%q' "${cmd[0]}"; printf ' %q' "${cmd[@]:1}"; printf '\n'
  exit 0
fi
echo "gpu_single.sh: training on $NUM_GPUS GPU(s), mesh $MESH" >&2
exec "${cmd[@]}"
