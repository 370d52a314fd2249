#!/usr/bin/env bash
# End-to-end test of moe-tokenize: tokenises files made here and checks the token file's size and
# header, that no temp file is left, and that a failed run leaves an existing output untouched.
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
[ "$size" -eq $((32 + 2 * (13 + 1))) ] || fail "one input: $size bytes, expected $((32 + 2 * 14))"
[ "$(head -c 8 "$dir/one.tok")" = MOETOKEN ] || fail "the output does not start with MOETOKEN"

"$tokenize" "$dir/two.tok" "$dir/a.txt" "$dir/b.txt"
size=$(stat -c %s "$dir/two.tok")
[ "$size" -eq $((32 + 2 * (13 + 1 + 10 + 1))) ] || fail "two inputs: $size bytes, expected $((32 + 2 * 25))"
# Header fields after the magic: version 1, width 2, count 25, vocab 257, reserved 0 (little-endian).
header=$(od -An -tx1 -j8 -N24 "$dir/two.tok" | tr -d ' \n')
[ "$header" = "0100000002000000190000000000000001010000""00000000" ] || fail "header fields: $header"

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
echo "moe-tokenize round trip ok"
