/* The C half of the runtime: start-up, descriptor tables, console, libc bits. */
#define TG_DEFINE_LIBC
#include "tg.h"

const struct hvm_start_info *tg_start_info;

/* --- descriptor tables --------------------------------------------------- */

struct idt_gate {
    u16 offset_low;
    u16 selector;
    u8 ist;
    u8 type_attr;
    u16 offset_mid;
    u32 offset_high;
    u32 reserved;
} PACKED;

struct tss64 {
    u32 reserved0;
    u64 rsp[3];
    u64 reserved1;
    u64 ist[7];
    u64 reserved2;
    u16 reserved3;
    u16 iomap_base;
    /* One bit per port, 0 = allowed; the extra byte ends the map (all ones). */
    u8 iomap[65536 / 8 + 1];
} PACKED;

struct dt_ptr {
    u16 limit;
    u64 base;
} PACKED;

/* Exceptions use the first 32 gates; guests may add interrupts up to 63. */
#define IDT_ENTRIES 64
#define EXCEPTION_GATES 32
#define GATE_INTERRUPT 0x8e
#define TSS_IOMAP_OFFSET 104

extern u64 gdt[];
extern char exception_stubs[];
extern char interrupt_stack[];

static struct idt_gate idt[IDT_ENTRIES];
/* In .data, not .bss: the 8 KiB I/O bitmap then costs no zeroing at boot. */
static struct tss64 tss __attribute__((section(".data.tss")));
/* Set while handling an exception, so a fault in the power-off path does not recurse. */
static volatile int in_exception;

static void set_gate(unsigned vec, u64 handler)
{
    struct idt_gate *g = &idt[vec];
    g->offset_low = (u16)handler;
    g->selector = KERNEL_CS64;
    g->ist = 0;
    g->type_attr = GATE_INTERRUPT;
    g->offset_mid = (u16)(handler >> 16);
    g->offset_high = (u32)(handler >> 32);
    g->reserved = 0;
}

void idt_set_interrupt(unsigned vec, void (*stub)(void))
{
    if (vec >= EXCEPTION_GATES && vec < IDT_ENTRIES)
        set_gate(vec, (u64)stub);
}

void idt_load(void)
{
    struct dt_ptr p = { sizeof(idt) - 1, (u64)idt };
    __asm__ volatile("lidt %0" : : "m"(p));
}

static void idt_init(void)
{
    for (unsigned v = 0; v < EXCEPTION_GATES; v++)
        set_gate(v, (u64)exception_stubs + 16 * v);
    idt_load();
}

static void tss_init(void)
{
    u64 base = (u64)&tss;
    u64 limit = sizeof(tss) - 1;

    tss.rsp[0] = (u64)interrupt_stack + STACK_SIZE;
    /*
     * An all-zero I/O bitmap grants CPL 3 every port, as IOPL 3 does. Both,
     * because this CI host's KVM (which emulates CPL 0) clears IOPL on the
     * way to CPL 3 but honours the bitmap.
     */
    tss.iomap_base = TSS_IOMAP_OFFSET;
    tss.iomap[sizeof(tss.iomap) - 1] = 0xff;
    /* Available 64-bit TSS (type 9), present. */
    gdt[TSS_SEL / 8] = (limit & 0xffff) | ((base & 0xffffff) << 16) | (0x89ul << 40) |
                       (((limit >> 16) & 0xf) << 48) | (((base >> 24) & 0xff) << 56);
    gdt[TSS_SEL / 8 + 1] = base >> 32;
    __asm__ volatile("ltr %w0" : : "r"(TSS_SEL));
}

NORETURN void rt_main(const struct hvm_start_info *si)
{
    serial_init();
    idt_init();
    tss_init();
    if (si && si->magic == HVM_START_MAGIC) {
        tg_start_info = si;
    } else {
        tg_printf(TG "warning: no hvm_start_info (ebx=0x%lx)\n", (u64)si);
    }
    main(tg_start_info);
    poweroff();
}

static volatile int console_lock;

NORETURN void rt_exception(u64 vector, u64 error, u64 rip, u64 cs, u64 rflags)
{
    u64 cr2;

    __asm__ volatile("mov %%cr2, %0" : "=r"(cr2));
    if (in_exception) {
        /* Faulted while reporting a fault: stop without touching ACPI again. */
        outb(DEBUG_EXIT_PORT, DEBUG_EXIT_EXCEPTION);
        halt_forever();
    }
    in_exception = 1;
    /* The fault may have hit while the console lock was held: take it over. */
    __atomic_store_n(&console_lock, 0, __ATOMIC_RELEASE);
    tg_printf(TG "EXCEPTION vector=%lu rip=0x%lx err=0x%lx", vector, rip, error);
    if (vector == 14)
        tg_printf(" cr2=0x%lx", cr2);
    tg_printf(" cpl=%lu rflags=0x%lx\n", cs & 3, rflags);
    fail(DEBUG_EXIT_EXCEPTION);
}

