/*
 * The AP start-up path of the smp guest.
 *
 * smp_trampoline..smp_trampoline_end is copied to AP_TRAMPOLINE (below
 * 1 MiB) and started there by a SIPI with vector AP_TRAMPOLINE >> 12, so
 * it is written position-dependently for that address: real mode ->
 * protected mode -> long mode on the BSP's page tables -> ap_start64.
 */
#include "layout.h"

#define TRAMPOLINE_ADDR(sym) (AP_TRAMPOLINE + (sym) - smp_trampoline)

    .section .rodata.smp_trampoline, "a"
    .code16
    .globl smp_trampoline
smp_trampoline:
    cli
    cld
    xorw %ax, %ax
    movw %ax, %ds
    lgdtl TRAMPOLINE_ADDR(trampoline_gdt_ptr)
    movl %cr0, %eax
    orl $CR0_PE, %eax
    movl %eax, %cr0
    ljmpl $KERNEL_CS32, $TRAMPOLINE_ADDR(trampoline32)

    .code32
trampoline32:
    movl $KERNEL_DS, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    movl %cr4, %eax
    orl $CR4_PAE, %eax
    movl %eax, %cr4
    movl $pml4, %eax
    movl %eax, %cr3
    movl $MSR_EFER, %ecx
    rdmsr
    orl $EFER_LME, %eax
    wrmsr
    movl %cr0, %eax
    orl $CR0_PG, %eax
    movl %eax, %cr0
    ljmp $KERNEL_CS64, $ap_start64

    .balign 8
trampoline_gdt_ptr:
    .word gdt_limit
    .long gdt
    .globl smp_trampoline_end
smp_trampoline_end:

/* Long mode, paging on, CS = KERNEL_CS64: take the next AP stack and go. */
    .text
    .code64
ap_start64:
    movl $1, %eax
    lock xaddl %eax, ap_next_stack(%rip)
    incl %eax
    imull $AP_STACK_SIZE, %eax
    leaq ap_stacks(%rip), %rsp
    addq %rax, %rsp
    call ap_main
    ud2

    .data
    .balign 4
ap_next_stack:
    .long 0

    .section .stack, "aw", @nobits
    .balign 16
ap_stacks:
    .skip AP_STACK_SIZE * (MAX_CPUS + 1)

    .section .note.GNU-stack, "", @progbits
