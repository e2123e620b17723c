/*
 * kapsel-testguest runtime: what every guest program can use.
 *
 * The runtime (entry.S, rt.c, acpi.c) boots from the PVH entry point into
 * 64-bit long mode with identity-mapped 4 GiB, a GDT/TSS/IDT, a serial
 * console on COM1, and then calls the guest's main(). When main returns the
 * machine is powered off through ACPI.
 */
#ifndef KAPSEL_TG_H
#define KAPSEL_TG_H

#include "layout.h"
#include <stdarg.h>

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;
typedef long i64;
typedef unsigned long usize;

#define NULL ((void *)0)
#define NORETURN __attribute__((noreturn))
#define PACKED __attribute__((packed))

/* Every line a guest prints starts with this, so tests can grep for it. */
#define TG "kapsel-testguest: "

/* struct hvm_start_info from Xen's public/arch-x86/hvm/start_info.h. */
#define HVM_START_MAGIC 0x336ec578u
struct hvm_start_info {
    u32 magic;
    u32 version;
    u32 flags;
    u32 nr_modules;
    u64 modlist_paddr;
    u64 cmdline_paddr;
    u64 rsdp_paddr;
    /* The fields below exist from version 1 on. */
    u64 memmap_paddr;
    u32 memmap_entries;
    u32 reserved;
};

/* The start info handed over in %ebx (NULL if the magic did not match). */
extern const struct hvm_start_info *tg_start_info;

/* Implemented by every guest program. Returning powers the machine off. */
void main(const struct hvm_start_info *si);

/* --- port I/O and CPU helpers ------------------------------------------ */

static inline void outb(u16 port, u8 v)
{
    __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port));
}

static inline void outw(u16 port, u16 v)
{
    __asm__ volatile("outw %0, %1" : : "a"(v), "Nd"(port));
}

static inline u8 inb(u16 port)
{
    u8 v;
    __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}

static inline void cpu_relax(void)
{
    __asm__ volatile("pause" ::: "memory");
}

static inline u16 read_cs(void)
{
    u16 cs;
    __asm__ volatile("mov %%cs, %0" : "=r"(cs));
    return cs;
}

static inline NORETURN void halt_forever(void)
{
    for (;;)
        __asm__ volatile("cli; hlt");
}

static inline u32 mmio_read32(u64 addr)
{
    return *(volatile u32 *)addr;
}

static inline void mmio_write32(u64 addr, u32 v)
{
    *(volatile u32 *)addr = v;
}

/*
 * A delay of at least about a microsecond per unit on any machine: a read
 * of the POST port 0x80, the classic ISA I/O delay (a VM exit under KVM).
 */
void io_delay(u32 units);

/* --- serial console (COM1) --------------------------------------------- */

void serial_init(void);
void serial_putc(char c);
/* Writes a string, turning "\n" into "\r\n". No locking. */
void serial_puts(const char *s);
/* printf subset: %s %c %d %u %x %lu %ld %lx %%, with optional 0-padding
 * width ("%02u", "%016lx"). Holds the console lock for the whole call, so
 * lines from several CPUs do not interleave. */
void tg_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Loads the runtime's IDT on this CPU (application processors call it). */
void idt_load(void);
/* Points interrupt vector vec (32..63) at stub, an assembly routine that
 * ends in iretq. */
void idt_set_interrupt(unsigned vec, void (*stub)(void));

/* --- privilege levels -------------------------------------------------- */

/*
 * Runs fn at CPL 3 on the user stack and returns fn's return value once fn
 * returns (back at CPL 0 through a #UD the runtime recognises). Interrupts stay disabled. fn may
 * use port I/O: RFLAGS.IOPL is 3 and the TSS I/O bitmap allows every port
 * as well (either suffices on hardware; some emulators honour only one).
 */
u64 enter_user(u64 (*fn)(void));

/* --- ACPI ---------------------------------------------------------------- */

struct acpi_sdt_header {
    char signature[4];
    u32 length;
    u8 revision;
    u8 checksum;
    char oem_id[6];
    char oem_table_id[8];
    u32 oem_revision;
    u32 creator_id;
    u32 creator_revision;
} PACKED;

/* Finds a table listed in the XSDT/RSDT by signature, checksum verified. */
const struct acpi_sdt_header *acpi_find_table(const char *signature);
/* Parses what power-off needs; done lazily by acpi_poweroff() otherwise.
 * Guests that overwrite low memory call this first. */
void acpi_prepare_poweroff(void);

/* --- ending the guest --------------------------------------------------- */

/* isa-debug-exit codes (QEMU exits with (code << 1) | 1). */
#define DEBUG_EXIT_PORT 0xf4
#define DEBUG_EXIT_EXCEPTION 0x20
#define DEBUG_EXIT_POWEROFF_FAILED 0x31
#define DEBUG_EXIT_RESET_FAILED 0x32
#define DEBUG_EXIT_GUEST_FAILED 0x33

/* ACPI S5 power-off; prints "poweroff failed" and stops if that fails. */
NORETURN void poweroff(void);
/* Reports failure: isa-debug-exit with code, then ACPI power-off. */
NORETURN void fail(u8 code);

/* --- libc pieces the compiler may call ----------------------------------- */

void *memcpy(void *dst, const void *src, usize n);
void *memset(void *dst, int c, usize n);
void *memmove(void *dst, const void *src, usize n);
int memcmp(const void *a, const void *b, usize n);

/*
 * -ffreestanding turns the compiler's knowledge of these off; turn it back
 * on so fixed-size copies become plain loads (every instruction counts where
 * CPL 0 is emulated). rt.c, which defines them, opts out.
 */
#ifndef TG_DEFINE_LIBC
#define memcpy(d, s, n) __builtin_memcpy(d, s, n)
#define memset(d, c, n) __builtin_memset(d, c, n)
#define memmove(d, s, n) __builtin_memmove(d, s, n)
#define memcmp(a, b, n) __builtin_memcmp(a, b, n)
#endif

#endif
