//! The parent's part of a start once the child waits for it (in its
//! namespaces, before its mounts): the init's `oom_score_adj`, its cgroup
//! where the kernel did not place it, the user namespace's id maps, the
//! idmapped root, the veth; then the release byte, and the child's
//! report of a failed step (end of file on the error pipe means the init
//! was executed).

use crate::child::STEPS;
use crate::container::Container;
use crate::error::{Error, Result};
use crate::idmap;
use crate::spec::ContainerSpec;
use crate::sys::read_full;
use kapsel_host::netlink::Netlink;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

/// Creates the veth pair of a container: `host_name` up on the host, and
/// its peer `eth0` (down, with `mac` if given) in the network namespace of
/// process `pid`.
fn create_veth(host_name: &str, pid: i32, mac: Option<[u8; 6]>) -> Result<()> {
    Netlink::open()
        .and_then(|mut nl| nl.create_veth(host_name, "eth0", pid, mac))
        .map_err(|source| Error::Network {
            what: format!("creating veth {host_name}"),
            source,
        })
}

/// Does the parent's steps for the cloned `c` and releases it through
/// `go_write`; returns once the init was executed, or with the step that
/// failed. On an error the caller drops `c` (killing the child).
/// `move_into_cgroup`: the kernel did not place the child and it does
/// not move itself (no v1 `tasks` files).
pub(super) fn finish(
    c: &mut Container,
    spec: &ContainerSpec,
    move_into_cgroup: bool,
    go_write: OwnedFd,
    err_read: OwnedFd,
    hook: Option<&mut dyn FnMut(i32) -> std::result::Result<(), String>>,
    listener: bool,
) -> Result<()> {
    if let Some(adj) = spec.extra.oom_score_adj {
        std::fs::write(format!("/proc/{}/oom_score_adj", c.pid), adj.to_string()).map_err(
            |source| Error::Os {
                what: "setting the init's oom_score_adj",
                source,
            },
        )?;
    }
    if move_into_cgroup {
        c.cgroup.add(c.pid)?;
    }
    if let Some(map) = &spec.user_map {
        for (file, host) in [("uid_map", map.host_uid), ("gid_map", map.host_gid)] {
            let path = format!("/proc/{}/{file}", c.pid);
            std::fs::write(&path, format!("0 {host} {}", map.count)).map_err(|source| {
                Error::Os {
                    what: "writing the user namespace's id map",
                    source,
                }
            })?;
        }
    }
    // After the maps: the idmapping is the user namespace's.
    let tree = if spec.idmap_root {
        Some(idmap::idmapped_root(&c.root, c.pid)?)
    } else {
        None
    };
    if let Some(net) = &spec.network {
        create_veth(&net.host_name, c.pid, net.mac)?;
        c.veth = Some(net.host_name.clone());
    }
    idmap::release(go_write.as_raw_fd(), tree.as_ref().map(|t| t.as_fd())).map_err(|source| {
        Error::Os {
            what: "starting the container's init",
            source,
        }
    })?;
    drop(tree);
    if let Some(hook) = hook {
        // The child says when its root is mounted (end of file: it
        // failed before; its report follows on the error pipe).
        let mut ready = [0u8; 1];
        if read_full(&go_write, &mut ready) == 1 {
            hook(c.pid).map_err(Error::Hook)?;
            idmap::release(go_write.as_raw_fd(), None).map_err(|source| Error::Os {
                what: "letting the container's init continue after the hooks",
                source,
            })?;
        }
    }
    if listener {
        // The child sends its seccomp notification descriptor once the
        // filter is in (end of file: it failed before; its report follows).
        c.seccomp_listener = crate::sys::recv_fd(&go_write);
    }
    drop(go_write);
    let mut report = [0u8; 8];
    let n = read_full(&err_read, &mut report);
    if n == 8 {
        let step = u32::from_ne_bytes(report[..4].try_into().unwrap_or_default()) as usize;
        let errno = i32::from_ne_bytes(report[4..].try_into().unwrap_or_default());
        let _ = c.wait();
        return Err(Error::Setup {
            step: STEPS.get(step).copied().unwrap_or("an unknown step"),
            source: io::Error::from_raw_os_error(errno),
        });
    }
    Ok(())
}
