#!/usr/bin/env bash
# Train the LM on one NVIDIA GPU.
#
#   bash launch/gpu_single.sh                                   # gpa_0p3b, runs/gpu_single
#   CONFIG=configs/gpa_tiny.py WORKDIR=runs/tiny_gpu bash launch/gpu_single.sh \
#       --config.train.num_steps=2000 --config.train.batch_size=64
#   INSTALL=1 bash launch/gpu_single.sh ...                     # first time: venv + jax[cuda12]
#
# Extra arguments go to `python -m launch.train` (config overrides, --progress=false, ...).
# Rerunning the same command resumes from <WORKDIR>/checkpoints; Ctrl-C / SIGTERM saves first.
#
# Environment (each may be overridden from the caller's environment):
#   XLA_PYTHON_CLIENT_MEM_FRACTION=0.9  JAX may take 90% of GPU memory up front (default
#       75%); the rest stays for cuDNN/cuBLAS workspaces.
#   XLA_FLAGS (appended to any you set):
#     --xla_gpu_enable_latency_hiding_scheduler=true  schedule collectives/async copies to
#         overlap compute (matters once a second GPU exists; harmless on one)
#     --xla_gpu_enable_triton_gemm=false              matmuls through cuBLAS rather than Triton
#     --xla_gpu_enable_command_buffer=FUSION,CUSTOM_CALL  CUDA graphs for fusions and
#         library calls: less kernel-launch overhead for small models
#   JAX_COMPILATION_CACHE_DIR  persistent XLA cache: restarts skip recompiling the step.
# Config overrides applied here: one device (mesh 1x1x1), bfloat16 compute and cuDNN flash
# attention (jax.nn.dot_product_attention implementation="cudnn"); later arguments win.
set -euo pipefail
cd "$(dirname "$0")/.."

CONFIG=${CONFIG:-configs/gpa_0p3b.py}
WORKDIR=${WORKDIR:-runs/gpu_single}
PYTHON=${PYTHON:-.venv/bin/python}

if [ "${INSTALL:-0}" = 1 ]; then
  bash launch/setup_env.sh
  .venv/bin/python -m pip install -q -c constraints.txt -e ".[cuda]"
fi

export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_latency_hiding_scheduler=true \
--xla_gpu_enable_triton_gemm=false --xla_gpu_enable_command_buffer=FUSION,CUSTOM_CALL"
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$HOME/.cache/gpa_jax/xla}
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}

exec "$PYTHON" -m launch.train \
  --config="$CONFIG" \
  --workdir="$WORKDIR" \
  --multihost=false \
  --config.mesh.shape="(1, 1, 1)" \
  --config.model.dtype=bfloat16 \
  --config.model.attention_impl=cudnn \
  "$@"
