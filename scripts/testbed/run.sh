#!/usr/bin/env bash
# scripts/testbed/run.sh — run a job inside the nested testbed.
#
# The host boots an outer VM (L1: Debian's generic kernel under QEMU TCG with
# an emulated AMD CPU with SVM, kvm-amd loaded) whose /dev/kvm is real enough
# to boot Linux guests (L2). A fresh share directory is exported to L1 over
# virtio-9p; L1's init mounts it at /mnt, runs the job with busybox sh and
# powers off. run.sh exits with the job's exit status.
#
# Usage: scripts/testbed/run.sh [OPTIONS] [--] JOB_SCRIPT
#   --kapsel PATH      ship this kapsel binary as /mnt/bin/kapsel
#   --bin PATH         ship another host executable as /mnt/bin/NAME
#                      (repeatable; its shared libraries come along)
#   --add SRC[:DEST]   copy a file or directory into the share at DEST
#                      (relative to /mnt; default files/NAME) (repeatable)
#   --env NAME=VALUE   export NAME into the job's environment (repeatable)
#   --qemu-data        ship /usr/share/qemu and /usr/share/seabios as
#                      /mnt/share/ (to run Debian's QEMU in L1 as a peer:
#                      --bin "$(command -v qemu-system-x86_64)" --qemu-data)
#   --out DIR          copy the job's /mnt/out to DIR when L1 has finished
#   --log FILE         also write L1's console to FILE (not with --interactive)
#   --timeout SEC      kill L1 after SEC seconds (default 600, or none with
#                      --interactive; 0 means none)
#   --interactive      L1's console is this terminal (Ctrl-A x quits QEMU)
#   --keep             keep the share directory (its path is printed)
#   -h, --help         this text
#
# What the job sees in L1 (busybox sh, cwd /mnt, running as root with the
# console as its controlling terminal):
#   /mnt/job.sh              the job script itself
#   /mnt/bin/                shipped binaries, first in $PATH
#   /mnt/bin/kapsel          $KAPSEL (set only when --kapsel was given)
#   /mnt/l2/vmlinuz          $KAPSEL_L2_KERNEL: Debian's cloud kernel (bzImage)
#   /mnt/l2/initrd.cpio      $KAPSEL_L2_INITRD: busybox initramfs (l2-init.sh;
#                            kapsel.test=poweroff|reboot|shell|panic)
#   /mnt/l1/kvmcheck         static /dev/kvm smoke test (kvmcheck.c)
#   /mnt/files/              files given with --add
#   /mnt/out/                $KAPSEL_OUT: results; copied out with --out
#   $KAPSEL_SHARE            /mnt
#   /mnt/sysroot/            shipped shared libraries, linked into / by L1
#   /mnt/.testbed/           run.sh <-> L1 bookkeeping (env, exit-status, error)
# L1 offers: /dev/kvm (kvm-amd), 1 vCPU, 2 GiB, tmpfs /tmp, busybox; modules
# tun, veth, bridge, vhost_net, vhost_vsock and the netfilter ones kapseld
# needs (nf_tables, nft_chain_nat, nft_masq, ...) load with `modprobe NAME`;
# nft comes with `--bin /usr/sbin/nft`.
#
# Exit status: the job's, or 125 when the testbed itself failed (L1 did not
# finish within the timeout, the share did not mount, /dev/kvm did not
# appear, L1 crashed); the reason is printed on stderr as "testbed: ...".
# Environment: KAPSEL_TESTBED_DIR (cache, default <repo>/.testbed),
# QEMU (default qemu-system-x86_64), KAPSEL_L1_APPEND (extra L1 kernel
# parameters).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
TB=${KAPSEL_TESTBED_DIR:-$REPO/.testbed}
export KAPSEL_TESTBED_DIR=$TB
QEMU=${QEMU:-qemu-system-x86_64}
TESTBED_FAILED=125

kapsel=""
bins=()
adds=()
envs=()
qemu_data=0
out_dir=""
log=""
timeout=""
interactive=0
keep=0
job=""

