#!/usr/bin/env python3
"""Writes the hand-made seeds of the net_queues fuzz target (the input
format is described at the top of fuzz_targets/net_queues.rs).

    python3 seeds/net_queues.py corpus/net_queues
"""
import os
import struct
import sys

NEXT, WRITE, INDIRECT = 1, 2, 4
RX, TX = 0, 1


def u24(v):
    return struct.pack("<I", v)[:3]


def desc(q, idx, addr, length, flags, nxt=0):
    return bytes([0, q, idx]) + u24(addr) + struct.pack("<HBB", length, flags, nxt)


def desc_at(at, addr, length, flags, nxt=0):
    return bytes([1, 0]) + u24(at) + u24(addr) + struct.pack("<HBB", length, flags, nxt)


def post(q, head):
    return bytes([4, q, head])


def notify(q):
    return bytes([5, q])


def inject(length, seed):
    return bytes([6]) + struct.pack("<HB", length, seed)


def host_event():
    return bytes([8])


def memwrite(at, data):
    out = b""
    while data:
        chunk, data = data[:255], data[255:]
        out += bytes([9]) + u24(at) + bytes([len(chunk)]) + chunk
        at += len(chunk)
    return out


def header(cfg=0, rx=4, tx=4):
    return bytes([cfg, rx, tx])


frame = bytes(range(200))
seeds = {
    # Guest -> host: header and payload in two descriptors.
    "tx_two_descriptors": header()
    + memwrite(0x10000, frame[:12])
    + memwrite(0x10100, frame[12:])
    + desc(TX, 0, 0x10000, 12, NEXT, 1)
    + desc(TX, 1, 0x10100, 188, 0)
    + post(TX, 0)
    + notify(TX),
    # Host -> guest: the frame waits for a buffer, then lands in it.
    "rx_one_buffer": header()
    + inject(100, 7)
    + host_event()
    + desc(RX, 0, 0x20000, 1526, WRITE)
    + post(RX, 0)
    + notify(RX),
    # Both ways with an indirect table and EVENT_IDX.
    "indirect_event_idx": header(cfg=3, rx=8, tx=8)
    + memwrite(0x30000, frame)
    + desc_at(0x40000, 0x30000, 12, NEXT, 1)
    + desc_at(0x40010, 0x3000C, 188, 0)
    + desc(TX, 5, 0x40000, 32, INDIRECT)
    + post(TX, 5)
    + notify(TX)
    + desc_at(0x41000, 0x50000, 12, WRITE | NEXT, 1)
    + desc_at(0x41010, 0x50100, 2000, WRITE)
    + desc(RX, 9, 0x41000, 32, INDIRECT)
    + post(RX, 9)
    + inject(1514, 0x40)
    + host_event(),
    # Several receive buffers, several frames, DRIVER_OK deferred.
    "rx_many_deferred": header(cfg=8, rx=2, tx=0)
    + inject(60, 1)
    + inject(1500, 2)
    + inject(12, 3)
    + desc(RX, 0, 0x20000, 2048, WRITE)
    + desc(RX, 1, 0x21000, 2048, WRITE)
    + desc(RX, 2, 0x22000, 6, WRITE | NEXT, 3)
    + desc(RX, 3, 0x22100, 6, WRITE)
    + post(RX, 0)
    + post(RX, 1)
    + post(RX, 2)
    + bytes([12])
    + notify(RX),
    # Many transmit chains after a reset to other queue sizes.
    "tx_many_after_reset": header()
    + bytes([10, 1, 3, 3])
    + memwrite(0x60000, frame)
    + b"".join(desc(TX, i, 0x60000 + i, 60 + i, 0) for i in range(8))
    + b"".join(post(TX, i) for i in range(8))
    + notify(TX),
}

out = sys.argv[1] if len(sys.argv) > 1 else "corpus/net_queues"
os.makedirs(out, exist_ok=True)
for name, data in seeds.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)
