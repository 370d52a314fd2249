#!/usr/bin/env python3
"""A checkpoint metadata file (MANIFEST, shard_*.index) for shell tests, without generated code.

  checkpoint_metadata.py unseal FILE   writes the sealed message's bytes (for protoc --decode) to stdout
  checkpoint_metadata.py seal FILE     seals the message bytes read from stdin (from protoc --encode)
                                       into FILE, with a correct CRC32C (format version 2)

The format is in docs/checkpoint-format.md (MetadataFile: field 1 format_version, 15 message, 16 crc32c).
"""
import struct
import sys

VERSION = 2


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def varint(n):
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def read_varint(b, i):
    n = shift = 0
    while True:
        n |= (b[i] & 0x7F) << shift
        shift += 7
        i += 1
        if not b[i - 1] & 0x80:
            return n, i


def unseal(b):
    i = 0
    while i < len(b):
        tag, i = read_varint(b, i)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            _, i = read_varint(b, i)
        elif wire == 2:
            n, i = read_varint(b, i)
            if field == 15:
                return b[i:i + n]
            i += n
        elif wire == 5:
            i += 4
        else:
            raise SystemExit("not a checkpoint metadata file")
    raise SystemExit("no message in the metadata file")


def seal(message):
    return (varint(1 << 3) + varint(VERSION) + varint(15 << 3 | 2) + varint(len(message)) + message +
            varint(16 << 3 | 5) + struct.pack("<I", crc32c(message)))


if __name__ == "__main__":
    command, path = sys.argv[1:3]
    if command == "unseal":
        sys.stdout.buffer.write(unseal(open(path, "rb").read()))
    else:
        open(path, "wb").write(seal(sys.stdin.buffer.read()))
