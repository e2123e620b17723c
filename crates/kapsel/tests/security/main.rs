//! The security suite: each module plays one attacker of the threat model
//! (docs/THREAT-MODEL.md) against a running daemon or VM process, and each
//! test is the regression test of a finding that it reproduces. Tests print
//! `SKIP: ...` and pass where they cannot run (no /dev/kvm, not root).

#[path = "../common/mod.rs"]
mod common;
#[path = "../../../kapsel-container/tests/common/mod.rs"]
mod ctcommon;

mod api;
mod containers;
mod control;
mod daemon_limits;
mod dhcp_helper;
mod image_unpack;
mod monitors;
mod qcow2_crash;
mod user_paths;
mod vm_contract;
