#!/usr/bin/env python3
"""Writes a token file (docs/token-file-format.md) for the end-to-end tests, without moe-tokenize.

  make_token_file.py OUT VOCAB TOKENS SEED

Tokens are documents of 1 to 100 tokens drawn from [0, min(VOCAB, 256)), each followed by token 256
(the byte tokenizer's end of document) when VOCAB > 256; inside a document every token is the one before
it plus a step fixed per document, so a model can learn something. Deterministic in SEED.
"""
import random
import struct
import sys

out, vocab, count, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(seed)
tokens = []
while len(tokens) < count:
    length, step, t = rng.randint(1, 100), rng.randint(1, 5), rng.randrange(min(vocab, 256))
    for _ in range(length):
        tokens.append(t)
        t = (t + step) % min(vocab, 256)
    if vocab > 256:
        tokens.append(256)
tokens = tokens[:count]
width = 1 if vocab <= 256 else 2 if vocab <= 65536 else 4
with open(out, "wb") as f:
    f.write(b"MOETOKEN" + struct.pack("<IIQII", 1, width, len(tokens), vocab, 0))
    f.write(b"".join(t.to_bytes(width, "little") for t in tokens))
