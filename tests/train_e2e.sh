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
# same_curves DIR_A DIR_B: the two runs' 30 training losses agree to 1e-4 relative. For runs of the
# same math on other layouts: rounding differences of ~1e-7 relative grow over 30 AdamW steps; 1e-4 is
# far below any real difference (a wrong expert, lost optimizer state or a wrong gradient scale changes
# the loss at the 1e-2 level within a step).
same_curves() {
  python3 - <(losses "$1"/metrics.jsonl) <(losses "$2"/metrics.jsonl) <<'PY' || fail "loss curves of $1 and $2 differ"
import sys
a = [float(x) for x in open(sys.argv[1])]
b = [float(x) for x in open(sys.argv[2])]
assert len(a) == len(b) == 30, (len(a), len(b))
worst = max(abs(x - y) / abs(x) for x, y in zip(a, b))
assert worst < 1e-4, f"worst relative difference {worst}"
print(f"worst relative difference over 30 steps: {worst:.2e}")
PY
}
# Whether this build has the CUDA backend (MOE_CUDA_BUILT, set by CMake) and the machine a GPU.
have_gpu() {
  [ "${MOE_CUDA_BUILT:-OFF}" = ON ] && command -v nvidia-smi >/dev/null && nvidia-smi -L 2>/dev/null | grep -q '^GPU'
}

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
need = ["step", "loss", "aux_loss", "z_loss", "lr", "grad_norm", "tokens_per_s", "model_gflops_per_rank", "mfu",
        "dropped_frac", "load_max_over_mean", "time_s", "moe_layers"]
for r in train:
    missing = [k for k in need if k not in r]
    assert not missing, f"missing {missing} in {r}"
    assert [l["layer"] for l in r["moe_layers"]] == [0, 1], r["moe_layers"]
    for l in r["moe_layers"]:
        # A step routes 2 ranks x 8 sequences x 64 tokens x top_k 2 choices per layer.
        assert len(l["routed"]) == len(l["kept"]) == 4 and sum(l["routed"]) == 2048, l
        assert all(k <= r for k, r in zip(l["kept"], l["routed"])), l
assert [r["step"] for r in train] == list(range(1, 31)), [r["step"] for r in train]
assert len(evals) == 2, evals
assert all(abs(e["eval_perplexity"] - math.exp(e["eval_loss"])) < 1e-6 * e["eval_perplexity"] for e in evals), evals
first, last = train[0]["loss"], sum(r["loss"] for r in train[-5:]) / 5
assert last < first - 0.5, f"loss did not fall: {first} -> {last}"
print(f"loss {first:.3f} -> {last:.3f}, eval {evals[-1]['eval_loss']:.3f}")
PY
  grep -q "^MFU peak .* GFLOP/s over all ranks: 2 rank(s) x 1 thread(s), float32 GEMM 2048^3" out.txt ||
    { cat out.txt; fail "no line saying how the MFU peak was measured"; }
  grep -q "GFLOP/s/rank | MFU" out.txt || fail "no model GFLOP/s per rank in the progress line"
  grep -q "^step 30/30 | eval loss [0-9.]* | ppl [0-9.]*" out.txt || fail "no perplexity in the eval line"
  ! grep -q "^warning:" out.txt || { cat out.txt; fail "a start-up warning for the tiny config"; }
  ;;
router_warning)
  # top_k = 1 with renormalize = true trains, with one warning from rank 0 naming the keys and the fix.
  run 2 "$configs/tiny.yaml" run.steps=2 run.eval_every=0 moe.top_k=1 run.dir=r || { cat out.txt; fail "exit status $?"; }
  grep -q "^warning: moe.top_k = 1 with moe.renormalize = true .* no gradient .* set moe.renormalize = false" out.txt ||
    { cat out.txt; fail "no warning for top_k = 1 with renormalize"; }
  [ "$(grep -c '^warning:' out.txt)" = 1 ] || { cat out.txt; fail "expected exactly one warning (from rank 0)"; }
  run 2 "$configs/tiny.yaml" run.steps=2 run.eval_every=0 moe.top_k=1 moe.renormalize=false run.dir=s ||
    { cat out.txt; fail "exit status $?"; }
  ! grep -q "^warning:" out.txt || { cat out.txt; fail "a warning for top_k = 1 without renormalize"; }
  ;;
sigmoid_routing)
  # DeepSeek-V3-style routing: sigmoid scores, a routed scaling factor, the sequence-wise balance loss
  # (the tiny config's 64-token sequences) with aux-free biases; the run trains and says what it ran.
  run 2 "$configs/tiny.yaml" "${short[@]}" run.dir=r moe.score_function=sigmoid moe.routed_scaling_factor=2.5 \
    moe.aux_loss_scope=sequence moe.balancing=aux_free moe.aux_loss_coeff=0.001 || { cat out.txt; fail "exit status $?"; }
  for key in "score_function: sigmoid" "routed_scaling_factor: 2.5" "aux_loss_scope: sequence"; do
    grep -q "^  $key" r/config.yaml || fail "r/config.yaml does not record '$key'"
  done
  python3 - r/metrics.jsonl <<'PY' || fail "metrics.jsonl check failed"
import json, math, sys
train = [r for r in map(json.loads, open(sys.argv[1])) if "loss" in r]
assert len(train) == 30, len(train)
assert all(math.isfinite(r["loss"]) and math.isfinite(r["aux_loss"]) and r["aux_loss"] > 0 for r in train), train[0]
first, last = train[0]["loss"], sum(r["loss"] for r in train[-5:]) / 5
assert last < first - 0.5, f"loss did not fall: {first} -> {last}"
print(f"loss {first:.3f} -> {last:.3f}, aux {train[-1]['aux_loss']:.5f}")
PY
  ;;
