#!/usr/bin/env bash
# End-to-end tests of moe-generate as a user runs it, on checkpoints of short moe-train runs. One case per call:
#   generate_e2e.sh CASE BUILD_DIR MPIRUN CONFIGS_DIR
# Each case runs in a fresh temporary directory, removed afterwards.
set -u
case_name=$1 build=$2 mpirun=$3 configs=$4
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work" || exit 1

fail() { echo "FAIL ($case_name): $*"; exit 1; }
mpi() { local np=$1; shift; "$mpirun" --oversubscribe --timeout 120 -np "$np" "$@"; }
# train NP DIR [key=value ...]: a short tiny run on text.txt's bytes with a checkpoint at its end.
train() {
  local np=$1 dir=$2
  shift 2
  mpi "$np" "$build/moe-train" "$configs/tiny.yaml" data.source=tokens data.train_path=data.tok model.vocab_size=257 \
    run.steps=40 run.eval_every=0 run.log_every=20 checkpoint.every=40 run.dir="$dir" "$@" >train.txt 2>&1 ||
    { cat train.txt; fail "training failed"; }
}
# generate NP OUT [args...]: moe-generate on NP ranks, the text (without the speed line) in OUT.
generate() {
  local np=$1 out=$2
  shift 2
  mpi "$np" "$build/moe-generate" "$@" >"$out.full" 2>&1 || { cat "$out.full"; fail "moe-generate $* failed"; }
  grep -aq '^moe-generate: [0-9]* prompt tokens in .* tokens/s prefill), [0-9]* new tokens.*; decode [0-9.]* tokens/s' \
    "$out.full" || { cat "$out.full"; fail "no speed line"; }
  grep -av '^moe-generate: ' "$out.full" >"$out"
}
# refused NP REGEX [args...]: moe-generate on NP ranks fails on every rank (mpirun reports the first
# non-zero exit, and --timeout would end a hang with another message) with a message matching REGEX.
refused() {
  local np=$1 regex=$2
  shift 2
  mpi "$np" "$build/moe-generate" "$@" >out.txt 2>&1 && { cat out.txt; fail "moe-generate $* succeeded"; }
  grep -Eq -- "moe-generate: $regex" out.txt || { cat out.txt; fail "no message matching /$regex/ for: $*"; }
  ! grep -q "time limit\|MPI_ABORT\|rank [0-9]*: error" out.txt || { cat out.txt; fail "not a clean exit of every rank: $*"; }
  [ "$(grep -c "^moe-generate: " out.txt)" = 1 ] || { cat out.txt; fail "expected the message once (rank 0): $*"; }
}
python3 -c "
import random
random.seed(1)
words = 'the cat sat on a mat and the dog ran to the park while birds sang in the tall green trees'.split()
print('\n'.join(' '.join(random.choice(words) for _ in range(12)) for _ in range(400)))" >text.txt
"$build/moe-tokenize" data.tok text.txt >/dev/null || fail "moe-tokenize failed"
ck=r/checkpoints/step_00000040

case $case_name in
ranks_and_seeds)
  # Trained on 2 ranks (ep 2). Greedy: the same text on 1 rank and on 2 ranks sharing the experts (the
  # same math; float32 rounding in another order could only flip a near-tie of the top two logits).
  train 2 r
  generate 1 greedy1.txt "$ck" --prompt "the cat " --max-new-tokens 40
  generate 2 greedy2.txt "$ck" --prompt "the cat " --max-new-tokens 40
  cmp -s greedy1.txt greedy2.txt || { diff greedy1.txt greedy2.txt; fail "greedy text differs between 1 and 2 ranks"; }
  grep -q "^the cat ." greedy1.txt || { cat greedy1.txt; fail "the output does not continue the prompt"; }
  # The run directory names its newest checkpoint, as for moe-ckpt.
  generate 1 greedy_run.txt r --prompt "the cat " --max-new-tokens 40
  cmp -s greedy1.txt greedy_run.txt || fail "the run directory did not give its newest checkpoint's text"
  grep -q "^moe-generate: using $ck, the newest complete checkpoint of r" greedy_run.txt.full ||
    { cat greedy_run.txt.full; fail "the checkpoint taken is not named"; }
  # Sampling: the same seed twice gives the same text; across seeds the draws differ, so among four seeds
  # at least two texts differ (four equal samples of 40 tokens at temperature 1 are out of reach).
  for seed in 1 2 3 4; do
    generate 2 "seed$seed.txt" "$ck" --prompt "the cat " --max-new-tokens 40 --temperature 1 --top-k 20 --top-p 0.95 \
      --seed "$seed"
  done
  generate 2 again.txt "$ck" --prompt "the cat " --max-new-tokens 40 --temperature 1 --top-k 20 --top-p 0.95 --seed 1
  cmp -s seed1.txt again.txt || { diff seed1.txt again.txt; fail "the same seed gave another text"; }
  [ "$(cat seed?.txt | sort -u | wc -l)" -gt 1 ] || { cat seed?.txt; fail "four seeds gave the same text"; }
  # --max-new-tokens 0: the prompt alone.
  generate 1 none.txt "$ck" --prompt "the cat" --max-new-tokens 0
  [ "$(cat none.txt)" = "the cat" ] || { cat none.txt; fail "--max-new-tokens 0 wrote more than the prompt"; }
  ;;
