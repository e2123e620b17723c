//! vCPUs: creation and initial state, and the thread that runs each one.
//!
//! A vCPU thread handles the exits that need the VMM (port I/O, MMIO) and
//! turns terminal exits into a [`VmExit`]. The VMM stops a vCPU by setting
//! the shared stop flag and kicking the thread with [`kick_signal`], which
//! makes a blocked `KVM_RUN` return `EINTR`.

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
use std::sync::{Arc, Once};

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