expert_choice_routing)
  # Expert-choice routing (Zhou et al. 2022). The tiny config's explicit aux_loss_coeff does not apply to
  # it: refused naming both keys, one message, before anything is written. Without it the run trains,
  # says once at start-up what expert choice sees, and every expert takes exactly its capacity:
  # C = ceil(1.25 * 2 * 512 / 4) = 320 of each rank's 512 tokens per layer, nothing dropped, no aux loss.
  run 2 "$configs/tiny.yaml" "${short[@]}" run.dir=refused moe.routing=expert_choice &&
    fail "expert choice with the tiny config's aux_loss_coeff was accepted"
  grep -q "moe.routing = expert_choice has no load-balancing loss .*, but aux_loss_coeff = 0.01" out.txt ||
    { cat out.txt; fail "refusal message"; }
  [ "$(grep -c 'has no load-balancing loss' out.txt)" = 1 ] || fail "expected exactly one message (from rank 0)"
  [ -e refused ] && fail "the refused run wrote refused/"
  run 2 "$configs/tiny.yaml" "${short[@]}" run.dir=r moe.routing=expert_choice moe.aux_loss_coeff=0 ||
    { cat out.txt; fail "exit status $?"; }
  grep -q "^  routing: expert_choice" r/config.yaml || fail "r/config.yaml does not record the routing"
  [ "$(grep -c '^routing: expert_choice: .*information from the future leaks.* Evaluation routes each eval' \
        out.txt)" = 1 ] || { cat out.txt; fail "no single start-up line on what expert choice sees"; }
  grep -q "^load balancing: by construction" out.txt || fail "the balancing line does not say expert choice"
  python3 - r/metrics.jsonl <<'PY' || fail "metrics.jsonl check failed"
import json, math, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
train = [r for r in rows if "loss" in r]
evals = [r for r in rows if r.get("split") == "eval"]
assert len(train) == 30 and len(evals) == 2, (len(train), len(evals))
for r in train:
    assert r["aux_loss"] == 0 and r["z_loss"] > 0 and r["dropped_frac"] == 0, r
    assert r["load_max_over_mean"] == 1, r
    for l in r["moe_layers"]:
        assert l["routed"] == l["kept"] == [640] * 4, l  # 2 ranks x C = 320 per expert
assert all(math.isfinite(e["eval_loss"]) for e in evals), evals
first, last = train[0]["loss"], sum(r["loss"] for r in train[-5:]) / 5
assert last < first - 0.5, f"loss did not fall: {first} -> {last}"
print(f"loss {first:.3f} -> {last:.3f}, eval {evals[-1]['eval_loss']:.3f}")
PY
  ;;
static_routing)
  # Static routing by token id, no router: a seeded hash, then a table sending each of the synthetic
  # corpus' 4 domains (16 token ids each) to 2 of the 4 experts. The tiny config's explicit aux_loss_coeff
  # and z_loss_coeff do not apply: refused naming both keys, one message, before anything is written; so
  # is a table with an expert out of range, naming the file and line. Without them both modes train with
  # no aux or z loss, say so at start-up, and name the mode in the routing report.
  run 2 "$configs/tiny.yaml" "${short[@]}" run.dir=refused moe.routing=hash moe.aux_loss_coeff=0 &&
    fail "hash routing with the tiny config's z_loss_coeff was accepted"
  grep -q "moe.routing = hash has no router logits for a z-loss, but z_loss_coeff = 0.001" out.txt ||
    { cat out.txt; fail "refusal message"; }
  [ "$(grep -c 'has no router logits' out.txt)" = 1 ] || fail "expected exactly one message (from rank 0)"
  [ -e refused ] && fail "the refused run wrote refused/"
  printf '# domain d (ids 16d .. 16d + 15) -> experts d, d + 1 mod 4\n0-15: 0 1\n16-31: 1 4\n' >bad.txt
  run 2 "$configs/tiny.yaml" "${short[@]}" run.dir=refused moe.routing=table moe.routing_table=bad.txt \
    moe.aux_loss_coeff=0 moe.z_loss_coeff=0 && fail "a table with expert 4 of 4 was accepted"
  grep -q "config: moe.routing_table = bad.txt, line 3: expert 4 is outside \[0, num_experts = 4)" out.txt ||
    { cat out.txt; fail "no message naming the table's file and line"; }
  [ -e refused ] && fail "the refused run wrote refused/"
  printf '0-15: 0 1\n16-31: 1 2\n32-47: 2 3\n48-63: 3 0\n' >map.txt
  for mode in hash table; do
    run 2 "$configs/tiny.yaml" "${short[@]}" run.dir=$mode moe.routing=$mode moe.aux_loss_coeff=0 \
      moe.z_loss_coeff=0 $([ $mode = table ] && echo moe.routing_table=map.txt) ||
      { cat out.txt; fail "$mode: exit status $?"; }
    grep -q "^  routing: $mode" $mode/config.yaml || fail "$mode/config.yaml does not record the routing"
    grep -q "^load balancing: none (moe.routing = $mode: .*no load-balancing loss and no z-loss (both off)" out.txt ||
      { cat out.txt; fail "$mode: the start-up line does not say the losses are off"; }
    head -1 $mode/routing_report.txt | grep -q "^routing: $mode .*token id -> 2 experts, weights 1/k)" ||
      { cat $mode/routing_report.txt; fail "$mode: the routing report does not name the mode"; }
    python3 - $mode/metrics.jsonl <<'PY' || fail "$mode: metrics.jsonl check failed"
