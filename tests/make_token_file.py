#!/usr/bin/env python3
"""Writes a token file (docs/token-file-format.md) for the end-to-end tests, without moe-tokenize.

  make_token_file.py OUT VOCAB TOKENS SEED [END]

Tokens are documents of 1 to 100 tokens drawn from [0, min(VOCAB, 256)), each followed by an end-of-
document token; inside a document every token is the one before it plus a step fixed per document, so a
model can learn something. Deterministic in SEED. Without END: format version 1 (the byte tokenizer's),
documents end with token 256 when VOCAB > 256, else nothing separates them. With END: format version 2
with an hf-bpe tokenizer record whose end-of-document token is END, and documents end with END.
"""
import random
import struct
import sys

from checkpoint_metadata import crc32c  # beside this file

out, vocab, count, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
end = int(sys.argv[5]) if len(sys.argv) > 5 else (256 if vocab > 256 else None)
rng = random.Random(seed)
tokens = []
while len(tokens) < count:
    length, step, t = rng.randint(1, 100), rng.randint(1, 5), rng.randrange(min(vocab, 256))
    for _ in range(length):
        tokens.append(t)
        t = (t + step) % min(vocab, 256)
    if end is not None:
        tokens.append(end)
tokens = tokens[:count]
width = 1 if vocab <= 256 else 2 if vocab <= 65536 else 4


record = b""
if len(sys.argv) > 5:  # kind 2 (hf-bpe), fingerprint 0, the end token, the name, the CRC32C, zero padding
    name = b"make_token_file"
    record = struct.pack("<IIII", 2, 0, end, len(name)) + name
    record += struct.pack("<I", crc32c(record))
    record += bytes(-len(record) % 8)
with open(out, "wb") as f:
    f.write(b"MOETOKEN" + struct.pack("<IIQII", 2 if record else 1, width, len(tokens), vocab, len(record)))
    f.write(record)
    f.write(b"".join(t.to_bytes(width, "little") for t in tokens))
