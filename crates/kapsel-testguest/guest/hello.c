/*
 * hello: one line, then ACPI power-off. Also the boot benchmark guest, so it
 * stays at CPL 0 and does as little as possible.
 */
#include "tg.h"

void main(const struct hvm_start_info *si)
{
    (void)si;
    serial_puts(TG "hello from PVH guest\n");
}
