/*
 * cpl0loop: a tight loop of 2,000,000 iterations at CPL 0. About a
 * millisecond under hardware virtualization, seconds where CPL 0 is
 * emulated: a probe for how a host runs guest kernels.
 */
#include "tg.h"

void main(const struct hvm_start_info *si)
{
    u64 n = 2000000;

    (void)si;
    __asm__ volatile("1: dec %0\n\tjnz 1b" : "+r"(n));
    serial_puts(TG "cpl0 loop done\n");
}
