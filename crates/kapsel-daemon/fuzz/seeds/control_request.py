#!/usr/bin/env python3
"""Writes the seeds of the `control_request` fuzz target.

One valid request of each kind from the peers that may and may not make
it, and hostile variants (control characters, long names, bad framing,
other versions, unknown kinds, deep nesting). The input format is
kapsel_daemon::fuzzing::decode_input's: steps of
`[selector] [length: u16 BE] [bytes]`; selector bits 0-1 pick the peer
(0 root, 1 owner, 2 member of the owner group, 3 stranger), bit 2 means
the bytes carry their own 4-byte length prefix (else the harness adds it).

    python3 seeds/control_request.py [DIR]     # default seeds/control_request
"""

import json
import os
import struct
import sys

ROOT, OWNER, MEMBER, STRANGER = 0, 1, 2, 3
RAW = 4


def envelope(request, version=1):
    return json.dumps({"version": version, "request": request}).encode()


def start(name, **kw):
    req = {"kind": "start", "name": name, "kernel": None, "disks": [],
           "interfaces": None, "local_interface": False, "memory": None,
           "switch": None, "cdrom": None, "template": None}
    req.update(kw)
    return req


def stop(targets, all=False, force=False, wait=False):
    return {"kind": "stop", "targets": targets, "all": all, "force": force,
            "wait": wait}


def on(kind, target):
    return {"kind": kind, "target": target}


def exec_(target, argv, tty=False):
    return {"kind": "exec", "target": target, "argv": argv, "tty": tty,
            "winsize": [40, 120] if tty else None}


def step(who, body, raw=False):
    body = body[:0xFFFF]
    return bytes([who | (RAW if raw else 0)]) + struct.pack(">H", len(body)) + body


def steps(*pairs):
    return b"".join(step(*p) if isinstance(p, tuple) else p for p in pairs)


ESC = "\u001b[2J\u001b]0;pwned\u0007\rkapseld: root logged in\n"

