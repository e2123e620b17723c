//! vCPUs: creation and initial state, and the thread that runs each one.
//!
//! A vCPU thread handles the exits that need the VMM (port I/O, MMIO) and
//! turns terminal exits into a [`VmExit`]. The VMM stops a vCPU by setting
//! the shared stop flag and kicking the thread with [`kick_signal`], which
//! makes a blocked `KVM_RUN` return `EINTR`. It pauses the VM the same way
//! through a [`PauseGate`]: kicked out of `KVM_RUN`, each vCPU thread parks
//! until the gate opens again, so the guest resumes exactly where it was.

use crate::arch::x86_64::boot::BootEntry;
use crate::arch::x86_64::{cpuid, regs};
use crate::bus::Bus;
use crate::error::{Error, Result};
use crate::exit::{ExitSignal, VmExit};
use crate::memory::GuestMem;
use kvm_bindings::{
    CpuId, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, Once};
use std::time::{Duration, Instant};

/// The real-time signal used to kick vCPU threads out of `KVM_RUN`.
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the (empty) handler for [`kick_signal`] once per process, so
/// the signal interrupts `KVM_RUN` instead of killing the process.
pub fn install_kick_handler() -> Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick)
            .map_err(|e| Error::io("installing the vCPU kick handler", e.into()));
    });
    result
}

/// Shared state a vCPU thread works with.
#[derive(Clone)]
pub struct VcpuContext {
    /// Port I/O devices.
    pub pio: Arc<Bus>,
    /// MMIO devices.
    pub mmio: Arc<Bus>,
    /// Where the thread reports why the VM must stop.
    pub exit: Arc<ExitSignal>,
    /// Set by the VMM when every vCPU must return.
    pub stop: Arc<AtomicBool>,
    /// Where the vCPU parks while the VM is paused.
    pub gate: Arc<PauseGate>,
}

/// Parks the vCPU threads between two `KVM_RUN`s while the VM is paused.
#[derive(Debug, Default)]
pub struct PauseGate {
    /// Read by the vCPU threads after every exit, without the lock.
    requested: AtomicBool,
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct GateState {
    paused: bool,
    parked: usize,
    /// Set when the VM stops: nothing parks any more.
    released: bool,
}

impl PauseGate {
    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the VM is paused (or being paused).
    pub fn is_paused(&self) -> bool {
        self.lock().paused
    }

    /// Pauses the VM: asks every vCPU to park, calls `kick` (which kicks
    /// the threads out of `KVM_RUN`, and returns false when the VM is
    /// ending and no longer all of them will park) until all `vcpus` have
    /// parked, and fails after `timeout` (the VM then runs on).
    pub fn pause(
        &self,
        vcpus: usize,
        kick: impl Fn() -> bool,
        timeout: Duration,
    ) -> std::result::Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut st = self.lock();
        if st.released {
            return Err("the VM is stopping".into());
        }
        st.paused = true;
        self.requested.store(true, Ordering::Release);
        // KVM_RUN may be entered just after a kick: kick until every
        // thread has parked.
        while st.parked < vcpus {
            if st.released || !kick() {
                drop(st);
                self.resume();
                return Err("the VM is stopping".into());
            }
            if Instant::now() >= deadline {
                let parked = st.parked;
                drop(st);
                self.resume();
                return Err(format!(
                    "only {parked} of {vcpus} vCPUs stopped within {} ms; the VM runs on",
                    timeout.as_millis()
                ));
            }
            st = self
                .changed
                .wait_timeout(st, Duration::from_micros(500))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        Ok(())
    }

    /// Lets the parked vCPUs run again.
    pub fn resume(&self) {
        let mut st = self.lock();
        st.paused = false;
        self.requested.store(false, Ordering::Release);
        drop(st);
        self.changed.notify_all();
    }

    /// Opens the gate for good: the VM stops.
    pub fn release(&self) {
        let mut st = self.lock();
        st.released = true;
        st.paused = false;
        self.requested.store(false, Ordering::Release);
        drop(st);
        self.changed.notify_all();
    }

