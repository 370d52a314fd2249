#!/usr/bin/env bash
# End-to-end test of moe-tokenize: tokenises files made here and checks the token file's size and
# header, that no temp file is left, and that a failed run leaves an existing output untouched; then
# trains a SentencePiece model and applies it, and applies a tokenizer.json.
# Usage: tokenize_roundtrip.sh PATH/TO/moe-tokenize
set -eu
tokenize=$1
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

printf 'hello, world\n' >"$dir/a.txt"          # 13 bytes
printf '\xc3\xa9t\xc3\xa9\n\x00end' >"$dir/b.txt" # 10 bytes, not all ASCII

"$tokenize" "$dir/one.tok" "$dir/a.txt"
size=$(stat -c %s "$dir/one.tok")
# The header (32 bytes), the byte tokenizer's record (24 bytes), 2 bytes per token.
[ "$size" -eq $((56 + 2 * (13 + 1))) ] || fail "one input: $size bytes, expected $((56 + 2 * 14))"
[ "$(head -c 8 "$dir/one.tok")" = MOETOKEN ] || fail "the output does not start with MOETOKEN"

"$tokenize" "$dir/two.tok" "$dir/a.txt" "$dir/b.txt"
size=$(stat -c %s "$dir/two.tok")
[ "$size" -eq $((56 + 2 * (13 + 1 + 10 + 1))) ] || fail "two inputs: $size bytes, expected $((56 + 2 * 25))"
# Header fields after the magic: version 2, width 2, count 25, vocab 257, record 24 bytes
# (little-endian); the record: kind 0 (byte), fingerprint 0, end of document 256, name "byte".
header=$(od -An -tx1 -j8 -N44 "$dir/two.tok" | tr -d ' \n')
[ "$header" = "0200000002000000190000000000000001010000""18000000""00000000""00000000""00010000""04000000""62797465" ] ||
  fail "header fields: $header"

# A failed run (missing input) must leave the existing output as it was, and no temp file.
before=$(cksum <"$dir/two.tok")
if "$tokenize" "$dir/two.tok" "$dir/a.txt" "$dir/missing.txt" 2>/dev/null; then fail "a missing input succeeded"; fi
[ "$(cksum <"$dir/two.tok")" = "$before" ] || fail "a failed run changed the existing output"
ls "$dir" | grep -q '\.tmp$' && fail "a temp file was left behind: $(ls "$dir")"

# An output that is also an input (by any name: a link, another spelling) is refused and left as it is.
before=$(cksum <"$dir/a.txt")
ln -s a.txt "$dir/link.txt"
for out in "$dir/a.txt" "$dir/./a.txt" "$dir/link.txt"; do
  if msg=$("$tokenize" "$out" "$dir/b.txt" "$dir/a.txt" 2>&1); then fail "output $out = an input succeeded"; fi
  echo "$msg" | grep -q "the output '$out' is the input '$dir/a.txt' (the same file)" || fail "message: $msg"
done
[ "$(cksum <"$dir/a.txt")" = "$before" ] || fail "a refused run changed its input"

"$tokenize" --help | grep -q "usage: moe-tokenize" || fail "--help does not print the usage"

# SentencePiece: train on a text, then apply the model to it again: the same tokens.
for i in $(seq 300); do echo "line $i of a text about experts, routers and tokens; $((i * 7)) words"; done >"$dir/text.txt"
msg=$("$tokenize" --train-sentencepiece "$dir/sp" --vocab-size 300 --model-type unigram "$dir/sp.tok" "$dir/text.txt") ||
  fail "training failed: $msg"
echo "$msg" | grep -q "tokenizer sentencepiece '$dir/sp.model' (fingerprint 0x" || fail "message: $msg"
[ -s "$dir/sp.model" ] && [ -s "$dir/sp.vocab" ] || fail "no model files: $(ls "$dir")"
"$tokenize" --sentencepiece "$dir/sp.model" "$dir/again.tok" "$dir/text.txt" >/dev/null || fail "applying the model failed"
cmp -s "$dir/sp.tok" "$dir/again.tok" || fail "training and applying gave different token files"
[ "$(od -An -tu4 -j24 -N4 "$dir/sp.tok" | tr -d ' ')" = 300 ] || fail "the token file's vocab_size is not 300"

# A tokenizer.json: "▁a" "b" merge into one piece; the end of document is </s> (id 2).
cat >"$dir/tokenizer.json" <<'JSON'
{"normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"},
   {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
 "pre_tokenizer": null, "added_tokens": [{"id": 2, "content": "</s>"}],
 "model": {"type": "BPE", "byte_fallback": true, "unk_token": "<unk>",
   "vocab": {"<unk>": 0, "<s>": 1, "</s>": 2, "▁": 3, "a": 4, "b": 5, "▁a": 6, "▁ab": 7},
   "merges": ["▁ a", "▁a b"]}}
JSON
printf 'ab a' >"$dir/ab.txt"
"$tokenize" --hf-tokenizer "$dir/tokenizer.json" "$dir/hf.tok" "$dir/ab.txt" >/dev/null || fail "tokenizer.json failed"
# Width 1 (vocab 8), record of 20 + name bytes padded to 8, then ▁ab ▁a </s>.
tokens=$(tail -c 3 "$dir/hf.tok" | od -An -tu1 | tr -s ' ')
[ "$tokens" = " 7 6 2" ] || fail "tokenizer.json tokens: $tokens"
if msg=$("$tokenize" --hf-tokenizer "$dir/text.txt" "$dir/x.tok" "$dir/ab.txt" 2>&1); then fail "a text file as tokenizer.json"; fi
echo "$msg" | grep -q "is not valid JSON" || fail "message: $msg"
echo "moe-tokenize round trip ok"
