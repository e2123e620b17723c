#!/bin/sh
# Reproduces finding 3: a qcow2 image written by the `virtio` test guest,
# the VM process SIGKILLed after a delay; counts the images `qemu-img check`
# finds corrupt (leaks are not counted: they harm no data).
#   scripts/qcow2-crash-repro.sh [TRIES] [DELAY_S] [KIND]
# KIND: plain (kapsel create -s 128M, the default), overlay (on a raw
# base), small (qemu-img create -o cluster_size=4096).
# Run from the workspace root after `cargo build -p kapsel -p kapsel-testguest`.
# The regression test is crates/kapsel/tests/security/qcow2_crash.rs.
set -u
tries=${1:-40}
delay=${2:-0.5}
kind=${3:-plain}
kapsel=$(realpath "${KAPSEL:-target/debug/kapsel}")
guest=$(ls -t target/debug/build/kapsel-testguest-*/out/virtio.elf | head -n 1)
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
bad=0
i=0
while [ "$i" -lt "$tries" ]; do
    i=$((i + 1))
    rm -f "$dir/q.qcow2"
    case $kind in
    plain) "$kapsel" create -s 128M "$dir/q.qcow2" >/dev/null ;;
    overlay)
        [ -f "$dir/base.raw" ] || head -c 128M /dev/urandom >"$dir/base.raw"
        (cd "$dir" && "$kapsel" create -b base.raw q.qcow2 >/dev/null) ;;
    small) qemu-img create -q -f qcow2 -o cluster_size=4096 "$dir/q.qcow2" 128M ;;
    *) echo "unknown kind $kind (plain, overlay, small)" >&2; exit 2 ;;
    esac
    "$kapsel" run --kernel "$guest" --memory 64M --disk "$dir/q.qcow2" \
        --cmdline "blk blk-mib=128" >/dev/null 2>&1 &
    pid=$!
    sleep "$delay"
    kill -9 "$pid"
    wait "$pid" 2>/dev/null
    qemu-img check -f qcow2 "$dir/q.qcow2" >"$dir/check" 2>&1
    rc=$?
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 3 ]; then
        bad=$((bad + 1))
        echo "try $i: $(grep -m1 ERROR "$dir/check")"
    fi
done
echo "$kind: corrupt after $bad of $tries kills"
