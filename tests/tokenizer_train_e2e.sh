#!/usr/bin/env bash
# End to end from text to training with a SentencePiece token file: moe-train names the tokenizer
# when the model's vocabulary is too small, refuses a file made by another tokenizer than
# data.tokenizer, and trains on the file when both fit.
# Usage: tokenizer_train_e2e.sh MOE_TOKENIZE MOE_TRAIN MPIRUN CONFIGS_DIR
set -u
tokenize=$1 moe_train=$2 mpirun=$3 configs=$4
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work" || exit 1
fail() { echo "FAIL: $*"; exit 1; }
train() { "$mpirun" --oversubscribe --timeout 240 -np 1 "$moe_train" "$configs/tiny.yaml" data.source=tokens \
  data.train_path=data.tok model.seq_len=32 data.batch_size=4 run.steps=3 run.eval_every=0 run.dir=r "$@" >out.txt 2>&1; }

for i in $(seq 400); do echo "document line $i: experts route tokens, routers pick experts; $((i * 13))"; done >text.txt
"$tokenize" --train-sentencepiece sp --vocab-size 300 data.tok text.txt >/dev/null || fail "moe-tokenize failed"
"$tokenize" --train-sentencepiece other --vocab-size 290 other.tok text.txt >/dev/null || fail "moe-tokenize failed"

if train model.vocab_size=257; then fail "a model vocabulary of 257 took a file of 300"; fi
grep -q "data file 'data.tok' has vocab_size 300 (tokenizer sentencepiece 'sp.model' (fingerprint 0x[0-9a-f]*)) but model.vocab_size = 257" out.txt ||
  { cat out.txt; fail "no vocabulary message"; }

if train model.vocab_size=300 data.tokenizer=other.model; then fail "a file of another tokenizer was accepted"; fi
grep -q "data file 'data.tok' was made by tokenizer sentencepiece 'sp.model' (fingerprint 0x[0-9a-f]*), but data.tokenizer = 'other.model' has fingerprint 0x" out.txt ||
  { cat out.txt; fail "no fingerprint message"; }

train model.vocab_size=300 data.tokenizer=sp.model || { cat out.txt; fail "training on the SentencePiece file failed"; }
grep -q "^step 3/3 | loss" out.txt || { cat out.txt; fail "no progress line for step 3"; }
echo "tokenizer to training ok"
