#!/usr/bin/env python3
"""Writes hand-made blk_request seeds into the directory given (default
corpus/blk_request): reads and writes the parser accepts, in layouts that
the io_uring fast path takes (aligned buffers, several segments, both
memory regions) or gives back (unaligned buffers or lengths under O_DIRECT,
writes to sector 0), each with the O_DIRECT and the page-cache ring
(flags bit 4). Input format: see fuzz_targets/blk_request.rs."""
import os
import struct
import sys

READ, WRITE = 0, 1


def desc(addr, length, writable):
    ctl = 1 if writable else 0
    if addr % 8 == 0 and addr // 8 <= 0xFFFF:
        a = struct.pack("<H", addr // 8)
    else:
        ctl |= 2
        a = struct.pack("<Q", addr)
    if length <= 0xFFFF:
        n = struct.pack("<H", length)
    else:
        ctl |= 4
        n = struct.pack("<I", length)
    return bytes([ctl]) + a + n


def request(kind, sector, data, flags=0, header_len=16):
    """data: [(addr, len)]; the header is at guest address 0, the status
    byte at 0x40."""
    header = struct.pack("<IIQ", kind, 0, sector)
    out = bytes([flags, 0, 1]) + header + desc(0, header_len, False)
    for addr, length in data:
        out += desc(addr, length, kind == READ)
    return out + desc(0x40, 1, True)


SEEDS = {
    "read-4k": request(READ, 8, [(0x1000, 4096)]),
    "write-4k": request(WRITE, 16, [(0x2000, 4096)]),
    "read-3-segments-2-regions": request(
        READ, 4, [(0x3000, 512), (0x2_0400, 1024), (0x5000, 2560)]
    ),
    "write-3-segments-2-regions": request(
        WRITE, 40, [(0x2_0000, 1536), (0x6000, 512), (0x2_8000, 2048)]
    ),
    "read-unaligned-buffer": request(READ, 1, [(0x1003, 512)]),
    "write-unaligned-lengths": request(WRITE, 2, [(0x1100, 100), (0x3000, 412)]),
    "write-sector-0": request(WRITE, 0, [(0x1000, 512)]),
    "read-last-sectors": request(READ, 120, [(0x8000, 4096)]),
    # The data right after the header in the same descriptor.
    "write-data-in-header-descriptor": request(WRITE, 9, [], header_len=16 + 512),
}


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "corpus/blk_request"
    os.makedirs(out, exist_ok=True)
    for name, data in SEEDS.items():
        for flags, ring in ((0, "direct"), (16, "cached")):
            seed = bytes([data[0] | flags]) + data[1:]
            with open(os.path.join(out, f"seed-{name}-{ring}"), "wb") as f:
                f.write(seed)


if __name__ == "__main__":
    main()
