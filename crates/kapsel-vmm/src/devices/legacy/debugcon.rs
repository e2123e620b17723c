//! The firmware debug port (0x402, QEMU's isa-debugcon as SeaBIOS and OVMF
//! probe it): when Kapsel logs at debug level, reading the port returns
//! 0xE9 and the firmware writes its log there, one byte per write; the
//! lines go to the VMM's log. Otherwise the port reads 0xFF and the
//! firmware does not write it (every byte is a VM exit).

use crate::bus::BusDevice;

/// The port.
pub const DEBUGCON_PORT: u16 = 0x402;
/// What a present debug port reads as.
const PRESENT: u8 = 0xe9;
/// Longest line kept before it is logged anyway.
const MAX_LINE: usize = 512;

/// The port and the line being written.
pub struct DebugCon {
    enabled: bool,
    line: Vec<u8>,
}

impl DebugCon {
    /// A port that answers the firmware's probe when `enabled`.
    pub fn new(enabled: bool) -> Self {
        DebugCon {
            enabled,
            line: Vec::new(),
        }
    }

    fn flush(&mut self) {
        if !self.line.is_empty() {
            tracing::debug!(
                "firmware: {}",
                String::from_utf8_lossy(&self.line).trim_end()
            );
            self.line.clear();
        }
    }

    /// The line not yet ended.
    pub fn pending(&self) -> &[u8] {
        &self.line
    }
}

impl BusDevice for DebugCon {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(if self.enabled { PRESENT } else { 0xff });
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if !self.enabled {
            return;
        }
        for &b in data {
            match b {
                b'\n' => self.flush(),
                b'\r' => {}
                _ => {
                    self.line.push(b);
                    if self.line.len() >= MAX_LINE {
                        self.flush();
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_and_bounded_lines() {
        let mut off = DebugCon::new(false);
        let mut b = [0u8];
        off.read(0, &mut b);
        assert_eq!(b[0], 0xff);
        off.write(0, b"x");
        assert!(off.pending().is_empty());
        let mut on = DebugCon::new(true);
        on.read(0, &mut b);
        assert_eq!(b[0], 0xe9);
        on.write(0, b"abc");
        assert_eq!(on.pending(), b"abc");
        on.write(0, b"\n");
        assert!(on.pending().is_empty());
        for _ in 0..MAX_LINE * 3 {
            on.write(0, b"y");
        }
        assert!(on.pending().len() < MAX_LINE);
    }
}
