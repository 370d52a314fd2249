#!/usr/bin/env bash
# End-to-end tests of moe-ckpt on checkpoints written by short moe-train runs (under mpirun). One case
# per call:
#   ckpt_tool.sh CASE MOE_CKPT MOE_TRAIN MPIRUN CONFIGS_DIR VENV_DIR
# Each case runs in a fresh temporary directory, removed afterwards. VENV_DIR (export only) is the
# Python environment with safetensors and numpy (tests/test_venv.sh makes it).
set -u
case_name=$1 ckpt=$2 moe_train=$3 mpirun=$4 configs=$5 venv=$6
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work" || exit 1

fail() { echo "FAIL ($case_name): $*"; exit 1; }
# train NP RUN_DIR [overrides...]: a short tiny run (20 steps, a checkpoint every 10), output in RUN_DIR.txt.
train() {
  local np=$1 dir=$2
  shift 2
  "$mpirun" --oversubscribe --timeout 240 -np "$np" "$moe_train" "$configs/tiny.yaml" run.steps=20 run.log_every=10 \
    run.eval_every=0 checkpoint.every=10 run.dir="$dir" "$@" >"$dir.txt" 2>&1 || { cat "$dir.txt"; fail "training $dir"; }
}
# resume NP CKPT RUN_DIR [overrides...]: moe-train with the config recorded in CKPT, started from it
# (checkpoint.init_from) for 3 more steps; checks that it resumed and that every loss is finite.
resume() {
  local np=$1 from=$2 dir=$3
  shift 3
  "$ckpt" info "$from" --config >"$dir.yaml" || fail "info --config $from"
  local step
  step=$("$ckpt" info "$from" | awk '$1 == "step" {print $2}')
  "$mpirun" --oversubscribe --timeout 240 -np "$np" "$moe_train" "$dir.yaml" checkpoint.init_from="$from" \
    run.dir="$dir" run.steps=$((step + 3)) run.log_every=1 run.eval_every=0 checkpoint.every=0 "$@" >"$dir.txt" 2>&1 ||
    { cat "$dir.txt"; fail "moe-train did not run from $from on $np ranks"; }
  grep -q "resumed from $from at step $step" "$dir.txt" || { cat "$dir.txt"; fail "did not resume from $from"; }
  python3 - "$dir/metrics.jsonl" $((step + 3)) <<'PY' || fail "losses after loading $from"
import json, math, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"loss"' in l]
assert rows and rows[-1]["step"] == int(sys.argv[2]), rows
assert all(math.isfinite(r["loss"]) for r in rows), rows
PY
}
# expect_fail REGEX CMD...: CMD exits non-zero with stderr matching REGEX.
expect_fail() {
  local regex=$1
  shift
  "$here/expect_failure.sh" "$regex" "$@" >fail.txt || { cat fail.txt; fail "expected failure of: $*"; }
}
# Checksums of every file under the given directories: moe-ckpt must never change its inputs.
sums() { find "$@" -type f -print0 | sort -z | xargs -0 sha256sum; }

case $case_name in
inspect)
  train 2 r
  c10=r/checkpoints/step_00000010 c20=r/checkpoints/step_00000020
  before=$(sums r/checkpoints)
  "$ckpt" ls r >ls.txt || fail "ls"
  grep -Eq "^ +10 +complete .*step_00000010$" ls.txt || { cat ls.txt; fail "ls: step 10"; }
  grep -Eq "^ +20 +complete .*step_00000020  <- latest$" ls.txt || { cat ls.txt; fail "ls: latest"; }
  # An incomplete checkpoint (no MANIFEST) is listed as such, with the problem; info on the run uses the newest complete one.
  cp -r "$c10" r/checkpoints/step_00000030 && rm r/checkpoints/step_00000030/MANIFEST
  "$ckpt" ls r/checkpoints >ls.txt || fail "ls root"
  grep -Eq "^ +30 +INCOMPLETE .*MANIFEST' is missing" ls.txt || { cat ls.txt; fail "ls: incomplete"; }
  "$ckpt" ls "$c20" | grep -Eq "^ +20 +complete" || fail "ls of one step directory"
  "$ckpt" info r >info.txt 2>info.err || { cat info.txt info.err; fail "info"; }
  grep -q "using r/checkpoints/step_00000020" info.err || { cat info.err; fail "info did not pick the newest complete"; }
  rm -r r/checkpoints/step_00000030
  for want in "^step +20$" "^layout +world size 2, ep 2, 4 experts, 2 per rank" "^MoE +4 experts, top_k 2" \
      "^optimizer +adamw" "^parameters +[0-9]+ total, [0-9]+ active per token" "^  layer 1: +0: 0\.[0-9]+"; do
    grep -Eq "$want" info.txt || { cat info.txt; fail "info lacks /$want/"; }
  done
  # Active = total - (E - k)/E of the expert tensors: (2 layers x 4 experts x (64x256 + 128x64)) / 2.
  python3 - info.txt <<'PY' || fail "active parameter count"