learned_positions)
  # Learned positions: generation up to model.seq_len tokens, and the limit refused before anything runs.
  # The model's vocabulary is padded beyond the bytes' 257: at a high temperature, almost flat, a draw
  # among all 300 would pick a token without text (>= 257) in most runs of 24 draws; only the bytes' are chosen.
  train 1 r model.positions=learned model.seq_len=32 model.vocab_size=300
  generate 1 out.txt "$ck" --prompt "the dog " --max-new-tokens 24 --temperature 20 --ignore-eos
  refused 1 "the prompt's 8 tokens \+ 25 new ones exceed the 32 this model allows \(learned positions: the table's model.seq_len rows\)" \
    "$ck" --prompt "the dog " --max-new-tokens 25
  ;;
sentencepiece)
  # A SentencePiece model: data.tokenizer in the checkpoint's config is the default; moe-tokenize applies it.
  "$build/moe-tokenize" --train-sentencepiece sp --vocab-size 300 data.tok text.txt >/dev/null || fail "training sp"
  train 1 r model.vocab_size=300 data.tokenizer=sp.model model.seq_len=32
  generate 1 out.txt "$ck" --prompt "the dog" --max-new-tokens 10
  grep -q "^the dog" out.txt || { cat out.txt; fail "the SentencePiece prompt is not printed back"; }
  [ "$("$build/moe-tokenize" --sentencepiece sp.model --decode-ids "$("$build/moe-tokenize" --sentencepiece sp.model \
      --encode-text "the tall trees")")" = "the tall trees" ] || fail "moe-tokenize --encode-text / --decode-ids"
  [ "$("$build/moe-tokenize" --describe)" = "vocab_size 257 end_of_document 256" ] || fail "moe-tokenize --describe"
  # The hf-mixtral export copies the model as tokenizer.model and takes its eos from it (through moe-tokenize).
  eos=$("$build/moe-tokenize" --sentencepiece sp.model --describe | awk '{print $4}')
  "$build/moe-ckpt" export r --format hf-mixtral hf >export.txt 2>&1 || { cat export.txt; fail "export failed"; }
  cmp -s sp.model hf/tokenizer.model || fail "the export did not copy the SentencePiece model"
  [ "$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["eos_token_id"])' hf/config.json)" = "$eos" ] ||
    { cat hf/config.json; fail "config.json's eos_token_id is not the SentencePiece model's $eos"; }
  # A tokenizer file that no longer reads is still copied; eos is left null with a note, the export goes on.
  echo "not a model" >sp.model
  "$build/moe-ckpt" export r --format hf-mixtral hf-bad >export.txt 2>&1 || { cat export.txt; fail "export failed"; }
  grep -q "^note: eos_token_id left null: " export.txt || { cat export.txt; fail "no note for the unreadable tokenizer"; }
  [ "$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["eos_token_id"])' hf-bad/config.json)" = None ] ||
    { cat hf-bad/config.json; fail "eos_token_id is not null"; }
  rm sp.model
  refused 1 "cannot read SentencePiece model 'sp.model'" "$ck" --prompt "the dog"
  ;;
