/* cmdline: echoes the command line from start_info.cmdline_paddr. */
#include "tg.h"

#define CMDLINE_MAX 4096

void main(const struct hvm_start_info *si)
{
    const char *cmdline = "";
    char buf[CMDLINE_MAX + 1];

    if (si && si->cmdline_paddr && si->cmdline_paddr < 0x100000000ul) {
        const char *p = (const char *)si->cmdline_paddr;
        usize n = 0;
        while (n < CMDLINE_MAX && p[n])
            n++;
        memcpy(buf, p, n);
        buf[n] = '\0';
        cmdline = buf;
    }
    tg_printf(TG "cmdline=%s\n", cmdline);
}
