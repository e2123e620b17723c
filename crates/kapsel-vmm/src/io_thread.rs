//! The VM's I/O thread: virtqueue work runs here, not on the vCPU threads.
//!
//! Each virtio queue has an eventfd that KVM signals when the guest writes
//! the queue's doorbell (an ioeventfd: the write does not even leave the
//! kernel). The I/O thread waits on all of them and processes the queue
//! that was notified. A guest that floods one queue only keeps this thread
//! busy; vCPUs and the VMM's event loop go on.

use crate::devices::virtio::transport::{NotifyRegistrar, VirtioPciDevice};
use crate::error::{Error, Result};
use crate::sandbox::seccomp::{Filters, ThreadKind};
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// The doorbells of one device: one eventfd per queue, attached to the
/// doorbell address through KVM while the driver runs the device.
pub struct QueueDoorbells {
    vm: Arc<VmFd>,
    events: Vec<EventFd>,
    attached: Mutex<Vec<Option<u64>>>,
}

impl QueueDoorbells {
    /// Eventfds for `queues` queues of a device in `vm`.
    pub fn new(vm: Arc<VmFd>, queues: usize) -> Result<Self> {
        let events = (0..queues)
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(|e| Error::io("creating queue eventfds", e))?;
        Ok(QueueDoorbells {
            vm,
            events,
            attached: Mutex::new(vec![None; queues]),
        })
    }

    fn detach(&self, index: usize, addr: u64) {
        if let Some(evt) = self.events.get(index) {
            let _ = self
                .vm
                .unregister_ioevent(evt, &IoEventAddress::Mmio(addr), NoDatamatch);
        }
    }
}

impl NotifyRegistrar for QueueDoorbells {
    fn attach(&self, index: u16, addr: u64) -> std::io::Result<()> {
        let i = usize::from(index);
        let evt = self
            .events
            .get(i)
            .ok_or_else(|| std::io::Error::other(format!("no queue {index}")))?;
        let mut attached = self.attached.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = attached[i].take() {
            self.detach(i, old);
        }
        self.vm
            .register_ioevent(evt, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
        attached[i] = Some(addr);
        tracing::debug!("queue {index} doorbell at {addr:#x} through an ioeventfd");
        Ok(())
    }

    fn kick(&self, index: u16) {
        if let Some(evt) = self.events.get(usize::from(index)) {
            let _ = evt.write(1);
        }
    }

    fn detach_all(&self) {
        let mut attached = self.attached.lock().unwrap_or_else(|e| e.into_inner());
        for (i, slot) in attached.iter_mut().enumerate() {
            if let Some(addr) = slot.take() {
                self.detach(i, addr);
            }
        }
    }
}

/// A device served by the I/O thread.
pub struct IoDevice {
    /// The device.
    pub device: Arc<Mutex<VirtioPciDevice>>,
    /// Its doorbells (the same object the device attaches through).
    pub doorbells: Arc<QueueDoorbells>,
}

/// The running I/O thread.
pub struct IoThread {
    stop: EventFd,
    handle: Option<JoinHandle<()>>,
}

const STOP_TOKEN: u64 = u64::MAX;
/// Marks a host descriptor (not a queue doorbell) in a token.
const HOST_EVENT: u64 = 1 << 15;

fn token(device: usize, queue: usize) -> u64 {
    ((device as u64) << 16) | queue as u64
}

impl IoThread {
    /// Starts the thread serving `devices`. With `filters` it installs the
    /// I/O thread's seccomp filter before it touches a device; `start`
    /// returns once it has (or reports why it could not).
    pub fn start(devices: Vec<IoDevice>, filters: Option<Arc<Filters>>) -> Result<IoThread> {
        let epoll = Epoll::new().map_err(|e| Error::io("creating the I/O epoll", e))?;
        let stop = EventFd::new(EFD_NONBLOCK).map_err(|e| Error::io("creating an eventfd", e))?;
        let add = |fd: i32, data: u64| {
            epoll
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, data),
                )
                .map_err(|e| Error::io("adding to the I/O epoll", e))
        };
        add(stop.as_raw_fd(), STOP_TOKEN)?;
        for (d, dev) in devices.iter().enumerate() {
            for (q, evt) in dev.doorbells.events.iter().enumerate() {
                add(evt.as_raw_fd(), token(d, q))?;
            }
            let host_fds = dev
                .device
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .host_event_fds();
            for (i, fd) in host_fds.into_iter().enumerate() {
                // Edge-triggered: a device that cannot take more (no receive
                // buffers) leaves data waiting without the thread spinning.
                epoll
                    .ctl(
                        ControlOperation::Add,
                        fd,
                        EpollEvent::new(
                            EventSet::IN | EventSet::EDGE_TRIGGERED,
                            token(d, i) | HOST_EVENT,
                        ),
                    )
                    .map_err(|e| Error::io("adding to the I/O epoll", e))?;
            }
        }
        let thread_stop = stop
            .try_clone()
            .map_err(|e| Error::io("duplicating an eventfd", e))?;
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("io".into())
            .spawn(move || {
                let installed = filters.map_or(Ok(()), |f| f.install(ThreadKind::Io));
                let ok = installed.is_ok();
                let _ = ready_tx.send(installed);
                if ok {
                    serve(epoll, thread_stop, devices)
                }
            })
            .map_err(|e| Error::io("starting the I/O thread", e))?;
        match ready.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = handle.join();
                return Err(e.into());
            }
            Err(_) => {
                let _ = handle.join();
                return Err(Error::io(
                    "starting the I/O thread",
                    std::io::Error::other("the thread ended before it was ready"),
                ));
            }
        }
        Ok(IoThread {
            stop,
            handle: Some(handle),
        })
    }

    /// Stops the thread and waits for it.
    pub fn stop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(handle) = self.handle.take() {
            if handle.join().is_err() {
                tracing::error!("the I/O thread panicked");
            }
        }
    }
}

impl Drop for IoThread {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(epoll: Epoll, stop: EventFd, devices: Vec<IoDevice>) {
    let mut events = vec![EpollEvent::default(); 64];
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!("I/O thread: epoll failed: {e}");
                return;
            }
        };
        for event in &events[..n] {
            let data = event.data();
            if data == STOP_TOKEN {
                let _ = stop.read();
                return;
            }
            let (d, q) = ((data >> 16) as usize, (data & 0x7fff) as usize);
            let Some(dev) = devices.get(d) else { continue };
            if data & HOST_EVENT != 0 {
                dev.device
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .handle_host_event(q);
                continue;
            }
            if let Some(evt) = dev.doorbells.events.get(q) {
                // Reset the counter; several doorbell writes are one notification.
                let _ = evt.read();
            }
            dev.device
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .notify_queue(q as u16);
        }
    }
}
