//! MSI-X: the capability in configuration space, and the vector table and
//! pending-bit array (PBA) that live in a memory BAR.
//!
//! A device raises a vector with [`MsixConfig::trigger`]. If MSI-X is enabled
//! and neither the function nor the vector is masked, the message (address,
//! data) goes to the [`InterruptSink`] (the VMM's KVM GSI routing and irqfd);
//! otherwise the vector's pending bit is set and the message is sent when the
//! guest unmasks it.

use super::config::PciConfiguration;
use super::PciError;
use std::io;
use std::sync::Arc;

/// Capability ID of MSI-X.
pub const PCI_CAP_ID_MSIX: u8 = 0x11;
/// Bytes per vector table entry.
pub const MSIX_TABLE_ENTRY_SIZE: u64 = 16;
/// The largest table the capability can describe.
pub const MSIX_MAX_VECTORS: u16 = 2048;

/// Message control: table size minus one (read-only).
const MSG_CTL_TABLE_SIZE_MASK: u16 = 0x07ff;
/// Message control: all vectors masked.
const MSG_CTL_FUNCTION_MASK: u16 = 1 << 14;
/// Message control: MSI-X enabled.
const MSG_CTL_ENABLE: u16 = 1 << 15;
/// Offset of message control inside the capability.
const MSG_CTL_OFFSET: usize = 2;
/// Vector control: the vector is masked.
const VECTOR_CTL_MASKED: u32 = 1;
/// Offsets of the dwords of one table entry.
const ENTRY_ADDR_LO: u64 = 0;
const ENTRY_ADDR_HI: u64 = 4;
const ENTRY_DATA: u64 = 8;
const ENTRY_VECTOR_CTL: u64 = 12;

/// Where the VMM delivers an MSI: backed by KVM GSI routing plus an irqfd
/// (or `KVM_SIGNAL_MSI`).
pub trait InterruptSink: Send + Sync {
    /// Sends one message-signalled interrupt.
    fn signal_msi(&self, address: u64, data: u32) -> io::Result<()>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MsixEntry {
    address: u64,
    data: u32,
    vector_control: u32,
}

impl Default for MsixEntry {
    fn default() -> Self {
        // Vectors come out of reset masked (PCI 3.0, 6.8.2.9).
        MsixEntry {
            address: 0,
            data: 0,
            vector_control: VECTOR_CTL_MASKED,
        }
    }
}

impl MsixEntry {
    fn masked(&self) -> bool {
        self.vector_control & VECTOR_CTL_MASKED != 0
    }
}

/// Adds an MSI-X capability for `vectors` vectors whose table is at
/// `table_offset` and PBA at `pba_offset` of BAR `bar`. Both offsets must be
/// 8-byte aligned. Returns the capability's offset in configuration space.
pub fn add_msix_capability(
    config: &mut PciConfiguration,
    vectors: u16,
    bar: u8,
    table_offset: u32,
    pba_offset: u32,
) -> Result<usize, PciError> {
    if vectors == 0
        || vectors > MSIX_MAX_VECTORS
        || bar > 5
        || !table_offset.is_multiple_of(8)
        || !pba_offset.is_multiple_of(8)
    {
        return Err(PciError::InvalidMsix);
    }
    let mut body = [0u8; 10];
    body[0..2].copy_from_slice(&(vectors - 1).to_le_bytes());
    body[2..6].copy_from_slice(&(table_offset | u32::from(bar)).to_le_bytes());
    body[6..10].copy_from_slice(&(pba_offset | u32::from(bar)).to_le_bytes());
    let mut writable = [0u8; 10];
    writable[0..2].copy_from_slice(&(MSG_CTL_ENABLE | MSG_CTL_FUNCTION_MASK).to_le_bytes());
    config.add_capability(PCI_CAP_ID_MSIX, &body, &writable)
}

/// The MSI-X state of one function.
pub struct MsixConfig {
    entries: Vec<MsixEntry>,
    pba: Vec<u64>,
    enabled: bool,
    function_masked: bool,
    sink: Arc<dyn InterruptSink>,
}

impl MsixConfig {
    /// A function with `vectors` vectors (clamped to 1..=2048), all masked,
    /// MSI-X disabled.
    pub fn new(vectors: u16, sink: Arc<dyn InterruptSink>) -> Self {
        let n = usize::from(vectors.clamp(1, MSIX_MAX_VECTORS));
        MsixConfig {
            entries: vec![MsixEntry::default(); n],
            pba: vec![0; n.div_ceil(64)],
            enabled: false,
            function_masked: false,
            sink,
        }
    }

