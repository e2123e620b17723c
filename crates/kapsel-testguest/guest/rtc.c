/* rtc: reads the CMOS real-time clock and prints it as ISO 8601 and Unix time. */
#include "tg.h"

#define CMOS_INDEX 0x70
#define CMOS_DATA 0x71
/* Bit 7 of the index port disables NMI; keep it set while we poke around. */
#define CMOS_NMI_DISABLE 0x80

#define RTC_SECONDS 0x00
#define RTC_MINUTES 0x02
#define RTC_HOURS 0x04
#define RTC_DAY_OF_MONTH 0x07
#define RTC_MONTH 0x08
#define RTC_YEAR 0x09
#define RTC_STATUS_A 0x0a
#define RTC_STATUS_B 0x0b
#define RTC_CENTURY 0x32 /* the usual place; FADT.CENTURY may name another */

#define STATUS_A_UIP 0x80         /* update in progress */
#define STATUS_B_24H 0x02         /* 24-hour mode (else 12-hour) */
#define STATUS_B_BINARY 0x04      /* binary (else BCD) */
#define HOURS_PM 0x80             /* in 12-hour mode */

#define FADT_CENTURY 108

struct rtc_time {
    u32 second, minute, hour, day, month, year, century;
};

static u8 cmos_read(u8 reg)
{
    outb(CMOS_INDEX, CMOS_NMI_DISABLE | reg);
    return inb(CMOS_DATA);
}

static void read_raw(struct rtc_time *t, u8 century_reg)
{
    /* Bounded: a broken RTC must not hang the guest. */
    for (u32 i = 0; i < 1000000 && (cmos_read(RTC_STATUS_A) & STATUS_A_UIP); i++)
        cpu_relax();
    t->second = cmos_read(RTC_SECONDS);
    t->minute = cmos_read(RTC_MINUTES);
    t->hour = cmos_read(RTC_HOURS);
    t->day = cmos_read(RTC_DAY_OF_MONTH);
    t->month = cmos_read(RTC_MONTH);
    t->year = cmos_read(RTC_YEAR);
    t->century = century_reg ? cmos_read(century_reg) : 0;
}

static u32 bcd(u32 v)
{
    return (v & 0x0f) + (v >> 4) * 10;
}

/* Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil). */
static i64 days_from_civil(i64 y, u32 m, u32 d)
{
    y -= m <= 2;
    i64 era = (y >= 0 ? y : y - 399) / 400;
    u32 yoe = (u32)(y - era * 400);
    u32 doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    u32 doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (i64)doe - 719468;
}

static u8 century_register(void)
{
    const struct acpi_sdt_header *fadt = acpi_find_table("FACP");
    if (fadt && fadt->length > FADT_CENTURY && ((const u8 *)fadt)[FADT_CENTURY])
        return ((const u8 *)fadt)[FADT_CENTURY];
    return RTC_CENTURY;
}

void main(const struct hvm_start_info *si)
{
    struct rtc_time t, again;
    u8 century_reg = century_register();

    (void)si;
    /* Read until two reads agree, so no update slipped in between. */
    read_raw(&t, century_reg);
    for (int i = 0; i < 5; i++) {
        read_raw(&again, century_reg);
        if (memcmp(&t, &again, sizeof(t)) == 0)
            break;
        t = again;
    }

    u8 status_b = cmos_read(RTC_STATUS_B);
    int pm = 0;
    if (!(status_b & STATUS_B_24H)) {
        pm = (t.hour & HOURS_PM) != 0;
        t.hour &= ~HOURS_PM;
    }
    if (!(status_b & STATUS_B_BINARY)) {
        t.second = bcd(t.second);
        t.minute = bcd(t.minute);
        t.hour = bcd(t.hour);
        t.day = bcd(t.day);
        t.month = bcd(t.month);
        t.year = bcd(t.year);
        t.century = bcd(t.century);
    }
    if (!(status_b & STATUS_B_24H)) {
        /* 12-hour clock: 12 AM is 0h, 12 PM is 12h. */
        t.hour %= 12;
        if (pm)
            t.hour += 12;
    }
    if (t.century < 19 || t.century > 99)
        t.century = 20;
    u32 year = t.century * 100 + t.year;

    if (t.second > 59 || t.minute > 59 || t.hour > 23 || t.day < 1 || t.day > 31 || t.month < 1 ||
        t.month > 12) {
        tg_printf(TG "rtc invalid: %u-%u-%u %u:%u:%u status_b=0x%x\n", year, t.month, t.day, t.hour,
                  t.minute, t.second, status_b);
        fail(DEBUG_EXIT_GUEST_FAILED);
    }

    i64 epoch = days_from_civil(year, t.month, t.day) * 86400 + t.hour * 3600 + t.minute * 60 +
                t.second;
    tg_printf(TG "rtc %04u-%02u-%02uT%02u:%02u:%02u\n", year, t.month, t.day, t.hour, t.minute,
              t.second);
    tg_printf(TG "rtc epoch=%ld\n", epoch);
}
