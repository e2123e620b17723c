//! `kapsel run`: boot one VM in the foreground.

use clap::{Args, ValueEnum};
use kapsel_vmm::config::{DiskConfig, Firmware, NetConfig, TapSource};
use kapsel_vmm::control::EndReport;
use kapsel_vmm::devices::virtio::block::CacheMode;
use kapsel_vmm::user_files::UserCredentials;
use kapsel_vmm::{ConsoleSpec, OnReboot, VmConfig, VmExit};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;

/// Every option that describes the VM: the configuration from
/// `--config-fd` replaces them all.
const VM_OPTIONS: [&str; 20] = [
    "kernel",
    "firmware",
    "bios",
    "initrd",
    "cmdline",
    "memory",
    "cpus",
    "console",
    "on_reboot",
    "hide_cpuid",
    "disks",
    "rng",
    "virtio_console",
    "shutdown_timeout",
    "nets",
    "open_as",
    "ready_fd",
    "kernel_as_user",
    "initrd_as_user",
    "no_sandbox",
];

/// Arguments of `kapsel run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Kernel: a Linux bzImage, or an ELF (vmlinux or other) with a PVH entry note.
    /// Without it the VM boots through its firmware from the first disk.
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// The firmware a VM without --kernel boots through: bios (SeaBIOS).
    #[arg(long, value_enum, value_name = "KIND", conflicts_with = "kernel")]
    pub firmware: Option<FirmwareArg>,
    /// The BIOS image for --firmware bios [default: /usr/share/seabios/bios-microvm.bin,
    /// from Debian's seabios package].
    #[arg(long, value_name = "PATH", conflicts_with = "kernel")]
    pub bios: Option<PathBuf>,
    /// Initial ramdisk.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, value_name = "STRING", default_value = kapsel_vmm::config::DEFAULT_CMDLINE)]
    pub cmdline: String,
    /// Guest memory, written like vm.conf sizes (512M, 2G).
    #[arg(long, short = 'm', value_name = "SIZE", default_value = "512M", value_parser = parse_size)]
    pub memory: u64,
    /// Number of vCPUs.
    #[arg(long, short = 'c', value_name = "N", default_value_t = 1)]
    pub cpus: u8,
    /// Serial console: stdio, none, or file:PATH.
    #[arg(long, value_name = "WHERE", default_value = "stdio", value_parser = parse_console)]
    pub console: ConsoleSpec,
    /// What a guest reboot does.
    #[arg(long, value_enum, default_value_t = RebootArg::Exit)]
    pub on_reboot: RebootArg,
    /// CPU features to hide from the guest, comma-separated (e.g. xsave,avx).
    #[arg(long, value_name = "FEATURES", value_delimiter = ',')]
    pub hide_cpuid: Vec<String>,
    /// A virtio-blk disk (repeatable: vda, vdb, ...):
    /// PATH[,ro][,format=raw|qcow2][,serial=ID][,cache=none|writeback][,as-user];
    /// as-user opens it, and its backing chain, with the rights of --open-as.
    #[arg(long = "disk", value_name = "SPEC", value_parser = parse_disk)]
    pub disks: Vec<DiskConfig>,
    /// Give the guest a virtio-rng entropy device.
    #[arg(long)]
    pub rng: bool,
    /// A virtio console (hvc0 in Linux): stdio, none, or file:PATH. On stdio
    /// it gets the keyboard; the serial console keeps its own --console.
    #[arg(long, value_name = "WHERE", value_parser = parse_console)]
    pub virtio_console: Option<ConsoleSpec>,
    /// Seconds the guest gets to power off after SIGTERM/SIGINT/SIGHUP
    /// press its ACPI power button; then (or on a second signal) it is stopped.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub shutdown_timeout: u64,
    /// A virtio-net card (repeatable): on the host tap NAME (created if
    /// missing; needs CAP_NET_ADMIN), or on a tap already open on the
    /// inherited descriptor N: tap=NAME|fd=N[,mac=52:54:00:12:34:56].
    #[arg(long = "net", value_name = "SPEC", value_parser = parse_net)]
    pub nets: Vec<NetConfig>,
    /// Open the files marked as a user's (--kernel-as-user,
    /// --initrd-as-user, the disk option as-user) with that user's rights:
    /// UID:GID[:GID,GID...], the supplementary groups last. The daemon
    /// gives it for the files a non-root user named; needs root.
    #[arg(long, value_name = "UID:GID[:GROUPS]", value_parser = UserCredentials::parse)]
    pub open_as: Option<UserCredentials>,
    /// Write one byte on the inherited descriptor N (a pipe), and close
    /// it, once every file, device and tap is open: a supervisor (kapseld)
    /// learns that the VM could start.
    #[arg(long, value_name = "N")]
    pub ready_fd: Option<i32>,
    /// Open the kernel with the rights of --open-as.
    #[arg(long, requires = "open_as")]
    pub kernel_as_user: bool,
    /// Open the initrd with the rights of --open-as.
    #[arg(long, requires = "open_as")]
    pub initrd_as_user: bool,
    /// Run without the sandbox (empty mount namespace, no capabilities,
    /// seccomp filters). For debugging only: a guest that escapes a device
    /// model then has everything this process has.
    #[arg(long)]
    pub no_sandbox: bool,
    /// The daemon's interface: read the whole VM configuration (a
    /// versioned JSON document, at most 1 MiB) from the inherited
    /// descriptor N instead of the options above.
    #[arg(long, value_name = "N", conflicts_with_all = VM_OPTIONS)]
    pub config_fd: Option<i32>,
    /// The daemon's interface: serve power button, pause, resume and
    /// status requests on the inherited Unix stream socket N.
    #[arg(long, value_name = "N")]
    pub control_fd: Option<i32>,
    /// The daemon's interface: write how the VM ended, as one typed frame,
    /// on the inherited descriptor N (a pipe) before exiting.
    #[arg(long, value_name = "N")]
    pub exit_fd: Option<i32>,
}

