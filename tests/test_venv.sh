#!/usr/bin/env bash
# Makes the Python virtual environment that end-to-end tests read our outputs with: tensorboard (event
# files), safetensors and numpy (moe-ckpt exports), installed from PyPI once per build folder. Tests
# running in parallel share it, so its creation is serialised with flock.
#   test_venv.sh VENV_DIR
set -eu
venv=$1
mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import tensorboard, safetensors.numpy, numpy" 2>/dev/null; then
  exit 0
fi
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check tensorboard safetensors numpy
