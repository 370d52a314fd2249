#!/usr/bin/env bash
# Runs a command that must fail: passes when it exits non-zero and its stderr matches a regex.
# Usage: expect_failure.sh REGEX COMMAND [ARGS...]
set -u
regex=$1
shift
err=$("$@" 2>&1 >/dev/null)
status=$?
if [ "$status" -eq 0 ]; then
  echo "expected a failure, but '$*' exited 0"
  exit 1
fi
if ! grep -Eq -- "$regex" <<<"$err"; then
  echo "'$*' failed (status $status) but its message does not match /$regex/:"
  echo "$err"
  exit 1
fi
echo "failed as expected (status $status): $err"