import json, math, sys
train = [r for r in map(json.loads, open(sys.argv[1])) if "loss" in r]
assert len(train) == 30, len(train)
assert all(math.isfinite(r["loss"]) and r["aux_loss"] == 0 and r["z_loss"] == 0 for r in train), train[0]
first, last = train[0]["loss"], sum(r["loss"] for r in train[-5:]) / 5
assert last < first - 0.5, f"loss did not fall: {first} -> {last}"
print(f"{sys.argv[1]}: loss {first:.3f} -> {last:.3f}")
PY
  done
  # The table's domains reach only their two experts: domain 0's row is 0% for experts 2 and 3.
  grep -Eq "^  domain 0 +[0-9.]+% +[0-9.]+% +0\.0% +0\.0%$" table/routing_report.txt ||
    { cat table/routing_report.txt; fail "domain 0 reached experts the table does not send it to"; }
  ;;
group_routing)
  # Group-limited routing, one group per rank: the tiny config's 4 experts on 2 ranks are 2 groups of 2,
  # and with top_groups 1 each token's 2 experts sit on one rank. It trains and records its settings; a
  # layout whose kept groups hold fewer than top_k experts is refused before training, naming the keys.
  run 2 "$configs/tiny.yaml" "${short[@]}" run.dir=r moe.routing_groups=ep moe.top_groups=1 \
    moe.group_score=top2_sum || { cat out.txt; fail "exit status $?"; }
  for key in "routing_groups: ep" "top_groups: 1" "group_score: top2_sum"; do
    grep -q "^  $key" r/config.yaml || fail "r/config.yaml does not record '$key'"
  done
  python3 - r/metrics.jsonl <<'PY' || fail "metrics.jsonl check failed"
import json, math, sys
train = [r for r in map(json.loads, open(sys.argv[1])) if "loss" in r]
assert len(train) == 30, len(train)
assert all(math.isfinite(r["loss"]) for r in train), train[0]
first, last = train[0]["loss"], sum(r["loss"] for r in train[-5:]) / 5
assert last < first - 0.5, f"loss did not fall: {first} -> {last}"
print(f"loss {first:.3f} -> {last:.3f}")
PY
  run 2 "$configs/tiny.yaml" "${short[@]}" run.dir=bad moe.routing_groups=ep moe.top_groups=1 moe.top_k=3 &&
    fail "a config whose kept group holds 2 experts for top_k = 3 was accepted"
  grep -q "moe.top_groups = 1 groups of 2 experts (routing_groups = ep (2 expert-parallel ranks)" out.txt ||
    { cat out.txt; fail "no message naming moe.top_groups and routing_groups"; }
  [ ! -e bad/metrics.jsonl ] || fail "the refused run started training"
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
  same_curves ep1 ep2
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
  grep -q "unknown option '--bogus'; accepted: --help, --eval-only" out.txt || { cat out.txt; fail "option message"; }
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
documents_and_blend)
  # Token files blended by weight with document masking, as a user runs them: a short run that learns,
  # then each bad setting refused with one message naming it, exit non-zero, nothing trained.
  make_tokens=$configs/../tests/make_token_file.py
  python3 "$make_tokens" a.tok 257 40000 1 && python3 "$make_tokens" b.tok 257 20000 2 &&
    python3 "$make_tokens" held.tok 257 8000 3 && python3 "$make_tokens" v300.tok 300 8000 4 &&
    python3 "$make_tokens" v200.tok 200 8000 5 && python3 "$make_tokens" end2.tok 257 8000 6 2 ||
    fail "cannot write the token files"
  docs=(data.source=tokens model.vocab_size=300 data.document_mask=true run.steps=20 run.log_every=10)
  run 2 "$configs/tiny.yaml" "${docs[@]}" data.train_files=a.tok:0.7,b.tok:0.3 data.eval_path=held.tok \
    run.eval_every=20 run.dir=r || { cat out.txt; fail "the blended, masked run failed"; }
  grep -q "^step 20/20 | loss" out.txt || { cat out.txt; fail "no progress line for step 20"; }
  grep -q '"eval_loss"' r/metrics.jsonl || fail "no evaluation on data.eval_path"
  # expect_refused MESSAGE [overrides...]: refused by every rank with MESSAGE, exit non-zero.
  expect_refused() {
    local message=$1
    shift
    run 2 "$configs/tiny.yaml" "${docs[@]}" run.eval_every=0 "$@" && fail "accepted: $*"
    grep -qF -- "$message" out.txt || { cat out.txt; fail "no message '$message' for: $*"; }
    grep -q "^step " out.txt && fail "trained before refusing: $*"
    return 0
  }
  expect_refused "cannot open token file 'missing.tok': No such file or directory" data.train_files=a.tok:1,missing.tok:1
  expect_refused "blended files must share one vocabulary: data.train_files 'v300.tok' has vocab_size 300 but data.train_files 'a.tok' has 257" \
    data.train_files=a.tok:1,v300.tok:1
  expect_refused "data.train_files = 'a.tok:0.5,b.tok': entry 'b.tok' has no ':WEIGHT'" data.train_files=a.tok:0.5,b.tok
  expect_refused "data.train_files needs data.eval_path to evaluate on" data.train_files=a.tok:1 run.eval_every=10
  # v200.tok: a version-1 file of a vocabulary without the byte tokenizer's 256 records no end of document.
  expect_refused "data.document_end_token = auto takes the end-of-document token the file records, but token file 'v200.tok' (tokenizer byte, vocab_size 200) records none" \
    data.train_path=v200.tok
  # end2.tok records token 2 as its end of document, a.tok (version 1) the byte tokenizer's 256.
  expect_refused "data.train_files end documents with different tokens: data.train_files 'a.tok' with 256, 'end2.tok' with 2" \
    data.train_files=a.tok:1,end2.tok:1 data.eval_path=held.tok
  expect_refused "data.eval_path ends documents with token 2, the training data with 256" \
    data.train_path=a.tok data.eval_path=end2.tok run.eval_every=10
  expect_refused "data.document_end_token = 400 is not a token of token file 'a.tok', whose vocab_size is 257" \
    data.train_path=a.tok data.document_end_token=400
  # A token beyond the header's vocab_size is found when its sequence is read (opening checks the
  # header only), by the rank reading it: that rank names the file and position and takes every rank
  # down (exit 1), no hang.
  python3 -c 'import sys; b = bytearray(open("a.tok", "rb").read()); b[24:28] = (200).to_bytes(4, "little")
