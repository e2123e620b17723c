/* Constants shared by the assembly and the C side of the runtime. */
#ifndef KAPSEL_TG_LAYOUT_H
#define KAPSEL_TG_LAYOUT_H

/* GDT selectors (see gdt in entry.S). */
#define KERNEL_CS64 0x08
#define KERNEL_DS 0x10
#define KERNEL_CS32 0x18
#define USER_DS 0x20
#define USER_CS64 0x28
#define TSS_SEL 0x30

#define CR0_PE 0x00000001
#define CR0_PG 0x80000000
#define CR4_PAE 0x00000020
#define MSR_EFER 0xc0000080
#define EFER_LME 0x00000100

/* RFLAGS for CPL 3: IOPL 3 (bits 12-13), reserved bit 1, IF clear. */
#define USER_RFLAGS 0x3002

#define STACK_SIZE 16384
#define AP_STACK_SIZE 4096

/* Where the smp guest copies its real-mode AP trampoline (SIPI vector 0x08). */
#define AP_TRAMPOLINE 0x8000
#define MAX_CPUS 64

#endif
