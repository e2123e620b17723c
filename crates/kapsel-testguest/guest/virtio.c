/*
 * virtio: a polled virtio 1.x (modern PCI) driver that exercises virtio-blk
 * and virtio-net devices, all of it at CPL 3.
 *
 * At CPL 0 it only drops to CPL 3 (IOPL 3 plus the TSS I/O bitmap). There it
 * enumerates PCI bus 0 through the type-1 ports 0xCF8/0xCFC, finds every
 * virtio device (vendor 0x1af4, device 0x1040 + type), walks the vendor
 * capabilities to find the common, notify, ISR and device configuration
 * structures (in whichever BARs they are), and runs the virtio 1.x
 * initialisation. No interrupts: MSI-X stays disabled, every vector is
 * NO_VECTOR, completion is found by polling the used rings with a bounded
 * (TSC) wait. Features accepted: VERSION_1, plus FLUSH for virtio-blk and
 * MAC for virtio-net (no EVENT_IDX, no indirect descriptors), so the driver
 * notifies after every batch it makes available.
 *
 * The kernel command line says what to test (words separated by spaces;
 * unknown words are ignored):
 *   blk          every virtio-blk disk: a writable one gets the pattern test
 *                (write, mixed, read-back passes over the disk in 4 KiB
 *                requests, FLUSH, GET_ID, out-of-range reads), a read-only
 *                one (VIRTIO_BLK_F_RO) the read-only test.
 *   blk-ro       like blk, but every disk must be read-only.
 *   blk-layout   with blk: also requests in other valid descriptor layouts
 *                (header split, header+data, data+status in one descriptor).
 *   blk-mib=N    test at most the first N MiB of a writable disk (default 64).
 *   blk-flush=N  with blk: in the write and mixed passes, a FLUSH after every
 *                N batches of requests, announced by "blk flush pass=P
 *                upto=B" before and "blk flushed pass=P upto=B" after it
 *                completed (blocks 0..B of pass P are then on stable
 *                storage); the crash-consistency test kills the VMM on them.
 *   net          the frame exchange with the host described below.
 *   net-tx=N     number of frames to send (default 1000, at most 65536).
 *
 * Benchmark modes (bench/io.py), on the first virtio-blk disk / virtio-net
 * card; each prints one "bench" line with the TSC cycles it took and the
 * TSC rate measured against PIT channel 2 (see tsc_khz):
 *   blk-bench-rand=N      N reads of 4 KiB at random 4 KiB-aligned offsets
 *                         of the whole disk, qd=Q in flight (default 32,
 *                         at most 64).
 *   blk-bench-seqread=M   M requests of 1 MiB (one 1 MiB data descriptor
 *                         each) from offset 0 on, qd=Q in flight (default 4,
 *                         at most 8); wraps at the end of the disk.
 *   blk-bench-seqwrite=M  the same as writes, then a FLUSH, inside the time.
 *   net-bench-tx=N        after the host's GO: N frames of 1514 bytes
 *                         (broadcast, ethertype 0x88b5, "KTG1", kind 4, seq,
 *                         count N), the tx ring kept full; then DONE.
 *   bench-no-notify       honour VRING_USED_F_NO_NOTIFY (skip the doorbell
 *                         while the device says it is busy with the queue).
 * Status and used length of every request are checked, the data is not.
 *
 * The pattern (mirrored by the Rust tests): the 64-bit little-endian word
 * at byte offset `off` of a writable disk holds tg_pattern(off / 8, gen),
 * where gen is 1 for 4 KiB blocks whose index is a multiple of 4 and 0 for
 * all others once the test is done.
 *
 * Net protocol: frames with ethertype 0x88b5 whose payload starts with
 * "KTG1", a kind byte (1 GO, 2 DATA, 3 DONE), three zero bytes, a seq
 * (le32), a count (le32) and 48 bytes (seq + i) & 0xff for i in 16..64.
 * The guest posts receive buffers, prints "net ready", waits for GO (whose
 * count is the number of DATA frames the host will send), sends net-tx=N
 * DATA frames (seq 0..N-1, broadcast) and a DONE frame (count N), then
 * waits until it has received every DATA frame 0..count-1 from the host.
 *
 * Memory BARs the firmware left unassigned (qboot does) are assigned from
 * 0xC0000000 up, above the BARs already there.
 *
 * Output lines (all start with "kapsel-testguest: "):
 *   pci 00:DD.F BARi assigned 0x.. (size 0x..)  only for unassigned BARs
 *   virtio dev=00:DD.F type=T common=0x.. notify=0x.. mult=M   per device
 *   blk dev=00:DD.F capacity=C features=0x.. queue=Q            per disk
 *   blk layout split-header-write=S/L split-header-read=S/L/ok
 *              header+data=S/L data+status=S/L/ok   (blk-layout; S status,
 *              L used length)
 *   blk layout ok
 *   blk ok requests=N serial=S sectors=C blocks=B kicks=K   writable disk
 *   blk-ro ok sectors=C hash=0x.. serial=S      read-only disk passed
 *   net ready mac=xx:xx:xx:xx:xx:xx
 *   net tx=N rx=M                               net passed
 *   net other=K dups=D go=G kicks=R/T rx-hdr=.. (frames not ours, the
 *                                               virtio-net header of the
 *                                               first DATA frame received)
 *   bench W requests=N qd=Q bytes=B cycles=C tsc-khz=K us=U per-s=R
 *         bytes-per-us=T kicks=D   W is blk-rand, blk-seqread, blk-seqwrite
 *                                  or net-tx; U = C / K ms; D doorbells
 *   virtio ok                                   everything asked for passed
 *   FAIL <what>                                 a check failed (then fail())
 */
#include "tg.h"

/* --- CPU helpers ----------------------------------------------------------- */

static inline void outl(u16 port, u32 v)
{
    __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port));
}

static inline u32 inl(u16 port)
{
    u32 v;
    __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}

static inline u64 rdtsc(void)
{
    u32 lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((u64)hi << 32) | lo;
}

#define barrier() __asm__ volatile("" ::: "memory")
#define mb() __asm__ volatile("mfence" ::: "memory")

static inline u8 rd8(u64 a) { return *(volatile u8 *)a; }
static inline u16 rd16(u64 a) { return *(volatile u16 *)a; }
static inline u32 rd32(u64 a) { return *(volatile u32 *)a; }
static inline void wr8(u64 a, u8 v) { *(volatile u8 *)a = v; }
static inline void wr16(u64 a, u16 v) { *(volatile u16 *)a = v; }
static inline void wr32(u64 a, u32 v) { *(volatile u32 *)a = v; }

/*
 * A generous upper bound of the TSC rate, so that a wait of "s seconds" is
 * at least s seconds anywhere (and at most a few times that).
 */
#define TSC_PER_SEC 4000000000ul

/* --- failing ---------------------------------------------------------------- */

static void *fail_jmp[5];

#define FAIL(...)                                                                  \
    do {                                                                           \
        tg_printf(TG "FAIL " __VA_ARGS__);                                         \
        tg_printf("\n");                                                           \
        __builtin_longjmp(fail_jmp, 1);                                            \
    } while (0)

#define CHECK(cond, ...)                                                           \
    do {                                                                           \
        if (!(cond))                                                               \
            FAIL(__VA_ARGS__);                                                     \
    } while (0)

/* --- memory for rings and buffers ------------------------------------------- */

/*
 * Guest RAM from 4 MiB to 16 MiB, above the image (at 1 MiB) and below the
 * 32 MiB every VMM gives us. Not in .bss: zeroing happens here at CPL 3.
 */
#define DMA_START 0x400000ul
#define DMA_END 0x1000000ul
static u64 dma_next = DMA_START;

static void *dma_alloc(u64 size)
{
    u64 a = dma_next;
    size = (size + 4095) & ~4095ul;
    CHECK(a + size <= DMA_END, "out of DMA memory (want %lu)", size);
    dma_next = a + size;
    u64 *p = (u64 *)a;
    for (u64 i = 0; i < size / 8; i++)
        p[i] = 0;
    return (void *)a;
}

/* --- the pattern and hash the Rust tests mirror ------------------------------ */

static inline u64 tg_pattern(u64 word, u64 gen)
{
    u64 z = word ^ (gen << 56) ^ 0x6b617073656c0000ul;
    z += 0x9e3779b97f4a7c15ul;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ul;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebul;
    return z ^ (z >> 31);
}

#define HASH_INIT 0xcbf29ce484222325ul
static inline u64 hash_words(u64 h, const u64 *p, u64 words)
{
    for (u64 i = 0; i < words; i++)
        h = (h ^ p[i]) * 0x100000001b3ul;
    return h;
}

/* --- command line ------------------------------------------------------------ */

static const char *cmdline = "";

