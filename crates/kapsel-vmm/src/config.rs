//! What a VM is made of, as the VMM needs it (already validated paths and
//! numbers; parsing user syntax is the caller's job).
//!
//! A [`VmConfig`] is also the one description of a VM that its supervisor
//! (kapseld) hands a VM process: serialized as a versioned JSON document
//! ([`VmConfig::to_json`]) on an inherited descriptor (`kapsel run
//! --config-fd N`), read back with [`VmConfig::from_json`]. `kapsel run`'s
//! own command line builds the same structure.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Where the guest's serial console (COM1) goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsoleSpec {
    /// The VMM's stdin and stdout; stdin is put in raw mode when it is a terminal.
    Stdio,
    /// Output discarded, no input.
    None,
    /// Output appended to a file, no input.
    File(PathBuf),
}

/// What a guest reset (reboot) does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnReboot {
    /// The VMM exits with status 0.
    #[default]
    Exit,
    /// The VM is rebuilt and boots again.
    Restart,
}

/// A disk the guest sees as a virtio-blk device (vda, vdb, ... in order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// Raw image file or block device.
    pub path: PathBuf,
    /// The guest may not write.
    pub read_only: bool,
    /// Serial the guest reads (/dev/disk/by-id/virtio-SERIAL), up to 20 bytes.
    pub serial: Option<String>,
    /// Image format; detected from the file when None.
    pub format: Option<kapsel_image::Format>,
    /// Host caching of a raw image (O_DIRECT by default).
    pub cache: crate::devices::virtio::block::CacheMode,
    /// Opened (with its backing chain) with the rights of
    /// [`VmConfig::open_as`], not the VM process's own.
    pub as_user: bool,
}

/// Where a network card's tap comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TapSource {
    /// The host tap interface of this name, opened (and created when it
    /// does not exist) by the VMM; needs CAP_NET_ADMIN.
    Name(String),
    /// A tap already open on this descriptor, inherited from the process
    /// that started the VMM (the daemon); the VMM takes it over.
    Fd(i32),
}

impl std::fmt::Display for TapSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TapSource::Name(name) => write!(f, "tap={name}"),
            TapSource::Fd(fd) => write!(f, "fd={fd}"),
        }
    }
}

/// A network card the guest sees as a virtio-net device (eth0, eth1, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// The host tap interface.
    pub tap: TapSource,
    /// The guest's MAC address; a random locally administered one if None.
    pub mac: Option<[u8; 6]>,
}

/// Firmware a VM boots through instead of a kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Firmware {
    /// A PC BIOS image (SeaBIOS), mapped to end at 4 GiB.
    Bios(PathBuf),
}

/// A complete description of one VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Kernel image: a Linux bzImage, or an ELF with a PVH entry note.
    /// Empty when the VM boots through [`VmConfig::firmware`].
    pub kernel: PathBuf,
    /// Optional initial ramdisk.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// Guest memory in bytes.
    pub memory: u64,
    /// Number of vCPUs.
    pub cpus: u8,
    /// Serial console wiring.
    pub console: ConsoleSpec,
    /// Behaviour on guest reset.
    pub on_reboot: OnReboot,
    /// CPUID features to hide from the guest (names from
    /// [`crate::arch::x86_64::cpuid::HIDEABLE_FEATURES`]).
    pub hide_cpuid: Vec<String>,
    /// virtio-blk disks.
    pub disks: Vec<DiskConfig>,
    /// Whether the guest gets a virtio-rng device.
    pub rng: bool,
    /// virtio-net cards.
    pub nets: Vec<NetConfig>,
    /// A virtio console (hvc0) and where it goes.
    pub virtio_console: Option<ConsoleSpec>,
    /// How long the guest has to power off after the ACPI power button is
    /// pressed (on SIGTERM, SIGINT or SIGHUP) before it is stopped.
    #[serde(with = "seconds")]
    pub shutdown_timeout: std::time::Duration,
    /// Confine the VMM process before the guest runs (see
    /// [`crate::sandbox`]); off only for debugging.
    pub sandbox: bool,
    /// The user whose rights open the files marked as that user's (see
    /// [`crate::user_files`]): the kernel and initrd when `kernel_as_user`
    /// and `initrd_as_user` are set, disks whose `as_user` is.
    pub open_as: Option<crate::user_files::UserCredentials>,
    /// The kernel is opened with the rights of `open_as`.
    pub kernel_as_user: bool,
    /// The initrd is opened with the rights of `open_as`.
    pub initrd_as_user: bool,
    /// An inherited descriptor (the write end of a pipe) on which the VM
    /// process writes one byte and which it closes once every resource is
    /// open: the supervisor then knows the VM could start.
    pub ready_fd: Option<i32>,
    /// Boot through this firmware, from the disks, instead of loading a
    /// kernel (`kernel` is then empty, and `initrd` and `cmdline` unused).
    /// Left out of the document when absent, so that a direct-boot
    /// configuration reads the same as before firmware boot existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<Firmware>,
}

