#!/usr/bin/env bash
# The Mixtral reference test (tests/hf_mixtral_reference.py) in its Python environment (transformers
# over Debian's torch, made by tests/test_venv.sh), in a fresh temporary directory removed afterwards.
#   hf_mixtral_reference.sh MOE_CKPT MOE_TRAIN MODEL_LOGITS MPIRUN VENV_DIR
set -eu
here=$(cd "$(dirname "$0")" && pwd)
venv=$5
"$here/test_venv.sh" --transformers "$venv"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Debian's torch would start a thread per core in each of the processes the test runs beside others.
OMP_NUM_THREADS=1 "$venv/bin/python" "$here/hf_mixtral_reference.py" "$1" "$2" "$3" "$4" "$work"