NORETURN void fail(u8 code)
{
    outb(DEBUG_EXIT_PORT, code);
    poweroff();
}

void io_delay(u32 units)
{
    while (units--)
        (void)inb(0x80);
}

/* --- serial console ------------------------------------------------------ */

#define COM1 0x3f8
#define UART_THR 0      /* transmit holding register (DLAB 0) */
#define UART_IER 1      /* interrupt enable (DLAB 0) */
#define UART_DLL 0      /* divisor latch low (DLAB 1) */
#define UART_DLM 1      /* divisor latch high (DLAB 1) */
#define UART_FCR 2      /* FIFO control */
#define UART_LCR 3      /* line control */
#define UART_MCR 4      /* modem control */
#define UART_LSR 5      /* line status */
#define LCR_8N1 0x03
#define LCR_DLAB 0x80
#define MCR_DTR_RTS 0x03
#define FCR_ENABLE_CLEAR 0x07
#define LSR_THRE 0x20   /* transmit holding register empty */

void serial_init(void)
{
    outb(COM1 + UART_IER, 0);           /* no interrupts */
    outb(COM1 + UART_LCR, LCR_DLAB);
    outb(COM1 + UART_DLL, 1);           /* 115200 baud */
    outb(COM1 + UART_DLM, 0);
    outb(COM1 + UART_LCR, LCR_8N1);
    outb(COM1 + UART_FCR, FCR_ENABLE_CLEAR);
    outb(COM1 + UART_MCR, MCR_DTR_RTS);
}

void serial_putc(char c)
{
    while (!(inb(COM1 + UART_LSR) & LSR_THRE))
        cpu_relax();
    outb(COM1 + UART_THR, (u8)c);
}

void serial_puts(const char *s)
{
    for (; *s; s++) {
        if (*s == '\n')
            serial_putc('\r');
        serial_putc(*s);
    }
}

static void put_unsigned(u64 v, unsigned base, unsigned width, char pad)
{
    char buf[24];
    unsigned n = 0;

    do {
        unsigned d = (unsigned)(v % base);
        buf[n++] = (char)(d < 10 ? '0' + d : 'a' + d - 10);
        v /= base;
    } while (v);
    while (n < width && n < sizeof(buf))
        buf[n++] = pad;
    while (n)
        serial_putc(buf[--n]);
}

void tg_printf(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    while (__atomic_exchange_n(&console_lock, 1, __ATOMIC_ACQUIRE))
        cpu_relax();
    for (const char *p = fmt; *p; p++) {
        if (*p != '%') {
            if (*p == '\n')
                serial_putc('\r');
            serial_putc(*p);
            continue;
        }
        p++;
        char pad = ' ';
        unsigned width = 0;
        int is_long = 0;
        if (*p == '0') {
            pad = '0';
            p++;
        }
        while (*p >= '0' && *p <= '9')
            width = width * 10 + (unsigned)(*p++ - '0');
        if (*p == 'l') {
            is_long = 1;
            p++;
        }
        switch (*p) {
        case 's': {
            const char *s = va_arg(ap, const char *);
            serial_puts(s ? s : "(null)");
            break;
        }
        case 'c':
            serial_putc((char)va_arg(ap, int));
            break;
        case 'd': {
            i64 v = is_long ? va_arg(ap, i64) : va_arg(ap, int);
            if (v < 0) {
                serial_putc('-');
                v = -v;
            }
            put_unsigned((u64)v, 10, width, pad);
            break;
        }
        case 'u':
        case 'x': {
            u64 v = is_long ? va_arg(ap, u64) : va_arg(ap, unsigned);
            put_unsigned(v, *p == 'u' ? 10 : 16, width, pad);
            break;
        }
        case '%':
            serial_putc('%');
            break;
        case '\0':
            p--;
            break;
        default:
            serial_putc('%');
            serial_putc(*p);
            break;
        }
    }
    __atomic_store_n(&console_lock, 0, __ATOMIC_RELEASE);
    va_end(ap);
}

/* --- libc ---------------------------------------------------------------- */

void *memcpy(void *dst, const void *src, usize n)
{
    u8 *d = dst;
    const u8 *s = src;
    while (n--)
        *d++ = *s++;
    return dst;
}

void *memmove(void *dst, const void *src, usize n)
{
    u8 *d = dst;
    const u8 *s = src;
    if (d < s) {
        while (n--)
            *d++ = *s++;
    } else {
        while (n--)
            d[n] = s[n];
    }
    return dst;
}

void *memset(void *dst, int c, usize n)
{
    u8 *d = dst;
    while (n--)
        *d++ = (u8)c;
    return dst;
}

int memcmp(const void *a, const void *b, usize n)
{
    const u8 *x = a, *y = b;
    for (; n; n--, x++, y++) {
        if (*x != *y)
            return *x < *y ? -1 : 1;
    }
    return 0;
}