impl VmConfig {
    /// A VM with the given kernel and Kapsel's defaults (512 MiB, 1 vCPU,
    /// console on stdio, exit on reboot).
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        VmConfig {
            kernel: kernel.into(),
            initrd: None,
            cmdline: DEFAULT_CMDLINE.to_string(),
            memory: 512 << 20,
            cpus: 1,
            console: ConsoleSpec::Stdio,
            on_reboot: OnReboot::Exit,
            hide_cpuid: Vec::new(),
            disks: Vec::new(),
            rng: false,
            nets: Vec::new(),
            virtio_console: None,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            sandbox: true,
            open_as: None,
            kernel_as_user: false,
            initrd_as_user: false,
            ready_fd: None,
            firmware: None,
        }
    }

    /// A VM that boots through `firmware` from its disks, with the
    /// defaults of [`VmConfig::new`].
    pub fn with_firmware(firmware: Firmware) -> Self {
        VmConfig {
            firmware: Some(firmware),
            ..VmConfig::new("")
        }
    }
}

/// The command line used when none is given.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1";

/// Time a guest gets to shut down after the power button, as vmd gives.
pub const DEFAULT_SHUTDOWN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Smallest guest memory Kapsel accepts.
pub const MIN_MEMORY: u64 = 32 << 20;

/// The version of the serialized [`VmConfig`] this build writes and reads.
/// Raise it when a change would make an older VM process misread a newer
/// supervisor's document (a field's meaning changes, a field is added).
pub const CONFIG_VERSION: u32 = 1;

/// The largest serialized configuration accepted (a real one is a few KiB).
pub const MAX_CONFIG_BYTES: usize = 1 << 20;

/// The document on the wire: the version first, then the VM.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigDocument<T> {
    version: u32,
    vm: T,
}

/// Only the version, read before the rest so that a newer document is
/// reported as newer rather than as one with unknown fields.
#[derive(Deserialize)]
struct VersionOnly {
    version: u32,
}

/// `shutdown_timeout` as whole seconds, as users write it.
mod seconds {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }
}

impl VmConfig {
    /// The versioned JSON document a supervisor hands `kapsel run
    /// --config-fd`.
    pub fn to_json(&self) -> Vec<u8> {
        let doc = ConfigDocument {
            version: CONFIG_VERSION,
            vm: self,
        };
        // Serializing plain structs, strings and numbers cannot fail.
        serde_json::to_vec(&doc).unwrap_or_default()
    }

    /// Reads a document written by [`VmConfig::to_json`] and checks it
    /// ([`VmConfig::check`]); `source` names where it came from in errors.
    pub fn from_json(bytes: &[u8], source: &str) -> Result<VmConfig, String> {
        if bytes.len() > MAX_CONFIG_BYTES {
            return Err(format!(
                "{source}: the VM configuration is larger than {} KiB; it is damaged, or not \
                 a VM configuration",
                MAX_CONFIG_BYTES >> 10
            ));
        }
        let damaged = |e: serde_json::Error| {
            format!(
                "{source}: the VM configuration is damaged ({e}); start the VM again, and \
                 use the same Kapsel version for kapseld and kapsel run"
            )
        };
        let version = serde_json::from_slice::<VersionOnly>(bytes)
            .map_err(damaged)?
            .version;
        if version != CONFIG_VERSION {
            return Err(format!(
                "{source}: the VM configuration has version {version}, this kapsel reads \
                 version {CONFIG_VERSION}; run the kapsel binary of the same release as the \
                 daemon that started it (restart kapseld after an upgrade)"
            ));
        }
        let doc: ConfigDocument<VmConfig> = serde_json::from_slice(bytes).map_err(damaged)?;
        doc.vm
            .check()
            .map_err(|e| format!("{source}: the VM configuration is invalid: {e}"))?;
        Ok(doc.vm)
    }

