//! Kapsel's virtual machine monitor: KVM setup, guest memory, vCPU threads,
//! boot loaders, the x86_64 machine model and its devices.
//!
//! The entry point is [`run`]: it builds a VM from a [`VmConfig`], runs it
//! until the guest powers off, resets or fails, and says why in a [`VmExit`].
#![deny(missing_docs)]

pub mod arch;
pub mod bus;
pub mod config;
pub mod console;
pub mod control;
pub mod devices;
pub mod error;
pub mod exit;
pub mod interrupts;
pub mod io_thread;
pub mod memory;
pub mod resources;
pub mod sandbox;
#[cfg(test)]
mod test_util;
pub mod user_files;
pub mod vcpu;
pub mod vm;

pub use config::{ConsoleSpec, OnReboot, VmConfig};
pub use error::Error;
pub use exit::VmExit;
pub use vm::run;
