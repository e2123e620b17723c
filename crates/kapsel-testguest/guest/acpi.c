/*
 * ACPI power-off (S5): RSDP -> XSDT/RSDT -> FADT -> DSDT's \_S5_ package,
 * then the sleep control register (hardware-reduced ACPI) or PM1a/PM1b_CNT.
 */
#include "tg.h"

struct acpi_rsdp {
    char signature[8];
    u8 checksum;
    char oem_id[6];
    u8 revision;
    u32 rsdt_address;
    /* ACPI 2.0+ */
    u32 length;
    u64 xsdt_address;
    u8 extended_checksum;
    u8 reserved[3];
} PACKED;

/* Generic Address Structure. */
struct acpi_gas {
    u8 space_id;
    u8 bit_width;
    u8 bit_offset;
    u8 access_size;
    u64 address;
} PACKED;

#define GAS_SYSTEM_MEMORY 0
#define GAS_SYSTEM_IO 1

/* FADT field offsets (ACPI 6.x, table 5.9). */
#define FADT_DSDT 40
#define FADT_PM1A_CNT_BLK 64
#define FADT_PM1B_CNT_BLK 68
#define FADT_FLAGS 112
#define FADT_X_DSDT 140
#define FADT_X_PM1A_CNT_BLK 172
#define FADT_X_PM1B_CNT_BLK 184
#define FADT_SLEEP_CONTROL_REG 244
#define FADT_FLAG_HW_REDUCED_ACPI (1u << 20)

/* PM1_CNT: SLP_TYP in bits 10-12, SLP_EN bit 13. */
#define PM1_CNT_SLP_TYP_SHIFT 10
#define PM1_CNT_SLP_EN (1u << 13)
/* Sleep control register: SLP_TYP in bits 2-4, SLP_EN bit 5. */
#define SLEEP_CTL_SLP_TYP_SHIFT 2
#define SLEEP_CTL_SLP_EN (1u << 5)

/* AML opcodes met while decoding \_S5_. */
#define AML_ZERO_OP 0x00
#define AML_ONE_OP 0x01
#define AML_BYTE_PREFIX 0x0a
#define AML_PACKAGE_OP 0x12

/* Everything above 4 GiB is unmapped in the guest. */
#define MAPPED_LIMIT 0x100000000ul

static const struct acpi_rsdp *rsdp;
static int rsdp_searched;

static u8 byte_sum(const void *p, usize len)
{
    const u8 *b = p;
    u64 lanes = 0, sum = 0;
    usize i = 0;

    /* Eight bytes at a time: every instruction counts where CPL 0 is emulated. */
    for (; i + 8 <= len; i += 8) {
        u64 q;
        memcpy(&q, b + i, 8);
        lanes += (q & 0x00ff00ff00ff00fful) + ((q >> 8) & 0x00ff00ff00ff00fful);
        if ((i & 0x7ff) == 0x7f8) {
            /* Fold before the 16-bit lanes could overflow (256 rounds max). */
            sum += (lanes & 0xffff) + ((lanes >> 16) & 0xffff) + ((lanes >> 32) & 0xffff) +
                   (lanes >> 48);
            lanes = 0;
        }
    }
    sum += (lanes & 0xffff) + ((lanes >> 16) & 0xffff) + ((lanes >> 32) & 0xffff) + (lanes >> 48);
    for (; i < len; i++)
        sum += b[i];
    return (u8)sum;
}

static const struct acpi_rsdp *rsdp_at(u64 addr)
{
    const struct acpi_rsdp *r = (const struct acpi_rsdp *)addr;

    if (memcmp(r->signature, "RSD PTR ", 8) != 0)
        return NULL;
    if (byte_sum(r, 20) != 0)
        return NULL;
    if (r->revision >= 2 && (r->length < sizeof(*r) || byte_sum(r, r->length) != 0))
        return NULL;
    return r;
}

static const struct acpi_rsdp *find_rsdp(void)
{
    if (rsdp_searched)
        return rsdp;
    rsdp_searched = 1;
    if (tg_start_info && tg_start_info->rsdp_paddr) {
        u64 addr = tg_start_info->rsdp_paddr;
        if (addr < MAPPED_LIMIT)
            rsdp = rsdp_at(addr);
        if (!rsdp)
            tg_printf(TG "acpi: no valid RSDP at start_info.rsdp_paddr=0x%lx\n", addr);
        return rsdp;
    }
    /* The RSDP sits on a 16-byte boundary in the BIOS read-only area. */
    for (u64 addr = 0xe0000; addr < 0x100000; addr += 16) {
        if (*(const u64 *)addr == 0x2052545020445352ul /* "RSD PTR " */) {
            rsdp = rsdp_at(addr);
            if (rsdp)
                break;
        }
    }
    if (!rsdp)
        tg_printf(TG "acpi: no RSDP (start_info.rsdp_paddr is 0, none in 0xe0000-0xfffff)\n");
    return rsdp;
}

