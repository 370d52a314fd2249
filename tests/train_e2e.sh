#!/usr/bin/env bash
# End-to-end tests of moe-train as a user runs it under mpirun. One case per call:
#   train_e2e.sh CASE MOE_TRAIN MPIRUN CONFIGS_DIR
# Each case runs in a fresh temporary directory, removed afterwards.
set -u
case_name=$1 moe_train=$2 mpirun=$3 configs=$4
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work" || exit 1

fail() { echo "FAIL ($case_name): $*"; exit 1; }
# run NP [args...]: runs moe-train on NP ranks, output in out.txt, returns its exit status.
run() {
  local np=$1
  shift
  "$mpirun" --oversubscribe --timeout 240 -np "$np" "$moe_train" "$@" >out.txt 2>&1
}
# A short tiny run: 30 steps, a log line every step.
short=(run.steps=30 run.log_every=1 run.eval_every=15)
# Prints the "loss" of every training line of a metrics.jsonl, one per line.
losses() { python3 -c 'import json,sys
for line in open(sys.argv[1]):
    m = json.loads(line)
    if "loss" in m: print(repr(m["loss"]))' "$1"; }

case $case_name in
tiny_run)
  run 2 "$configs/tiny.yaml" "${short[@]}" run.dir=r || { cat out.txt; fail "exit status $?"; }
  for f in r/config.yaml r/metrics.jsonl r/routing_report.txt; do [ -s "$f" ] || fail "missing $f"; done
  ls r/tensorboard/events.out.tfevents.* >/dev/null || fail "no TensorBoard event file"
  grep -q "^step 30/30 | loss" out.txt || fail "no progress line for step 30"
  grep -q "domain 3" r/routing_report.txt || fail "no domain-by-expert table in the routing report"
  python3 - r/metrics.jsonl <<'PY' || fail "metrics.jsonl check failed"
import json, math, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
train = [r for r in rows if "loss" in r]
evals = [r for r in rows if r.get("split") == "eval"]
need = ["step", "loss", "aux_loss", "z_loss", "lr", "grad_norm", "tokens_per_s", "dropped_frac", "tokens_per_expert"]
for r in train:
    missing = [k for k in need if k not in r]
    assert not missing, f"missing {missing} in {r}"
    assert len(r["tokens_per_expert"]) == 2 and all(len(l) == 4 for l in r["tokens_per_expert"]), r
assert [r["step"] for r in train] == list(range(1, 31)), [r["step"] for r in train]
assert len(evals) == 2, evals
first, last = train[0]["loss"], sum(r["loss"] for r in train[-5:]) / 5
assert last < first - 0.5, f"loss did not fall: {first} -> {last}"
print(f"loss {first:.3f} -> {last:.3f}, eval {evals[-1]['eval_loss']:.3f}")
PY
  ;;
deterministic)
  # Same seed and layout: bit-identical losses.
  run 2 "$configs/tiny.yaml" "${short[@]}" run.dir=a || { cat out.txt; fail "first run failed"; }
  run 2 "$configs/tiny.yaml" "${short[@]}" run.dir=b || { cat out.txt; fail "second run failed"; }
  [ "$(losses a/metrics.jsonl)" = "$(losses b/metrics.jsonl)" ] || fail "losses differ between identical runs"
  ;;
ep_equivalence)
  # The same config with ep = 1 and ep = 2 on 2 ranks: the same math, so the same loss curve up to
  # float32 summation order (GEMMs over different row blocks, all-reduce order).
  run 2 "$configs/tiny.yaml" "${short[@]}" parallel.ep=1 run.dir=ep1 || { cat out.txt; fail "ep=1 run failed"; }
  run 2 "$configs/tiny.yaml" "${short[@]}" parallel.ep=2 run.dir=ep2 || { cat out.txt; fail "ep=2 run failed"; }
  python3 - <(losses ep1/metrics.jsonl) <(losses ep2/metrics.jsonl) <<'PY' || fail "loss curves differ"
