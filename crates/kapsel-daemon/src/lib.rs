//! kapseld: the daemon that supervises Kapsel's VMs and containers.
//!
//! It reads vm.conf, creates the switches, starts the enabled guests (each
//! VM in its own sandboxed `kapsel run` process), and answers the command
//! line over a Unix control socket.

#![deny(missing_docs)]

pub mod net;