static const struct acpi_sdt_header *table_at(u64 addr, const char *signature)
{
    const struct acpi_sdt_header *h = (const struct acpi_sdt_header *)addr;

    if (addr == 0 || addr + sizeof(*h) > MAPPED_LIMIT)
        return NULL;
    if (signature && memcmp(h->signature, signature, 4) != 0)
        return NULL;
    if (h->length < sizeof(*h) || addr + h->length > MAPPED_LIMIT)
        return NULL;
    if (byte_sum(h, h->length) != 0) {
        tg_printf(TG "acpi: bad checksum in %c%c%c%c at 0x%lx\n", h->signature[0],
                  h->signature[1], h->signature[2], h->signature[3], addr);
        return NULL;
    }
    return h;
}

const struct acpi_sdt_header *acpi_find_table(const char *signature)
{
    const struct acpi_rsdp *r = find_rsdp();
    const struct acpi_sdt_header *root;
    usize entry_size;

    if (!r)
        return NULL;
    if (r->revision >= 2 && r->xsdt_address) {
        root = table_at(r->xsdt_address, "XSDT");
        entry_size = 8;
    } else {
        root = table_at(r->rsdt_address, "RSDT");
        entry_size = 4;
    }
    if (!root)
        return NULL;
    const u8 *entries = (const u8 *)root + sizeof(*root);
    usize count = (root->length - sizeof(*root)) / entry_size;
    for (usize i = 0; i < count; i++) {
        u64 addr = 0;
        memcpy(&addr, entries + i * entry_size, entry_size);
        const struct acpi_sdt_header *h = (const struct acpi_sdt_header *)addr;
        if (addr == 0 || addr + sizeof(*h) > MAPPED_LIMIT)
            continue;
        if (memcmp(h->signature, signature, 4) == 0)
            return table_at(addr, signature);
    }
    return NULL;
}

/* --- power-off ------------------------------------------------------------ */

static int poweroff_prepared;
static int poweroff_ready;
static int hw_reduced;
static u8 slp_typ_a, slp_typ_b;
static struct acpi_gas sleep_control, pm1a_cnt, pm1b_cnt;

/* Decodes one of ZeroOp, OneOp, BytePrefix nn. Returns bytes used, 0 if not. */
static usize aml_small_int(const u8 *p, const u8 *end, u8 *value)
{
    if (p >= end)
        return 0;
    if (*p == AML_ZERO_OP || *p == AML_ONE_OP) {
        *value = *p;
        return 1;
    }
    if (*p == AML_BYTE_PREFIX && p + 1 < end) {
        *value = p[1];
        return 2;
    }
    return 0;
}

/* Finds Name(_S5_, Package() { SLP_TYPa, SLP_TYPb, ... }) in the DSDT. */
static int find_s5(const struct acpi_sdt_header *dsdt, u8 *typ_a, u8 *typ_b)
{
    const u8 *aml = (const u8 *)dsdt + sizeof(*dsdt);
    const u8 *end = (const u8 *)dsdt + dsdt->length;

    for (const u8 *p = aml; p + 5 < end; p++) {
        if (p[0] != '_' || p[1] != 'S' || p[2] != '5' || p[3] != '_' || p[4] != AML_PACKAGE_OP)
            continue;
        const u8 *q = p + 5;
        /* PkgLength: bits 7-6 of the lead byte count the bytes that follow. */
        usize follow = *q >> 6;
        q += 1 + follow;
        if (q + 1 > end)
            return 0;
        u8 num_elements = *q++;
        if (num_elements < 1)
            return 0;
        usize used = aml_small_int(q, end, typ_a);
        if (!used)
            return 0;
        q += used;
        *typ_b = *typ_a;
        if (num_elements >= 2)
            (void)aml_small_int(q, end, typ_b);
        return 1;
    }
    return 0;
}

static struct acpi_gas fadt_gas(const u8 *fadt, u32 len, usize offset)
{
    struct acpi_gas g = { 0 };
    if (offset + sizeof(g) <= len)
        memcpy(&g, fadt + offset, sizeof(g));
    return g;
}