    /// Reads the configuration from the inherited descriptor `fd` (a
    /// sealed memfd from the start, or a pipe) and closes it.
    pub fn from_fd(fd: i32) -> Result<VmConfig, String> {
        use std::io::Read;
        use std::os::fd::FromRawFd;
        let source = format!("--config-fd {fd}");
        // SAFETY: F_GETFD only asks whether the descriptor is open.
        if fd < 3 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return Err(format!(
                "{source}: not an inherited descriptor; pass a memfd or pipe holding the VM \
                 configuration, left open across exec and numbered 3 or more"
            ));
        }
        // SAFETY: fd is open (checked above) and nothing else in this
        // process owns it: the caller gives it up to be read and closed.
        let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
        // A memfd's offset is shared with the writer's descriptor, which
        // left it at the end; a pipe cannot seek and needs not.
        // SAFETY: lseek on an owned descriptor touches no memory.
        unsafe { libc::lseek(fd, 0, libc::SEEK_SET) };
        let mut bytes = Vec::new();
        (&mut file)
            .take(MAX_CONFIG_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("{source}: cannot read the VM configuration: {e}"))?;
        VmConfig::from_json(&bytes, &source)
    }

    /// Checks what the command line's parsers check, for a configuration
    /// that did not come through them.
    pub fn check(&self) -> Result<(), String> {
        match &self.firmware {
            Some(_)
                if !self.kernel.as_os_str().is_empty()
                    || self.initrd.is_some()
                    || self.kernel_as_user
                    || self.initrd_as_user =>
            {
                return Err(
                    "a VM boots either a kernel or its firmware: give no kernel and no initrd \
                     with firmware"
                        .into(),
                )
            }
            None if self.kernel.as_os_str().is_empty() => {
                return Err("no kernel and no firmware: give one of them".into())
            }
            _ => {}
        }
        if self.open_as.is_none()
            && (self.kernel_as_user || self.initrd_as_user || self.disks.iter().any(|d| d.as_user))
        {
            return Err(
                "files are to be opened with a user's rights, but no user is given \
                        (open_as)"
                    .into(),
            );
        }
        if let Some(user) = &self.open_as {
            if user.groups.len() > crate::user_files::MAX_GROUPS {
                return Err(format!(
                    "open_as has more than {} groups",
                    crate::user_files::MAX_GROUPS
                ));
            }
        }
        for disk in &self.disks {
            if disk
                .serial
                .as_ref()
                .is_some_and(|s| s.is_empty() || s.len() > 20)
            {
                return Err(format!(
                    "disk {}: a serial takes 1 to 20 characters",
                    disk.path.display()
                ));
            }
        }
        for net in &self.nets {
            match &net.tap {
                TapSource::Name(n) if n.is_empty() || n.len() > 15 || n.contains(['/', '\0']) => {
                    return Err(format!(
                        "tap \"{n}\": a tap name takes 1 to 15 characters, no '/'"
                    ))
                }
                TapSource::Fd(fd) if *fd < 3 => {
                    return Err(format!("tap fd={fd}: an inherited descriptor is 3 or more"))
                }
                _ => {}
            }
            if net.mac.is_some_and(|m| m[0] & 1 != 0) {
                return Err(format!("{}: the MAC address is a multicast one", net.tap));
            }
        }
        if self.ready_fd.is_some_and(|fd| fd < 3) {
            return Err("ready_fd: an inherited descriptor is 3 or more".into());
        }
        if self.cmdline.contains('\0') {
            return Err("the kernel command line contains a NUL byte".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::block::CacheMode;

    fn full() -> VmConfig {
        let mut cfg = VmConfig::new("/vm/vmlinuz");
        cfg.initrd = Some("/vm/initrd".into());
        cfg.cpus = 2;
        cfg.console = ConsoleSpec::File("/var/log/x".into());
        cfg.on_reboot = OnReboot::Restart;
        cfg.hide_cpuid = vec!["avx".into()];
        cfg.disks.push(DiskConfig {
            path: "/vm/a.qcow2".into(),
            read_only: true,
            serial: Some("root".into()),
            format: Some(kapsel_image::Format::Qcow2),
            cache: CacheMode::Writeback,
            as_user: true,
        });
        cfg.nets.push(NetConfig {
            tap: TapSource::Fd(7),
            mac: Some([0xfe, 0xe1, 0xbb, 1, 2, 3]),
        });
        cfg.nets.push(NetConfig {
            tap: TapSource::Name("kt0".into()),
            mac: None,
        });
        cfg.virtio_console = Some(ConsoleSpec::Stdio);
        cfg.shutdown_timeout = std::time::Duration::from_secs(7);
        cfg.open_as = Some(crate::user_files::UserCredentials {
            uid: 1000,
            gid: 100,
            groups: vec![100, 24],
        });
        cfg.kernel_as_user = true;
        cfg.ready_fd = Some(6);
        cfg
    }

    #[test]
    fn a_configuration_survives_the_round_trip() {
        let cfg = full();
        let json = cfg.to_json();
        assert!(
            json.starts_with(b"{\"version\":1,"),
            "{}",
            String::from_utf8_lossy(&json)
        );
        assert_eq!(VmConfig::from_json(&json, "test").unwrap(), cfg);
        let plain = VmConfig::new("/k");
        assert_eq!(
            VmConfig::from_json(&plain.to_json(), "test").unwrap(),
            plain
        );
    }

    #[test]
    fn a_configuration_through_a_descriptor() {
        let json = full().to_json();
        let mut fds = [0; 2];
        // SAFETY: pipe fills the two-element array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: writes from a live buffer of the given length to our pipe.
        let n = unsafe { libc::write(fds[1], json.as_ptr().cast(), json.len()) };
        assert_eq!(n as usize, json.len());
        // SAFETY: closes the write end we own.
        unsafe { libc::close(fds[1]) };
        assert_eq!(VmConfig::from_fd(fds[0]).unwrap(), full());
        // from_fd closed the read end.
        // SAFETY: F_GETFD only asks whether the descriptor is open.
        assert!(unsafe { libc::fcntl(fds[0], libc::F_GETFD) } < 0);
        assert!(VmConfig::from_fd(2).unwrap_err().contains("--config-fd 2"));
    }

    #[test]
    fn an_oversized_configuration_is_refused() {
        let mut cfg = VmConfig::new("/k");
        cfg.cmdline = "x".repeat(MAX_CONFIG_BYTES);
        let err = VmConfig::from_json(&cfg.to_json(), "--config-fd 3").unwrap_err();
        assert!(err.starts_with("--config-fd 3: "), "{err}");
        assert!(err.contains("larger than 1024 KiB"), "{err}");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let json = String::from_utf8(VmConfig::new("/k").to_json()).unwrap();
        let extra = json.replacen("\"kernel\"", "\"kernal\":\"/x\",\"kernel\"", 1);
        let err = VmConfig::from_json(extra.as_bytes(), "--config-fd 3").unwrap_err();
        assert!(err.contains("damaged") && err.contains("kernal"), "{err}");
        let outer = json.replacen("{\"version\":1,", "{\"version\":1,\"extra\":0,", 1);
        assert!(VmConfig::from_json(outer.as_bytes(), "x").is_err());
        let err = VmConfig::from_json(b"{\"version\":1,\"vm\":{", "x").unwrap_err();
        assert!(err.contains("damaged"), "{err}");
        assert!(VmConfig::from_json(b"", "x")
            .unwrap_err()
            .contains("damaged"));
    }

    #[test]
    fn a_newer_version_is_named_as_such() {
        let json = String::from_utf8(VmConfig::new("/k").to_json()).unwrap();
        // A newer document may have fields this version does not know.
        let newer = json.replacen("{\"version\":1,", "{\"version\":2,\"snapshot\":null,", 1);
        let err = VmConfig::from_json(newer.as_bytes(), "--config-fd 3").unwrap_err();
        assert!(
            err.contains("version 2") && err.contains("same release"),
            "{err}"
        );
    }

    #[test]
    fn a_configuration_is_checked_like_the_command_line() {
        let mut cfg = VmConfig::new("/k");
        cfg.disks.push(full().disks.remove(0));
        assert!(VmConfig::from_json(&cfg.to_json(), "x")
            .unwrap_err()
            .contains("no user is given"));
        let mut cfg = VmConfig::new("/k");
        cfg.nets.push(NetConfig {
            tap: TapSource::Name("a-very-long-tap-name".into()),
            mac: None,
        });
        assert!(cfg.check().unwrap_err().contains("1 to 15"));
        cfg.nets[0] = NetConfig {
            tap: TapSource::Fd(1),
            mac: None,
        };
        assert!(cfg.check().is_err());
        cfg.nets[0] = NetConfig {
            tap: TapSource::Fd(9),
            mac: Some([1, 0, 0, 0, 0, 0]),
        };
        assert!(cfg.check().unwrap_err().contains("multicast"));
    }

    #[test]
    fn firmware_boot_round_trips_and_excludes_a_kernel() {
        let cfg = VmConfig::with_firmware(Firmware::Bios("/usr/share/seabios/x.bin".into()));
        cfg.check().unwrap();
        let json = String::from_utf8(cfg.to_json()).unwrap();
        assert!(json.contains("\"firmware\":{\"bios\":\"/usr/share/seabios/x.bin\"}"));
        assert_eq!(VmConfig::from_json(json.as_bytes(), "x").unwrap(), cfg);
        // A direct boot's document has no firmware field at all.
        let plain = String::from_utf8(VmConfig::new("/k").to_json()).unwrap();
        assert!(!plain.contains("firmware"));
        let mut both = cfg.clone();
        both.kernel = "/k".into();
        assert!(both
            .check()
            .unwrap_err()
            .contains("either a kernel or its firmware"));
        let mut neither = VmConfig::new("");
        neither.firmware = None;
        assert!(neither
            .check()
            .unwrap_err()
            .contains("no kernel and no firmware"));
    }
}