SEEDS = {
    # One of each kind, from a peer that may.
    "status-all": steps((STRANGER, envelope(on("status", None)))),
    "status-one": steps((OWNER, envelope(on("status", "groupvm")))),
    "start-root-rootvm": steps((ROOT, envelope(start("rootvm")))),
    "start-owner-ownervm": steps((OWNER, envelope(start("ownervm")))),
    "start-member-groupvm": steps((MEMBER, envelope(start("groupvm")))),
    "start-owner-ownerct": steps((OWNER, envelope(start("ownerct")))),
    "start-owner-instance": steps(
        (OWNER, envelope(start("mine", template="tmpl", memory=128 << 20))),
        (OWNER, envelope(stop(["mine"]))),
        (STRANGER, envelope(stop(["mine"])))),
    "start-member-instance-net": steps(
        (MEMBER, envelope(start("gi", template="groupvm", interfaces=1,
                                kernel="/nonexistent/k")))),
    "start-root-adhoc": steps(
        (ROOT, envelope(start("adhoc", kernel="/nonexistent/k", interfaces=1)))),
    "start-root-local": steps(
        (ROOT, envelope(start("rootvm", local_interface=True)))),
    "stop-owner": steps((OWNER, envelope(stop(["ownervm"], force=True, wait=True)))),
    "stop-root-all": steps((ROOT, envelope(stop([], all=True, force=True, wait=True)))),
    "pause-owner": steps((OWNER, envelope(on("pause", "ownervm")))),
    "unpause-member": steps((MEMBER, envelope(on("unpause", "groupct")))),
    "wait-owner": steps((OWNER, envelope(on("wait", "ownervm")))),
    "console-owner": steps((OWNER, envelope(on("console", "ownervm")))),
    "exec-owner": steps((OWNER, envelope(exec_("ownerct", ["/bin/sh", "-c", "id"], True)))),
    "exec-member-vm": steps((MEMBER, envelope(exec_("groupvm", ["true"])))),
    "reload-root": steps((ROOT, envelope({"kind": "reload"}))),
    "load-root-missing": steps((ROOT, envelope({"kind": "load", "path": "/nonexistent/x.conf"}))),
    "reset-root": steps((ROOT, envelope({"kind": "reset", "what": "vms"})),
                        (ROOT, envelope({"kind": "reset", "what": "switches"})),
                        (ROOT, envelope({"kind": "reset", "what": "all"}))),
    "log-root": steps((ROOT, envelope({"kind": "log", "level": "verbose"})),
                      (ROOT, envelope({"kind": "log", "level": "brief"}))),
    # The same from peers that may not.
    "start-stranger-ownervm": steps((STRANGER, envelope(start("ownervm")))),
    "start-stranger-by-id": steps((STRANGER, envelope(start("1"))),
                                  (STRANGER, envelope(stop(["2", "3"])))),
    "start-owner-override": steps(
        (OWNER, envelope(start("ownervm", memory=1 << 40))),
        (OWNER, envelope(start("ownervm", disks=["/etc/shadow"]))),
        (OWNER, envelope(start("ownervm", kernel="/boot/vmlinuz")))),
    "start-owner-unconfigured": steps(
        (OWNER, envelope(start("newvm", kernel="/nonexistent/k")))),
    "start-stranger-instance": steps(
        (STRANGER, envelope(start("evil", template="tmpl")))),
    "start-member-instance-of-tmpl": steps(
        (MEMBER, envelope(start("evil", template="tmpl")))),
    "start-owner-instance-refused-option": steps(
        (OWNER, envelope(start("mine", template="ownervm", kernel="/nonexistent/k")))),
    "start-owner-instance-of-container": steps(
        (OWNER, envelope(start("mine", template="ownerct")))),
    "start-instance-names": steps(
        (OWNER, envelope(start("rootvm", template="tmpl"))),
        (OWNER, envelope(start("12345", template="tmpl"))),
        (OWNER, envelope(start("../../etc", template="tmpl"))),
        (OWNER, envelope(start("a" * 300, template="tmpl")))),
    "start-instance-of-instance": steps(
        (OWNER, envelope(start("mine", template="tmpl"))),
        (OWNER, envelope(start("mine2", template="mine"))),
        (STRANGER, envelope(start("mine3", template="mine")))),
    "start-instance-of-configured-instance": steps(
        (OWNER, envelope(start("sub", template="tmpl-1"))),
        (MEMBER, envelope(start("sub2", template="groupvm"))),
        (MEMBER, envelope(start("sub3", template="sub2")))),
    "start-stranger-container": steps((STRANGER, envelope(start("groupct")))),
    "stop-stranger": steps((STRANGER, envelope(stop(["ownervm"], force=True)))),
    "stop-member-all": steps((MEMBER, envelope(stop([], all=True, force=True)))),
    "stop-owner-mixed": steps((OWNER, envelope(stop(["ownervm", "rootvm"], force=True)))),
    "stop-owner-many": steps((OWNER, envelope(stop(["ownervm"] * 64)))),
    "stop-owner-empty": steps((OWNER, envelope(stop([])))),
    "pause-stranger": steps((STRANGER, envelope(on("pause", "groupvm"))),
                            (STRANGER, envelope(on("unpause", "rootct"))),
                            (STRANGER, envelope(on("wait", "ownerct")))),
    "console-stranger": steps((STRANGER, envelope(on("console", "rootvm")))),
    "exec-stranger": steps((STRANGER, envelope(exec_("groupct", ["/bin/sh"])))),
    "reload-owner": steps((OWNER, envelope({"kind": "reload"}))),
    "load-member": steps((MEMBER, envelope({"kind": "load", "path": "/etc/passwd"}))),
    "reset-stranger": steps((STRANGER, envelope({"kind": "reset", "what": "all"}))),
    "log-owner": steps((OWNER, envelope({"kind": "log", "level": "verbose"}))),
    # Hostile bytes.
    "version-2": steps((ROOT, envelope({"kind": "reload"}, version=2)),
                       (ROOT, envelope({"kind": "reload"}, version=0xFFFFFFFF))),
    "unknown-kind": steps((STRANGER, envelope({"kind": "format_disk"}))),
    "escape-in-kind": steps((STRANGER, envelope({"kind": ESC}))),
    "escape-in-field": steps((STRANGER, envelope({"kind": "pause", ESC: 1}))),
    "escape-in-target": steps((STRANGER, envelope(on("pause", ESC))),
                              (OWNER, envelope(stop([ESC]))),
                              (MEMBER, envelope(start(ESC, template="groupvm"))),
                              (ROOT, envelope(start(ESC))),
                              (ROOT, envelope({"kind": "load", "path": "/nonexistent/" + ESC}))),
    "bidi-in-target": steps((OWNER, envelope(on("console", "a\u202egnp.exe\u2028b")))),
    "long-target": steps((STRANGER, envelope(on("wait", "A" * 65000)))),
    "long-template": steps((OWNER, envelope(start("x", template="B" * 65000)))),
    "frame-too-long": steps((STRANGER, b"\xff\xff\xff\xff{}", True)),
    "frame-short": steps((STRANGER, b"\x00\x00\x10\x00{\"version\":1", True)),
    "frame-empty": steps((ROOT, b"", True), (ROOT, b"")),
    "not-json": steps((OWNER, b"\x00\xff\xfe garbage")),
    "not-utf8": steps((OWNER, b'{"version":1,"request":{"kind":"pause","target":"\xff\xfe"}}')),
    "deep-nesting": steps((STRANGER, b'{"version":1,"request":' + b"[" * 4000 + b"]" * 4000 + b"}")),
    "duplicate-field": steps((STRANGER, b'{"version":1,"version":1,"request":{"kind":"reload"}}')),
    "wrong-types": steps((STRANGER, b'{"version":"1","request":{"kind":"stop","targets":"all","all":1}}'),
                         (OWNER, b'{"version":1,"request":{"kind":"exec","target":"ownerct","argv":[],"tty":true,"winsize":[65536,0]}}')),
    "null-request": steps((STRANGER, b'{"version":1,"request":null}')),
    "sequence": steps((ROOT, envelope({"kind": "load", "path": "/nonexistent/y.conf"})),
                      (OWNER, envelope({"kind": "reload"})),
                      (OWNER, envelope(start("mine", template="tmpl"))),
                      (MEMBER, envelope(stop(["mine"]))),
                      (STRANGER, envelope(on("console", "mine"))),
                      (ROOT, envelope(stop(["mine"], force=True)))),
}


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "control_request")
    os.makedirs(out, exist_ok=True)
    for name, data in SEEDS.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
    print(f"{len(SEEDS)} seeds in {out}")


if __name__ == "__main__":
    main()
