//! The x86_64 machine model: memory layout, CPU state, CPUID, ACPI, boot.

pub mod acpi;
pub mod boot;
pub mod cpuid;
pub mod firmware;
pub mod layout;
pub mod regs;