/// `--firmware` values.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FirmwareArg {
    /// SeaBIOS, a PC BIOS: boots MBR and GPT disks with a BIOS boot loader.
    Bios,
}

/// `--on-reboot` values.
#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum RebootArg {
    /// Exit with status 0.
    Exit,
    /// Boot the guest again.
    Restart,
}

/// A size argument, written like vm.conf sizes (shared by the commands).
pub fn parse_size(text: &str) -> Result<u64, String> {
    kapsel_config::parse_size(text)
        .map(|s| s.bytes())
        .map_err(|e| format!("{e} (write sizes like 512M or 2G)"))
}

/// A `--console` argument: stdio, none or file:PATH.
pub(crate) fn parse_console(text: &str) -> Result<ConsoleSpec, String> {
    match text {
        "stdio" => Ok(ConsoleSpec::Stdio),
        "none" => Ok(ConsoleSpec::None),
        _ => match text.strip_prefix("file:") {
            Some(path) if !path.is_empty() => Ok(ConsoleSpec::File(path.into())),
            _ => Err("use stdio, none or file:PATH".into()),
        },
    }
}

fn parse_disk(text: &str) -> Result<DiskConfig, String> {
    let mut parts = text.split(',');
    let path = parts
        .next()
        .filter(|p| !p.is_empty())
        .ok_or("give a path: PATH[,ro][,format=raw|qcow2][,serial=ID][,cache=none|writeback]")?;
    let mut disk = DiskConfig {
        path: path.into(),
        read_only: false,
        serial: None,
        format: None,
        cache: CacheMode::default(),
        as_user: false,
    };
    for opt in parts {
        match opt.split_once('=') {
            None if opt == "ro" => disk.read_only = true,
            None if opt == "as-user" => disk.as_user = true,
            Some(("format", f)) => {
                disk.format = Some(
                    f.parse::<kapsel_image::Format>()
                        .map_err(|e| format!("{e} (use format=raw or format=qcow2)"))?,
                )
            }
            Some(("serial", id)) if !id.is_empty() && id.len() <= 20 => {
                disk.serial = Some(id.to_string())
            }
            Some(("serial", _)) => return Err("serial=ID takes 1 to 20 characters".into()),
            Some(("cache", c)) => disk.cache = c.parse::<CacheMode>()?,
            _ => {
                return Err(format!(
                    "unknown disk option \"{opt}\"; \
                     use ro, format=raw, serial=ID, cache=none, as-user"
                ))
            }
        }
    }
    Ok(disk)
}

