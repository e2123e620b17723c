/*
 * triplefault: with an empty IDT (limit 0), int3 cannot be delivered (#GP),
 * nor can the #GP (#DF), nor the #DF: the CPU shuts down, which the VMM
 * must report.
 *
 * The int3 runs at CPL 3: our CI host's KVM emulates CPL 0 code and fails
 * on int3/int n there ("emulation failure"), while CPL 3 runs natively.
 * The triple fault is the same architecturally either way.
 */
#include "tg.h"

struct idt_ptr {
    u16 limit;
    u64 base;
} PACKED;

static u64 breakpoint(void)
{
    __asm__ volatile("int3");
    return 0;
}

void main(const struct hvm_start_info *si)
{
    static const struct idt_ptr empty = { 0, 0 };

    (void)si;
    serial_puts(TG "triple fault next\n");
    __asm__ volatile("lidt %0" : : "m"(empty));
    (void)enter_user(breakpoint);
    serial_puts(TG "still alive after triple fault\n");
    fail(DEBUG_EXIT_GUEST_FAILED);
}
