//! MC146818 CMOS real-time clock at ports 0x70 (index) and 0x71 (data).
//!
//! The clock shows the host's UTC time plus an offset the guest may change
//! by writing the time registers (e.g. `hwclock --systohc`); the rest of
//! the 128 bytes are battery-backed RAM.

use crate::bus::BusDevice;
use std::time::{SystemTime, UNIX_EPOCH};

/// Ports decoded: index (offset 0) and data (offset 1).
pub const CMOS_PORT_COUNT: u64 = 2;

const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_STATUS_A: u8 = 0x0a;
const REG_STATUS_B: u8 = 0x0b;
const REG_STATUS_C: u8 = 0x0c;
const REG_STATUS_D: u8 = 0x0d;
const REG_CENTURY: u8 = 0x32;

/// Status A: 32.768 kHz time base, 1024 Hz periodic rate; UIP never set.
const STATUS_A_DEFAULT: u8 = 0x26;
/// Status B bit 1: 24-hour mode.
const STATUS_B_24H: u8 = 0x02;
/// Status B bit 2: binary (not BCD) values.
const STATUS_B_BINARY: u8 = 0x04;
/// Status D bit 7: the battery is good (RAM and time valid).
const STATUS_D_VALID: u8 = 0x80;
/// Bit 7 of a 12-hour hours register: PM.
const HOURS_PM: u8 = 0x80;

const INDEX_MASK: u8 = 0x7f;

/// A source of the host's current time (seconds since the Unix epoch).
pub type Clock = fn() -> i64;

fn host_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Broken-down UTC time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateTime {
    /// Full year, e.g. 2026.
    pub year: i64,
    /// 1..=12
    pub month: u32,
    /// 1..=31
    pub day: u32,
    /// 0..=23
    pub hour: u32,
    /// 0..=59
    pub minute: u32,
    /// 0..=59
    pub second: u32,
    /// 1 = Sunday ..= 7 = Saturday, as the RTC counts.
    pub weekday: u32,
}

/// Converts Unix seconds to a civil UTC date (proleptic Gregorian).
pub fn datetime_from_unix(secs: i64) -> DateTime {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Shift the epoch to 0000-03-01 so leap days fall at the end of a year.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    DateTime {
        year,
        month,
        day,
        hour: (rem / 3600) as u32,
        minute: (rem / 60 % 60) as u32,
        second: (rem % 60) as u32,
        // 1970-01-01 was a Thursday (RTC weekday 5).
        weekday: ((days + 4).rem_euclid(7) + 1) as u32,
    }
}

/// Converts a civil UTC date to Unix seconds; out-of-range fields are
/// clamped, so any guest write yields some valid time.
pub fn unix_from_datetime(t: &DateTime) -> i64 {
    let month = t.month.clamp(1, 12) as i64;
    let day = t.day.clamp(1, 31) as i64;
    let year = t.year - i64::from(month <= 2);
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days * 86_400
        + i64::from(t.hour.min(23)) * 3600
        + i64::from(t.minute.min(59)) * 60
        + i64::from(t.second.min(59))
}

fn to_bcd(v: u32) -> u8 {
    (((v / 10) % 10) << 4 | (v % 10)) as u8
}

fn from_bcd(v: u8) -> u32 {
    u32::from(v >> 4) * 10 + u32::from(v & 0xf)
}

/// The CMOS RTC and its RAM.
pub struct Cmos {
    index: u8,
    ram: [u8; 128],
    offset: i64,
    clock: Clock,
}

impl Cmos {
    /// An RTC that follows the host's clock.
    pub fn new() -> Self {
        Self::with_clock(host_now)
    }

    /// An RTC that follows `clock` (tests use a fixed one).
    pub fn with_clock(clock: Clock) -> Self {
        let mut ram = [0u8; 128];
        ram[REG_STATUS_A as usize] = STATUS_A_DEFAULT;
        ram[REG_STATUS_B as usize] = STATUS_B_24H;
        ram[REG_STATUS_D as usize] = STATUS_D_VALID;
        Cmos {
            index: 0,
            ram,
            offset: 0,
            clock,
        }
    }

    fn status_b(&self) -> u8 {
        self.ram[REG_STATUS_B as usize]
    }

    fn now(&self) -> DateTime {
        datetime_from_unix((self.clock)().saturating_add(self.offset))
    }

    fn encode(&self, v: u32) -> u8 {
        if self.status_b() & STATUS_B_BINARY != 0 {
            v as u8
        } else {
            to_bcd(v)
        }
    }

    fn decode(&self, v: u8) -> u32 {
        if self.status_b() & STATUS_B_BINARY != 0 {
            u32::from(v)
        } else {
            from_bcd(v)
        }
    }

    fn encode_hour(&self, hour: u32) -> u8 {
        if self.status_b() & STATUS_B_24H != 0 {
            return self.encode(hour);
        }
        let h12 = if hour.is_multiple_of(12) {
            12
        } else {
            hour % 12
        };
        self.encode(h12) | if hour >= 12 { HOURS_PM } else { 0 }
    }