open("bad.tok", "wb").write(b)' || fail "cannot write bad.tok"
  SECONDS=0
  expect_refused "error: token file 'bad.tok': token " data.train_path=bad.tok data.document_end_token=0
  grep -q "is >= vocab_size 200" out.txt || { cat out.txt; fail "the bad token's message"; }
  [ $SECONDS -lt 60 ] || fail "the job took $SECONDS s to stop"
  ;;
device_selection)
  # run.device = cuda where this build or machine cannot (no CUDA backend, or no GPU): one message
  # from rank 0, naming the rank and host where a machine lacks the GPU, exit 2 on every rank, before
  # anything is written. Where a GPU exists the refusal cannot happen: the GPU tests cover that case.
  if have_gpu; then echo "skipped: this build and machine have CUDA, so nothing is refused"; exit 77; fi
  run 2 "$configs/tiny.yaml" run.device=cuda run.dir=g
  status=$?
  [ "$status" = 2 ] || { cat out.txt; fail "exit status $status, expected 2"; }
  grep -Eq "moe-train: (run.device = cuda, but this build has no CUDA backend \(built without the CUDA toolkit\)|run.device = cuda, but rank 0 on host [^ ]+ sees no CUDA device)" out.txt ||
    { cat out.txt; fail "message"; }
  [ "$(grep -c 'run.device = cuda' out.txt)" = 1 ] || { cat out.txt; fail "expected exactly one message"; }
  [ ! -e g ] || fail "the refused run wrote its run directory"
  # NCCL moves GPU memory: refused by the config with the CPU, naming both keys.
  run 2 "$configs/tiny.yaml" parallel.backend=nccl run.dir=n
  status=$?
  [ "$status" = 2 ] || { cat out.txt; fail "nccl with cpu: exit status $status, expected 2"; }
  grep -q "config: parallel.backend = nccl needs run.device = cuda" out.txt || { cat out.txt; fail "nccl message"; }
  [ ! -e n ] || fail "the refused nccl run wrote its run directory"
  ;;
gpu_training)
  # The tiny config, 5 steps on one rank, on the GPU and on the CPU: the same losses up to float32
  # rounding in other summation orders (cuBLAS vs oneDNN), 1e-3 relative with margin for five AdamW steps.
  have_gpu || { echo "skipped: no CUDA device (or a build without CUDA)"; exit 77; }
  gpu_short=(run.steps=5 run.log_every=1 run.eval_every=0 checkpoint.every=5 parallel.ep=1)
  run 1 "$configs/tiny.yaml" "${gpu_short[@]}" run.dir=c || { cat out.txt; fail "CPU run"; }
  run 1 "$configs/tiny.yaml" "${gpu_short[@]}" run.device=cuda run.dir=g || { cat out.txt; fail "GPU run"; }
  grep -q "GPU 0 (its local rank's)" out.txt || { cat out.txt; fail "the GPU run did not say it uses GPU 0"; }
  python3 - c/metrics.jsonl g/metrics.jsonl <<'PY' || fail "GPU losses differ from the CPU's"
import json, sys
a, b = ([json.loads(l)["loss"] for l in open(p) if "loss" in json.loads(l)] for p in sys.argv[1:3])
assert len(a) == len(b) == 5, (a, b)
for x, y in zip(a, b):
    assert abs(x - y) <= 1e-3 * abs(x), (a, b)
print("cpu", a, "gpu", b)
PY
  # The GPU's checkpoint starts a CPU run.
  run 1 "$configs/tiny.yaml" "${gpu_short[@]}" run.steps=6 checkpoint.init_from=g/checkpoints/step_00000005 \
    run.dir=r || { cat out.txt; fail "a CPU run from the GPU's checkpoint"; }
  ;;