static int str_eq_n(const char *a, const char *b, usize n)
{
    for (usize i = 0; i < n; i++)
        if (a[i] != b[i])
            return 0;
    return 1;
}

static usize str_len(const char *s)
{
    usize n = 0;
    while (s[n])
        n++;
    return n;
}

/* Finds the word `name` (exact) or `name=value`; returns the value or "". */
static const char *cmdline_word(const char *name, int *found)
{
    usize n = str_len(name);
    const char *p = cmdline;
    *found = 0;
    while (*p) {
        while (*p == ' ')
            p++;
        const char *w = p;
        while (*p && *p != ' ')
            p++;
        usize wl = (usize)(p - w);
        if (wl == n && str_eq_n(w, name, n)) {
            *found = 1;
            return "";
        }
        if (wl > n && w[n] == '=' && str_eq_n(w, name, n)) {
            *found = 1;
            return w + n + 1;
        }
    }
    return "";
}

static int has_word(const char *name)
{
    int found;
    cmdline_word(name, &found);
    return found;
}

static u64 word_value(const char *name, u64 dflt)
{
    int found;
    const char *v = cmdline_word(name, &found);
    if (!found || *v < '0' || *v > '9')
        return dflt;
    u64 x = 0;
    while (*v >= '0' && *v <= '9')
        x = x * 10 + (u64)(*v++ - '0');
    return x;
}

/* --- PCI configuration space through 0xCF8/0xCFC ------------------------------ */

#define PCI_ADDR 0xcf8
#define PCI_DATA 0xcfc

static u32 pci_addr(u8 dev, u8 fn, u8 off)
{
    return 0x80000000u | ((u32)dev << 11) | ((u32)fn << 8) | (off & 0xfc);
}

static u32 pci_read32(u8 dev, u8 fn, u8 off)
{
    outl(PCI_ADDR, pci_addr(dev, fn, off));
    return inl(PCI_DATA);
}

static u16 pci_read16(u8 dev, u8 fn, u8 off)
{
    return (u16)(pci_read32(dev, fn, off) >> ((off & 2) * 8));
}

static u8 pci_read8(u8 dev, u8 fn, u8 off)
{
    return (u8)(pci_read32(dev, fn, off) >> ((off & 3) * 8));
}

static void pci_write16(u8 dev, u8 fn, u8 off, u16 v)
{
    outl(PCI_ADDR, pci_addr(dev, fn, off));
    outw((u16)(PCI_DATA + (off & 2)), v);
}

/* --- virtio PCI transport ------------------------------------------------------ */

#define VIRTIO_VENDOR 0x1af4
#define VIRTIO_DEVICE_BASE 0x1040
#define TYPE_NET 1
#define TYPE_BLOCK 2

#define CAP_VNDR 0x09
#define CAP_COMMON 1
#define CAP_NOTIFY 2
#define CAP_ISR 3
#define CAP_DEVICE 4

/* Common configuration registers. */
#define C_DFSELECT 0x00
#define C_DF 0x04
#define C_GFSELECT 0x08
#define C_GF 0x0c
#define C_MSIX 0x10
#define C_NUMQ 0x12
#define C_STATUS 0x14
#define C_GEN 0x15
#define C_QSELECT 0x16
#define C_QSIZE 0x18
#define C_QMSIX 0x1a
#define C_QENABLE 0x1c
#define C_QNOTIFYOFF 0x1e
#define C_QDESC 0x20
#define C_QAVAIL 0x28
#define C_QUSED 0x30
#define COMMON_LEN 0x38

#define S_ACKNOWLEDGE 1
#define S_DRIVER 2
#define S_DRIVER_OK 4
#define S_FEATURES_OK 8
#define S_NEEDS_RESET 0x40
#define S_FAILED 0x80

#define F_VERSION_1 (1ul << 32)
#define NO_VECTOR 0xffff

#define MAX_DEVS 16
#define MAX_QUEUES 2
#define QSIZE_MAX 256

#define DESC_F_NEXT 1
#define DESC_F_WRITE 2

struct desc {
    u64 addr;
    u32 len;
    u16 flags;
    u16 next;
};

struct used_elem {
    u32 id;
    u32 len;
};

struct vq {
    u16 index;
    u16 size;
    struct desc *desc;
    volatile u16 *avail;          /* flags, idx, ring[size], used_event */
    volatile u16 *used;           /* flags, idx, then ring */
    volatile struct used_elem *used_ring;
    u16 avail_idx;                /* next avail index the driver publishes */
    u16 used_idx;                 /* next used index the driver consumes */
    u64 notify;                   /* doorbell address */
    u64 kicks;
};

struct vdev {
    u8 dev, fn;
    u16 type;
    u64 bar[6];
    u64 common, isr, devcfg, notify;
    u32 common_len, devcfg_len, notify_len;
    u32 notify_mult;
    u64 offered;
    u64 accepted;
    struct vq q[MAX_QUEUES];
};

static struct vdev devs[MAX_DEVS];
static unsigned ndevs;

static void pci_write32(u8 dev, u8 fn, u8 off, u32 v)
{
    outl(PCI_ADDR, pci_addr(dev, fn, off));
    outl(PCI_DATA, v);
}

/*
 * Memory BARs the firmware left unassigned (QEMU with qboot leaves 64-bit
 * ones at 0; Kapsel and SeaBIOS assign everything) are placed from here,
 * above every BAR already assigned in [BAR_WINDOW, BAR_WINDOW_END).
 */
#define BAR_WINDOW 0xc0000000ul
#define BAR_WINDOW_END 0xfec00000ul
static u64 bar_cursor;

/* Size of memory BAR `i` (64-bit if `wide`), probed with decoding off. */
static u64 pci_bar_size(u8 dev, u8 fn, unsigned i, int wide)
{
    u8 off = (u8)(0x10 + 4 * i);
    u16 cmd = pci_read16(dev, fn, 0x04);
    pci_write16(dev, fn, 0x04, cmd & ~0x3);
    u32 lo = pci_read32(dev, fn, off), hi = wide ? pci_read32(dev, fn, (u8)(off + 4)) : 0;
    pci_write32(dev, fn, off, 0xffffffffu);
    if (wide)
        pci_write32(dev, fn, (u8)(off + 4), 0xffffffffu);
    u64 mask = pci_read32(dev, fn, off) & ~0xful;
    if (wide)
        mask |= (u64)pci_read32(dev, fn, (u8)(off + 4)) << 32;
    else if (mask)
        mask |= 0xffffffff00000000ul;
    pci_write32(dev, fn, off, lo);
    if (wide)
        pci_write32(dev, fn, (u8)(off + 4), hi);
    pci_write16(dev, fn, 0x04, cmd);
    return mask ? ~mask + 1 : 0;
}

/* The memory BARs of a function (0 for I/O or absent), unassigned ones assigned. */
static void pci_bars_of(u8 dev, u8 fn, u64 *bars)
{
    for (unsigned i = 0; i < 6; i++) {
        u32 v = pci_read32(dev, fn, (u8)(0x10 + 4 * i));
        bars[i] = 0;
        if (v & 1)
            continue; /* I/O BAR */
        int wide = ((v >> 1) & 3) == 2 && i < 5;
        u64 a = v & ~0xful;
        if (wide)
            a |= (u64)pci_read32(dev, fn, (u8)(0x14 + 4 * i)) << 32;
        u64 size = pci_bar_size(dev, fn, i, wide);
        if (size && !a) {
            u64 at = (bar_cursor + size - 1) & ~(size - 1);
            CHECK(at + size <= BAR_WINDOW_END, "no room for a BAR of 0x%lx", size);
            pci_write32(dev, fn, (u8)(0x10 + 4 * i), (u32)at);
            if (wide)
                pci_write32(dev, fn, (u8)(0x14 + 4 * i), (u32)(at >> 32));
            tg_printf(TG "pci 00:%02x.%u BAR%u assigned 0x%lx (size 0x%lx)\n", dev, fn, i, at,
                      size);
            a = at;
            bar_cursor = at + size;
        }
        bars[i] = a;
        if (wide)
            i++;
    }
}

/* Starts the BAR cursor above every memory BAR assigned in the window. */
static void pci_bar_window(void)
{
    bar_cursor = BAR_WINDOW;
    for (u8 dev = 0; dev < 32; dev++) {
        u8 nfn = 1;
        for (u8 fn = 0; fn < nfn; fn++) {
            u32 id = pci_read32(dev, fn, 0);
            if ((id & 0xffff) == 0xffff)
                continue;
            u8 htype = pci_read8(dev, fn, 0x0e);
            if (fn == 0 && (htype & 0x80))
                nfn = 8;
            if ((htype & 0x7f) != 0)
                continue;
            for (unsigned i = 0; i < 6; i++) {
                u32 v = pci_read32(dev, fn, (u8)(0x10 + 4 * i));
                if (v & 1)
                    continue;
                int wide = ((v >> 1) & 3) == 2 && i < 5;
                u64 a = v & ~0xful;
                if (wide)
                    a |= (u64)pci_read32(dev, fn, (u8)(0x14 + 4 * i)) << 32;
                if (a >= BAR_WINDOW && a < BAR_WINDOW_END) {
                    u64 end = a + pci_bar_size(dev, fn, i, wide);
                    if (end > bar_cursor)
                        bar_cursor = end;
                }
                if (wide)
                    i++;
            }
        }
    }
}

