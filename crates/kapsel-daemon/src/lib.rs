//! kapseld: the daemon that supervises Kapsel's VMs and containers.
//!
//! It reads vm.conf, creates the switches, starts the enabled guests (each
//! VM in its own sandboxed `kapsel run` process), and answers the command
//! line over a Unix control socket ([`proto`]; [`client`] is the command
//! line's side).

#![deny(missing_docs)]

pub mod accounts;
pub mod api;
pub mod client;
pub mod console;
pub mod ctproc;
pub mod daemon;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod guest;
pub mod monitor;
pub mod net;
pub mod proto;
pub mod server;
pub mod state;
pub mod statelock;
pub mod unpack;
pub mod vmproc;
