/*
 * user: drops to CPL 3 with IOPL 3, runs a 64M-iteration arithmetic loop
 * there (native speed even where CPL 0 is emulated), prints from CPL 3 with
 * port I/O, then returns to CPL 0 and powers off.
 */
#include "tg.h"

#define LOOP_ITERATIONS (64ul << 20)

/* A 64-bit LCG step plus the counter; kapsel_testguest::user_loop_sum mirrors it. */
static u64 user_loop(void)
{
    u64 sum = 0;
    for (u64 i = 0; i < LOOP_ITERATIONS; i++) {
        sum = sum * 6364136223846793005ul + i;
        /* Keep the compiler from collapsing the loop. */
        __asm__ volatile("" : "+r"(sum));
    }
    return sum;
}

static u64 user_main(void)
{
    u64 cpl = read_cs() & 3;

    tg_printf(TG "user cpl=%lu\n", cpl);
    if (cpl != 3) {
        tg_printf(TG "cpl3 loop FAILED: not at CPL 3\n");
        return 1;
    }
    u64 sum = user_loop();
    tg_printf(TG "cpl3 loop ok sum=0x%016lx\n", sum);
    return 0;
}

void main(const struct hvm_start_info *si)
{
    (void)si;
    tg_printf(TG "entering cpl=3 from cpl=%u\n", read_cs() & 3);
    u64 rc = enter_user(user_main);
    tg_printf(TG "back at cpl=%u\n", read_cs() & 3);
    if (rc != 0)
        fail(DEBUG_EXIT_GUEST_FAILED);
}