    /// Number of vectors.
    pub fn num_vectors(&self) -> u16 {
        self.entries.len() as u16
    }

    /// Size in bytes of the vector table.
    pub fn table_size(&self) -> u64 {
        self.entries.len() as u64 * MSIX_TABLE_ENTRY_SIZE
    }

    /// Size in bytes of the pending-bit array.
    pub fn pba_size(&self) -> u64 {
        self.pba.len() as u64 * 8
    }

    /// Whether the guest enabled MSI-X.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether `vector`'s pending bit is set.
    pub fn is_pending(&self, vector: u16) -> bool {
        let v = usize::from(vector);
        self.pba
            .get(v / 64)
            .is_some_and(|w| w & (1 << (v % 64)) != 0)
    }

    fn set_pending(&mut self, vector: usize, pending: bool) {
        if let Some(w) = self.pba.get_mut(vector / 64) {
            if pending {
                *w |= 1 << (vector % 64);
            } else {
                *w &= !(1 << (vector % 64));
            }
        }
    }

    /// Re-reads message control from the capability at `cap_offset` after a
    /// configuration write. Unmasking delivers pending vectors.
    pub fn update_from_config(
        &mut self,
        config: &PciConfiguration,
        cap_offset: usize,
    ) -> io::Result<()> {
        let ctl = config.read_u16(cap_offset + MSG_CTL_OFFSET);
        self.set_message_control(ctl)
    }

    /// Applies a message control value (enable and function mask bits).
    pub fn set_message_control(&mut self, ctl: u16) -> io::Result<()> {
        self.enabled = ctl & MSG_CTL_ENABLE != 0;
        self.function_masked = ctl & MSG_CTL_FUNCTION_MASK != 0;
        self.deliver_pending()
    }

    /// The message control value: table size, mask and enable bits.
    pub fn message_control(&self) -> u16 {
        let mut ctl = (self.num_vectors() - 1) & MSG_CTL_TABLE_SIZE_MASK;
        if self.enabled {
            ctl |= MSG_CTL_ENABLE;
        }
        if self.function_masked {
            ctl |= MSG_CTL_FUNCTION_MASK;
        }
        ctl
    }

    fn can_deliver(&self, entry: &MsixEntry) -> bool {
        self.enabled && !self.function_masked && !entry.masked()
    }

    fn deliver_pending(&mut self) -> io::Result<()> {
        let mut result = Ok(());
        for v in 0..self.entries.len() {
            if self.is_pending(v as u16) && self.can_deliver(&self.entries[v]) {
                self.set_pending(v, false);
                let e = self.entries[v];
                if let Err(err) = self.sink.signal_msi(e.address, e.data) {
                    result = Err(err);
                }
            }
        }
        result
    }

    /// Raises `vector`: sends its message now, or records it as pending
    /// while MSI-X is masked. A vector out of range, or MSI-X disabled
    /// (this function has no INTx fallback), drops the interrupt.
    pub fn trigger(&mut self, vector: u16) -> io::Result<()> {
        let v = usize::from(vector);
        let Some(entry) = self.entries.get(v).copied() else {
            return Ok(());
        };
        if !self.enabled {
            return Ok(());
        }
        if self.function_masked || entry.masked() {
            self.set_pending(v, true);
            return Ok(());
        }
        self.sink.signal_msi(entry.address, entry.data)
    }

