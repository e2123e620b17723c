/* bench/diag/cpuid-dump.c — prints the CPUID leaves that decide how Linux
 * sets up its clocks and timers, as the guest sees them. Static, for the
 * L2 initramfs of bench/nested-diag.sh. */
#include <cpuid.h>
#include <stdio.h>

static void leaf(unsigned int l, unsigned int s)
{
    unsigned int a, b, c, d;
    __cpuid_count(l, s, a, b, c, d);
    printf("CPUID %08x.%u: eax=%08x ebx=%08x ecx=%08x edx=%08x\n", l, s, a, b, c, d);
}

int main(void)
{
    unsigned int max, a, b, c, d, l;
    __cpuid(0, max, b, c, d);
    for (l = 0; l <= max && l <= 0x20; l++)
        leaf(l, 0);
    leaf(7, 1);
    leaf(0xd, 1);
    __cpuid(0x40000000, a, b, c, d);
    for (l = 0x40000000; l <= a && l <= 0x40000010; l++)
        leaf(l, 0);
    if (a < 0x40000010)
        leaf(0x40000010, 0);
    __cpuid(0x80000000, a, b, c, d);
    for (l = 0x80000000; l <= a && l <= 0x80000021; l++)
        leaf(l, 0);
    return 0;
}