/// A MAC address written 52:54:00:12:34:56 (unicast only; shared by the commands).
pub fn parse_mac(text: &str) -> Result<[u8; 6], String> {
    let bad = || format!("\"{text}\" is not a MAC address; write it like 52:54:00:12:34:56");
    let parts: Vec<&str> = text.split(':').collect();
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (b, p) in mac.iter_mut().zip(&parts) {
        if p.len() != 2 {
            return Err(bad());
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if mac[0] & 1 != 0 {
        return Err(format!(
            "{text} is a multicast address; the first byte must be even"
        ));
    }
    Ok(mac)
}

fn parse_net(text: &str) -> Result<NetConfig, String> {
    let mut tap = None;
    let mut mac = None;
    for opt in text.split(',') {
        let source = match opt.split_once('=') {
            Some(("tap", name)) if !name.is_empty() && name.len() <= 15 => {
                TapSource::Name(name.into())
            }
            Some(("tap", _)) => return Err("tap=NAME takes 1 to 15 characters".into()),
            Some(("fd", n)) => match n.parse::<i32>() {
                Ok(fd) if fd >= 3 => TapSource::Fd(fd),
                _ => {
                    return Err(format!(
                        "fd={n}: give the number of an inherited descriptor, 3 or more"
                    ))
                }
            },
            Some(("mac", m)) => {
                mac = Some(parse_mac(m)?);
                continue;
            }
            _ => {
                return Err(format!(
                    "unknown network option \"{opt}\"; use tap=NAME or fd=N, and mac=MAC"
                ))
            }
        };
        if tap.replace(source).is_some() {
            return Err("give one tap per card: tap=NAME or fd=N, once".into());
        }
    }
    let tap = tap.ok_or("give the host interface: tap=NAME or fd=N")?;
    Ok(NetConfig { tap, mac })
}

/// The VM configuration the options describe, or the one read from
/// `--config-fd`.
fn config(args: RunArgs) -> Result<VmConfig, String> {
    if let Some(fd) = args.config_fd {
        return VmConfig::from_fd(fd);
    }
    let (kernel, firmware) = match args.kernel {
        Some(kernel) => (kernel, None),
        None if args.disks.is_empty() => {
            return Err(
                "give a kernel (--kernel PATH), or a disk to boot from through the \
                        firmware (--disk PATH) (or the configuration: --config-fd N)"
                    .into(),
            )
        }
        None => {
            // The only kind so far; --firmware bios says it explicitly.
            let FirmwareArg::Bios = args.firmware.unwrap_or(FirmwareArg::Bios);
            let bios = args
                .bios
                .unwrap_or_else(|| kapsel_vmm::arch::x86_64::firmware::DEFAULT_BIOS.into());
            (PathBuf::new(), Some(Firmware::Bios(bios)))
        }
    };
    if firmware.is_some() && args.initrd.is_some() {
        return Err(
            "--initrd goes with --kernel; a firmware boot loads what the disk's boot \
                    loader loads"
                .into(),
        );
    }
    let cfg = VmConfig {
        kernel,
        firmware,
        initrd: args.initrd,
        cmdline: args.cmdline,
        memory: args.memory,
        cpus: args.cpus,
        console: args.console,
        on_reboot: match args.on_reboot {
            RebootArg::Exit => OnReboot::Exit,
            RebootArg::Restart => OnReboot::Restart,
        },
        hide_cpuid: args.hide_cpuid,
        disks: args.disks,
        rng: args.rng,
        nets: args.nets,
        virtio_console: args.virtio_console,
        shutdown_timeout: std::time::Duration::from_secs(args.shutdown_timeout),
        sandbox: !args.no_sandbox,
        open_as: args.open_as,
        kernel_as_user: args.kernel_as_user,
        initrd_as_user: args.initrd_as_user,
        ready_fd: args.ready_fd,
    };
    if cfg.disks.iter().any(|d| d.as_user) && cfg.open_as.is_none() {
        return Err("the disk option as-user needs --open-as UID:GID".into());
    }
    Ok(cfg)
}

/// An inherited descriptor named by `option`, or why it is not one.
fn inherited(option: &str, fd: i32) -> Result<OwnedFd, String> {
    // SAFETY: F_GETFD only asks whether the descriptor is open.
    if fd < 3 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(format!(
            "{option} {fd}: not an inherited descriptor; pass one left open across exec, \
             numbered 3 or more"
        ));
    }
    // SAFETY: fd is open and this process has no other owner of it: it
    // was inherited for this option alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Runs `kapsel run`; returns the process exit code.
pub fn main(args: RunArgs) -> u8 {
    // The exit report's pipe first: every later failure is reported on it.
    let exit_fd = match args
        .exit_fd
        .map(|fd| inherited("--exit-fd", fd))
        .transpose()
    {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!("kapsel run: {e}");
            return 2;
        }
    };
    let report = |end: EndReport| {
        if let Some(fd) = exit_fd {
            end.send(fd);
        }
    };
    let control = args.control_fd.map(|fd| inherited("--control-fd", fd));
    let cfg = config(args).and_then(|cfg| Ok((cfg, control.transpose()?)));
    let (cfg, control) = match cfg {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kapsel run: {e}");
            report(EndReport::Error { message: e });
            return 2;
        }
    };
    let (code, end) = match kapsel_vmm::vm::run_controlled(&cfg, control) {
        Ok(exit) => {
            tracing::info!("{exit}");
            let end = EndReport::from(&exit);
            match exit {
                VmExit::PowerOff | VmExit::Reset => (0, end),
                failure => {
                    eprintln!("kapsel run: {failure}");
                    (1, end)
                }
            }
        }
        Err(e) => {
            eprintln!("kapsel run: {e}");
            let end = EndReport::Error {
                message: e.to_string(),
            };
            (e.exit_code(), end)
        }
    };
    report(end);
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_specs() {
        assert_eq!(parse_console("stdio"), Ok(ConsoleSpec::Stdio));
        assert_eq!(parse_console("none"), Ok(ConsoleSpec::None));
        assert_eq!(
            parse_console("file:/tmp/x.log"),
            Ok(ConsoleSpec::File("/tmp/x.log".into()))
        );
        assert!(parse_console("file:").is_err());
        assert!(parse_console("tty").is_err());
    }

    #[test]
    fn disk_specs() {
        let d = parse_disk("/srv/a.img,ro,serial=web-root").unwrap();
        assert_eq!(d.path, PathBuf::from("/srv/a.img"));
        assert!(d.read_only);
        assert_eq!(d.serial.as_deref(), Some("web-root"));
        assert!(!parse_disk("b.img,format=raw").unwrap().read_only);
        assert_eq!(
            parse_disk("c.qcow2,format=qcow2").unwrap().format,
            Some(kapsel_image::Format::Qcow2)
        );
        assert!(parse_disk("c.img,format=vmdk")
            .unwrap_err()
            .contains("format=qcow2"));
        assert!(parse_disk("d.img,rw")
            .unwrap_err()
            .contains("unknown disk option"));
        assert!(parse_disk(",ro").is_err());
        assert!(parse_disk("g.img,as-user").unwrap().as_user);
        assert!(!parse_disk("g.img").unwrap().as_user);
        assert!(parse_disk("e.img,serial=123456789012345678901").is_err());
        // O_DIRECT unless asked otherwise.
        assert_eq!(parse_disk("f.img").unwrap().cache, CacheMode::None);
        assert_eq!(
            parse_disk("f.img,cache=writeback").unwrap().cache,
            CacheMode::Writeback
        );
        assert_eq!(
            parse_disk("f.img,cache=none,ro").unwrap().cache,
            CacheMode::None
        );
        assert!(parse_disk("f.img,cache=unsafe")
            .unwrap_err()
            .contains("none or writeback"));
    }

    #[test]
    fn net_specs() {
        let n = parse_net("tap=kt0,mac=52:54:00:12:34:56").unwrap();
        assert_eq!(n.tap, TapSource::Name("kt0".into()));
        assert_eq!(n.mac, Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]));
        assert_eq!(parse_net("tap=kt1").unwrap().mac, None);
        assert!(parse_net("mac=52:54:00:12:34:56")
            .unwrap_err()
            .contains("tap=NAME"));
        assert!(parse_net("tap=kt0,mac=53:54:00:12:34:56")
            .unwrap_err()
            .contains("multicast"));
        assert!(parse_net("tap=kt0,mac=52:54:00:12:34").is_err());
        assert!(parse_net("tap=kt0,vhost=on")
            .unwrap_err()
            .contains("unknown network option"));
        assert!(parse_net("tap=a-very-long-tap-name").is_err());
        let n = parse_net("fd=7,mac=52:54:00:12:34:57").unwrap();
        assert_eq!(n.tap, TapSource::Fd(7));
        assert!(parse_net("fd=2").unwrap_err().contains("3 or more"));
        assert!(parse_net("fd=x").is_err());
        assert!(parse_net("tap=kt0,fd=7")
            .unwrap_err()
            .contains("one tap per card"));
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert!(parse_size("lots").unwrap_err().contains("512M"));
    }
}
