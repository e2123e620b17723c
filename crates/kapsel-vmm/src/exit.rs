//! Why a VM stopped, and the one-shot signal that devices and vCPU threads
//! use to ask the VMM to stop it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// The reason a VM stopped running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The guest powered off (ACPI S5).
    PowerOff,
    /// The guest asked for a reset (ACPI reset register or i8042 pulse).
    Reset,
    /// The guest kernel reported a panic through the pvpanic device.
    GuestPanic,
    /// A vCPU triple-faulted (KVM_EXIT_SHUTDOWN).
    TripleFault {
        /// The vCPU that faulted.
        cpu: u8,
    },
    /// The guest did not power off within the shutdown timeout after the
    /// power button, and the VMM stopped it.
    ShutdownTimeout {
        /// The timeout, in seconds.
        seconds: u64,
    },
    /// The host stopped the VM without the guest's consent: a second
    /// signal, or the console escape.
    ForcedStop {
        /// What happened.
        reason: String,
    },
    /// KVM could not run the guest (internal error, failed entry, an exit
    /// the VMM does not handle).
    KvmFailure {
        /// The vCPU that failed.
        cpu: u8,
        /// What KVM reported.
        reason: String,
    },
}

impl VmExit {
    /// True when the stop was asked for by the guest in an orderly way.
    pub fn is_clean(&self) -> bool {
        matches!(self, VmExit::PowerOff | VmExit::Reset)
    }
}

impl std::fmt::Display for VmExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VmExit::PowerOff => write!(f, "guest powered off"),
            VmExit::Reset => write!(f, "guest reset"),
            VmExit::GuestPanic => write!(f, "guest kernel panicked (reported through pvpanic)"),
            VmExit::TripleFault { cpu } => write!(f, "guest triple fault on vCPU {cpu}"),
            VmExit::KvmFailure { cpu, reason } => write!(f, "KVM failure on vCPU {cpu}: {reason}"),
            VmExit::ShutdownTimeout { seconds } => write!(
                f,
                "VM stopped: the guest did not power off within {seconds} s of the ACPI power \
                 button"
            ),
            VmExit::ForcedStop { reason } => write!(f, "VM stopped: {reason}"),
        }
    }
}

/// A latch for the first [`VmExit`] raised, plus an eventfd that wakes the
/// VMM's event loop. Later requests are ignored: the first cause wins.
pub struct ExitSignal {
    reason: Mutex<Option<VmExit>>,
    /// Set with the reason; read by vCPU threads after every exit, without
    /// taking the lock.
    raised: AtomicBool,
    event: EventFd,
}

impl ExitSignal {
    /// Creates an unset signal.
    pub fn new() -> std::io::Result<Self> {
        Ok(ExitSignal {
            reason: Mutex::new(None),
            raised: AtomicBool::new(false),
            event: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// Records `exit` unless a reason was already recorded, and wakes the VMM.
    pub fn raise(&self, exit: VmExit) {
        let mut reason = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if reason.is_none() {
            tracing::debug!("stop requested: {exit}");
            *reason = Some(exit);
            self.raised.store(true, Ordering::Release);
        }
        // A full eventfd counter only means the VMM has a wake-up pending.
        let _ = self.event.write(1);
    }

    /// Whether a reason was recorded: the VM is stopping, and a vCPU that
    /// sees this must not run the guest any further (a guest that powered
    /// off must not go on running until the VMM's kick arrives).
    pub fn is_raised(&self) -> bool {
        self.raised.load(Ordering::Acquire)
    }

    /// The recorded reason, if any.
    pub fn reason(&self) -> Option<VmExit> {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The eventfd the VMM's event loop polls.
    pub fn event(&self) -> &EventFd {
        &self.event
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins() {
        let s = ExitSignal::new().unwrap();
        assert_eq!(s.reason(), None);
        assert!(!s.is_raised());
        s.raise(VmExit::Reset);
        assert!(s.is_raised());
        s.raise(VmExit::PowerOff);
        assert_eq!(s.reason(), Some(VmExit::Reset));
        assert_eq!(s.event().read().unwrap(), 2);
    }

    #[test]
    fn clean_exits() {
        assert!(VmExit::PowerOff.is_clean());
        assert!(VmExit::Reset.is_clean());
        assert!(!VmExit::GuestPanic.is_clean());
        assert!(!VmExit::TripleFault { cpu: 0 }.is_clean());
    }
}
