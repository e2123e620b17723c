//! Kapsel's containers: a whole distribution userland with its own init
//! (system container) or one command (application container), isolated by
//! Linux namespaces and limited by cgroups.
//!
//! ```no_run
//! use kapsel_container::{Container, ContainerSpec};
//! use std::time::Duration;
//!
//! let mut spec = ContainerSpec::new("web", "/var/lib/kapsel/web", vec!["/sbin/init".into()]);
//! spec.memory = Some(256 << 20);
//! spec.pids = Some(512);
//! let mut c = Container::start(&spec)?;
//! c.freeze()?;
//! c.thaw()?;
//! let status = c.stop(Duration::from_secs(10))?;
//! c.cleanup()?;
//! # Ok::<(), kapsel_container::Error>(())
//! ```
//!
//! The sequence a start goes through is described in `start/mod.rs` (the
//! parent's phases) and [`child`] (the child's steps); how cgroup v1, v2
//! and hybrid hosts are handled in [`cgroup`] (and in docs/ARCHITECTURE.md).

#![deny(missing_docs)]

pub mod caps;
pub mod cgroup;
pub mod child;
mod container;
pub mod devices;
mod error;
mod exec;
mod idmap;
pub mod image;
pub mod seccomp;
mod spec;
mod start;
mod sys;

pub use cgroup::{Resources, Stats};
pub use container::{Container, ExitStatus};
pub use error::{Error, Result};
pub use exec::{exec_in, ExecOptions, ExecProcess};
pub use spec::{
    check_name, resolve_init, ConsoleSpec, ContainerSpec, DeviceNode, Extra, IdMap, MountSpec,
    Namespace, User, VethSpec, DEFAULT_PATH, MAX_NAME_LEN,
};

// The daemon keeps containers in its state and drives them from any thread.
const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<Container>();
    assert_send::<ExecProcess>();
};