import re, sys
m = re.search(r"parameters +(\d+) total, (\d+) active", open(sys.argv[1]).read())
total, active = int(m[1]), int(m[2])
assert total - active == 2 * 4 * (64 * 256 + 128 * 64) // 2, (total, active)
PY
  "$ckpt" tensors "$c20" >tensors.txt || fail "tensors"
  [ "$(wc -l <tensors.txt)" = "$("$ckpt" info "$c20" | awk '$1 == "stored" {print $2}')" ] || fail "one line per entry"
  grep -Eq "^layers\.1\.moe\.w_in \[expert 3\] +\(64, 256\) +float32 +shard_00001\.bin@[0-9]+ +norm [0-9.e-]+ +min -[0-9.e-]+ +max [0-9.e-]+$" tensors.txt ||
    { head tensors.txt; fail "tensors: expert line"; }
  [ "$("$ckpt" tensors "$c20" --filter '^layers\.0\.moe\.w_out$' | wc -l)" = 4 ] || fail "tensors --filter"
  "$ckpt" verify "$c20" >verify.txt || { cat verify.txt; fail "verify of a good checkpoint"; }
  grep -Eq "^ok: [0-9]+ tensors, [0-9]+ bytes verified" verify.txt || fail "verify message"
  "$ckpt" diff "$c20" "$c20" >diff.txt || { cat diff.txt; fail "diff of a checkpoint with itself"; }
  "$ckpt" diff "$c10" "$c20" >diff.txt
  [ $? = 1 ] || fail "diff of steps 10 and 20 should exit 1"
  grep -Eq "^differs: layers\.0\.attn\.w_qkv \(64, 192\): max abs [0-9.e-]+, max rel [0-9.e-]+" diff.txt || { cat diff.txt; fail "diff line"; }
  grep -q "^note: step 10 in A, 20 in B" diff.txt || fail "diff step note"
  [ "$before" = "$(sums r/checkpoints)" ] || fail "a read-only command changed the checkpoint files"
  ;;
