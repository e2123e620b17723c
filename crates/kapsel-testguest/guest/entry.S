/*
 * PVH entry, long-mode switch, descriptor tables and the CPL 0/3 glue.
 *
 * PVH entry state: 32-bit protected mode, paging off, flat CS/DS,
 * %ebx = physical address of struct hvm_start_info, no stack.
 */
#include "layout.h"

/* The PVH entry note: name "Xen", type XEN_ELFNOTE_PHYS32_ENTRY (18). */
    .section .note.Xen, "a", @note
    .balign 4
    .long 4                 /* namesz */
    .long 4                 /* descsz */
    .long 18                /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .balign 4
    .long pvh_start32

    .section .text.entry, "ax"
    .code32
    .globl pvh_start32
pvh_start32:
    cli
    cld
    lgdt gdt_ptr
    movl $KERNEL_DS, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    movl %eax, %fs
    movl %eax, %gs
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
    orl $(CR0_PG | CR0_PE), %eax
    movl %eax, %cr0
    ljmp $KERNEL_CS64, $start64

    .code64
start64:
    /* 32-bit moves zero-extend: the upper halves are undefined after the switch. */
    movl $(boot_stack + STACK_SIZE), %esp
    /* Zero .bss (small: the stacks live in .stack; 16-byte aligned ends). */
    movl $__bss_start, %edi
    movl $__bss_end, %ecx
    subl %edi, %ecx
    shrl $3, %ecx
    xorl %eax, %eax
    rep stosq
    movl %ebx, %edi
    call rt_main
    ud2

/* Exception stubs: 32 entries of 16 bytes each, so idt_init can compute them. */
    .macro EXC_STUB vec
    .balign 16
    .if (\vec == 8) || (\vec == 10) || (\vec == 11) || (\vec == 12) || (\vec == 13) || (\vec == 14) || (\vec == 17) || (\vec == 21) || (\vec == 29) || (\vec == 30)
    .else
    pushq $0
    .endif
    pushq $\vec
    jmp exception_common
    .endm

    .balign 16
    .globl exception_stubs
exception_stubs:
    .irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    EXC_STUB \v
    .endr

exception_common:
    /* Stack: vector, error code, RIP, CS, RFLAGS, RSP, SS. */
    cmpq $6, 0(%rsp)
    jne 1f
    cmpq $user_exit, 16(%rsp)   /* %rax is fn's return value: keep it */
    jne 1f
    testq $3, 24(%rsp)
    jnz user_return
1:
    movq 16(%rsp), %rdx
    movq 0(%rsp), %rdi
    movq 8(%rsp), %rsi
    movq 24(%rsp), %rcx
    movq 32(%rsp), %r8
    andq $-16, %rsp
    call rt_exception
    ud2

/* #UD at user_exit from CPL 3: back to enter_user's caller. */
user_return:
    movl $KERNEL_DS, %ecx       /* the CPL change left SS null */
    movl %ecx, %ss
    movq saved_kernel_rsp(%rip), %rsp
    pushq $2                    /* plain RFLAGS: IOPL 0, IF clear */
    popfq
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret

/* u64 enter_user(u64 (*fn)(void)) */
    .globl enter_user
enter_user:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, saved_kernel_rsp(%rip)
    leaq (user_stack + STACK_SIZE - 8)(%rip), %rax
    leaq user_exit(%rip), %rcx
    movq %rcx, (%rax)           /* fn's return address */
    pushq $(USER_DS | 3)
    pushq %rax
    pushq $USER_RFLAGS
    pushq $(USER_CS64 | 3)
    pushq %rdi
    iretq

/*
 * Runs at CPL 3 when fn returns; %rax holds its return value. The way back
 * to CPL 0 is this ud2: exception_common recognises its address. (A DPL 3
 * int $0x80 gate or syscall would be the textbook way, but on our CI
 * host's KVM int $0x80 at CPL 3 raises #UD and syscall stays at CPL 3;
 * exceptions are delivered properly everywhere.)
 */
user_exit:
    ud2

/* ---------------------------------------------------------------------- */

    .data
    .balign 16
    .globl gdt
gdt:
    .quad 0
    .quad 0x00af9b000000ffff    /* 0x08 kernel code, 64-bit */
    .quad 0x00cf93000000ffff    /* 0x10 kernel data */
    .quad 0x00cf9b000000ffff    /* 0x18 kernel code, 32-bit (AP trampoline) */
    .quad 0x00cff3000000ffff    /* 0x20 user data, DPL 3 */
    .quad 0x00affb000000ffff    /* 0x28 user code, 64-bit, DPL 3 */
    .quad 0, 0                  /* 0x30 64-bit TSS, filled in by tss_init */
gdt_end:
    .globl gdt_limit
    .set gdt_limit, gdt_end - gdt - 1

    .balign 8
    .globl gdt_ptr
gdt_ptr:
    .word gdt_limit
    .quad gdt

    .balign 8
saved_kernel_rsp:
    .quad 0

/*
 * Identity map of the first 4 GiB with 2 MiB pages: present, writable, user
 * (so CPL 3 code may touch MMIO as well). The top 512 MiB, where MMIO
 * (LAPIC, IOAPIC, ...) lives, is mapped uncached (PCD | PWT).
 */
    .section .data.pagetables, "aw"
    .balign 4096
    .globl pml4
pml4:
    .quad pdpt + 0x7
    .fill 511, 8, 0
pdpt:
    .quad pd + 0x0000 + 0x7
    .quad pd + 0x1000 + 0x7
    .quad pd + 0x2000 + 0x7
    .quad pd + 0x3000 + 0x7
    .fill 508, 8, 0
pd:
    .set i, 0
    .rept 2048
    .quad (i << 21) | 0x87 | ((i >= 1792) & 0x18)
    .set i, i + 1
    .endr

    .section .stack, "aw", @nobits
    .balign 16
boot_stack:
    .skip STACK_SIZE
    .globl interrupt_stack
interrupt_stack:
    .skip STACK_SIZE
    .globl user_stack
user_stack:
    .skip STACK_SIZE

    .section .note.GNU-stack, "", @progbits
