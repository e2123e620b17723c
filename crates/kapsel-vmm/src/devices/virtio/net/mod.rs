//! virtio-net (virtio 5.1): a network card whose frames go to and come from
//! a host tap interface. One receive and one transmit queue; the MAC address
//! and link status in configuration space. Frames carry the 12-byte
//! virtio-net header, which the tap understands (IFF_VNET_HDR), so the
//! device copies them through unchanged.

pub mod tap;

use super::{
    feature, pop_or_arm, ready_queues, signal_if, ActivateError, DeviceError, VirtioDevice,
    VirtioInterrupt, TYPE_NET,
};
use crate::memory::GuestMem;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

/// Size of each queue.
pub const NET_QUEUE_SIZE: u16 = 256;
/// The virtio-net header in front of each frame (virtio_net_hdr_v1).
pub const VNET_HDR_LEN: usize = 12;
/// Largest frame with its header the device moves: a 64 KiB segmentation
/// offload packet, its Ethernet header and the virtio-net header.
pub const MAX_FRAME: usize = 65_536 + 14 + VNET_HDR_LEN;

/// Offset of `num_buffers` (le16) in virtio_net_hdr_v1.
const NUM_BUFFERS_OFFSET: usize = 10;
const RX_QUEUE: u16 = 0;
const TX_QUEUE: u16 = 1;
const VIRTIO_NET_F_CSUM: u32 = 0;
const VIRTIO_NET_F_GUEST_CSUM: u32 = 1;
const VIRTIO_NET_F_MAC: u32 = 5;
const VIRTIO_NET_F_GUEST_TSO4: u32 = 7;
const VIRTIO_NET_F_GUEST_TSO6: u32 = 8;
const VIRTIO_NET_F_HOST_TSO4: u32 = 11;
const VIRTIO_NET_F_HOST_TSO6: u32 = 12;
const VIRTIO_NET_F_STATUS: u32 = 16;

/// What the host side may hand the guest, from the features the guest
/// accepted: partial checksums with GUEST_CSUM, TSO frames with GUEST_TSO*.
pub fn host_offloads(acked: u64) -> u32 {
    let has = |bit| acked & feature(bit) != 0;
    if !has(VIRTIO_NET_F_GUEST_CSUM) {
        return 0;
    }
    let mut flags = tap::TUN_F_CSUM;
    if has(VIRTIO_NET_F_GUEST_TSO4) {
        flags |= tap::TUN_F_TSO4;
    }
    if has(VIRTIO_NET_F_GUEST_TSO6) {
        flags |= tap::TUN_F_TSO6;
    }
    flags
}
const VIRTIO_NET_S_LINK_UP: u16 = 1;
/// Configuration space: mac[6], then status (le16).
const CONFIG_LEN: usize = 8;

/// Where frames go: a tap, or in tests one end of a SOCK_SEQPACKET pair
/// (both move one frame per read or write and never block).
pub trait FrameIo: AsRawFd + Send {
    /// Reads one frame; `WouldBlock` when none is waiting.
    fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes one frame.
    fn write_frame(&self, frame: &[u8]) -> io::Result<usize>;
    /// Which offloaded frames (tap `TUN_F_*` flags) the host may deliver.
    fn set_offload(&self, _flags: u32) -> io::Result<()> {
        Ok(())
    }
}

/// A tap shared across guest reboots: the VMM opens it once, before its
/// sandbox, and each boot's device uses the same descriptor.
impl FrameIo for Arc<tap::Tap> {
    fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.read(buf)
    }
    fn write_frame(&self, frame: &[u8]) -> io::Result<usize> {
        self.write(frame)
    }
    fn set_offload(&self, flags: u32) -> io::Result<()> {
        tap::Tap::set_offload(self, flags)
    }
}

struct Active {
    mem: GuestMem,
    interrupt: Arc<dyn VirtioInterrupt>,
    rx: Queue,
    tx: Queue,
}

/// Counters of frames the device could not move.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetDrops {
    /// Transmit chains that were malformed or larger than [`MAX_FRAME`].
    pub tx_malformed: u64,
    /// Frames the host side refused (tap queue full, interface down).
    pub tx_host: u64,
    /// Received frames larger than the receive buffer offered for them.
    pub rx_too_large: u64,
}

/// The network device.
pub struct VirtioNet {
    io: Box<dyn FrameIo>,
    config: [u8; CONFIG_LEN],
    queue_sizes: [u16; 2],
    active: Option<Active>,
    /// Length of a frame in `rx_buf` read from the host while the guest had
    /// no receive buffer.
    pending: Option<usize>,
    rx_buf: Vec<u8>,
    tx_buf: Vec<u8>,
    drops: NetDrops,
}