    fn decode_hour(&self, v: u8) -> u32 {
        if self.status_b() & STATUS_B_24H != 0 {
            return self.decode(v);
        }
        let h12 = self.decode(v & !HOURS_PM) % 12;
        h12 + if v & HOURS_PM != 0 { 12 } else { 0 }
    }

    fn read_register(&self, reg: u8) -> u8 {
        let t = self.now();
        match reg {
            REG_SECONDS => self.encode(t.second),
            REG_MINUTES => self.encode(t.minute),
            REG_HOURS => self.encode_hour(t.hour),
            REG_WEEKDAY => self.encode(t.weekday),
            REG_DAY => self.encode(t.day),
            REG_MONTH => self.encode(t.month),
            REG_YEAR => self.encode(t.year.rem_euclid(100) as u32),
            REG_CENTURY => self.encode(t.year.div_euclid(100).clamp(0, 99) as u32),
            REG_STATUS_C => 0,
            _ => self.ram[(reg & INDEX_MASK) as usize],
        }
    }

    fn write_register(&mut self, reg: u8, value: u8) {
        let mut t = self.now();
        match reg {
            REG_SECONDS => t.second = self.decode(value),
            REG_MINUTES => t.minute = self.decode(value),
            REG_HOURS => t.hour = self.decode_hour(value),
            REG_DAY => t.day = self.decode(value),
            REG_MONTH => t.month = self.decode(value),
            REG_YEAR => t.year = t.year.div_euclid(100) * 100 + i64::from(self.decode(value)),
            REG_CENTURY => t.year = i64::from(self.decode(value)) * 100 + t.year.rem_euclid(100),
            REG_WEEKDAY => return,
            REG_STATUS_A => {
                // UIP (bit 7) is read-only.
                self.ram[reg as usize] = value & 0x7f;
                return;
            }
            REG_STATUS_B => {
                // SET (bit 7) only pauses updates on real hardware; the
                // offset model makes every write take effect at once.
                self.ram[reg as usize] = value;
                return;
            }
            REG_STATUS_C | REG_STATUS_D => return,
            _ => {
                self.ram[(reg & INDEX_MASK) as usize] = value;
                return;
            }
        }
        self.offset = unix_from_datetime(&t) - (self.clock)();
    }
}

/// Base memory in KiB (0x15 low, 0x16 high): 640.
const REG_BASE_MEM: usize = 0x15;
/// Extended memory above 1 MiB in KiB, up to 63 MiB (0x17/0x18, and the
/// copy at 0x30/0x31).
const REG_EXT_MEM: usize = 0x17;
const REG_EXT_MEM2: usize = 0x30;
/// Memory above 16 MiB and below 4 GiB in 64 KiB units (0x34 low, 0x35 high).
const REG_MEM_ABOVE_16M: usize = 0x34;
/// Memory above 4 GiB in 64 KiB units (0x5b, 0x5c, 0x5d).
const REG_MEM_ABOVE_4G: usize = 0x5b;
/// vCPUs minus one (QEMU's CMOS_BIOS_SMP_COUNT, read by SeaBIOS).
const REG_SMP_COUNT: usize = 0x5f;

impl Cmos {
    /// Fills the memory-size and CPU-count bytes a PC BIOS reads from the
    /// CMOS, as QEMU's `pc_cmos_init` does: `low` bytes of RAM below the
    /// 4 GiB hole, `high` bytes above 4 GiB.
    pub fn set_memory_fields(&mut self, low: u64, high: u64, cpus: u8) {
        let mut put16 = |reg: usize, v: u64| {
            let v = v.min(0xffff) as u16;
            self.ram[reg..reg + 2].copy_from_slice(&v.to_le_bytes());
        };
        put16(REG_BASE_MEM, 640);
        let ext_kib = (low.saturating_sub(1 << 20) >> 10).min(0xfc00);
        put16(REG_EXT_MEM, ext_kib);
        put16(REG_EXT_MEM2, ext_kib);
        put16(REG_MEM_ABOVE_16M, low.saturating_sub(16 << 20) >> 16);
        let above_4g = (high >> 16).min(0xff_ffff) as u32;
        self.ram[REG_MEM_ABOVE_4G..REG_MEM_ABOVE_4G + 3]
            .copy_from_slice(&above_4g.to_le_bytes()[..3]);
        self.ram[REG_SMP_COUNT] = cpus.saturating_sub(1);
    }
}

impl Default for Cmos {
    fn default() -> Self {
        Self::new()
    }
}