static u32 fadt_u32(const u8 *fadt, u32 len, usize offset)
{
    u32 v = 0;
    if (offset + 4 <= len)
        memcpy(&v, fadt + offset, 4);
    return v;
}

/* PM1x_CNT from the X_ field when it is set, else from the legacy port. */
static struct acpi_gas pm1_cnt(const u8 *fadt, u32 len, usize x_offset, usize legacy_offset)
{
    struct acpi_gas g = fadt_gas(fadt, len, x_offset);
    if (g.address == 0) {
        g.space_id = GAS_SYSTEM_IO;
        g.address = fadt_u32(fadt, len, legacy_offset);
    }
    return g;
}

void acpi_prepare_poweroff(void)
{
    if (poweroff_prepared)
        return;
    poweroff_prepared = 1;

    const struct acpi_sdt_header *fadt_hdr = acpi_find_table("FACP");
    if (!fadt_hdr) {
        tg_printf(TG "acpi: no FADT (FACP)\n");
        return;
    }
    const u8 *fadt = (const u8 *)fadt_hdr;
    u32 len = fadt_hdr->length;

    u64 dsdt_addr = 0;
    if (FADT_X_DSDT + 8 <= len)
        memcpy(&dsdt_addr, fadt + FADT_X_DSDT, 8);
    if (!dsdt_addr)
        dsdt_addr = fadt_u32(fadt, len, FADT_DSDT);
    const struct acpi_sdt_header *dsdt = table_at(dsdt_addr, "DSDT");
    if (!dsdt) {
        tg_printf(TG "acpi: no valid DSDT at 0x%lx\n", dsdt_addr);
        return;
    }
    if (!find_s5(dsdt, &slp_typ_a, &slp_typ_b)) {
        tg_printf(TG "acpi: no \\_S5_ package in the DSDT\n");
        return;
    }

    hw_reduced = (fadt_u32(fadt, len, FADT_FLAGS) & FADT_FLAG_HW_REDUCED_ACPI) != 0;
    if (hw_reduced) {
        sleep_control = fadt_gas(fadt, len, FADT_SLEEP_CONTROL_REG);
        if (sleep_control.address == 0) {
            tg_printf(TG "acpi: hardware-reduced FADT without SLEEP_CONTROL_REG\n");
            return;
        }
    } else {
        pm1a_cnt = pm1_cnt(fadt, len, FADT_X_PM1A_CNT_BLK, FADT_PM1A_CNT_BLK);
        pm1b_cnt = pm1_cnt(fadt, len, FADT_X_PM1B_CNT_BLK, FADT_PM1B_CNT_BLK);
        if (pm1a_cnt.address == 0) {
            tg_printf(TG "acpi: FADT has no PM1a_CNT_BLK\n");
            return;
        }
    }
    poweroff_ready = 1;
}

static void gas_write(const struct acpi_gas *g, u16 value, unsigned bytes)
{
    if (g->address == 0)
        return;
    if (g->space_id == GAS_SYSTEM_IO && g->address <= 0xffff) {
        if (bytes == 1)
            outb((u16)g->address, (u8)value);
        else
            outw((u16)g->address, value);
    } else if (g->space_id == GAS_SYSTEM_MEMORY && g->address + bytes <= MAPPED_LIMIT) {
        if (bytes == 1)
            *(volatile u8 *)g->address = (u8)value;
        else
            *(volatile u16 *)g->address = value;
    } else {
        tg_printf(TG "acpi: cannot write address space %u at 0x%lx\n", g->space_id, g->address);
    }
}

NORETURN void poweroff(void)
{
    acpi_prepare_poweroff();
    if (poweroff_ready) {
        if (hw_reduced) {
            gas_write(&sleep_control,
                      (u16)((slp_typ_a & 7) << SLEEP_CTL_SLP_TYP_SHIFT) | SLEEP_CTL_SLP_EN, 1);
        } else {
            gas_write(&pm1a_cnt, (u16)((slp_typ_a & 7) << PM1_CNT_SLP_TYP_SHIFT) | PM1_CNT_SLP_EN,
                      2);
            gas_write(&pm1b_cnt, (u16)((slp_typ_b & 7) << PM1_CNT_SLP_TYP_SHIFT) | PM1_CNT_SLP_EN,
                      2);
        }
        /* The write may take effect a little later: give the VMM a moment. */
        io_delay(1000);
    }
    tg_printf(TG "poweroff failed\n");
    outb(DEBUG_EXIT_PORT, DEBUG_EXIT_POWEROFF_FAILED);
    halt_forever();
}