    /// The vCPU thread's side: parks until the VM is resumed or stops.
    fn park(&self, vcpu: &VcpuFd, id: u8) {
        self.park_with(|| {
            // Tell the guest's kvmclock that its vCPU is being stopped
            // (PVCLOCK_GUEST_STOPPED), as Firecracker does when it pauses
            // and QEMU when it resumes: the guest's soft-lockup watchdog
            // then does not count the pause as a hung CPU. EINVAL means the
            // guest does not use kvmclock, and there is nothing to tell.
            if let Err(e) = vcpu.kvmclock_ctrl() {
                if e.errno() != libc::EINVAL {
                    tracing::warn!("vCPU {id}: KVM_KVMCLOCK_CTRL: {e}");
                }
            }
        })
    }

    /// Parks after `stopping` (what a vCPU tells KVM as it stops).
    fn park_with(&self, stopping: impl FnOnce()) {
        stopping();
        let mut st = self.lock();
        st.parked += 1;
        self.changed.notify_all();
        while st.paused && !st.released {
            st = self.changed.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        st.parked -= 1;
    }
}

/// One virtual CPU.
pub struct Vcpu {
    id: u8,
    fd: VcpuFd,
}

impl Vcpu {
    /// Creates vCPU `id` (its APIC ID is the same number).
    pub fn new(vm: &VmFd, id: u8) -> Result<Self> {
        let fd = vm
            .create_vcpu(u64::from(id))
            .map_err(|e| Error::kvm("KVM_CREATE_VCPU", e))?;
        Ok(Vcpu { id, fd })
    }

    /// Sets CPUID, MSRs, FPU and LAPIC wiring; for the boot vCPU (`boot`
    /// given) also the registers that start the kernel. The other vCPUs
    /// wait, as on real hardware, for INIT/SIPI from the boot vCPU.
    pub fn configure(
        &self,
        supported: &CpuId,
        cpus: u8,
        host: cpuid::HostCaps,
        hide: &[String],
        boot: Option<(&GuestMem, BootEntry)>,
    ) -> Result<()> {
        let cpuid = cpuid::for_vcpu(supported, self.id, cpus, host, hide)?;
        self.fd
            .set_cpuid2(&cpuid)
            .map_err(|e| Error::kvm("KVM_SET_CPUID2", e))?;
        regs::setup_msrs(&self.fd)?;
        regs::setup_fpu(&self.fd)?;
        regs::setup_lint(&self.fd)?;
        if let Some((mem, entry)) = boot {
            regs::setup_sregs(mem, &self.fd, entry.mode)?;
            self.fd
                .set_regs(&regs::boot_regs(entry.mode, entry.entry))
                .map_err(|e| Error::kvm("KVM_SET_REGS", e))?;
        }
        Ok(())
    }

    fn dump_registers(&self) {
        if !tracing::enabled!(tracing::Level::DEBUG) {
            return;
        }
        match (self.fd.get_regs(), self.fd.get_sregs()) {
            (Ok(r), Ok(s)) => tracing::debug!(
                "vCPU {} registers: rip={:#x} rsp={:#x} rflags={:#x} rax={:#x} rbx={:#x} \
                 rcx={:#x} rdx={:#x} rsi={:#x} rdi={:#x} cr0={:#x} cr2={:#x} cr3={:#x} \
                 cr4={:#x} efer={:#x} cs={:#x}",
                self.id,
                r.rip,
                r.rsp,
                r.rflags,
                r.rax,
                r.rbx,
                r.rcx,
                r.rdx,
                r.rsi,
                r.rdi,
                s.cr0,
                s.cr2,
                s.cr3,
                s.cr4,
                s.efer,
                s.cs.selector
            ),
            (Err(e), _) | (_, Err(e)) => {
                tracing::debug!("vCPU {}: cannot read registers: {e}", self.id)
            }
        }
    }