impl BusDevice for Cmos {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = match offset {
                0 => self.index,
                1 => self.read_register(self.index),
                _ => 0xff,
            };
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        match offset {
            // Bit 7 of the index port masks NMIs on real hardware.
            0 => self.index = v & INDEX_MASK,
            1 => self.write_register(self.index, v),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-11-26T23:42:31Z, a Thursday.
    const FIXED: i64 = 1_795_736_551;
    fn fixed() -> i64 {
        FIXED
    }

    fn reg(c: &mut Cmos, r: u8) -> u8 {
        c.write(0, &[r]);
        let mut b = [0u8];
        c.read(1, &mut b);
        b[0]
    }

    fn set(c: &mut Cmos, r: u8, v: u8) {
        c.write(0, &[r]);
        c.write(1, &[v]);
    }

    #[test]
    fn date_conversions_agree() {
        let t = datetime_from_unix(FIXED);
        assert_eq!(
            (t.year, t.month, t.day, t.hour, t.minute, t.second),
            (2026, 11, 26, 23, 42, 31)
        );
        assert_eq!(t.weekday, 5);
        assert_eq!(unix_from_datetime(&t), FIXED);
        assert_eq!(datetime_from_unix(0).weekday, 5);
        let leap = datetime_from_unix(951_782_400); // 2000-02-29
        assert_eq!((leap.year, leap.month, leap.day), (2000, 2, 29));
        for s in (-5_000_000_000i64..5_000_000_000).step_by(86_399 * 97) {
            assert_eq!(unix_from_datetime(&datetime_from_unix(s)), s);
        }
    }

    #[test]
    fn reads_host_time_in_bcd() {
        let mut c = Cmos::with_clock(fixed);
        assert_eq!(reg(&mut c, REG_SECONDS), 0x31);
        assert_eq!(reg(&mut c, REG_MINUTES), 0x42);
        assert_eq!(reg(&mut c, REG_HOURS), 0x23);
        assert_eq!(reg(&mut c, REG_DAY), 0x26);
        assert_eq!(reg(&mut c, REG_MONTH), 0x11);
        assert_eq!(reg(&mut c, REG_YEAR), 0x26);
        assert_eq!(reg(&mut c, REG_CENTURY), 0x20);
        assert_eq!(reg(&mut c, REG_STATUS_A) & 0x80, 0, "never updating");
        assert_eq!(reg(&mut c, REG_STATUS_D), STATUS_D_VALID);
    }

    #[test]
    fn binary_and_12_hour_modes() {
        let mut c = Cmos::with_clock(fixed);
        set(&mut c, REG_STATUS_B, STATUS_B_BINARY | STATUS_B_24H);
        assert_eq!(reg(&mut c, REG_MINUTES), 42);
        set(&mut c, REG_STATUS_B, 0);
        assert_eq!(reg(&mut c, REG_HOURS), 0x11 | HOURS_PM);
    }

    #[test]
    fn guest_can_set_the_clock() {
        let mut c = Cmos::with_clock(fixed);
        set(&mut c, REG_YEAR, 0x30);
        assert_eq!(reg(&mut c, REG_YEAR), 0x30);
        assert_eq!(reg(&mut c, REG_MONTH), 0x11);
        set(&mut c, REG_HOURS, 0x05);
        assert_eq!(reg(&mut c, REG_HOURS), 0x05);
        assert_eq!(reg(&mut c, REG_MINUTES), 0x42);
    }

    #[test]
    fn ram_and_bad_accesses() {
        let mut c = Cmos::with_clock(fixed);
        set(&mut c, 0x40, 0x99);
        assert_eq!(reg(&mut c, 0x40), 0x99);
        // The NMI-mask bit of the index is ignored.
        c.write(0, &[0x80 | 0x40]);
        let mut b = [0u8; 2];
        c.read(1, &mut b);
        assert_eq!(b, [0x99, 0]);
        c.read(7, &mut b);
        c.write(1, &[]);
        set(&mut c, REG_DAY, 0xff); // nonsense BCD is clamped, not a crash
        let _ = reg(&mut c, REG_DAY);
    }

    #[test]
    fn memory_fields_follow_qemu() {
        let mut c = Cmos::with_clock(|| 0);
        c.set_memory_fields(3 << 30, 5 << 30, 4);
        let mut read = |reg: u8| {
            c.write(0, &[reg]);
            let mut b = [0u8];
            c.read(1, &mut b);
            b[0]
        };
        assert_eq!((read(0x15), read(0x16)), (0x80, 0x02));
        assert_eq!((read(0x30), read(0x31)), (0x00, 0xfc));
        assert_eq!((read(0x17), read(0x18)), (0x00, 0xfc));
        // 3 GiB - 16 MiB in 64 KiB units: 0xbf00.
        assert_eq!((read(0x34), read(0x35)), (0x00, 0xbf));
        // 5 GiB in 64 KiB units: 0x014000.
        assert_eq!((read(0x5b), read(0x5c), read(0x5d)), (0x00, 0x40, 0x01));
        assert_eq!(read(0x5f), 3);
        let mut small = Cmos::with_clock(|| 0);
        small.set_memory_fields(8 << 20, 0, 1);
        small.write(0, &[0x34]);
        let mut b = [0u8];
        small.read(1, &mut b);
        assert_eq!(b[0], 0);
        small.write(0, &[0x30]);
        small.read(1, &mut b);
        assert_eq!(b[0], 0x00);
        small.write(0, &[0x31]);
        small.read(1, &mut b);
        assert_eq!(b[0], 0x1c);
    }
}