usage() { sed -n '2,/^set -e/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; }
die() {
    echo "testbed: error: $*" >&2
    exit "$TESTBED_FAILED"
}
need_arg() { [ "$2" -ge 2 ] || die "$1 needs an argument (try --help)"; }

while [ $# -gt 0 ]; do
    case $1 in
    --kapsel) need_arg "$1" $# && kapsel=$2 && shift ;;
    --bin) need_arg "$1" $# && bins+=("$2") && shift ;;
    --add) need_arg "$1" $# && adds+=("$2") && shift ;;
    --env) need_arg "$1" $# && envs+=("$2") && shift ;;
    --qemu-data) qemu_data=1 ;;
    --out) need_arg "$1" $# && out_dir=$2 && shift ;;
    --log) need_arg "$1" $# && log=$2 && shift ;;
    --timeout) need_arg "$1" $# && timeout=$2 && shift ;;
    --interactive) interactive=1 ;;
    --keep) keep=1 ;;
    -h | --help) usage && exit 0 ;;
    --) shift && break ;;
    -*) die "unknown option '$1' (try --help)" ;;
    *) break ;;
    esac
    shift
done
[ $# -eq 1 ] || die "expected exactly one JOB_SCRIPT (try --help)"
job=$1
[ -f "$job" ] || die "job script '$job' not found"
[ -z "$kapsel" ] || [ -x "$kapsel" ] || die "kapsel binary '$kapsel' not found or not executable (cargo build --release -p kapsel)"
if [ -z "$timeout" ]; then
    if [ "$interactive" = 1 ]; then timeout=0; else timeout=600; fi
fi
case $timeout in *[!0-9]* | '') die "--timeout wants whole seconds, not '$timeout'" ;; esac
[ -z "$log" ] || [ "$interactive" = 0 ] || die "--log does not work with --interactive"
command -v "$QEMU" >/dev/null || die "$QEMU not found (apt-get install qemu-system-x86)"

"$HERE/build.sh" --quiet || die "building the testbed artefacts failed (scripts/testbed/build.sh)"

# --- the share ------------------------------------------------------------

mkdir -p "$TB/runs"
share=$(mktemp -d "$TB/runs/share.XXXXXX")
# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
    if [ "$keep" = 1 ]; then
        echo "testbed: share kept in $share" >&2
    else
        rm -rf "$share"
    fi
}
trap cleanup EXIT
mkdir -p "$share"/{bin,l1,l2,files,out,sysroot,.testbed}

# Copies the host executable $1 to /mnt/bin/$2 and its shared libraries (as
# ldd resolves them on the host) to /mnt/sysroot at their host paths.
ship_binary() {
    local src=$1 name=$2 lib
    if [ ! -f "$src" ] || [ ! -x "$src" ]; then
        die "'$src' is not an executable file"
    fi
    cp "$src" "$share/bin/$name"
    # Lines look like "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)"
    # or "/lib64/ld-linux-x86-64.so.2 (0x...)"; a static binary has none.
    for lib in $(ldd "$src" 2>/dev/null | grep -o '/[^ ]*' || true); do
        [ -e "$share/sysroot$lib" ] && continue
        mkdir -p "$share/sysroot$(dirname "$lib")"
        cp -L "$lib" "$share/sysroot$lib"
    done
}

[ -z "$kapsel" ] || ship_binary "$kapsel" kapsel
for bin in "${bins[@]}"; do ship_binary "$bin" "$(basename "$bin")"; done
if [ "$qemu_data" = 1 ]; then
    # QEMU finds its data relative to its binary: /mnt/bin/../share/qemu.
    mkdir -p "$share/share"
    cp -a /usr/share/qemu /usr/share/seabios "$share/share/" ||
        die "cannot copy QEMU's data (apt-get install qemu-system-x86)"