/* Finds the virtio structures; the first capability of each type wins. */
static void pci_caps(struct vdev *d)
{
    CHECK(pci_read16(d->dev, d->fn, 0x06) & 0x10, "virtio %02x.%u: no capability list",
          d->dev, d->fn);
    u8 ptr = pci_read8(d->dev, d->fn, 0x34) & 0xfc;
    for (unsigned n = 0; ptr && n < 48; n++) {
        u8 id = pci_read8(d->dev, d->fn, ptr);
        u8 next = pci_read8(d->dev, d->fn, (u8)(ptr + 1)) & 0xfc;
        if (id == CAP_VNDR) {
            u8 type = pci_read8(d->dev, d->fn, (u8)(ptr + 3));
            u8 bar = pci_read8(d->dev, d->fn, (u8)(ptr + 4));
            u32 off = pci_read32(d->dev, d->fn, (u8)(ptr + 8));
            u32 len = pci_read32(d->dev, d->fn, (u8)(ptr + 12));
            if (bar < 6 && d->bar[bar]) {
                u64 a = d->bar[bar] + off;
                CHECK(a + len <= 0x100000000ul,
                      "virtio %02x.%u: structure at 0x%lx is above 4 GiB", d->dev, d->fn, a);
                if (type == CAP_COMMON && !d->common) {
                    d->common = a;
                    d->common_len = len;
                } else if (type == CAP_NOTIFY && !d->notify) {
                    d->notify = a;
                    d->notify_len = len;
                    d->notify_mult = pci_read32(d->dev, d->fn, (u8)(ptr + 16));
                } else if (type == CAP_ISR && !d->isr) {
                    d->isr = a;
                } else if (type == CAP_DEVICE && !d->devcfg) {
                    d->devcfg = a;
                    d->devcfg_len = len;
                }
            }
        }
        ptr = next;
    }
    CHECK(d->common && d->notify && d->isr && d->devcfg,
          "virtio %02x.%u: missing capability (common=0x%lx notify=0x%lx isr=0x%lx device=0x%lx)",
          d->dev, d->fn, d->common, d->notify, d->isr, d->devcfg);
    CHECK(d->common_len >= COMMON_LEN, "virtio %02x.%u: common cfg only %u bytes", d->dev,
          d->fn, d->common_len);
}

static void pci_scan(void)
{
    pci_bar_window();
    for (u8 dev = 0; dev < 32; dev++) {
        u8 nfn = 1;
        for (u8 fn = 0; fn < nfn; fn++) {
            u32 id = pci_read32(dev, fn, 0);
            if ((id & 0xffff) == 0xffff)
                continue;
            if (fn == 0 && (pci_read8(dev, fn, 0x0e) & 0x80))
                nfn = 8;
            u16 vendor = (u16)id, device = (u16)(id >> 16);
            if (vendor != VIRTIO_VENDOR || device < VIRTIO_DEVICE_BASE ||
                device > VIRTIO_DEVICE_BASE + 0x3f)
                continue;
            CHECK(ndevs < MAX_DEVS, "more than %u virtio devices", MAX_DEVS);
            struct vdev *d = &devs[ndevs++];
            d->dev = dev;
            d->fn = fn;
            d->type = (u16)(device - VIRTIO_DEVICE_BASE);
            pci_bars_of(dev, fn, d->bar);
            /* Memory space and bus mastering on (QEMU needs the latter for DMA). */
            u16 cmd = pci_read16(dev, fn, 0x04);
            pci_write16(dev, fn, 0x04, cmd | 0x6);
            pci_caps(d);
            tg_printf(TG "virtio dev=00:%02x.%u type=%u common=0x%lx notify=0x%lx mult=%u\n",
                      dev, fn, d->type, d->common, d->notify, d->notify_mult);
        }
    }
}

static u64 deadline(u64 seconds)
{
    return rdtsc() + seconds * TSC_PER_SEC;
}

static u8 status_of(struct vdev *d)
{
    return rd8(d->common + C_STATUS);
}