impl VirtioNet {
    /// A card with address `mac` whose frames travel through `io`.
    pub fn new(io: Box<dyn FrameIo>, mac: [u8; 6]) -> Self {
        let mut config = [0u8; CONFIG_LEN];
        config[..6].copy_from_slice(&mac);
        config[6..8].copy_from_slice(&VIRTIO_NET_S_LINK_UP.to_le_bytes());
        VirtioNet {
            io,
            config,
            queue_sizes: [NET_QUEUE_SIZE; 2],
            active: None,
            pending: None,
            rx_buf: vec![0; MAX_FRAME],
            tx_buf: vec![0; MAX_FRAME],
            drops: NetDrops::default(),
        }
    }

    /// What was dropped so far.
    pub fn drops(&self) -> NetDrops {
        self.drops
    }

    fn transmit(&mut self) -> Result<(), DeviceError> {
        let Some(a) = self.active.as_mut() else {
            return Ok(());
        };
        let (io, drops, frame) = (&self.io, &mut self.drops, &mut self.tx_buf);
        let mem = a.mem.clone();
        let interrupt = a.interrupt.clone();
        super::process_queue(&mut a.tx, TX_QUEUE, &a.mem, interrupt.as_ref(), |chain| {
            match gather(&mem, chain, frame) {
                Some(len) => {
                    if io.write_frame(&frame[..len]).is_err() {
                        drops.tx_host += 1;
                    }
                }
                None => drops.tx_malformed += 1,
            }
            0
        })
    }

    fn receive(&mut self) -> Result<(), DeviceError> {
        let Some(a) = self.active.as_mut() else {
            return Ok(());
        };
        let mut used = false;
        loop {
            let len = match self.pending.take() {
                Some(len) => len,
                None => match self.io.read_frame(&mut self.rx_buf) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        tracing::warn!("virtio-net: reading from the host: {e}");
                        break;
                    }
                },
            };
            // No buffer: the frame waits in rx_buf until the driver adds one.
            let chain = match pop_or_arm(&mut a.rx, &a.mem) {
                Ok(Some(chain)) => chain,
                Ok(None) => {
                    self.pending = Some(len);
                    break;
                }
                Err(e) => {
                    self.pending = Some(len);
                    return Err(e);
                }
            };
            let head = chain.head_index();
            let frame = &mut self.rx_buf[..len];
            if let Some(n) = frame.get_mut(NUM_BUFFERS_OFFSET..VNET_HDR_LEN) {
                // One buffer per frame (no VIRTIO_NET_F_MRG_RXBUF): the
                // device must say so (virtio 5.1.6.4.1); the tap leaves it 0.
                n.copy_from_slice(&1u16.to_le_bytes());
            }
            let written = match scatter(&a.mem, chain, frame) {
                Some(n) => n,
                None => {
                    self.drops.rx_too_large += 1;
                    0
                }
            };
            a.rx.add_used(&a.mem, head, written)?;
            used = true;
        }
        signal_if(
            a.interrupt.as_ref(),
            RX_QUEUE,
            used && a.rx.needs_notification(&a.mem)?,
        )?;
        Ok(())
    }
}

/// Copies the device-readable part of a transmit chain into `frame`;
/// None when it is larger than [`MAX_FRAME`], shorter than the header, or
/// reaches outside guest memory.
fn gather(mem: &GuestMem, chain: DescriptorChain<&GuestMem>, frame: &mut [u8]) -> Option<usize> {
    let mut len = 0usize;
    for desc in chain.readable() {
        let n = desc.len() as usize;
        let end = len.checked_add(n).filter(|&e| e <= frame.len())?;
        mem.read_slice(&mut frame[len..end], desc.addr()).ok()?;
        len = end;
    }
    (len >= VNET_HDR_LEN).then_some(len)
}

/// Copies `frame` into the device-writable buffers of a receive chain;
/// returns the bytes written, or None when the buffers are too small or
/// outside guest memory (the frame is dropped).
fn scatter(mem: &GuestMem, chain: DescriptorChain<&GuestMem>, frame: &[u8]) -> Option<u32> {
    let mut done = 0usize;
    for desc in chain.writable() {
        if done == frame.len() {
            break;
        }
        let n = (desc.len() as usize).min(frame.len() - done);
        mem.write_slice(&frame[done..done + n], GuestAddress(desc.addr().0))
            .ok()?;
        done += n;
    }
    (done == frame.len()).then_some(done as u32)
}

