#!/usr/bin/env bash
# README command 1: set everything up, then train the default job: the tiny MoE language model on
# the built-in synthetic corpus, on 2 MPI ranks with the experts sharded over both (ep = 2).
# Each call is a fresh run in its own directory, runs/tiny-<date>-<time>; extra arguments are config
# overrides, e.g. tools/quickstart.sh run.steps=100.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh build
mpi_flags=(--oversubscribe -np 2)
[ "$(id -u)" -ne 0 ] || mpi_flags+=(--allow-run-as-root)
exec mpirun "${mpi_flags[@]}" build/moe-train configs/tiny.yaml run.dir="runs/tiny-$(date +%Y%m%d-%H%M%S)" "$@"
