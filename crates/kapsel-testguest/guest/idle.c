/*
 * idle: a guest that waits, like an idle OS, for the daemon's tests and
 * benchmarks. It prints "idle ready", then sleeps in hlt with interrupts on:
 * serial input (IRQ 4) is echoed, a line "poweroff" powers the machine off,
 * and the ACPI power button (the GED's GSI 9) prints "power button" and
 * powers off. It uses no CPU while nothing happens.
 */
#include "tg.h"

#define COM1 0x3f8
#define UART_RBR 0     /* receive buffer */
#define UART_IER 1     /* interrupt enable */
#define UART_MCR 4     /* modem control */
#define UART_LSR 5     /* line status */
#define IER_RX_AVAILABLE 0x01
#define MCR_DTR_RTS_OUT2 0x0b /* OUT2 gates the IRQ line on PCs */
#define LSR_DATA_READY 0x01

#define PIC1_DATA 0x21
#define PIC2_DATA 0xa1

#define IOAPIC_BASE 0xfec00000ul
#define IOAPIC_REGSEL 0x00
#define IOAPIC_WIN 0x10
#define IOAPIC_REDTBL(pin) (0x10 + 2 * (pin))

#define LAPIC_BASE 0xfee00000ul
#define LAPIC_ID 0x20
#define LAPIC_EOI 0xb0
#define LAPIC_SVR 0xf0
#define SVR_ENABLE 0x100
#define SPURIOUS_VECTOR 0x3f

#define UART_GSI 4
#define GED_GSI 9
#define UART_VECTOR 0x30
#define GED_VECTOR 0x31

/* Set by the interrupt stubs below. */
volatile u32 idle_uart_irq;
volatile u32 idle_button_irq;

/* Each stub notes its interrupt, signals end-of-interrupt to the LAPIC and
 * returns; the work happens in main with interrupts off. */
__asm__(".text\n"
        ".globl idle_uart_stub\n"
        "idle_uart_stub:\n"
        "    push %rax\n"
        "    movl $1, idle_uart_irq(%rip)\n"
        "    movl $0xfee000b0, %eax\n"
        "    movl $0, (%rax)\n"
        "    pop %rax\n"
        "    iretq\n"
        ".globl idle_button_stub\n"
        "idle_button_stub:\n"
        "    push %rax\n"
        "    movl $1, idle_button_irq(%rip)\n"
        "    movl $0xfee000b0, %eax\n"
        "    movl $0, (%rax)\n"
        "    pop %rax\n"
        "    iretq\n"
        ".globl idle_spurious_stub\n"
        "idle_spurious_stub:\n"
        "    iretq\n");
void idle_uart_stub(void);
void idle_button_stub(void);
void idle_spurious_stub(void);

static void ioapic_write(u32 reg, u32 value)
{
    mmio_write32(IOAPIC_BASE + IOAPIC_REGSEL, reg);
    mmio_write32(IOAPIC_BASE + IOAPIC_WIN, value);
}

/* Edge-triggered, active high, fixed delivery to this CPU. */
static void route(u32 gsi, u32 vector, u32 apic_id)
{
    ioapic_write(IOAPIC_REDTBL(gsi) + 1, apic_id << 24);
    ioapic_write(IOAPIC_REDTBL(gsi), vector);
}

static int is_poweroff(const char *line, u32 len)
{
    const char *want = "poweroff";
    u32 i = 0;
    for (; i < len && want[i]; i++)
        if (line[i] != want[i])
            return 0;
    return i == len && want[i] == 0;
}

void main(const struct hvm_start_info *si)
{
    (void)si;
    char line[64];
    u32 len = 0;

    acpi_prepare_poweroff();
    idt_set_interrupt(UART_VECTOR, idle_uart_stub);
    idt_set_interrupt(GED_VECTOR, idle_button_stub);
    idt_set_interrupt(SPURIOUS_VECTOR, idle_spurious_stub);
    idt_load();

    outb(PIC1_DATA, 0xff); /* the 8259s stay masked: the IOAPIC routes */
    outb(PIC2_DATA, 0xff);
    u32 apic_id = mmio_read32(LAPIC_BASE + LAPIC_ID) >> 24;
    mmio_write32(LAPIC_BASE + LAPIC_SVR, SVR_ENABLE | SPURIOUS_VECTOR);
    route(UART_GSI, UART_VECTOR, apic_id);
    route(GED_GSI, GED_VECTOR, apic_id);
    outb(COM1 + UART_MCR, MCR_DTR_RTS_OUT2);
    outb(COM1 + UART_IER, IER_RX_AVAILABLE);

    serial_puts(TG "idle ready\n");
    for (;;) {
        /* sti takes effect after hlt starts: no wake-up is lost. */
        __asm__ volatile("cli");
        if (!idle_uart_irq && !idle_button_irq)
            __asm__ volatile("sti; hlt; cli" ::: "memory");
        if (idle_button_irq) {
            serial_puts(TG "power button\n");
            return;
        }
        idle_uart_irq = 0;
        while (inb(COM1 + UART_LSR) & LSR_DATA_READY) {
            char c = (char)inb(COM1 + UART_RBR);
            if (c == '\r' || c == '\n') {
                serial_puts("\n");
                if (is_poweroff(line, len)) {
                    serial_puts(TG "poweroff requested\n");
                    return;
                }
                serial_puts(TG "line ");
                for (u32 i = 0; i < len; i++)
                    serial_putc(line[i]);
                serial_puts("\n");
                len = 0;
            } else {
                serial_putc(c);
                if (len < sizeof(line))
                    line[len++] = c;
            }
        }
    }
}