fi
for spec in "${adds[@]}"; do
    src=${spec%%:*}
    dest=files/$(basename "$src")
    [ "$spec" = "$src" ] || dest=${spec#*:}
    case $dest in /* | *..*) die "--add $spec: DEST must be a relative path inside the share" ;; esac
    [ -e "$src" ] || die "--add $spec: '$src' not found"
    mkdir -p "$share/$(dirname "$dest")"
    cp -a "$src" "$share/$dest"
done
cp "$TB/l2-vmlinuz" "$share/l2/vmlinuz"
cp "$TB/l2-initrd.cpio" "$share/l2/initrd.cpio"
cp "$TB/kvmcheck" "$share/l1/kvmcheck"
cp "$job" "$share/job.sh"
for pair in "${envs[@]}"; do
    name=${pair%%=*}
    value=${pair#*=}
    [[ $pair == *=* && $name =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] ||
        die "--env wants NAME=VALUE, not '$pair'"
    # Single-quoted for busybox sh; a ' inside becomes '\''.
    printf "export %s='%s'\n" "$name" "${value//\'/\'\\\'\'}"
done >"$share/.testbed/env"

# --- L1 -------------------------------------------------------------------

# Measured to save ~1 s of L1's boot under TCG (no speculation mitigations,
# no crypto self-tests, no TSC calibration); L1 is a throwaway test VM.
L1_APPEND="mitigations=off cryptomgr.notests tsc=reliable no_timer_check"
# shellcheck disable=SC2054 # commas belong to QEMU's option syntax
qemu_cmd=("$QEMU" -accel tcg -cpu EPYC,+svm -M q35 -smp 1 -m 2G
    -nodefaults -no-user-config -nographic -no-reboot
    -kernel "$TB/l1-vmlinux" -initrd "$TB/l1-initrd.cpio"
    -append "console=ttyS0 quiet panic=-1 $L1_APPEND ${KAPSEL_L1_APPEND:-}"
    -virtfs "local,path=$share,mount_tag=share,security_model=none")
if [ "$interactive" = 1 ]; then
    # mon:stdio: Ctrl-C goes to the guest, Ctrl-A x quits QEMU.
    qemu_cmd+=(-serial mon:stdio)
else
    qemu_cmd+=(-serial stdio)
fi
if [ "$timeout" != 0 ]; then
    # --foreground keeps QEMU in the terminal's process group (it reads the tty).
    qemu_cmd=(timeout --foreground -k 10 "$timeout" "${qemu_cmd[@]}")
fi

echo "testbed: booting L1 (QEMU TCG, EPYC+svm); job $(basename "$job")" >&2
start=$(date +%s%N)
# "TCG doesn't support requested feature" warnings about the EPYC model are
# harmless (TESTBED.md); keep the rest of QEMU's stderr.
quiet_tcg() { grep -v "TCG doesn't support requested feature" >&2 || true; }
set +e
if [ "$interactive" = 1 ]; then
    echo "testbed: interactive console; Ctrl-A x quits QEMU" >&2
    "${qemu_cmd[@]}" 2> >(quiet_tcg)
    qemu_status=$?
elif [ -n "$log" ]; then
    "${qemu_cmd[@]}" </dev/null 2> >(quiet_tcg) | tee "$log"
    qemu_status=${PIPESTATUS[0]}
else
    "${qemu_cmd[@]}" </dev/null 2> >(quiet_tcg)
    qemu_status=$?
fi
set -e
elapsed=$((($(date +%s%N) - start) / 1000000))
seconds=$(printf '%d.%03d' $((elapsed / 1000)) $((elapsed % 1000)))

if [ -n "$out_dir" ]; then
    mkdir -p "$out_dir"
    cp -a "$share/out/." "$out_dir/"
fi

if [ "$timeout" != 0 ] && [ "$qemu_status" = 124 ]; then
    die "L1 did not finish within ${timeout} s (--timeout); the job was still running"
fi
if [ -f "$share/.testbed/error" ]; then
    die "L1: $(cat "$share/.testbed/error")"
fi
if [ ! -f "$share/.testbed/exit-status" ]; then
    die "L1 ended after ${seconds} s without a job exit status (QEMU exit status $qemu_status; L1 crashed or was killed, see its console above)"
fi
status=$(cat "$share/.testbed/exit-status")
echo "testbed: job exited with status $status; L1 ran ${seconds} s" >&2
exit "$status"
