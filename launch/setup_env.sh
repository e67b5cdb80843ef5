#!/usr/bin/env bash
# One-time (idempotent) set-up used by both README commands and CI:
#   1. Debian packages the corpus needs (espeak-ng, flite, sox) via apt-get when missing;
#   2. a virtualenv in .venv (Python 3.11) with `pip install -e ".[dev,eval,bench,serve]"` under
#      constraints.txt, then resemblyzer without its declared deps (see the eval extra in setup.py).
# Re-running is cheap: a stamp file records the hash of setup.py + constraints.txt + this script.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
VENV=${VENV:-.venv}
APT_PACKAGES=(espeak-ng flite sox)

missing=()
for cmd in "${APT_PACKAGES[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
done
if ((${#missing[@]})); then
  echo "[setup] installing Debian packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "[setup] ERROR: ${missing[*]} not found and apt-get is unavailable." >&2
    echo "[setup] Install them with your package manager (they provide the corpus voices)." >&2
    exit 1
  fi
  if ! { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"; } >/dev/null; then
    echo "[setup] ERROR: 'apt-get install ${missing[*]}' failed (no root/sudo or no network?)." >&2
    echo "[setup] Install them by hand, e.g. 'sudo apt-get install ${missing[*]}', then re-run." >&2
    exit 1
  fi
fi

if ! command -v "$PYTHON" >/dev/null 2>&1; then
  echo "[setup] ERROR: $PYTHON not found; gpa_jax needs Python 3.11 (set PYTHON=/path/to/python3.11)." >&2
  exit 1
fi

stamp="$VENV/.gpa_jax_setup"
want=$(cat setup.py constraints.txt launch/setup_env.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "[setup] creating virtualenv $VENV and installing gpa_jax[dev,eval,bench,serve] (pinned by constraints.txt)"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -c constraints.txt -e ".[dev,eval,bench,serve]"
# Its real deps (torch, librosa, webrtcvad-wheels) come with the eval extra.
"$VENV/bin/python" -m pip install -q -c constraints.txt --no-deps resemblyzer
echo "$want" > "$stamp"
echo "[setup] done"
