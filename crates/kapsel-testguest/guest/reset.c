/* reset: asks the i8042 keyboard controller to pulse the CPU reset line. */
#include "tg.h"

#define I8042_COMMAND_PORT 0x64
#define I8042_CMD_PULSE_RESET 0xfe

void main(const struct hvm_start_info *si)
{
    (void)si;
    serial_puts(TG "resetting\n");
    outb(I8042_COMMAND_PORT, I8042_CMD_PULSE_RESET);
    /* A VMM may act on the reset request a little later. */
    io_delay(1000);
    serial_puts(TG "reset failed\n");
    outb(DEBUG_EXIT_PORT, DEBUG_EXIT_RESET_FAILED);
    halt_forever();
}