bf16_accuracy)
  # The tiny config trained 400 steps in fp32 and in bf16 (model.precision): the final held-out losses
  # within 2% (issue 13). About 20 s per run on 2 ranks of a 2-core machine.
  long=(run.steps=400 run.log_every=100 run.eval_every=400 checkpoint.every=0)
  run 2 "$configs/tiny.yaml" "${long[@]}" run.dir=fp32 || { cat out.txt; fail "fp32 run failed"; }
  run 2 "$configs/tiny.yaml" "${long[@]}" model.precision=bf16 run.dir=bf16
  status=$?
  if [ $status != 0 ] && grep -q "has a CPU without bfloat16 matrix products" out.txt; then
    echo "skipped: this CPU has no bfloat16 matrix products"; exit 77
  fi
  [ $status = 0 ] || { cat out.txt; fail "bf16 run failed"; }
  grep -q "^MFU peak .* GFLOP/s over all ranks: 2 rank(s) x 1 thread(s), bfloat16 GEMM 2048^3" out.txt ||
    { cat out.txt; fail "the MFU peak of a bf16 run is not measured with a bfloat16 GEMM"; }
  python3 - fp32/metrics.jsonl bf16/metrics.jsonl <<'PY' || fail "bf16 ends too far from fp32"
import json, sys
fp32, bf16 = ([json.loads(l)["eval_loss"] for l in open(p) if '"eval_loss"' in l][-1] for p in sys.argv[1:3])
print(f"final held-out loss: fp32 {fp32:.4f}, bf16 {bf16:.4f} ({(bf16 - fp32) / fp32:+.2%})")
assert abs(bf16 - fp32) <= 0.02 * fp32
PY
  ;;
precision_refused)
  # bf16 where oneDNN has no bfloat16 matrix products (ONEDNN_MAX_CPU_ISA=AVX2 hides AVX-512 from it):
  # one message from rank 0, exit 2 on every rank, nothing written.
  ONEDNN_MAX_CPU_ISA=AVX2 run 2 "$configs/tiny.yaml" model.precision=bf16 run.dir=r
  status=$?
  [ "$status" = 2 ] || { cat out.txt; fail "exit status $status, expected 2"; }
  grep -q "^moe-train: model.precision = bf16, but rank 0 on host [^ ]* has a CPU without bfloat16 matrix products .*accepted: model.precision = fp32" out.txt ||
    { cat out.txt; fail "message"; }
  [ "$(grep -c 'model.precision = bf16' out.txt)" = 1 ] || { cat out.txt; fail "expected exactly one message"; }
  [ ! -e r ] || fail "the refused run wrote its run directory"
  ;;
too_big)
  # A model that cannot fit in memory: one message with the estimate from rank 0, exit 2 on every
  # rank, before anything is allocated (no std::bad_alloc, no MPI_ABORT) or written.
  run 2 "$configs/tiny.yaml" moe.num_experts=1048576 run.dir=big
  status=$?
  [ "$status" = 2 ] || { cat out.txt; fail "exit status $status, expected 2"; }
  grep -Eq "config: the model does not fit in memory: each rank needs about [0-9.]+ GiB \(parameters with gradients and optimizer state [0-9.]+ GiB, activations of a step [0-9.]+ GiB\), and [0-9.]+ [GM]iB is available per rank \(MemAvailable in /proc/meminfo divided among the ranks of each node" out.txt ||
    { cat out.txt; fail "message"; }
  [ "$(grep -c 'does not fit in memory' out.txt)" = 1 ] || { cat out.txt; fail "expected exactly one message (from rank 0)"; }
  grep -Eq "MPI_ABORT|bad_alloc" out.txt && { cat out.txt; fail "an abort instead of a refusal"; }
  [ ! -e big ] || fail "the refused run wrote its run directory"
  ;;
config_not_a_file)
  # /dev/zero, a FIFO nothing writes to and a file past the size limit: refused on every rank before
  # reading (no hang, no allocation of an endless file), one message, nothing written.
  mkfifo fifo.yaml
  truncate -s 17M big.yaml
  for config in /dev/zero fifo.yaml big.yaml; do
    run 2 "$config" run.dir=r && fail "$config was accepted as a config"
    grep -q "config: cannot read '$config': it \(is a character device\|is a FIFO\|holds 17825792 bytes, more than the 16 MiB\)" out.txt ||
      { cat out.txt; fail "message for $config"; }
    [ "$(grep -c 'cannot read' out.txt)" = 1 ] || { cat out.txt; fail "expected exactly one message (from rank 0)"; }
    ! grep -q "bad_alloc\|terminate called\|MPI_ABORT" out.txt || { cat out.txt; fail "raw abort for $config"; }
    [ ! -e r ] && [ ! -e runs ] || fail "$config: something was written"
  done
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
telemetry)
  # Capacity factor 0.5 drops at least half the choices: the routed counts show the demand the kept
  # ones hide, and the load imbalance is measured on the routed ones. MoE on layers 1 and 3 of 4:
  # every per-layer figure carries the model's layer index. A given peak sets the MFU.
  run 2 "$configs/tiny.yaml" run.steps=10 run.log_every=5 run.eval_every=0 moe.capacity_factor=0.5 \
    model.n_layers=4 model.moe_every=2 run.peak_gflops=50 run.dir=r || { cat out.txt; fail "exit status $?"; }
  grep -q "^MFU peak 100.0 GFLOP/s over all ranks: 2 rank(s) x 50.0 GFLOP/s from run.peak_gflops" out.txt ||
    { cat out.txt; fail "the configured peak is not used"; }
  grep -q "^layer 1 (MoE)" r/routing_report.txt && grep -q "^layer 3 (MoE)" r/routing_report.txt ||
    { cat r/routing_report.txt; fail "the routing report does not name layers 1 and 3"; }
  python3 - r/metrics.jsonl <<'PY' || fail "metrics.jsonl check failed"
