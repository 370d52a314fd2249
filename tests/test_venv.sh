#!/usr/bin/env bash
# Makes the Python virtual environments that end-to-end tests read our outputs with, installed from PyPI
# once per build folder. Tests running in parallel share them, so their creation is serialised with flock.
#   test_venv.sh VENV_DIR              tensorboard (event files), safetensors and numpy (moe-ckpt exports)
#   test_venv.sh --transformers VENV_DIR   transformers 4.44.2 over Debian's python3-torch (the Mixtral
#                                      reference test): made by Debian's /usr/bin/python3 with
#                                      --system-site-packages, so it sees that torch (PyPI's would be GBs)
set -eu
kind=readers
if [ "$1" = --transformers ]; then
  kind=transformers
  shift
fi
venv=$1
mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9
if [ $kind = readers ]; then
  if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import tensorboard, safetensors.numpy, numpy" 2>/dev/null; then
    exit 0
  fi
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check tensorboard safetensors numpy
  exit 0
fi
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import torch, transformers, safetensors.numpy" 2>/dev/null; then
  exit 0
fi
/usr/bin/python3 -c "import torch" 2>/dev/null ||
  { echo "Debian's python3-torch is not installed (tools/setup.sh --with-test-tools installs it)" >&2; exit 1; }
/usr/bin/python3 -m venv --system-site-packages "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check transformers==4.44.2
