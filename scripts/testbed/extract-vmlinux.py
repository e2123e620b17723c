#!/usr/bin/env python3
"""Extract the ELF vmlinux from an XZ-compressed x86 bzImage (vmlinuz).

The nested testbed boots L1's kernel as an ELF through PVH, which skips the
in-guest XZ decompression (about 2.5 s under QEMU TCG). A bzImage carries the
compressed ELF as one XZ stream inside its payload; this finds the stream's
magic, decompresses exactly one stream, and checks that the result is an ELF.

Usage: extract-vmlinux.py VMLINUZ OUTPUT
"""

import lzma
import os
import sys

XZ_MAGIC = b"\xfd7zXZ\x00"
ELF_MAGIC = b"\x7fELF"


def extract(image: bytes) -> bytes:
    """Return the first XZ stream in `image` that decompresses to an ELF."""
    start = image.find(XZ_MAGIC)
    while start != -1:
        decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
        try:
            # The bytes after the stream (the bzImage's trailer) end up in
            # decompressor.unused_data; they are not ours to decode.
            payload = decompressor.decompress(image[start:])
        except lzma.LZMAError:
            payload = b""
        if decompressor.eof and payload.startswith(ELF_MAGIC):
            return payload
        start = image.find(XZ_MAGIC, start + 1)
    raise ValueError("no XZ stream holding an ELF image found")


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    src, dst = sys.argv[1], sys.argv[2]
    with open(src, "rb") as f:
        image = f.read()
    try:
        elf = extract(image)
    except ValueError as err:
        print(f"extract-vmlinux: {src}: {err} (is it an XZ-compressed bzImage?)",
              file=sys.stderr)
        return 1
    tmp = f"{dst}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(elf)
    os.replace(tmp, dst)
    return 0


if __name__ == "__main__":
    sys.exit(main())
