/*
 * smp: finds the CPUs in the MADT, starts every application processor with
 * INIT-SIPI-SIPI through the xAPIC, lets each CPU report itself, and counts.
 */
#include "tg.h"

/* MADT (signature "APIC"). */
#define MADT_LAPIC_ADDRESS 36
#define MADT_ENTRIES 44
#define MADT_TYPE_LOCAL_APIC 0
#define MADT_LAPIC_ENABLED 0x1

/* xAPIC registers (offsets from the LAPIC base). */
#define LAPIC_ID 0x020
#define LAPIC_SVR 0x0f0
#define LAPIC_ICR_LOW 0x300
#define LAPIC_ICR_HIGH 0x310
#define SVR_APIC_ENABLE 0x100
#define SVR_SPURIOUS_VECTOR 0xff
#define ICR_DELIVERY_INIT 0x500
#define ICR_DELIVERY_STARTUP 0x600
#define ICR_LEVEL_ASSERT 0x4000
#define ICR_SEND_PENDING 0x1000

/*
 * Delays in io_delay units (>= ~1 us each). INIT needs no 10 ms wait on
 * any CPU made this century (Linux dropped it too); SIPI gets ~200 us.
 */
#define INIT_DELAY 100
#define SIPI_DELAY 200
/* How long the BSP waits for the APs: ~1 s at 1 us per unit, more under VMs. */
#define AP_WAIT 1000000

extern const char smp_trampoline[], smp_trampoline_end[];

static u64 lapic_base = 0xfee00000;
static u8 apic_ids[MAX_CPUS];
static u32 cpus_in_madt;
static volatile u32 cpus_online;

static u32 lapic_read(u32 reg)
{
    return mmio_read32(lapic_base + reg);
}

static void lapic_write(u32 reg, u32 v)
{
    mmio_write32(lapic_base + reg, v);
}

static u32 lapic_id(void)
{
    return lapic_read(LAPIC_ID) >> 24;
}

static void cpu_online(void)
{
    tg_printf(TG "cpu apic_id=%u online\n", lapic_id());
    __atomic_fetch_add(&cpus_online, 1, __ATOMIC_SEQ_CST);
}

/* Called by ap_start64 on the AP's own stack. */
NORETURN void ap_main(void)
{
    idt_load();
    cpu_online();
    halt_forever();
}

static int read_madt(void)
{
    const struct acpi_sdt_header *madt = acpi_find_table("APIC");
    if (!madt) {
        tg_printf(TG "smp: no MADT (APIC) table\n");
        return 0;
    }
    const u8 *m = (const u8 *)madt;
    u32 base;
    memcpy(&base, m + MADT_LAPIC_ADDRESS, 4);
    lapic_base = base;

    for (u32 off = MADT_ENTRIES; off + 2 <= madt->length;) {
        u8 type = m[off], len = m[off + 1];
        if (len < 2 || off + len > madt->length)
            break;
        /* Local APIC: type, length, ACPI processor UID, APIC ID, flags (u32). */
        if (type == MADT_TYPE_LOCAL_APIC && len >= 8) {
            u32 flags;
            memcpy(&flags, m + off + 4, 4);
            if ((flags & MADT_LAPIC_ENABLED) && cpus_in_madt < MAX_CPUS)
                apic_ids[cpus_in_madt++] = m[off + 3];
        }
        off += len;
    }
    return 1;
}

static void send_ipi(u32 apic_id, u32 command)
{
    lapic_write(LAPIC_ICR_HIGH, apic_id << 24);
    lapic_write(LAPIC_ICR_LOW, command);
    for (u32 i = 0; i < 100000 && (lapic_read(LAPIC_ICR_LOW) & ICR_SEND_PENDING); i++)
        cpu_relax();
}

/* Sends an IPI to every CPU in the MADT but this one. */
static void ipi_to_aps(u32 bsp_id, u32 command)
{
    for (u32 i = 0; i < cpus_in_madt; i++) {
        if (apic_ids[i] != bsp_id)
            send_ipi(apic_ids[i], command);
    }
}

void main(const struct hvm_start_info *si)
{
    (void)si;
    /* The trampoline overwrites low memory that might hold the ACPI tables. */
    acpi_prepare_poweroff();
    if (!read_madt())
        fail(DEBUG_EXIT_GUEST_FAILED);

    memcpy((void *)AP_TRAMPOLINE, smp_trampoline, (usize)(smp_trampoline_end - smp_trampoline));
    lapic_write(LAPIC_SVR, SVR_APIC_ENABLE | SVR_SPURIOUS_VECTOR);
    u32 bsp = lapic_id();
    cpu_online();

    ipi_to_aps(bsp, ICR_DELIVERY_INIT | ICR_LEVEL_ASSERT);
    io_delay(INIT_DELAY);
    for (int sipi = 0; sipi < 2 && cpus_online < cpus_in_madt; sipi++) {
        ipi_to_aps(bsp, ICR_DELIVERY_STARTUP | ICR_LEVEL_ASSERT | (AP_TRAMPOLINE >> 12));
        io_delay(SIPI_DELAY);
    }
    for (u32 i = 0; i < AP_WAIT && cpus_online < cpus_in_madt; i++)
        io_delay(1);

    u32 online = cpus_online;
    if (online != cpus_in_madt)
        tg_printf(TG "smp: only %u of %u CPUs came online\n", online, cpus_in_madt);
    tg_printf(TG "smp cpus=%u\n", online);
}