impl VirtioDevice for VirtioNet {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        // The tap takes and gives frames with the virtio-net header as is,
        // so checksum and segmentation offloads pass straight through.
        [
            VIRTIO_NET_F_CSUM,
            VIRTIO_NET_F_GUEST_CSUM,
            VIRTIO_NET_F_MAC,
            VIRTIO_NET_F_GUEST_TSO4,
            VIRTIO_NET_F_GUEST_TSO6,
            VIRTIO_NET_F_HOST_TSO4,
            VIRTIO_NET_F_HOST_TSO6,
            VIRTIO_NET_F_STATUS,
        ]
        .iter()
        .fold(0, |f, &bit| f | feature(bit))
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // The MAC is read-only without VIRTIO_NET_F_CTRL_MAC_ADDR.
    }

    fn activate(
        &mut self,
        mem: GuestMem,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<Queue>,
        acked_features: u64,
    ) -> Result<(), ActivateError> {
        self.io.set_offload(host_offloads(acked_features))?;
        let [rx, tx] = ready_queues::<2>(queues)?;
        self.active = Some(Active {
            mem,
            interrupt,
            rx,
            tx,
        });
        // Frames may have queued on the host before the driver was ready.
        self.receive()
            .map_err(|e| ActivateError::Io(io::Error::other(e.to_string())))
    }

    fn reset(&mut self) {
        self.active = None;
        self.pending = None;
    }

    fn queue_notify(&mut self, queue_index: u16) -> Result<(), DeviceError> {
        match queue_index {
            RX_QUEUE => self.receive(),
            TX_QUEUE => self.transmit(),
            _ => Ok(()),
        }
    }

    fn host_event_fds(&self) -> Vec<RawFd> {
        vec![self.io.as_raw_fd()]
    }

    fn host_event(&mut self, _index: usize) -> Result<(), DeviceError> {
        self.receive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::testing::*;
    use crate::devices::virtio::VIRTIO_F_VERSION_1;
    use std::os::fd::{FromRawFd, OwnedFd};
    use virtio_queue::mock::MockSplitQueue;

    /// One end of a SOCK_SEQPACKET pair: frame boundaries like a tap.
    struct Seqpacket(OwnedFd);

    impl AsRawFd for Seqpacket {
        fn as_raw_fd(&self) -> RawFd {
            self.0.as_raw_fd()
        }
    }

    impl FrameIo for Seqpacket {
        fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
            // SAFETY: reading into a valid buffer of the given length.
            let n = unsafe {
                libc::recv(
                    self.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        }
        fn write_frame(&self, frame: &[u8]) -> io::Result<usize> {
            // SAFETY: sending from a valid buffer of the given length.
            let n = unsafe {
                libc::send(
                    self.as_raw_fd(),
                    frame.as_ptr().cast(),
                    frame.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        }
    }

    fn pair() -> (Seqpacket, Seqpacket) {
        let mut fds = [0; 2];
        // SAFETY: socketpair writes two new descriptors into `fds`.
        let rc =
            unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET, 0, fds.as_mut_ptr()) };
        assert_eq!(rc, 0);
        // SAFETY: both descriptors were just created and are owned here.
        unsafe {
            (
                Seqpacket(OwnedFd::from_raw_fd(fds[0])),
                Seqpacket(OwnedFd::from_raw_fd(fds[1])),
            )
        }
    }

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
    const RXQ: u64 = 0x10_0000;
    const TXQ: u64 = 0x20_0000;

    fn up() -> (
        Driver,
        Seqpacket,
        MockSplitQueue<'static, GuestMem>,
        MockSplitQueue<'static, GuestMem>,
    ) {
        let (dev_end, host_end) = pair();
        let mut d = Driver::new(Box::new(VirtioNet::new(Box::new(dev_end), MAC)));
        d.negotiate(feature(VIRTIO_F_VERSION_1) | feature(VIRTIO_NET_F_MAC));
        let mem: &'static GuestMem = Box::leak(Box::new(d.mem.clone()));
        let rx = MockSplitQueue::create(mem, GuestAddress(RXQ), 16);
        let tx = MockSplitQueue::create(mem, GuestAddress(TXQ), 16);
        d.setup_queue(0, &rx, 16);
        d.setup_queue(1, &tx, 16);
        d.driver_ok();
        (d, host_end, rx, tx)
    }

    #[test]
    fn config_space_holds_mac_and_link_up() {
        let (dev_end, _host) = pair();
        let net = VirtioNet::new(Box::new(dev_end), MAC);
        let mut b = [0u8; 8];
        net.read_config(0, &mut b);
        assert_eq!(&b[..6], &MAC);
        assert_eq!(u16::from_le_bytes([b[6], b[7]]), VIRTIO_NET_S_LINK_UP);
        let mut far = [0xffu8; 4];
        net.read_config(u64::MAX - 1, &mut far);
        assert_eq!(far, [0; 4]);
        assert_ne!(net.features() & feature(VIRTIO_NET_F_MAC), 0);
    }

    #[test]
    fn offloads_follow_what_the_guest_accepted() {
        assert_eq!(host_offloads(0), 0);
        // TSO without checksum offload is not possible.
        assert_eq!(host_offloads(feature(VIRTIO_NET_F_GUEST_TSO4)), 0);
        assert_eq!(
            host_offloads(feature(VIRTIO_NET_F_GUEST_CSUM)),
            tap::TUN_F_CSUM
        );
        let all = feature(VIRTIO_NET_F_GUEST_CSUM)
            | feature(VIRTIO_NET_F_GUEST_TSO4)
            | feature(VIRTIO_NET_F_GUEST_TSO6);
        assert_eq!(
            host_offloads(all),
            tap::TUN_F_CSUM | tap::TUN_F_TSO4 | tap::TUN_F_TSO6
        );
    }

    #[test]
    fn frames_flow_both_ways() {
        let (mut d, host, rx, tx) = up();
        // Guest -> host: header and frame split over two descriptors.
        let frame: Vec<u8> = (0..200u8).collect();
        d.mem
            .write_slice(&frame[..VNET_HDR_LEN], GuestAddress(DATA_BASE))
            .unwrap();
        d.mem
            .write_slice(&frame[VNET_HDR_LEN..], GuestAddress(DATA_BASE + 0x1000))
            .unwrap();
        add_chain(
            &tx,
            0,
            &[
                (DATA_BASE, VNET_HDR_LEN as u32, 0),
                (DATA_BASE + 0x1000, 188, 0),
            ],
        );
        d.notify(1);
        let mut got = [0u8; 512];
        assert_eq!(host.read_frame(&mut got).unwrap(), 200);
        assert_eq!(&got[..200], &frame[..]);
        // Host -> guest: a frame waits until the guest posts a buffer.
        host.write_frame(&[7u8; 100]).unwrap();
        d.dev.handle_host_event(0);
        add_chain(&rx, 0, &[(DATA_BASE + 0x4000, 1526, DESC_F_WRITE)]);
        d.notify(0);
        assert_eq!(used_entry(&d.mem, &rx, 0), (0, 100));
        let mut b = [0u8; 100];
        d.mem
            .read_slice(&mut b, GuestAddress(DATA_BASE + 0x4000))
            .unwrap();
        // The header says "one buffer"; the rest is the frame as sent.
        assert_eq!(&b[10..12], &[1, 0]);
        assert_eq!(&b[..10], &[7u8; 10]);
        assert_eq!(&b[12..], &[7u8; 88]);
    }

    #[test]
    fn an_invalid_rx_avail_index_breaks_the_device_instead_of_spinning() {
        let (mut d, host, rx, _tx) = up();
        // The avail index runs 100 ahead of a 16-entry ring.
        d.mem
            .write_obj(100u16, GuestAddress(rx.avail_addr().0 + 2))
            .unwrap();
        host.write_frame(&[1u8; 64]).unwrap();
        d.dev.handle_host_event(0);
        assert_ne!(d.status() & crate::devices::virtio::STATUS_NEEDS_RESET, 0);
    }

    #[test]
    fn malformed_chains_are_dropped_and_counted() {
        let (mut d, host, rx, tx) = up();
        // Shorter than the header; outside memory; too large.
        add_chain(&tx, 0, &[(DATA_BASE, 4, 0)]);
        add_chain(&tx, 1, &[(MEM_SIZE as u64 - 8, 64, 0)]);
        add_chain(&tx, 2, &[(DATA_BASE, 0x20000, 0), (DATA_BASE, 0x20000, 0)]);
        d.notify(1);
        let mut got = [0u8; 64];
        assert!(
            host.read_frame(&mut got).is_err(),
            "nothing reached the host"
        );
        // A receive buffer too small for the frame: dropped, used length 0.
        host.write_frame(&[1u8; 300]).unwrap();
        add_chain(&rx, 0, &[(DATA_BASE, 100, DESC_F_WRITE)]);
        d.notify(0);
        assert_eq!(used_entry(&d.mem, &rx, 0), (0, 0));
        assert_eq!(d.status() & crate::devices::virtio::STATUS_NEEDS_RESET, 0);
    }
}