corrupt)
  # Each kind of damage, on its own copy: verify exits 1 naming the file (and the tensor where one is hit).
  train 2 a
  train 2 b
  good=a/checkpoints/step_00000010
  cp -r "$good" trunc && truncate -s -100 trunc/shard_00001.bin
  expect_fail "shard file 'trunc/shard_00001.bin' has [0-9]+ bytes, the manifest says [0-9]+ \(truncated" "$ckpt" verify trunc
  cp -r "$good" flip
  at=$("$ckpt" tensors flip --filter '^layers\.0\.attn\.w_qkv$' | grep -o 'shard_[0-9]*\.bin@[0-9]*')  # FILE@OFFSET
  python3 - "flip/${at%@*}" $((${at#*@} + 100)) <<'PY'
import sys
with open(sys.argv[1], "r+b") as f:
    f.seek(int(sys.argv[2])); b = f.read(1); f.seek(int(sys.argv[2])); f.write(bytes([b[0] ^ 0x10]))
PY
  expect_fail "tensor 'layers\.0\.attn\.w_qkv' in 'flip/${at%@*}' is damaged: CRC32C" "$ckpt" verify flip
  expect_fail "1 problem found" "$ckpt" verify flip
  "$ckpt" tensors flip >/dev/null 2>&1 && fail "tensors on a damaged checkpoint exited 0"
  cp -r "$good" missing && rm missing/shard_00000.bin
  expect_fail "shard file 'missing/shard_00000.bin' is missing" "$ckpt" verify missing
  cp -r "$good" mixed && cp b/checkpoints/step_00000010/MANIFEST mixed/MANIFEST
  expect_fail "'mixed/shard_0000[01]\.index' belongs to run [0-9a-f]+ step 10, but 'mixed/MANIFEST' to run [0-9a-f]+ step 10: the manifest is from another run" \
    "$ckpt" verify mixed
  cp -r "$good" nomanifest && rm nomanifest/MANIFEST
  expect_fail "nomanifest/MANIFEST' is missing: the checkpoint is incomplete" "$ckpt" verify nomanifest
  "$ckpt" verify "$good" >/dev/null || fail "the undamaged original no longer verifies"
  ;;
export)
  train 2 r
  c=r/checkpoints/step_00000020
  "$here/test_venv.sh" "$venv" || fail "cannot make the Python environment $venv"
  "$ckpt" export "$c" --format safetensors st >export.txt || { cat export.txt; fail "export"; }
  "$ckpt" export "$c" --with-optimizer --max-shard-bytes 1M sharded >export.txt || { cat export.txt; fail "sharded export"; }
  ls sharded/model-00001-of-0000[2-9].safetensors >/dev/null || fail "no shards in $(ls sharded)"
  expect_fail "'st' already exists; moe-ckpt does not overwrite" "$ckpt" export "$c" st
  # As a Hugging Face Mixtral (tests/hf_mixtral_reference.sh checks the numbers against transformers):
  # tiny.yaml ties the embeddings, so no lm_head; its capacity factor is noted (Mixtral is dropless).
  "$ckpt" export "$c" --format hf-mixtral hf >export.txt || { cat export.txt; fail "hf-mixtral export"; }
  grep -q "note: the run has moe.capacity_factor = 1.25" export.txt || { cat export.txt; fail "no capacity note"; }
  "$venv/bin/python" - hf <<'PY' || fail "hf-mixtral export checks"
import json, sys
from safetensors.numpy import load_file
config = json.load(open(f"{sys.argv[1]}/config.json"))
assert config["architectures"] == ["MixtralForCausalLM"] and config["model_type"] == "mixtral", config
assert config["tie_word_embeddings"] is True and config["num_local_experts"] == 4 and config["hidden_size"] == 64, config
t = load_file(f"{sys.argv[1]}/model.safetensors")
assert "lm_head.weight" not in t and t["model.embed_tokens.weight"].shape == (64, 64), sorted(t)
assert t["model.layers.1.block_sparse_moe.experts.3.w2.weight"].shape == (64, 128)
assert len(t) == 1 + 2 * (7 + 3 * 4) + 1, len(t)
PY
  expect_fail "--with-optimizer is for --format safetensors" "$ckpt" export "$c" --format hf-mixtral --with-optimizer hf2
  # A model Mixtral cannot express is refused with the setting and the value it needs, writing nothing.
  train 2 ln model.norm=layernorm
  expect_fail "model.norm = layernorm: Mixtral needs rmsnorm" "$ckpt" export ln/checkpoints/step_00000020 --format hf-mixtral hf3
  [ ! -e hf3 ] || fail "a refused export left hf3"
  "$ckpt" tensors "$c" >tensors.txt
  "$venv/bin/python" - st sharded tensors.txt <<'PY' || fail "safetensors checks"
import json, re, sys
import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file
single, sharded, listing = sys.argv[1:4]
t = load_file(f"{single}/model.safetensors")
with safe_open(f"{single}/model.safetensors", "np") as f:
    meta = f.metadata()
assert meta["step"] == "20" and meta["format_version"] == "2" and re.fullmatch("[0-9a-f]+", meta["run_id"]), meta
assert "num_experts: 4" in meta["config_yaml"], meta["config_yaml"][:200]
assert not any(k.startswith("adamw.") for k in t), "optimizer state exported without --with-optimizer"
assert t["layers.1.moe.w_in"].shape == (4, 64, 256) and t["layers.1.moe.w_in"].dtype == np.float32
assert t["layers.0.moe.w_out"].shape == (4, 128, 64) and t["layers.0.moe.w_gate"].shape == (64, 4)
assert t["embedding"].shape == (64, 64) and t["layers.0.moe.selection_bias"].shape == (4,)
# Every stored entry's norm, min and max (moe-ckpt tensors) against the exported arrays.
checked = 0
for line in open(listing):
    m = re.match(r"(\S+)(?: \[expert (\d+)\])? .* norm (\S+) +min (\S+) +max (\S+)$", line)
    name, expert = m[1], m[2]
    if name not in t:
        continue
    a = t[name][int(expert)] if expert is not None else t[name]
    for got, want in [(np.linalg.norm(a.astype(np.float64)), m[3]), (a.min(), m[4]), (a.max(), m[5])]:
        assert abs(got - float(want)) <= 1e-5 * max(1.0, abs(float(want))), (name, expert, got, want)  # %.6g printing
    checked += 1
assert checked >= 30, checked
index = json.load(open(f"{sharded}/model.safetensors.index.json"))
assert index["metadata"]["step"] == "20"
everything = {}
for shard in sorted(set(index["weight_map"].values())):
    part = load_file(f"{sharded}/{shard}")
    assert all(index["weight_map"][k] == shard for k in part)
    everything.update(part)
assert sum(a.nbytes for a in everything.values()) == index["metadata"]["total_size"]
assert set(everything) == set(index["weight_map"]) and "adamw.v.layers.1.moe.w_in" in everything
for k, a in t.items():
    assert np.array_equal(a, everything[k]), k
print(f"safetensors: {len(t)} tensors checked against moe-ckpt tensors ({checked} entries), "
      f"{len(everything)} in {len(set(index['weight_map'].values()))} shards")
PY
  ;;
reshard)
  train 2 r
  c=r/checkpoints/step_00000020
  before=$(sums r/checkpoints)
  "$ckpt" reshard "$c" --ep 1 one >reshard.txt || { cat reshard.txt; fail "reshard to ep 1"; }
  "$ckpt" reshard "$c" --ep 4 --world-size 4 four >reshard.txt || { cat reshard.txt; fail "reshard to ep 4"; }
  [ "$(ls four/shard_*.bin | wc -l)" = 4 ] || fail "4 shards expected"
  "$ckpt" info four | grep -q "^layout *world size 4, ep 4, 4 experts, 1 per rank" || fail "layout of the result"
  "$ckpt" info four --config | grep -Eq "^  ep: 4 " || fail "parallel.ep in the result's config"
  "$ckpt" diff "$c" four >diff.txt || { cat diff.txt; fail "resharding changed a tensor"; }
  "$ckpt" verify one >/dev/null || fail "verify one"
  resume 1 one t1
  resume 4 four t4
  expect_fail "--ep 3 must divide the world size 4" "$ckpt" reshard "$c" --ep 3 --world-size 4 x
  expect_fail "has 4 experts per MoE layer, which is not divisible by --ep 3" "$ckpt" reshard "$c" --ep 3 x
  expect_fail "'four' already exists; moe-ckpt does not overwrite" "$ckpt" reshard "$c" --ep 2 four
  [ ! -e x ] || fail "a failed reshard left its output"
  ls -d ./*.tmp-* 2>/dev/null && fail "a temporary output was left behind"
  [ "$before" = "$(sums r/checkpoints)" ] || fail "resharding changed its input"
  ;;
surgery)
  train 2 r
  c=r/checkpoints/step_00000020
  "$ckpt" prune-experts "$c" --keep 0,2 pruned >out.txt || { cat out.txt; fail "prune --keep"; }
  "$ckpt" info pruned | grep -q "^layout *world size 2, ep 2, 2 experts, 1 per rank" || fail "pruned layout"
  "$ckpt" tensors pruned --filter '^layers\.0\.moe\.w_gate$' | grep -q "(64, 2)" || fail "pruned router columns"
  # Pruned expert 1 is the source's expert 2: same weights.
  [ "$("$ckpt" tensors pruned --filter '^layers\.1\.moe\.w_in$' | grep 'expert 1]' | grep -o 'norm .*')" = \
    "$("$ckpt" tensors "$c" --filter '^layers\.1\.moe\.w_in$' | grep 'expert 2]' | grep -o 'norm .*')" ] || fail "renumbering"
  resume 2 pruned t_pruned
  "$ckpt" prune-experts "$c" --keep 3 --ep 1 --world-size 1 one >out.txt || { cat out.txt; fail "prune to one expert"; }
  grep -q "note: moe.top_k = 2 is more than the 1 experts left; set to 1" out.txt || { cat out.txt; fail "top_k note"; }
  resume 1 one t_one
  "$ckpt" prune-experts "$c" --min-usage 0.01 byusage >out.txt || { cat out.txt; fail "prune --min-usage"; }
  grep -q "experts with a usage share >= 0.01 in some MoE layer: 0,1,2,3" out.txt || { cat out.txt; fail "--min-usage rule"; }
  expect_fail "expert id 7 is out of range: the checkpoint has experts 0..3" "$ckpt" prune-experts "$c" --keep 0,7 x
  expect_fail "the result has 3 experts per MoE layer, which is not divisible by the checkpoint's ep = 2" \
    "$ckpt" prune-experts "$c" --keep 0,1,2 x
  expect_fail "needs exactly one of --keep IDS and --min-usage X" "$ckpt" prune-experts "$c" x
  "$ckpt" add-experts "$c" --count 2 --from 1 twins >out.txt || { cat out.txt; fail "add-experts --from"; }
  [ "$("$ckpt" tensors twins --filter '^layers\.0\.moe\.w_out$' | grep 'expert 5]' | grep -o 'norm .*')" = \
    "$("$ckpt" tensors "$c" --filter '^layers\.0\.moe\.w_out$' | grep 'expert 1]' | grep -o 'norm .*')" ] || fail "twin weights"
  "$ckpt" tensors twins --filter '^adamw\.m\.layers\.0\.moe\.w_out$' | grep "expert 5" | grep -q "norm 0 " ||
    fail "new experts' optimizer state is not zero"
  resume 2 twins t_twins
  "$ckpt" add-experts "$c" --count 4 --fresh --seed 3 fresh >out.txt || { cat out.txt; fail "add-experts --fresh"; }
  "$ckpt" info fresh | grep -q "^MoE *8 experts" || fail "8 experts after adding 4"
  resume 2 fresh t_fresh
  expect_fail "--from 9 is out of range" "$ckpt" add-experts "$c" --count 1 --from 9 x
  expect_fail "add-experts needs --count N" "$ckpt" add-experts "$c" x
  # A count whose experts cannot fit in memory is refused before anything is allocated for them.
  expect_fail "--count 100000000 does not fit in memory: the result holds .* per expert.* is available \(MemAvailable in /proc/meminfo\); at most [0-9]+ experts fit" \
    "$ckpt" add-experts "$c" --count 100000000 x
  # The input as the output: refused (an output must be new).
  expect_fail "'$c' already exists; moe-ckpt does not overwrite" "$ckpt" add-experts "$c" --count 1 "$c"
  [ ! -e x ] || fail "a refused edit left its output"
  ;;
upcycle)
  # A dense model (model.moe_every = 3 > n_layers = 2: no MoE layer) and a mixed one (layer 0 dense,
  # layer 1 MoE), both upcycled with --moe-every 1 (every layer MoE).
  train 2 dense model.moe_every=3
  train 2 mixed model.moe_every=2
  d=dense/checkpoints/step_00000010 m=mixed/checkpoints/step_00000010
  "$ckpt" upcycle "$d" --experts 4 up_dense >out.txt || { cat out.txt; fail "upcycle dense"; }
  grep -q "upcycled layers 0, 1 into 4 copies" out.txt || { cat out.txt; fail "upcycle note"; }
  "$ckpt" info up_dense | grep -q "model *2 layers (MoE: 0 1)" || fail "upcycled layers"
  "$ckpt" tensors up_dense --filter '^adamw\.' | grep -vq "norm 0 " && fail "optimizer state is not zero"
  resume 2 up_dense t_dense
  "$ckpt" upcycle "$m" --experts 4 up_mixed >out.txt || { cat out.txt; fail "upcycle mixed"; }
  resume 2 up_mixed t_mixed
  # Upcycling changes no function: with every expert a copy of the FFN, renormalised top-k weights
  # and no token dropped, step 11's loss equals the dense model's own continuation.
  "$ckpt" info "$d" --config >dense.yaml
  "$mpirun" --oversubscribe --timeout 240 -np 2 "$moe_train" dense.yaml checkpoint.init_from="$d" run.dir=t_ref \
    run.steps=11 run.log_every=1 checkpoint.every=0 checkpoint.dir=t_ref/checkpoints >t_ref.txt 2>&1 || { cat t_ref.txt; fail "dense reference"; }
  "$mpirun" --oversubscribe --timeout 240 -np 2 "$moe_train" t_dense.yaml checkpoint.init_from=up_dense run.dir=t_eq \
    run.steps=11 run.log_every=1 moe.capacity_factor=0 >t_eq.txt 2>&1 || { cat t_eq.txt; fail "upcycled, dropless"; }
  python3 - t_ref/metrics.jsonl t_eq/metrics.jsonl <<'PY' || fail "upcycled loss differs from the dense model's"
import json, sys
a, b = ([json.loads(l)["loss"] for l in open(p) if '"loss"' in l][-1] for p in sys.argv[1:3])
# The same function computed through different GEMM shapes: float32 rounding only.
assert abs(a - b) <= 1e-5 * abs(a), (a, b)
print(f"step 11 loss: dense {a}, upcycled {b}")
PY
  expect_fail "layer 1 is an MoE layer in checkpoint '$m' but --moe-every 3 would make it dense" \
    "$ckpt" upcycle "$m" --experts 4 --moe-every 3 x
  expect_fail "--experts 2 differs from the 4 experts of the checkpoint's MoE layers" "$ckpt" upcycle "$m" --experts 2 x
  expect_fail "--experts 100000000 does not fit in memory: .* at most [0-9]+ experts fit" \
    "$ckpt" upcycle "$d" --experts 100000000 x
  ;;
usage)
  "$ckpt" --help | grep -q "^  reshard CKPT --ep N" || fail "--help"
  for c in ls info tensors verify diff export reshard prune-experts add-experts upcycle; do
    "$ckpt" "$c" --help | grep -q "^usage: moe-ckpt $c" || fail "$c --help"
  done
  expect_fail "unknown command 'frobnicate'; accepted: ls, info" "$ckpt" frobnicate
  expect_fail "missing COMMAND" "$ckpt"
  expect_fail "'verify' needs 1 argument, got 0" "$ckpt" verify
  expect_fail "'diff' needs 2 arguments, got 1" "$ckpt" diff a
  expect_fail "unknown option '--bogus' for 'info'; accepted: --config, --help" "$ckpt" info x --bogus
  expect_fail "option --ep needs a value" "$ckpt" reshard a b --ep
  expect_fail "--ep: expected an integer in \[1, 2147483647\], got 'two'" "$ckpt" reshard a b --ep two
  # Numbers are range-checked whole, never cut to a narrower type (4294967298 is 2 mod 2^32).
  expect_fail "--ep 4294967298: out of range; expected an integer in \[1, 2147483647\]" "$ckpt" reshard a b --ep 4294967298
  expect_fail "--count 99999999999999999999: too large; expected an integer >= 1" "$ckpt" add-experts a b --count 99999999999999999999
  expect_fail "--min-usage 1.5: out of range; expected a finite number in \[0, 1\]" "$ckpt" prune-experts a b --min-usage 1.5
  expect_fail "--max-shard-bytes 0: out of range" "$ckpt" export a b --max-shard-bytes 0
  expect_fail "reshard needs --ep N" "$ckpt" reshard a b
  expect_fail "--filter: '\(' is not a regular expression" "$ckpt" tensors . --filter '('
  expect_fail "--format 'gguf' is not supported; accepted: safetensors, hf-mixtral" "$ckpt" export a b --format gguf
  expect_fail "checkpoint directory 'nothere' does not exist" "$ckpt" info nothere
  "$ckpt" info nothere 2>/dev/null
  [ $? = 1 ] || fail "a missing checkpoint should exit 1"
  "$ckpt" reshard a b --ep two 2>/dev/null
  [ $? = 2 ] || fail "a bad option value should exit 2"
  ;;
*)
  fail "unknown case"
  ;;
esac
echo "PASS ($case_name)"