import json, math, sys
train = [json.loads(l) for l in open(sys.argv[1]) if '"loss"' in l]
assert [r["step"] for r in train] == [5, 10], train
for r in train:
    layers = r["moe_layers"]
    assert [l["layer"] for l in layers] == [1, 3], layers
    routed_all = kept_all = 0
    for l in layers:
        routed, kept = l["routed"], l["kept"]
        assert sum(routed) == 5 * 2048, l  # 5 steps x 2 ranks x 8 x 64 tokens x top_k 2
        assert all(k <= x for k, x in zip(kept, routed)), l
        assert l["dropped_frac"] >= 0.5 - 1e-9, l  # slots for half the choices at most
        assert abs(l["dropped_frac"] - (1 - sum(kept) / sum(routed))) < 1e-8, l  # 9 digits in the log
        assert abs(l["load_max_over_mean"] - max(routed) * 4 / sum(routed)) < 1e-8, l
        assert 0 < l["router_entropy"] <= math.log(4) + 1e-6, l
        routed_all += sum(routed)
        kept_all += sum(kept)
    assert abs(r["dropped_frac"] - (1 - kept_all / routed_all)) < 1e-8, r
    assert r["load_max_over_mean"] == max(l["load_max_over_mean"] for l in layers), r
    assert abs(r["mfu"] - r["model_gflops_per_rank"] / 50) < 1e-6 * r["mfu"], r
    t = r["time_s"]
    assert sorted(t) == sorted(["data", "forward", "backward", "token_exchange", "grad_sync", "optimizer",
                                "checkpoint"]), t
    assert all(v >= 0 for v in t.values()) and t["forward"] > 0 and t["backward"] > 0, t
    assert t["token_exchange"] > 0, t  # ep = 2: the all-to-alls run every step
print("routed/kept, drop rate, entropy, load and phase times as expected:",
      [(l["layer"], round(l["dropped_frac"], 3)) for l in train[-1]["moe_layers"]])
PY
  # aux_free: the aux loss is off unless asked for, and start-up says so.
  run 2 "$configs/tiny.yaml" run.steps=4 run.log_every=2 run.eval_every=0 moe.balancing=aux_free \
    moe.aux_loss_coeff=-1 run.dir=f || { cat out.txt; fail "aux_free run failed"; }
  grep -q "aux_free, per-expert routing biases .*; no load-balancing loss (moe.aux_loss_coeff = 0, aux_free's default)" \
    out.txt || { cat out.txt; fail "no start-up line on aux_free's aux loss"; }
  grep -q "^  aux_loss_coeff: 0 " f/config.yaml || fail "the resolved config does not show aux_loss_coeff: 0"
  grep -q '"aux_loss": 0,' f/metrics.jsonl || { cat f/metrics.jsonl; fail "aux_free logged a non-zero aux loss"; }
  run 2 "$configs/tiny.yaml" run.steps=2 run.log_every=2 run.eval_every=0 moe.balancing=aux_free \
    moe.aux_loss_coeff=0.002 run.dir=g || { cat out.txt; fail "aux_free run with an aux loss failed"; }
  grep -q "aux_free, per-expert routing biases .*; plus the load-balancing loss with moe.aux_loss_coeff = 0.002$" \
    out.txt || { cat out.txt; fail "no start-up line on aux_free with an aux loss"; }
  ;;
grad_accum)
  # 2 micro-batches of 4 sequences per rank and one batch of 8 see the same global tokens each step
  # (data/data_loader.h: a step takes consecutive permutation positions), so dropless and without the
  # load-balancing loss (computed per micro-batch, as in Megatron and DeepSpeed, and not additive) the
  # two runs follow the same loss curve up to float32 summation order.
  same=(run.steps=20 run.log_every=1 run.eval_every=0 moe.capacity_factor=0 moe.eval_capacity_factor=0
        moe.aux_loss_coeff=0)
  run 2 "$configs/tiny.yaml" "${same[@]}" data.batch_size=8 run.dir=one || { cat out.txt; fail "batch 8 run failed"; }
  run 2 "$configs/tiny.yaml" "${same[@]}" data.batch_size=4 optim.grad_accum_steps=2 run.dir=acc ||
    { cat out.txt; fail "accumulating run failed"; }
  grep -q "gradient accumulation: 2 micro-batches of 4 sequences per rank per optimizer step" out.txt ||
    { cat out.txt; fail "no start-up line on gradient accumulation"; }
  python3 - one/metrics.jsonl acc/metrics.jsonl <<'PY' || fail "the accumulated run differs"
import json, sys
a, b = ([json.loads(l) for l in open(p) if '"loss"' in l] for p in sys.argv[1:3])
assert len(a) == len(b) == 20, (len(a), len(b))
for x, y in zip(a, b):
    for key in ["loss", "z_loss", "grad_norm"]:
        # As in ep_equivalence: rounding differences of ~1e-7 grow over 20 AdamW steps; a wrong
        # gradient scale (a missing 1/2) or a lost micro-batch changes these at the 1e-2 level.
        assert abs(x[key] - y[key]) <= 1e-4 * abs(x[key]), (x["step"], key, x[key], y[key])
    for lx, ly in zip(x["moe_layers"], y["moe_layers"]):
        # Every token of both micro-batches counted: 2 ranks x 8 x 64 tokens x top_k 2, none dropped.
        assert sum(lx["routed"]) == sum(ly["routed"]) == sum(ly["kept"]) == 2048, (lx, ly)
        assert abs(lx["router_entropy"] - ly["router_entropy"]) <= 1e-4 * lx["router_entropy"], (lx, ly)