    /// Reads the vector table at `offset` from its start. Only aligned 4- and
    /// 8-byte reads are defined; anything else reads as ones.
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        if !matches!(data.len(), 4 | 8) || !offset.is_multiple_of(data.len() as u64) {
            return;
        }
        for (i, chunk) in data.chunks_mut(4).enumerate() {
            let at = offset + i as u64 * 4;
            let Some(entry) = usize::try_from(at / MSIX_TABLE_ENTRY_SIZE)
                .ok()
                .and_then(|i| self.entries.get(i))
            else {
                return;
            };
            let v = match at % MSIX_TABLE_ENTRY_SIZE {
                ENTRY_ADDR_LO => entry.address as u32,
                ENTRY_ADDR_HI => (entry.address >> 32) as u32,
                ENTRY_DATA => entry.data,
                _ => entry.vector_control,
            };
            chunk.copy_from_slice(&v.to_le_bytes());
        }
    }

    /// Writes the vector table at `offset`. Only aligned 4- and 8-byte
    /// writes are honoured. Unmasking a pending vector delivers it.
    pub fn write_table(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        if !matches!(data.len(), 4 | 8) || !offset.is_multiple_of(data.len() as u64) {
            return Ok(());
        }
        for (i, chunk) in data.chunks(4).enumerate() {
            let at = offset + i as u64 * 4;
            let Some(index) = usize::try_from(at / MSIX_TABLE_ENTRY_SIZE)
                .ok()
                .filter(|&i| i < self.entries.len())
            else {
                return Ok(());
            };
            let mut b = [0u8; 4];
            b.copy_from_slice(chunk);
            let v = u32::from_le_bytes(b);
            let entry = &mut self.entries[index];
            match at % MSIX_TABLE_ENTRY_SIZE {
                ENTRY_ADDR_LO => entry.address = entry.address & !0xffff_ffff | u64::from(v),
                ENTRY_ADDR_HI => entry.address = entry.address & 0xffff_ffff | u64::from(v) << 32,
                ENTRY_DATA => entry.data = v,
                ENTRY_VECTOR_CTL => entry.vector_control = v & VECTOR_CTL_MASKED,
                _ => {}
            }
        }
        self.deliver_pending()
    }

    /// Reads the pending-bit array (read-only to the guest).
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let at = offset.saturating_add(i as u64);
            *b = usize::try_from(at / 8)
                .ok()
                .and_then(|w| self.pba.get(w))
                .map_or(0xff, |w| (w >> ((at % 8) * 8)) as u8);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::devices::pci::config::tests::header;
    use std::sync::Mutex;

    /// Records every message it is asked to send.
    #[derive(Default)]
    pub(crate) struct RecordingSink(pub Mutex<Vec<(u64, u32)>>);

    impl InterruptSink for RecordingSink {
        fn signal_msi(&self, address: u64, data: u32) -> io::Result<()> {
            self.0.lock().unwrap().push((address, data));
            Ok(())
        }
    }

    impl RecordingSink {
        pub(crate) fn take(&self) -> Vec<(u64, u32)> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }

    fn program(m: &mut MsixConfig, v: u64, address: u64, data: u32, masked: bool) {
        let base = v * MSIX_TABLE_ENTRY_SIZE;
        m.write_table(base, &address.to_le_bytes()).unwrap();
        m.write_table(base + 8, &data.to_le_bytes()).unwrap();
        m.write_table(base + 12, &u32::from(masked).to_le_bytes())
            .unwrap();
    }

    #[test]
    fn capability_layout() {
        let mut c = PciConfiguration::new(header());
        let off = add_msix_capability(&mut c, 3, 0, 0x4000, 0x5000).unwrap();
        assert_eq!(c.read_u16(off), 0x0011);
        assert_eq!(c.read_u16(off + 2), 2);
        assert_eq!(c.read_u32(off + 4), 0x4000);
        assert_eq!(c.read_u32(off + 8), 0x5000);
        // The guest can set enable and mask but not the table size.
        c.write(off as u64 + 2, &0xffffu16.to_le_bytes());
        assert_eq!(c.read_u16(off + 2), 0xc002);
        assert!(add_msix_capability(&mut c, 0, 0, 0, 0).is_err());
        assert!(add_msix_capability(&mut c, 1, 0, 4, 0).is_err());
    }