/* Reset, ACKNOWLEDGE, DRIVER, features (offered & wanted), FEATURES_OK. */
static void virtio_begin(struct vdev *d, u64 wanted)
{
    wr8(d->common + C_STATUS, 0);
    u64 end = deadline(2);
    while (status_of(d) != 0) {
        CHECK(rdtsc() < end, "virtio %02x.%u: reset did not complete", d->dev, d->fn);
        cpu_relax();
    }
    wr8(d->common + C_STATUS, S_ACKNOWLEDGE);
    wr8(d->common + C_STATUS, S_ACKNOWLEDGE | S_DRIVER);
    wr32(d->common + C_DFSELECT, 0);
    u64 lo = rd32(d->common + C_DF);
    wr32(d->common + C_DFSELECT, 1);
    u64 hi = rd32(d->common + C_DF);
    d->offered = lo | hi << 32;
    CHECK(d->offered & F_VERSION_1, "virtio %02x.%u: VERSION_1 not offered (0x%lx)", d->dev,
          d->fn, d->offered);
    d->accepted = d->offered & (wanted | F_VERSION_1);
    wr32(d->common + C_GFSELECT, 0);
    wr32(d->common + C_GF, (u32)d->accepted);
    wr32(d->common + C_GFSELECT, 1);
    wr32(d->common + C_GF, (u32)(d->accepted >> 32));
    wr8(d->common + C_STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
    CHECK(status_of(d) & S_FEATURES_OK, "virtio %02x.%u: FEATURES_OK not accepted (0x%lx)",
          d->dev, d->fn, d->accepted);
}

static void virtio_queue(struct vdev *d, u16 index)
{
    CHECK(index < MAX_QUEUES, "queue index %u", index);
    struct vq *q = &d->q[index];
    u16 numq = rd16(d->common + C_NUMQ);
    CHECK(index < numq, "virtio %02x.%u: only %u queues", d->dev, d->fn, numq);
    wr16(d->common + C_QSELECT, index);
    u16 max = rd16(d->common + C_QSIZE);
    CHECK(max != 0, "virtio %02x.%u: queue %u not available", d->dev, d->fn, index);
    u16 size = max < QSIZE_MAX ? max : QSIZE_MAX;
    CHECK((size & (size - 1)) == 0, "queue size %u not a power of two", size);
    if (size != max)
        wr16(d->common + C_QSIZE, size);
    CHECK(rd16(d->common + C_QSIZE) == size, "queue %u: size %u not taken", index, size);
    CHECK(rd16(d->common + C_QENABLE) == 0, "queue %u enabled after reset", index);

    q->index = index;
    q->size = size;
    q->desc = dma_alloc(16ul * size);
    q->avail = dma_alloc(6 + 2ul * size);
    q->used = dma_alloc(6 + 8ul * size);
    q->used_ring = (volatile struct used_elem *)(q->used + 2);
    q->avail_idx = 0;
    q->used_idx = 0;

    wr32(d->common + C_QDESC, (u32)(u64)q->desc);
    wr32(d->common + C_QDESC + 4, (u32)((u64)q->desc >> 32));
    wr32(d->common + C_QAVAIL, (u32)(u64)q->avail);
    wr32(d->common + C_QAVAIL + 4, (u32)((u64)q->avail >> 32));
    wr32(d->common + C_QUSED, (u32)(u64)q->used);
    wr32(d->common + C_QUSED + 4, (u32)((u64)q->used >> 32));
    CHECK(rd32(d->common + C_QDESC) == (u32)(u64)q->desc, "queue %u: desc address not taken",
          index);
    wr16(d->common + C_QMSIX, NO_VECTOR);
    CHECK(rd16(d->common + C_QMSIX) == NO_VECTOR, "queue %u: vector not NO_VECTOR", index);
    u16 off = rd16(d->common + C_QNOTIFYOFF);
    u64 doorbell = (u64)off * d->notify_mult;
    CHECK(doorbell + 2 <= d->notify_len, "queue %u: doorbell offset %lu outside notify (%u)",
          index, doorbell, d->notify_len);
    q->notify = d->notify + doorbell;
    wr16(d->common + C_QENABLE, 1);
    CHECK(rd16(d->common + C_QENABLE) == 1, "queue %u: not enabled", index);
}

static void virtio_driver_ok(struct vdev *d)
{
    wr16(d->common + C_MSIX, NO_VECTOR);
    wr8(d->common + C_STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
    u8 s = status_of(d);
    CHECK((s & (S_DRIVER_OK | S_NEEDS_RESET | S_FAILED)) == S_DRIVER_OK,
          "virtio %02x.%u: status 0x%x after DRIVER_OK", d->dev, d->fn, s);
}

/* Queues descriptor chain `head` (not yet visible to the device). */
static inline void vq_push(struct vq *q, u16 head)
{
    q->avail[2 + (q->avail_idx & (q->size - 1))] = head;
    q->avail_idx++;
}

/* Publishes what was pushed and rings the doorbell. */
static void vq_kick(struct vq *q)
{
    mb();
    q->avail[1] = q->avail_idx;
    mb();
    wr16(q->notify, q->index);
    q->kicks++;
}

/* Number of used entries not consumed yet. */
static inline u16 vq_pending(struct vq *q)
{
    u16 idx = q->used[1];
    barrier();
    return (u16)(idx - q->used_idx);
}

static void vq_check_device(struct vdev *d)
{
    u8 s = status_of(d);
    CHECK(!(s & S_NEEDS_RESET), "virtio %02x.%u: device needs reset (status 0x%x)", d->dev,
          d->fn, s);
}

/* Waits until the used index reaches `target` (bounded). */
static void vq_wait(struct vdev *d, struct vq *q, u16 target, u64 seconds)
{
    u64 end = deadline(seconds);
    u32 spins = 0;
    for (;;) {
        u16 idx = q->used[1];
        barrier();
        if ((u16)(idx - q->used_idx) >= (u16)(target - q->used_idx))
            return;
        cpu_relax();
        if (++spins % 4096 == 0) {
            if (rdtsc() > end) {
                vq_check_device(d);
                FAIL("virtio %02x.%u queue %u: no completion (used %u, want %u)", d->dev, d->fn,
                     q->index, idx, target);
            }
        }
    }
}

/* --- virtio-blk ------------------------------------------------------------------ */

#define BLK_F_RO (1ul << 5)
#define BLK_F_FLUSH (1ul << 9)
#define BLK_T_IN 0
#define BLK_T_OUT 1
#define BLK_T_FLUSH 4
#define BLK_T_GET_ID 8
#define BLK_S_OK 0
#define BLK_S_IOERR 1
#define BLOCK 4096ul
#define BLOCK_SECTORS 8ul
#define SLOTS 64                  /* requests in flight; 4 descriptors each */

struct blk_hdr {
    u32 type;
    u32 reserved;
    u64 sector;
};

struct blk {
    struct vdev *d;
    struct vq *q;
    u64 capacity;
    u8 *meta;                     /* slot s: header at 32 s, status at 32 s + 16 */
    u8 *data;                     /* slot s: 4 KiB at BLOCK * s */
    u32 used_len[SLOTS];
    u64 requests;
    u64 nslots;
};

static struct blk_hdr *slot_hdr(struct blk *b, unsigned s)
{
    return (struct blk_hdr *)(b->meta + 32 * s);
}

static volatile u8 *slot_status(struct blk *b, unsigned s)
{
    return b->meta + 32 * s + 16;
}

static u8 *slot_data(struct blk *b, unsigned s)
{
    return b->data + BLOCK * s;
}

/*
 * Builds request `slot`: header, data (split into two descriptors if
 * `split`), status. The device writes the data for IN and GET_ID.
 */
static void blk_prepare(struct blk *b, unsigned s, u32 type, u64 sector, u8 *buf, u32 len,
                        int split)
{
    struct blk_hdr *h = slot_hdr(b, s);
    h->type = type;
    h->reserved = 0;
    h->sector = sector;
    *slot_status(b, s) = 0xff;
    u16 base = (u16)(4 * s), n = base;
    struct desc *dt = b->q->desc;
    u16 dflags = (type == BLK_T_IN || type == BLK_T_GET_ID) ? DESC_F_WRITE : 0;
    dt[n] = (struct desc){ (u64)h, sizeof(*h), DESC_F_NEXT, (u16)(n + 1) };
    n++;
    if (len) {
        if (split && len >= 2) {
            u32 first = len / 2;
            dt[n] = (struct desc){ (u64)buf, first, dflags | DESC_F_NEXT, (u16)(n + 1) };
            n++;
            dt[n] = (struct desc){ (u64)buf + first, len - first, dflags | DESC_F_NEXT,
                                   (u16)(n + 1) };
            n++;
        } else {
            dt[n] = (struct desc){ (u64)buf, len, dflags | DESC_F_NEXT, (u16)(n + 1) };
            n++;
        }
    }
    dt[n] = (struct desc){ (u64)slot_status(b, s), 1, DESC_F_WRITE, 0 };
    vq_push(b->q, base);
}

/* Submits the `n` prepared requests and waits for all of them. */
static void blk_run(struct blk *b, unsigned n)
{
    struct vq *q = b->q;
    u16 target = (u16)(q->used_idx + n);
    vq_kick(q);
    vq_wait(b->d, q, target, 10);
    while (q->used_idx != target) {
        volatile struct used_elem *e = &q->used_ring[q->used_idx & (q->size - 1)];
        u32 id = e->id, len = e->len;
        CHECK(id % 4 == 0 && id / 4 < n, "blk: used id %u not a request head", id);
        b->used_len[id / 4] = len;
        q->used_idx++;
    }
    b->requests += n;
}

/* One request on slot 0; returns its status. */
static u8 blk_one(struct blk *b, u32 type, u64 sector, u8 *buf, u32 len)
{
    blk_prepare(b, 0, type, sector, buf, len, 0);
    blk_run(b, 1);
    return *slot_status(b, 0);
}

static void fill_pattern(u8 *buf, u64 block, u64 gen)
{
    u64 *w = (u64 *)buf;
    u64 first = block * (BLOCK / 8);
    for (u64 i = 0; i < BLOCK / 8; i++)
        w[i] = tg_pattern(first + i, gen);
}

static void check_pattern(struct blk *b, const u8 *buf, u64 block, u64 gen)
{
    const u64 *w = (const u64 *)buf;
    u64 first = block * (BLOCK / 8);
    for (u64 i = 0; i < BLOCK / 8; i++) {
        u64 want = tg_pattern(first + i, gen);
        CHECK(w[i] == want, "blk %02x.%u: block %lu word %lu is 0x%016lx, want 0x%016lx (gen %lu)",
              b->d->dev, b->d->fn, block, i, w[i], want, gen);
    }
}

static unsigned final_gen(u64 block)
{
    return block % 4 == 0 ? 1 : 0;
}

static void blk_setup(struct blk *b, struct vdev *d)
{
    b->d = d;
    virtio_begin(d, BLK_F_FLUSH);
    virtio_queue(d, 0);
    virtio_driver_ok(d);
    b->q = &d->q[0];
    u32 lo = rd32(d->devcfg), hi = rd32(d->devcfg + 4);
    b->capacity = lo | (u64)hi << 32;
    b->nslots = b->q->size / 4 < SLOTS ? b->q->size / 4 : SLOTS;
    CHECK(b->nslots >= 1, "blk: queue of %u too small", b->q->size);
    b->meta = dma_alloc(32 * SLOTS);
    b->data = dma_alloc(BLOCK * SLOTS);
    b->requests = 0;
}

/* GET_ID into `serial` (at least 21 bytes). */
static void blk_serial(struct blk *b, char *serial)
{
    u8 *buf = slot_data(b, 0);
    for (unsigned i = 0; i < 20; i++)
        buf[i] = 0;
    u8 st = blk_one(b, BLK_T_GET_ID, 0, buf, 20);
    CHECK(st == BLK_S_OK, "blk %02x.%u: GET_ID status %u", b->d->dev, b->d->fn, st);
    unsigned i;
    for (i = 0; i < 20 && buf[i]; i++)
        serial[i] = (buf[i] >= 0x21 && buf[i] < 0x7f) ? (char)buf[i] : '?';
    serial[i] = '\0';
}

/*
 * One pass over `blocks` blocks, SLOTS requests at a time. mode 0: write
 * gen 0; mode 1: write gen 1 to every 4th block, read and check the others;
 * mode 2: read and check the final pattern.
 */
static void blk_pass(struct blk *b, u64 blocks, int mode)
{
    u64 flush_every = mode == 2 ? 0 : word_value("blk-flush", 0);
    u64 batches = 0;
    for (u64 start = 0; start < blocks; start += b->nslots) {
        unsigned n = (unsigned)(blocks - start < b->nslots ? blocks - start : b->nslots);
        for (unsigned s = 0; s < n; s++) {
            u64 blk = start + s;
            int write = mode == 0 || (mode == 1 && blk % 4 == 0);
            u8 *buf = slot_data(b, s);
            if (write)
                fill_pattern(buf, blk, mode == 0 ? 0 : 1);
            else
                ((u64 *)buf)[0] = ~tg_pattern(blk * (BLOCK / 8), final_gen(blk));
            blk_prepare(b, s, write ? BLK_T_OUT : BLK_T_IN, blk * BLOCK_SECTORS, buf, BLOCK,
                        blk % 3 == 1);
        }
        blk_run(b, n);
        for (unsigned s = 0; s < n; s++) {
            u64 blk = start + s;
            int write = mode == 0 || (mode == 1 && blk % 4 == 0);
            u8 st = *slot_status(b, s);
            CHECK(st == BLK_S_OK, "blk %02x.%u: %s of block %lu: status %u", b->d->dev,
                  b->d->fn, write ? "write" : "read", blk, st);
            u32 want_len = write ? 1 : BLOCK + 1;
            CHECK(b->used_len[s] == want_len,
                  "blk %02x.%u: %s of block %lu: used len %u, want %u", b->d->dev, b->d->fn,
                  write ? "write" : "read", blk, b->used_len[s], want_len);
            if (!write)
                check_pattern(b, slot_data(b, s), blk, mode == 1 ? 0 : final_gen(blk));
        }
        if (flush_every && ++batches % flush_every == 0) {
            tg_printf(TG "blk flush pass=%d upto=%lu\n", mode, start + n);
            u8 st = blk_one(b, BLK_T_FLUSH, 0, NULL, 0);
            CHECK(st == BLK_S_OK, "blk %02x.%u: FLUSH status %u", b->d->dev, b->d->fn, st);
            tg_printf(TG "blk flushed pass=%d upto=%lu\n", mode, start + n);
        }
    }
}

/*
 * A request in an unusual but valid descriptor layout (virtio 1.x, 2.6.4:
 * the device must not assume any particular arrangement): `n` descriptors
 * from `parts`, status byte at `status`. Returns the status and the used
 * length.
 */
static u8 blk_raw(struct blk *b, const struct desc *parts, unsigned n, volatile u8 *status,
                  u32 *used_len)
{
    struct desc *dt = b->q->desc;
    CHECK(n >= 1 && n <= 4, "blk_raw: %u descriptors", n);
    for (unsigned i = 0; i < n; i++) {
        dt[i] = parts[i];
        dt[i].flags = (u16)(parts[i].flags | (i + 1 < n ? DESC_F_NEXT : 0));
        dt[i].next = (u16)(i + 1 < n ? i + 1 : 0);
    }
    *status = 0xff;
    vq_push(b->q, 0);
    blk_run(b, 1);
    *used_len = b->used_len[0];
    return *status;
}

/*
 * blk-layout: the same requests as the pattern test in other layouts:
 * the header split over two descriptors, header and data in one
 * descriptor, data and status in one descriptor. Blocks 0 to 2 are
 * rewritten with what they hold already.
 */
static void blk_test_layouts(struct blk *b)
{
    struct vdev *d = b->d;
    /* 8 KiB of contiguous buffer: slots 2 and 3. */
    u8 *buf = slot_data(b, 2);
    struct blk_hdr *h = slot_hdr(b, 0);
    volatile u8 *st = slot_status(b, 0);
    u32 len_split_w, len_split_r, len_hd, len_ds;

    /* 1. Write block 0, header as 8 + 8 bytes; read it back, header 4 + 12. */
    fill_pattern(buf, 0, final_gen(0));
    *h = (struct blk_hdr){ BLK_T_OUT, 0, 0 };
    struct desc w1[] = { { (u64)h, 8, 0, 0 }, { (u64)h + 8, 8, 0, 0 },
                         { (u64)buf, BLOCK, 0, 0 }, { (u64)st, 1, DESC_F_WRITE, 0 } };
    u8 s_split_w = blk_raw(b, w1, 4, st, &len_split_w);
    for (u64 i = 0; i < BLOCK / 8; i++)
        ((u64 *)buf)[i] = 0;
    *h = (struct blk_hdr){ BLK_T_IN, 0, 0 };
    struct desc r1[] = { { (u64)h, 4, 0, 0 }, { (u64)h + 4, 12, 0, 0 },
                         { (u64)buf, BLOCK, DESC_F_WRITE, 0 }, { (u64)st, 1, DESC_F_WRITE, 0 } };
    u8 s_split_r = blk_raw(b, r1, 4, st, &len_split_r);
    int ok_split_r = s_split_r == BLK_S_OK;
    for (u64 i = 0; ok_split_r && i < BLOCK / 8; i++)
        ok_split_r = ((u64 *)buf)[i] == tg_pattern(i, final_gen(0));

    /* 2. Write block 1 with header and data in one descriptor. */
    struct blk_hdr *hd = (struct blk_hdr *)buf;
    *hd = (struct blk_hdr){ BLK_T_OUT, 0, 1 * BLOCK_SECTORS };
    fill_pattern(buf + 16, 1, final_gen(1));
    struct desc w2[] = { { (u64)buf, 16 + BLOCK, 0, 0 }, { (u64)st, 1, DESC_F_WRITE, 0 } };
    u8 s_hd = blk_raw(b, w2, 2, st, &len_hd);

    /* 3. Read block 2 with data and status in one descriptor. */
    for (u64 i = 0; i < (BLOCK + 8) / 8; i++)
        ((u64 *)buf)[i] = 0;
    *h = (struct blk_hdr){ BLK_T_IN, 0, 2 * BLOCK_SECTORS };
    buf[BLOCK] = 0xff;
    struct desc r3[] = { { (u64)h, 16, 0, 0 }, { (u64)buf, BLOCK + 1, DESC_F_WRITE, 0 } };
    u8 s_ds = blk_raw(b, r3, 2, buf + BLOCK, &len_ds);
    int ok_ds = s_ds == BLK_S_OK;
    for (u64 i = 0; ok_ds && i < BLOCK / 8; i++)
        ok_ds = ((u64 *)buf)[i] == tg_pattern(2 * (BLOCK / 8) + i, final_gen(2));

    tg_printf(TG "blk layout split-header-write=%u/%u split-header-read=%u/%u/%s "
                 "header+data=%u/%u data+status=%u/%u/%s\n",
              s_split_w, len_split_w, s_split_r, len_split_r, ok_split_r ? "ok" : "bad", s_hd,
              len_hd, s_ds, len_ds, ok_ds ? "ok" : "bad");
    /* Block 1 must hold its pattern whatever happened above. */
    u8 s = blk_one(b, BLK_T_IN, 1 * BLOCK_SECTORS, slot_data(b, 0), BLOCK);
    CHECK(s == BLK_S_OK, "blk %02x.%u: read of block 1: status %u", d->dev, d->fn, s);
    int ok_b1 = 1;
    for (u64 i = 0; ok_b1 && i < BLOCK / 8; i++)
        ok_b1 = ((u64 *)slot_data(b, 0))[i] == tg_pattern(BLOCK / 8 + i, final_gen(1));
    vq_check_device(d);
    CHECK(s_split_w == BLK_S_OK && len_split_w == 1 && ok_split_r && len_split_r == BLOCK + 1 &&
              s_hd == BLK_S_OK && len_hd == 1 && ok_b1 && ok_ds && len_ds == BLOCK + 1,
          "blk %02x.%u: a valid descriptor layout was refused or mishandled", d->dev, d->fn);
    tg_printf(TG "blk layout ok\n");
}

static void blk_test_rw(struct blk *b)
{
    struct vdev *d = b->d;
    u64 limit = word_value("blk-mib", 64) << 11;
    u64 sectors = b->capacity < limit ? b->capacity : limit;
    u64 blocks = sectors / BLOCK_SECTORS;
    CHECK(blocks >= 1, "blk %02x.%u: capacity %lu sectors is too small", d->dev, d->fn,
          b->capacity);
    CHECK(!(d->offered & BLK_F_RO), "blk %02x.%u: writable disk offers F_RO", d->dev, d->fn);

    blk_pass(b, blocks, 0);
    blk_pass(b, blocks, 1);
    blk_pass(b, blocks, 2);

    u8 st = blk_one(b, BLK_T_FLUSH, 0, NULL, 0);
    CHECK(st == BLK_S_OK, "blk %02x.%u: FLUSH status %u", d->dev, d->fn, st);

    char serial[21];
    blk_serial(b, serial);

    /* Beyond the end: wholly, and partly (the last sector plus 7 more). */
    st = blk_one(b, BLK_T_IN, b->capacity, slot_data(b, 0), 512);
    CHECK(st == BLK_S_IOERR, "blk %02x.%u: read at sector %lu (= capacity): status %u, want 1",
          d->dev, d->fn, b->capacity, st);
    st = blk_one(b, BLK_T_IN, b->capacity - 1, slot_data(b, 0), BLOCK);
    CHECK(st == BLK_S_IOERR,
          "blk %02x.%u: read across the end (sector %lu): status %u, want 1", d->dev, d->fn,
          b->capacity - 1, st);
    /* Still working afterwards: the last full block reads back. */
    st = blk_one(b, BLK_T_IN, (blocks - 1) * BLOCK_SECTORS, slot_data(b, 0), BLOCK);
    CHECK(st == BLK_S_OK, "blk %02x.%u: read after the errors: status %u", d->dev, d->fn, st);
    check_pattern(b, slot_data(b, 0), blocks - 1, final_gen(blocks - 1));
    vq_check_device(d);
    if (has_word("blk-layout"))
        blk_test_layouts(b);

    tg_printf(TG "blk ok requests=%lu serial=%s sectors=%lu blocks=%lu kicks=%lu\n", b->requests,
              serial, b->capacity, blocks, b->q->kicks);
}

static void blk_test_ro(struct blk *b)
{
    struct vdev *d = b->d;
    CHECK(d->offered & BLK_F_RO, "blk %02x.%u: read-only disk does not offer F_RO (0x%lx)",
          d->dev, d->fn, d->offered);
    u64 limit = 64ul << 11;
    CHECK(b->capacity <= limit && b->capacity % BLOCK_SECTORS == 0,
          "blk %02x.%u: read-only disk of %lu sectors: want a multiple of 8 up to 64 MiB",
          d->dev, d->fn, b->capacity);
    u64 blocks = b->capacity / BLOCK_SECTORS;
    u64 h = HASH_INIT;
    for (u64 start = 0; start < blocks; start += b->nslots) {
        unsigned n = (unsigned)(blocks - start < b->nslots ? blocks - start : b->nslots);
        for (unsigned s = 0; s < n; s++)
            blk_prepare(b, s, BLK_T_IN, (start + s) * BLOCK_SECTORS, slot_data(b, s), BLOCK,
                        s & 1);
        blk_run(b, n);
        for (unsigned s = 0; s < n; s++) {
            u8 st = *slot_status(b, s);
            CHECK(st == BLK_S_OK, "blk %02x.%u: read of block %lu: status %u", d->dev, d->fn,
                  start + s, st);
            h = hash_words(h, (const u64 *)slot_data(b, s), BLOCK / 8);
        }
    }
    /* Keep a copy of block 0, then try to overwrite it. */
    u8 *keep = slot_data(b, 1), *junk = slot_data(b, 2);
    u8 st = blk_one(b, BLK_T_IN, 0, keep, BLOCK);
    CHECK(st == BLK_S_OK, "blk %02x.%u: read of block 0: status %u", d->dev, d->fn, st);
    for (u64 i = 0; i < BLOCK / 8; i++)
        ((u64 *)junk)[i] = ~((u64 *)keep)[i];
    st = blk_one(b, BLK_T_OUT, 0, junk, BLOCK);
    CHECK(st == BLK_S_IOERR, "blk %02x.%u: write to a read-only disk: status %u, want 1",
          d->dev, d->fn, st);
    st = blk_one(b, BLK_T_IN, 0, junk, BLOCK);
    CHECK(st == BLK_S_OK && memcmp(junk, keep, BLOCK) == 0,
          "blk %02x.%u: block 0 changed by a refused write (status %u)", d->dev, d->fn, st);
    char serial[21];
    blk_serial(b, serial);
    vq_check_device(d);
    tg_printf(TG "blk-ro ok sectors=%lu hash=0x%016lx serial=%s\n", b->capacity, h, serial);
}

static void blk_tests(int ro_only)
{
    unsigned n = 0;
    for (unsigned i = 0; i < ndevs; i++) {
        if (devs[i].type != TYPE_BLOCK)
            continue;
        struct blk b;
        blk_setup(&b, &devs[i]);
        tg_printf(TG "blk dev=00:%02x.%u capacity=%lu features=0x%lx queue=%u\n", devs[i].dev,
                  devs[i].fn, b.capacity, devs[i].offered, b.q->size);
        if (devs[i].offered & BLK_F_RO) {
            blk_test_ro(&b);
        } else {
            CHECK(!ro_only, "blk %02x.%u: blk-ro, but the disk is writable", devs[i].dev,
                  devs[i].fn);
            blk_test_rw(&b);
        }
        /* Leave the device reset: nothing of ours is used after this. */
        wr8(devs[i].common + C_STATUS, 0);
        n++;
    }
    CHECK(n > 0, "no virtio-blk device");
}

/* --- virtio-net ---------------------------------------------------------------------- */

#define NET_F_MAC (1ul << 5)
#define VNET_HDR 12
#define RXBUF 2048
#define ETHERTYPE 0x88b5
#define KIND_GO 1
#define KIND_DATA 2
#define KIND_DONE 3
#define PAYLOAD 64
#define FRAME (14 + PAYLOAD)
#define MAX_SEQ 65536

/* One bit per DATA seq received; dma_alloc'ed (zeroed at CPL 3, not in .bss). */
static u8 *rx_seen;

struct net {
    struct vdev *d;
    struct vq *rx, *tx;
    u8 mac[6];
    u8 *rxbufs;
    u8 *txbufs;
    u64 go, go_count;
    u64 data, dups, other, bad;
    u8 hdr[VNET_HDR];             /* the header of the first DATA frame */
    u16 tx_inflight;
};

static void put32(u8 *p, u32 v)
{
    p[0] = (u8)v;
    p[1] = (u8)(v >> 8);
    p[2] = (u8)(v >> 16);
    p[3] = (u8)(v >> 24);
}

static u32 get32(const u8 *p)
{
    return p[0] | (u32)p[1] << 8 | (u32)p[2] << 16 | (u32)p[3] << 24;
}

static void net_rx_post(struct net *n, u16 id)
{
    n->rx->desc[id] = (struct desc){ (u64)(n->rxbufs + (u64)RXBUF * id), RXBUF, DESC_F_WRITE, 0 };
    vq_push(n->rx, id);
}

static void net_frame(struct net *n, const u8 *hdr, const u8 *f, u32 len)
{
    if (len < 14 + 16 || f[12] != (ETHERTYPE >> 8) || f[13] != (ETHERTYPE & 0xff) ||
        f[14] != 'K' || f[15] != 'T' || f[16] != 'G' || f[17] != '1') {
        n->other++;
        return;
    }
    const u8 *p = f + 14;
    u32 seq = get32(p + 8), count = get32(p + 12);
    switch (p[4]) {
    case KIND_GO:
        if (!n->go++)
            n->go_count = count;
        return;
    case KIND_DATA:
        break;
    default:
        n->other++;
        return;
    }
    if (!n->data && !n->bad && !n->dups)
        memcpy(n->hdr, hdr, VNET_HDR);
    int ok = len == FRAME && seq < MAX_SEQ;
    for (unsigned i = 16; ok && i < PAYLOAD; i++)
        ok = p[i] == (u8)(seq + i);
    if (!ok) {
        n->bad++;
        return;
    }
    if (rx_seen[seq / 8] & (1 << (seq % 8))) {
        n->dups++;
        return;
    }
    rx_seen[seq / 8] |= (u8)(1 << (seq % 8));
    n->data++;
}

/* Takes every received frame, hands its buffer back; returns how many. */
static unsigned net_rx_poll(struct net *n)
{
    struct vq *q = n->rx;
    u16 pending = vq_pending(q);
    for (u16 i = 0; i < pending; i++) {
        volatile struct used_elem *e = &q->used_ring[q->used_idx & (q->size - 1)];
        u32 id = e->id, len = e->len;
        CHECK(id < q->size, "net: rx used id %u", id);
        CHECK(len <= RXBUF, "net: rx used len %u", len);
        if (len < VNET_HDR)
            n->bad++;
        else
            net_frame(n, n->rxbufs + (u64)RXBUF * id, n->rxbufs + (u64)RXBUF * id + VNET_HDR,
                      len - VNET_HDR);
        q->used_idx++;
        net_rx_post(n, (u16)id);
    }
    if (pending)
        vq_kick(q);
    return pending;
}

/* Reaps finished transmissions. */
static void net_tx_reap(struct net *n)
{
    struct vq *q = n->tx;
    u16 pending = vq_pending(q);
    for (u16 i = 0; i < pending; i++) {
        u32 id = q->used_ring[q->used_idx & (q->size - 1)].id;
        CHECK(id < q->size, "net: tx used id %u", id);
        q->used_idx++;
    }
    n->tx_inflight = (u16)(n->tx_inflight - pending);
}

/* Queues one frame (kind, seq, count) on the tx ring; does not kick. */
static void net_tx_push(struct net *n, u8 kind, u32 seq, u32 count)
{
    struct vq *q = n->tx;
    u16 id = q->avail_idx & (q->size - 1);
    u8 *b = n->txbufs + (u64)RXBUF * id;
    for (unsigned i = 0; i < VNET_HDR; i++)
        b[i] = 0;
    u8 *f = b + VNET_HDR;
    for (unsigned i = 0; i < 6; i++) {
        f[i] = 0xff;
        f[6 + i] = n->mac[i];
    }
    f[12] = ETHERTYPE >> 8;
    f[13] = ETHERTYPE & 0xff;
    u8 *p = f + 14;
    p[0] = 'K';
    p[1] = 'T';
    p[2] = 'G';
    p[3] = '1';
    p[4] = kind;
    p[5] = p[6] = p[7] = 0;
    put32(p + 8, seq);
    put32(p + 12, count);
    for (unsigned i = 16; i < PAYLOAD; i++)
        p[i] = (u8)(seq + i);
    q->desc[id] = (struct desc){ (u64)b, VNET_HDR + FRAME, 0, 0 };
    vq_push(q, id);
    n->tx_inflight++;
}

/* Sends frames first..first+count-1 of `kind`, a batch at a time. */
static void net_send(struct net *n, u8 kind, u32 total, u32 count_field)
{
    u32 batch = n->tx->size / 2;
    for (u32 seq = 0; seq < total;) {
        u32 k = total - seq < batch ? total - seq : batch;
        for (u32 i = 0; i < k; i++)
            net_tx_push(n, kind, seq + i, count_field);
        vq_kick(n->tx);
        u64 end = deadline(10);
        while (n->tx_inflight) {
            net_tx_reap(n);
            net_rx_poll(n);
            if (rdtsc() > end) {
                vq_check_device(n->d);
                FAIL("net: %u frames not completed by tx", n->tx_inflight);
            }
            cpu_relax();
        }
        seq += k;
    }
}

/* Finds the first virtio-net card, starts it, posts every receive buffer. */
static void net_open(struct net *n)
{
    struct vdev *d = NULL;
    for (unsigned i = 0; i < ndevs && !d; i++)
        if (devs[i].type == TYPE_NET)
            d = &devs[i];
    CHECK(d, "no virtio-net device");
    n->d = d;
    virtio_begin(d, NET_F_MAC);
    CHECK(d->accepted & NET_F_MAC, "net: MAC not offered (0x%lx)", d->offered);
    virtio_queue(d, 0);
    virtio_queue(d, 1);
    n->rx = &d->q[0];
    n->tx = &d->q[1];
    n->rxbufs = dma_alloc((u64)RXBUF * n->rx->size);
    n->txbufs = dma_alloc((u64)RXBUF * n->tx->size);
    rx_seen = dma_alloc(MAX_SEQ / 8);
    for (unsigned i = 0; i < 6; i++)
        n->mac[i] = rd8(d->devcfg + i);
    for (u16 i = 0; i < n->rx->size; i++)
        net_rx_post(n, i);
    virtio_driver_ok(d);
    vq_kick(n->rx);
    tg_printf(TG "net ready mac=%02x:%02x:%02x:%02x:%02x:%02x\n", n->mac[0], n->mac[1],
              n->mac[2], n->mac[3], n->mac[4], n->mac[5]);
}

/* Waits (30 s at most) for the host's GO frame. */
static void net_wait_go(struct net *n)
{
    u64 end = deadline(30);
    while (!n->go) {
        if (!net_rx_poll(n)) {
            cpu_relax();
            CHECK(rdtsc() < end, "net: no GO frame from the host (other=%lu)", n->other);
        }
    }
}

static void net_test(void)
{
    struct net n = { 0 };
    net_open(&n);
    struct vdev *d = n.d;
    net_wait_go(&n);
    u64 want_rx = n.go_count;
    CHECK(want_rx <= MAX_SEQ, "net: host wants to send %lu frames", want_rx);
    u32 ntx = (u32)word_value("net-tx", 1000);
    CHECK(ntx <= MAX_SEQ, "net-tx=%u is too many", ntx);

    net_send(&n, KIND_DATA, ntx, ntx);
    net_send(&n, KIND_DONE, 1, ntx);

    u64 end = deadline(30);
    while (n.data < want_rx) {
        if (!net_rx_poll(&n)) {
            cpu_relax();
            CHECK(rdtsc() < end, "net: received %lu of %lu frames (bad=%lu dups=%lu other=%lu)",
                  n.data, want_rx, n.bad, n.dups, n.other);
        }
    }
    CHECK(n.bad == 0, "net: %lu malformed frames", n.bad);
    vq_check_device(d);
    tg_printf(TG "net tx=%u rx=%lu\n", ntx, n.data);
    tg_printf(TG "net other=%lu dups=%lu go=%lu kicks=%lu/%lu rx-hdr=", n.other, n.dups, n.go,
              n.rx->kicks, n.tx->kicks);
    for (unsigned i = 0; i < VNET_HDR; i++)
        tg_printf("%02x", n.hdr[i]);
    tg_printf("\n");
    wr8(d->common + C_STATUS, 0);
}

/* --- benchmarks ------------------------------------------------------------------------ */

/*
 * The bench modes measure their own elapsed time with the TSC, calibrated
 * against PIT channel 2 (1.193182 MHz): mode 0 with a count of 0xFFFF (about
 * 54.9 ms), gate on through port 0x61, polling OUT2 (port 0x61 bit 5). Each
 * poll is a VM exit, so an edge is seen up to one exit late: a few tens of
 * µs in 55 ms here, more when the host preempts the vCPU: the shortest of
 * five rounds is taken.
 */
#define PIT_HZ 1193182ul
#define PIT_COUNT 0xfffful

static u64 pit_round(void)
{
    outb(0x61, (u8)((inb(0x61) & ~0x02) | 0x01));
    outb(0x43, 0xb0); /* channel 2, lobyte/hibyte, mode 0, binary */
    outb(0x42, (u8)PIT_COUNT);
    outb(0x42, (u8)(PIT_COUNT >> 8));
    u64 t0 = rdtsc(), end = deadline(2);
    while (!(inb(0x61) & 0x20))
        CHECK(rdtsc() < end, "bench: PIT channel 2 never reached its count (port 0x61)");
    return rdtsc() - t0;
}

/* TSC ticks per millisecond. */
static u64 tsc_khz(void)
{
    u64 best = ~0ul;
    for (unsigned i = 0; i < 5; i++) {
        u64 r = pit_round();
        if (r < best)
            best = r;
    }
    return best * PIT_HZ / PIT_COUNT / 1000;
}

static void bench_line(const char *what, u64 requests, unsigned qd, u64 bytes, u64 cycles,
                       u64 khz, u64 kicks)
{
    u64 us = khz ? cycles * 1000 / khz : 0;
    tg_printf(TG "bench %s requests=%lu qd=%u bytes=%lu cycles=%lu tsc-khz=%lu us=%lu "
                 "per-s=%lu bytes-per-us=%lu kicks=%lu\n",
              what, requests, qd, bytes, cycles, khz, us, us ? requests * 1000000 / us : 0,
              us ? bytes / us : 0, kicks);
}

/*
 * Rings the doorbell after a batch. With `bench-no-notify` the driver
 * honours VRING_USED_F_NO_NOTIFY (skips the doorbell while the device says
 * it is processing the queue anyway), as Linux does without EVENT_IDX;
 * without it, every batch is notified, as in the tests above.
 */
static int bench_no_notify;

static void vq_kick_if_needed(struct vq *q)
{
    if (!bench_no_notify) {
        vq_kick(q);
        return;
    }
    mb();
    q->avail[1] = q->avail_idx;
    mb();
    if (!(q->used[0] & 1)) {
        wr16(q->notify, q->index);
        q->kicks++;
    }
}

static u64 bench_rng = 0x2545f4914f6cdd1dul;

static u64 xorshift(void)
{
    u64 x = bench_rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return bench_rng = x;
}

#define MIB (1ul << 20)
#define BENCH_RAND 0
#define BENCH_SEQREAD 1
#define BENCH_SEQWRITE 2

/*
 * `total` requests of `len` bytes (one data descriptor each), up to `qd` in
 * flight: a finished request is replaced at once, the doorbell rung once
 * per batch of replacements. Random 4 KiB-aligned offsets over the whole
 * disk for BENCH_RAND, else consecutive ones (wrapping at the end); a
 * sequential write ends with a FLUSH, inside the measured time.
 */
static void blk_bench_io(struct blk *b, int kind, u64 total, unsigned qd, u64 khz)
{
    static const char *const names[] = { "blk-rand", "blk-seqread", "blk-seqwrite" };
    struct vdev *d = b->d;
    struct vq *q = b->q;
    u32 len = kind == BENCH_RAND ? (u32)BLOCK : (u32)MIB;
    u32 type = kind == BENCH_SEQWRITE ? BLK_T_OUT : BLK_T_IN;
    u64 units = b->capacity / (len / 512);
    CHECK(units >= 1, "bench: disk of %lu sectors is too small", b->capacity);
    CHECK(kind != BENCH_SEQWRITE || !(d->offered & BLK_F_RO), "bench: the disk is read-only");
    if (qd > b->nslots)
        qd = (unsigned)b->nslots;
    if (kind != BENCH_RAND && qd > 8)
        qd = 8; /* 1 MiB buffers in the 12 MiB of DMA memory */
    if (qd < 1)
        qd = 1;
    u8 *big = NULL;
    if (kind != BENCH_RAND) {
        big = dma_alloc((u64)qd * MIB);
        for (u64 i = 0; i < (u64)qd * MIB / 8; i++)
            ((u64 *)big)[i] = tg_pattern(i, 0x42);
    }
    u64 kicks0 = q->kicks, submitted = 0, done = 0;
    u64 t0 = rdtsc();
    for (unsigned s = 0; s < qd && submitted < total; s++, submitted++) {
        u64 unit = kind == BENCH_RAND ? xorshift() % units : submitted % units;
        blk_prepare(b, s, type, unit * (len / 512), big ? big + (u64)s * MIB : slot_data(b, s),
                    len, 0);
    }
    if (submitted)
        vq_kick(q);
    u64 end = deadline(10);
    while (done < total) {
        u16 pending = vq_pending(q);
        if (!pending) {
            cpu_relax();
            if (rdtsc() > end) {
                vq_check_device(d);
                FAIL("bench: %s: no completion (%lu of %lu done)", names[kind], done, total);
            }
            continue;
        }
        unsigned pushed = 0;
        for (u16 i = 0; i < pending; i++) {
            volatile struct used_elem *e = &q->used_ring[q->used_idx & (q->size - 1)];
            u32 id = e->id, ulen = e->len;
            unsigned s = id / 4;
            CHECK(id % 4 == 0 && s < qd, "bench: used id %u not a request head", id);
            u8 st = *slot_status(b, s);
            CHECK(st == BLK_S_OK, "bench: %s request: status %u", names[kind], st);
            CHECK(ulen == (type == BLK_T_IN ? len + 1 : 1), "bench: %s request: used len %u",
                  names[kind], ulen);
            q->used_idx++;
            done++;
            if (submitted < total) {
                u64 unit = kind == BENCH_RAND ? xorshift() % units : submitted % units;
                blk_prepare(b, s, type, unit * (len / 512),
                            big ? big + (u64)s * MIB : slot_data(b, s), len, 0);
                submitted++;
                pushed++;
            }
        }
        if (pushed)
            vq_kick_if_needed(q);
        end = deadline(10);
    }
    if (kind == BENCH_SEQWRITE && total) {
        u8 st = blk_one(b, BLK_T_FLUSH, 0, NULL, 0);
        CHECK(st == BLK_S_OK, "bench: FLUSH status %u", st);
    }
    u64 cycles = rdtsc() - t0;
    vq_check_device(d);
    bench_line(names[kind], total, qd, total * len, cycles, khz, q->kicks - kicks0);
}

static void blk_bench(u64 khz)
{
    struct vdev *d = NULL;
    for (unsigned i = 0; i < ndevs && !d; i++)
        if (devs[i].type == TYPE_BLOCK)
            d = &devs[i];
    CHECK(d, "no virtio-blk device");
    struct blk b;
    blk_setup(&b, d);
    tg_printf(TG "blk dev=00:%02x.%u capacity=%lu features=0x%lx queue=%u\n", d->dev, d->fn,
              b.capacity, d->offered, b.q->size);
    if (has_word("blk-bench-rand"))
        blk_bench_io(&b, BENCH_RAND, word_value("blk-bench-rand", 0),
                     (unsigned)word_value("qd", 32), khz);
    if (has_word("blk-bench-seqread"))
        blk_bench_io(&b, BENCH_SEQREAD, word_value("blk-bench-seqread", 0),
                     (unsigned)word_value("qd", 4), khz);
    if (has_word("blk-bench-seqwrite"))
        blk_bench_io(&b, BENCH_SEQWRITE, word_value("blk-bench-seqwrite", 0),
                     (unsigned)word_value("qd", 4), khz);
    wr8(d->common + C_STATUS, 0);
}

#define KIND_BULK 4
#define BULK_FRAME 1514

/*
 * net-bench-tx=N: after the host's GO, N frames of BULK_FRAME bytes
 * (broadcast, ethertype 0x88b5, "KTG1", kind 4, seq), the tx ring kept as
 * full as it goes, then one DONE frame (count N), outside the measured time.
 */
static void net_bench(u64 khz)
{
    struct net n = { 0 };
    net_open(&n);
    net_wait_go(&n);
    u32 total = (u32)word_value("net-bench-tx", 0);
    struct vq *q = n.tx;
    for (u16 id = 0; id < q->size; id++) {
        u8 *f = n.txbufs + (u64)RXBUF * id + VNET_HDR;
        for (unsigned i = 0; i < 6; i++) {
            f[i] = 0xff;
            f[6 + i] = n.mac[i];
        }
        f[12] = ETHERTYPE >> 8;
        f[13] = ETHERTYPE & 0xff;
        u8 *p = f + 14;
        p[0] = 'K';
        p[1] = 'T';
        p[2] = 'G';
        p[3] = '1';
        p[4] = KIND_BULK;
        p[5] = p[6] = p[7] = 0;
        for (unsigned i = 16; i < BULK_FRAME - 14; i++)
            p[i] = (u8)i;
    }
    u64 kicks0 = q->kicks;
    u32 sent = 0;
    u64 t0 = rdtsc(), end = deadline(10);
    while (sent < total || n.tx_inflight) {
        u16 before = n.tx_inflight;
        net_tx_reap(&n);
        unsigned pushed = 0;
        while (sent < total && n.tx_inflight < q->size) {
            u16 id = q->avail_idx & (q->size - 1);
            u8 *b = n.txbufs + (u64)RXBUF * id;
            put32(b + VNET_HDR + 14 + 8, sent);
            put32(b + VNET_HDR + 14 + 12, total);
            q->desc[id] = (struct desc){ (u64)b, VNET_HDR + BULK_FRAME, 0, 0 };
            vq_push(q, id);
            n.tx_inflight++;
            sent++;
            pushed++;
        }
        if (pushed)
            vq_kick_if_needed(q);
        if (pushed || n.tx_inflight != before) {
            end = deadline(10);
        } else {
            cpu_relax();
            if (rdtsc() > end) {
                vq_check_device(n.d);
                FAIL("bench: net: %u frames not completed by tx", n.tx_inflight);
            }
        }
    }
    u64 cycles = rdtsc() - t0;
    net_send(&n, KIND_DONE, 1, total);
    vq_check_device(n.d);
    bench_line("net-tx", total, q->size, (u64)total * BULK_FRAME, cycles, khz,
               q->kicks - kicks0 - 1);
    wr8(n.d->common + C_STATUS, 0);
}

/* --- main ------------------------------------------------------------------------------ */

static u64 user_main(void)
{
    if (__builtin_setjmp(fail_jmp))
        return 1;
    const struct hvm_start_info *si = tg_start_info;
    if (si && si->cmdline_paddr && si->cmdline_paddr < 0x100000000ul)
        cmdline = (const char *)si->cmdline_paddr;
    CHECK((read_cs() & 3) == 3, "not at CPL 3");
    u64 t0 = rdtsc();
    CHECK(rdtsc() != t0 || rdtsc() != t0, "the TSC does not advance");

    pci_scan();
    int blk = has_word("blk"), blk_ro = has_word("blk-ro"), net = has_word("net");
    if (blk || blk_ro)
        blk_tests(blk_ro && !blk);
    if (net)
        net_test();
    int blk_bench_mode = has_word("blk-bench-rand") || has_word("blk-bench-seqread") ||
                         has_word("blk-bench-seqwrite");
    int net_bench_mode = has_word("net-bench-tx");
    if (blk_bench_mode || net_bench_mode) {
        bench_no_notify = has_word("bench-no-notify");
        u64 khz = tsc_khz();
        if (blk_bench_mode)
            blk_bench(khz);
        if (net_bench_mode)
            net_bench(khz);
    }
    if (!blk && !blk_ro && !net && !blk_bench_mode && !net_bench_mode)
        tg_printf(TG "virtio nothing to test (cmdline: blk, blk-ro, net)\n");
    tg_printf(TG "virtio ok\n");
    return 0;
}

void main(const struct hvm_start_info *si)
{
    (void)si;
    if (enter_user(user_main) != 0)
        fail(DEBUG_EXIT_GUEST_FAILED);
}