bad_arguments)
  train 2 r
  refused 1 "missing CHECKPOINT" --prompt hi
  refused 1 "missing --prompt TEXT" "$ck"
  refused 1 "unknown argument '--bogus'; accepted: CHECKPOINT --prompt TEXT" "$ck" --prompt hi --bogus
  refused 1 "--max-new-tokens: expected an integer in \\[0, 1048576\\], got 'abc'" "$ck" --prompt hi --max-new-tokens abc
  refused 1 "--max-new-tokens 2000000: out of range" "$ck" --prompt hi --max-new-tokens 2000000
  refused 1 "--top-p 0: out of range; expected a number in \(0, 1\]" "$ck" --prompt hi --temperature 1 --top-p 0
  refused 1 "--top-p 1.5: out of range" "$ck" --prompt hi --temperature 1 --top-p 1.5
  refused 1 "--temperature -1: out of range" "$ck" --prompt hi --temperature -1
  refused 1 "--top-k and --top-p choose what is sampled, but --temperature is 0" "$ck" --prompt hi --top-k 5
  refused 1 "--seed needs a value" "$ck" --prompt hi --seed
  refused 1 "two checkpoints given" "$ck" "$ck" --prompt hi
  refused 2 "cannot read checkpoint: .*nope" nope --prompt hi
  refused 2 "the prompt has no tokens" "$ck" --prompt ""
  refused 2 "tokenizer 'vocab.txt' is not one moe-generate reads; accepted: a Hugging Face tokenizer.json" "$ck" \
    --prompt hi --tokenizer vocab.txt
  refused 2 "cannot read tokenizer 'missing.json'" "$ck" --prompt hi --tokenizer missing.json
  # 4 experts: 3 ranks cannot share them.
  refused 3 "checkpoint .* has 4 experts per MoE layer, which 3 ranks cannot share .*accepted: a number of ranks that divides 4" \
    "$ck" --prompt hi
  # Rotary positions: up to 8 x seq_len = 512 tokens.
  refused 1 "the prompt's 2 tokens \+ 511 new ones exceed the 512 this model allows \(rotary positions: 8 x model.seq_len\)" \
    "$ck" --prompt hi --max-new-tokens 511
  # A model of the synthetic corpus' 64 tokens cannot take the bytes of "hi" (104, 105).
  train 1 syn data.source=synthetic model.vocab_size=64
  refused 1 "the prompt's token 0 is 104, outside the model's vocabulary \[0, 64\)" syn/checkpoints/step_00000040 --prompt hi
  # Expert-choice routing cannot decode token by token.
  train 1 ec moe.routing=expert_choice moe.aux_loss_coeff=0
  refused 1 "checkpoint .* uses moe.routing = expert_choice" ec/checkpoints/step_00000040 --prompt hi
  # A flipped byte in expert 3's slice of a weight: on 2 ranks only rank 1 reads it, and every rank
  # stops with its message (moe-ckpt tensors gives the slice's place: "shard_00001.bin@OFFSET").
  cp -a "$ck" damaged
  place=$("$build/moe-ckpt" tensors damaged --filter 'layers.1.moe.w_in' | grep '^layers.1.moe.w_in \[expert 3\]' | grep -o 'shard_[0-9]*.bin@[0-9]*')
  [ -n "$place" ] || fail "moe-ckpt tensors did not list expert 3's slice"
  python3 - "damaged/${place%@*}" "${place#*@}" <<'PY' || fail "cannot damage the copy"
import sys
with open(sys.argv[1], "r+b") as f:
    f.seek(int(sys.argv[2]) + 5)
    b = f.read(1)
    f.seek(int(sys.argv[2]) + 5)
    f.write(bytes([b[0] ^ 0x10]))
PY
  refused 2 "cannot load checkpoint: .*tensor 'layers.1.moe.w_in' \\(expert 3\\) in '.*shard_00001.bin' is damaged" \
    damaged --prompt hi
  truncate -s -100 damaged/shard_00001.bin
  refused 2 "cannot read checkpoint: .*shard_00001.bin' has [0-9]* bytes, the manifest says" damaged --prompt hi
  ;;
*)
  fail "unknown case"
  ;;
esac
echo "PASS ($case_name)"