import sys
a = [float(x) for x in open(sys.argv[1])]
b = [float(x) for x in open(sys.argv[2])]
assert len(a) == len(b) == 30, (len(a), len(b))
worst = max(abs(x - y) / abs(x) for x, y in zip(a, b))
# Rounding differences of ~1e-7 relative grow over 30 AdamW steps; 1e-4 is far below any real
# difference (a wrong expert or gradient scale changes the loss at the 1e-2 level within a step).
assert worst < 1e-4, f"worst relative difference {worst}"
print(f"worst relative difference over 30 steps: {worst:.2e}")
PY
  ;;
bad_config)
  printf 'run:\n  steps: 10\nmoe:\n  top_kk: 2\n' >bad.yaml
  run 2 bad.yaml && fail "a config with an unknown key was accepted"
  grep -q "unknown key moe.top_kk; did you mean moe.top_k?" out.txt || { cat out.txt; fail "message"; }
  [ "$(grep -c 'unknown key' out.txt)" = 1 ] || fail "expected exactly one message (from rank 0)"
  run 2 "$configs/tiny.yaml" parallel.ep=3 && fail "ep = 3 on 2 ranks was accepted"
  grep -q "parallel.ep = 3" out.txt || { cat out.txt; fail "ep message"; }
  run 2 "$configs/tiny.yaml" model.d_model=abc && fail "a bad override was accepted"
  grep -q "model.d_model: expected an int, got 'abc'" out.txt || { cat out.txt; fail "override message"; }
  run 2 --bogus && fail "an unknown option was accepted"
  grep -q "unknown option '--bogus'; accepted: --help" out.txt || { cat out.txt; fail "option message"; }
  run 1 --help >/dev/null || fail "--help failed"
  grep -q "moe.top_k" out.txt || fail "--help does not list the config keys"
  run 2 && fail "no config file was accepted"
  grep -q "missing CONFIG.yaml" out.txt || { cat out.txt; fail "usage message"; }
  run 2 missing.yaml && fail "a missing config file was accepted"
  grep -q "missing.yaml" out.txt || { cat out.txt; fail "missing-file message"; }
  run 2 "$configs/tiny.yaml" run.steps=4 run.eval_every=0 checkpoint.every=2 run.dir=c || { cat out.txt; fail "setup run"; }
  run 2 "$configs/tiny.yaml" run.steps=4 run.eval_every=0 checkpoint.every=2 run.dir=c && fail "a fresh run over checkpoints started"
  grep -q "already holds checkpoints (newest: c/checkpoints/step_00000004); set checkpoint.resume=auto" out.txt ||
    { cat out.txt; fail "existing-checkpoints message"; }
  run 2 "$configs/tiny.yaml" data.source=tokens data.train_path=nothere.tok && fail "a missing data file was accepted"
  grep -q "nothere.tok" out.txt || { cat out.txt; fail "data-file message"; }
  ;;
nonfinite_skip)
  MOE_TEST_NAN_STEPS=5:6 run 2 "$configs/tiny.yaml" "${short[@]}" run.dir=r || { cat out.txt; fail "exit $?"; }
  grep -q "step 5: non-finite loss or gradient .*step skipped (1 in a row" out.txt || { cat out.txt; fail "no skip message"; }
  grep -q "step 6: non-finite.*(2 in a row" out.txt || fail "step 6 not skipped"
  grep -q '"step": 30,.*"skipped_steps": 2' r/metrics.jsonl || fail "skipped steps not counted in metrics"
  ;;
nonfinite_stop)
  MOE_TEST_NAN_STEPS=5:1000 run 2 "$configs/tiny.yaml" "${short[@]}" run.max_nonfinite_steps=3 run.dir=r
  status=$?
  [ "$status" -ne 0 ] || fail "a run with only non-finite steps succeeded"
  grep -q "stopping at step 7: 3 consecutive steps had a non-finite loss or gradient" out.txt || { cat out.txt; fail "message"; }
  ;;
watchdog)
  MOE_TEST_STALL=1:3 run 2 "$configs/tiny.yaml" "${short[@]}" run.watchdog_timeout_s=3 run.dir=r
  status=$?
  [ "$status" -ne 0 ] || fail "a stalled run exited 0"
  grep -q "step 3 did not finish within 3 s (run.watchdog_timeout_s), stuck in phase 'gradient sync'" out.txt ||
    { cat out.txt; fail "watchdog message"; }
  ;;
*)
  fail "unknown case"
  ;;
esac
echo "PASS ($case_name)"