    #[test]
    fn delivers_when_enabled_and_unmasked() {
        let sink = Arc::new(RecordingSink::default());
        let mut m = MsixConfig::new(2, sink.clone());
        program(&mut m, 1, 0xfee0_0000, 0x41, false);
        // Disabled: dropped, not pending.
        m.trigger(1).unwrap();
        assert!(sink.take().is_empty());
        assert!(!m.is_pending(1));
        m.set_message_control(MSG_CTL_ENABLE).unwrap();
        m.trigger(1).unwrap();
        assert_eq!(sink.take(), vec![(0xfee0_0000, 0x41)]);
        // Out-of-range vectors are ignored.
        m.trigger(2).unwrap();
        m.trigger(u16::MAX).unwrap();
        assert!(sink.take().is_empty());
    }

    #[test]
    fn masked_vector_is_pending_until_unmasked() {
        let sink = Arc::new(RecordingSink::default());
        let mut m = MsixConfig::new(4, sink.clone());
        m.set_message_control(MSG_CTL_ENABLE).unwrap();
        program(&mut m, 2, 0xfee0_1000, 0x55, true);
        m.trigger(2).unwrap();
        assert!(sink.take().is_empty());
        assert!(m.is_pending(2));
        let mut pba = [0u8; 8];
        m.read_pba(0, &mut pba);
        assert_eq!(u64::from_le_bytes(pba), 1 << 2);
        // Unmask the vector: delivered once, pending cleared.
        m.write_table(2 * 16 + 12, &0u32.to_le_bytes()).unwrap();
        assert_eq!(sink.take(), vec![(0xfee0_1000, 0x55)]);
        assert!(!m.is_pending(2));
        // Function mask works the same way.
        m.set_message_control(MSG_CTL_ENABLE | MSG_CTL_FUNCTION_MASK)
            .unwrap();
        m.trigger(2).unwrap();
        assert!(sink.take().is_empty());
        assert!(m.is_pending(2));
        m.set_message_control(MSG_CTL_ENABLE).unwrap();
        assert_eq!(sink.take(), vec![(0xfee0_1000, 0x55)]);
        assert_eq!(m.message_control(), MSG_CTL_ENABLE | 3);
    }

    #[test]
    fn table_reads_back_and_odd_accesses_are_ignored() {
        let sink = Arc::new(RecordingSink::default());
        let mut m = MsixConfig::new(1, sink);
        program(&mut m, 0, 0x1_fee0_0000, 7, false);
        let mut q = [0u8; 8];
        m.read_table(0, &mut q);
        assert_eq!(u64::from_le_bytes(q), 0x1_fee0_0000);
        let mut d = [0u8; 4];
        m.read_table(12, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0);
        // Misaligned, odd-sized, past the end: ignored, reads as ones.
        m.write_table(2, &[1, 2, 3, 4]).unwrap();
        m.write_table(8, &[1]).unwrap();
        m.write_table(16, &[1, 2, 3, 4]).unwrap();
        m.write_table(u64::MAX - 3, &[1, 2, 3, 4]).unwrap();
        m.read_table(16, &mut d);
        assert_eq!(d, [0xff; 4]);
        m.read_table(8, &mut d);
        assert_eq!(u32::from_le_bytes(d), 7);
        let mut b = [0u8; 2];
        m.read_table(0, &mut b);
        assert_eq!(b, [0xff; 2]);
        m.read_pba(u64::MAX, &mut b);
        assert_eq!(b, [0xff; 2]);
        assert_eq!(m.table_size(), 16);
        assert_eq!(m.pba_size(), 8);
    }
}
