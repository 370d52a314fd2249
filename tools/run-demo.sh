#!/usr/bin/env bash
# README command 1: set everything up, then train a small MoE model on built-in synthetic data.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh build
exec build/moe-demo "$@"