    /// Runs the vCPU until the VM stops; this is the body of its thread.
    pub fn run(mut self, ctx: VcpuContext) {
        let id = self.id;
        let failure = |reason: String| VmExit::KvmFailure { cpu: id, reason };
        while !ctx.stop.load(Ordering::Acquire) && !ctx.exit.is_raised() {
            if ctx.gate.requested.load(Ordering::Acquire) {
                ctx.gate.park(&self.fd, id);
                continue;
            }
            let stop_with = match self.fd.run() {
                Ok(VcpuExit::IoIn(port, data)) => {
                    ctx.pio.read(u64::from(port), data);
                    None
                }
                Ok(VcpuExit::IoOut(port, data)) => {
                    ctx.pio.write(u64::from(port), data);
                    None
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    ctx.mmio.read(addr, data);
                    None
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    ctx.mmio.write(addr, data);
                    None
                }
                Ok(VcpuExit::Shutdown) => Some(VmExit::TripleFault { cpu: id }),
                Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                    KVM_SYSTEM_EVENT_SHUTDOWN => Some(VmExit::PowerOff),
                    KVM_SYSTEM_EVENT_RESET => Some(VmExit::Reset),
                    KVM_SYSTEM_EVENT_CRASH => Some(VmExit::GuestPanic),
                    other => Some(failure(format!("unhandled system event {other}"))),
                },
                Ok(VcpuExit::InternalError) => Some(failure(
                    "KVM internal error (the host could not emulate a guest instruction)".into(),
                )),
                Ok(VcpuExit::FailEntry(reason, cpu)) => Some(failure(format!(
                    "VM entry failed on host CPU {cpu} (hardware reason {reason:#x})"
                ))),
                Ok(VcpuExit::IrqWindowOpen | VcpuExit::Intr) => None,
                Ok(other) => Some(failure(format!("unexpected exit {other:?}"))),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    self.fd.set_kvm_immediate_exit(0);
                    None
                }
                Err(e) => Some(failure(format!("KVM_RUN: {e}"))),
            };
            if let Some(exit) = stop_with {
                if !exit.is_clean() {
                    self.dump_registers();
                }
                ctx.exit.raise(exit);
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Threads that behave like vCPU threads: they run (count) until the
    /// gate asks them to park.
    fn vcpus(
        gate: &Arc<PauseGate>,
        n: usize,
        ran: &Arc<AtomicUsize>,
    ) -> Vec<std::thread::JoinHandle<()>> {
        (0..n)
            .map(|_| {
                let (gate, ran) = (gate.clone(), ran.clone());
                std::thread::spawn(move || loop {
                    if gate.lock().released {
                        return;
                    }
                    if gate.requested.load(Ordering::Acquire) {
                        gate.park_with(|| {});
                        continue;
                    }
                    ran.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_micros(100));
                })
            })
            .collect()
    }

    #[test]
    fn pause_waits_until_every_vcpu_parked_and_resume_lets_them_go() {
        let gate = Arc::new(PauseGate::default());
        let ran = Arc::new(AtomicUsize::new(0));
        let threads = vcpus(&gate, 3, &ran);
        gate.pause(3, || true, Duration::from_secs(5)).unwrap();
        assert!(gate.is_paused());
        assert_eq!(gate.lock().parked, 3);
        let before = ran.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(
            ran.load(Ordering::Relaxed),
            before,
            "nothing runs while paused"
        );
        // Paused again: already there.
        gate.pause(3, || true, Duration::from_secs(5)).unwrap();
        gate.resume();
        assert!(!gate.is_paused());
        let until = Instant::now() + Duration::from_secs(5);
        while ran.load(Ordering::Relaxed) == before && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(ran.load(Ordering::Relaxed) > before, "they run again");
        // A stop releases parked threads for good.
        gate.pause(3, || true, Duration::from_secs(5)).unwrap();
        gate.release();
        for t in threads {
            t.join().unwrap();
        }
        assert!(gate.pause(3, || true, Duration::from_secs(1)).is_err());
    }

    #[test]
    fn a_pause_that_cannot_complete_gives_up_and_the_vm_runs_on() {
        let gate = PauseGate::default();
        // No thread parks: the bound applies, and the gate opens again.
        let err = gate
            .pause(2, || true, Duration::from_millis(20))
            .unwrap_err();
        assert!(err.contains("0 of 2 vCPUs"), "{err}");
        assert!(!gate.is_paused());
        assert!(!gate.requested.load(Ordering::Acquire));
        // A VM that is ending is not waited for.
        let t = Instant::now();
        let err = gate.pause(2, || false, Duration::from_secs(5)).unwrap_err();
        assert!(
            err.contains("stopping") && t.elapsed() < Duration::from_secs(1),
            "{err}"
        );
    }
}