worst = max(abs(x["loss"] - y["loss"]) / x["loss"] for x, y in zip(a, b))
print(f"2 x 4 vs 8 sequences per rank: worst relative loss difference over 20 steps {worst:.2e}")
PY
  # With the load-balancing loss on, the logged aux loss is the mean over micro-batches: about the
  # same size as without accumulation.
  run 2 "$configs/tiny.yaml" run.steps=4 run.log_every=1 run.eval_every=0 data.batch_size=4 optim.grad_accum_steps=3 \
    run.dir=aux || { cat out.txt; fail "accumulating run with the aux loss failed"; }
  python3 - aux/metrics.jsonl <<'PY' || fail "aux loss with accumulation"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"loss"' in l]
# Two layers, coefficient 0.01, each loss >= 1 (E * sum f_i P_i >= 1 at perfect balance): about 0.02.
assert all(0.019 < r["aux_loss"] < 0.03 for r in rows), [r["aux_loss"] for r in rows]
assert all(sum(l["routed"]) == 3 * 2 * 4 * 64 * 2 for r in rows for l in r["moe_layers"]), rows
PY
  ;;
eval_only)
  # --eval-only loads the newest checkpoint and evaluates exactly what training evaluated at that step.
  cfg=(run.steps=20 run.log_every=10 run.eval_every=20 checkpoint.every=20 run.dir=r)
  run 2 "$configs/tiny.yaml" "${cfg[@]}" || { cat out.txt; fail "training run failed"; }
  trained=$(grep "^step 20/20 | eval loss" out.txt | sed 's/ (held-out.*//')
  [ -n "$trained" ] || { cat out.txt; fail "no eval line in the training run"; }
  cp r/metrics.jsonl before.jsonl
  sum_before=$(md5sum r/config.yaml r/DONE r/routing_report.txt)
  run 2 "$configs/tiny.yaml" "${cfg[@]}" --eval-only || { cat out.txt; fail "--eval-only failed"; }
  grep -q "^loaded r/checkpoints/step_00000020 at step 20" out.txt || { cat out.txt; fail "no 'loaded' line"; }
  grep -q "^$trained (held-out" out.txt || { cat out.txt; fail "eval-only gave another loss than training ($trained)"; }
  [ "$(md5sum r/config.yaml r/DONE r/routing_report.txt)" = "$sum_before" ] || fail "--eval-only changed the run directory"
  [ "$(head -n "$(wc -l <before.jsonl)" r/metrics.jsonl)" = "$(cat before.jsonl)" ] || fail "metrics.jsonl was rewritten"
  [ "$(wc -l <r/metrics.jsonl)" = $(($(wc -l <before.jsonl) + 1)) ] || fail "expected one more line in metrics.jsonl"
  python3 - before.jsonl r/metrics.jsonl <<'PY' || fail "the eval-only line in metrics.jsonl"
import json, math, sys
trained = [json.loads(l) for l in open(sys.argv[1]) if '"split": "eval"' in l][-1]
added = json.loads(open(sys.argv[2]).readlines()[-1])
assert added == trained, (added, trained)
assert abs(added["eval_perplexity"] - math.exp(added["eval_loss"])) < 1e-6 * added["eval_perplexity"], added
PY
  # A finished run started again: nothing to train, nothing rewritten, exit 0.
  run 2 "$configs/tiny.yaml" "${cfg[@]}" checkpoint.resume=auto || { cat out.txt; fail "resuming a finished run failed"; }
  grep -q "^nothing to train: r/checkpoints/step_00000020 is at step 20 and run.steps = 20" out.txt ||
    { cat out.txt; fail "no 'nothing to train' message"; }
  grep -q "final loss" out.txt && fail "a finished run printed a final loss again"
  [ "$(md5sum r/config.yaml r/DONE r/routing_report.txt)" = "$sum_before" ] || fail "resuming a finished run changed it"
  # Bad input: no checkpoint to evaluate, on every rank, exit 2 with one message.
  run 2 "$configs/tiny.yaml" run.dir=empty --eval-only && fail "--eval-only without a checkpoint succeeded"
  [ $? = 2 ] || fail "expected exit status 2"
  grep -q "^moe-train: --eval-only needs a checkpoint: checkpoint.dir 'empty/checkpoints' holds no complete one and checkpoint.init_from is empty" out.txt ||
    { cat out.txt; fail "no-checkpoint message"; }
  [ "$(grep -c 'needs a checkpoint' out.txt)" = 1 ] || fail "expected the message once (from rank 0)"
  [ -e empty ] && fail "--eval-only without a checkpoint created the run directory"
  run 2 "$configs/tiny.yaml" --eval-only --bogus && fail "an unknown option next to --eval-only was accepted"
  grep -q "unknown option '--bogus'; accepted: --help, --eval-only" out.txt || { cat out.txt; fail "option message"; }
  ;;
expert_schedule)
  # moe.schedule at given steps: remove two experts, add four fresh ones, split two; every rank agrees,
  # the per-expert metrics follow, the routing report lists the changes, and the loss still falls.
  sched='moe.schedule=at 8 remove 1,2; at 16 add 4; at 22 split 0,3'
  run 2 "$configs/tiny.yaml" "${short[@]}" run.dir=r "$sched" || { cat out.txt; fail "exit status $?"; }
  for want in "expert change: step 8, layer 0: 4 -> 2 experts: removed experts 1,2; moe.schedule event 1" \
              "expert change: step 16, layer 1: 2 -> 6 experts: added fresh experts 2,3,4,5" \
              "expert change: step 22, layer 0: 6 -> 8 experts: split expert 0 into 0 and 6, 3 into 3 and 7"; do
    grep -qF "$want" out.txt || { cat out.txt; fail "no line '$want'"; }
  done
  [ "$(grep -c '^expert change:' out.txt)" = 6 ] || fail "expected 3 changes x 2 MoE layers, printed once"
  grep -qF "step 22, layer 1: 6 -> 8 experts" r/routing_report.txt || fail "the routing report lacks the changes"
  python3 - r/metrics.jsonl <<'PY' || fail "metrics.jsonl check failed"
import json, sys
train = [r for r in map(json.loads, open(sys.argv[1])) if "loss" in r]
experts = {r["step"]: len(r["moe_layers"][0]["routed"]) for r in train}
want = {s: 4 if s <= 8 else 2 if s <= 16 else 6 if s <= 22 else 8 for s in range(1, 31)}
assert experts == want, experts
first, last = train[0]["loss"], sum(r["loss"] for r in train[-5:]) / 5
assert last < first - 0.5, f"loss did not fall: {first} -> {last}"
print(f"experts 4 -> 2 -> 6 -> 8; loss {first:.3f} -> {last:.3f}")
PY
  # A condition: experts above a 20% share for two log intervals in a row are split (in multiples of
  # ep = 2, up to 8): with 4 balanced experts that is after step 2, and never again at 12.5% each.
  run 2 "$configs/tiny.yaml" "${short[@]}" run.dir=c 'moe.schedule=when share > 0.2 for 2 split max 8' ||
    { cat out.txt; fail "exit status $?"; }
  [ "$(grep -c '^expert change:' out.txt)" = 2 ] || { grep '^expert change' out.txt; fail "expected one change of each layer"; }
  grep -q "^expert change: step 2, layer 0: 4 -> 8 experts: split expert .* moe.schedule event 1 (\"when share > 0.2 for 2 split max 8\")" out.txt ||
    { cat out.txt; fail "the condition did not split the experts after step 2"; }
  ;;
expert_schedule_ep)
  # The same schedule with ep = 1 and ep = 2 on 2 ranks, and with ep = 1 and ep = 4 on 4 ranks: the
  # same loss curve before and after the changes (each rank gathers its group's experts, edits them
  # alike and takes its new shard).
  sched='moe.schedule=at 8 remove 1,2; at 16 add 4; at 22 split 0,3'
  run 2 "$configs/tiny.yaml" "${short[@]}" parallel.ep=1 run.dir=ep1 "$sched" || { cat out.txt; fail "ep=1 run failed"; }
  run 2 "$configs/tiny.yaml" "${short[@]}" parallel.ep=2 run.dir=ep2 "$sched" || { cat out.txt; fail "ep=2 run failed"; }
  same_curves ep1 ep2
  # Every layout of 4 ranks keeps a multiple of 4 experts: 4 -> 8 -> 12 -> 8.
  sched='moe.schedule=at 8 add 4; at 16 split 0,3,5,6; at 22 remove 1,2,4,7'
  run 4 "$configs/tiny.yaml" "${short[@]}" parallel.ep=1 run.dir=ep1of4 "$sched" || { cat out.txt; fail "ep=1 run on 4 ranks failed"; }
  run 4 "$configs/tiny.yaml" "${short[@]}" parallel.ep=4 run.dir=ep4 "$sched" || { cat out.txt; fail "ep=4 run failed"; }
  grep -q "8 -> 12 experts" out.txt || { cat out.txt; fail "the ep=4 run did not split"; }
  same_curves ep1of4 ep4
  ;;
bad_schedule)
  # A schedule the layout cannot take: one message naming the event, non-zero exit, nothing written.
  run 2 "$configs/tiny.yaml" run.dir=r 'moe.schedule=at 10 remove 1' && fail "a schedule leaving 3 experts on ep = 2 was accepted"
  grep -qF 'config: moe.schedule event 1 ("at 10 remove 1"): takes the layers from 4 to 3 experts, but moe.num_experts = 3 is not divisible by ep = 2' out.txt ||
    { cat out.txt; fail "divisibility message"; }
  [ "$(grep -c 'moe.schedule event' out.txt)" = 1 ] || fail "expected exactly one message (from rank 0)"
  [ -e r ] && fail "a refused schedule created the run directory"
  run 2 "$configs/tiny.yaml" run.dir=r 'moe.schedule=at 10 grow 2' && fail "an unknown action was accepted"
  grep -qF "moe.schedule event 1 (\"at 10 grow 2\"): unknown action 'grow'" out.txt || { cat out.txt; fail "grammar message"; }
  run 2 "$configs/tiny.yaml" run.dir=r run.steps=20 'moe.schedule=when share < 0.1 remove min 3' &&
    fail "an odd min on ep = 2 was accepted"
  grep -qF "min 3 is not a multiple of 2" out.txt || { cat out.txt; fail "condition bound message"; }
  run 2 "$configs/tiny.yaml" run.dir=r moe.routing=hash moe.aux_loss_coeff=0 moe.z_loss_coeff=0 'moe.schedule=at 10 add 2' &&
    fail "a schedule with static routing was accepted"
  grep -qF "moe.schedule needs learned routing; moe.routing = hash" out.txt || { cat out.txt; fail "static routing message"; }
  ;;
*)
  fail "unknown case"
  ;;
esac
echo "PASS ($case_name)"
