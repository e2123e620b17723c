//! What a VM is made of, as the VMM needs it (already validated paths and
//! numbers; parsing user syntax is the caller's job).

use std::path::PathBuf;

/// Where the guest's serial console (COM1) goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleSpec {
    /// The VMM's stdin and stdout; stdin is put in raw mode when it is a terminal.
    Stdio,
    /// Output discarded, no input.
    None,
    /// Output appended to a file, no input.
    File(PathBuf),
}

/// What a guest reset (reboot) does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnReboot {
    /// The VMM exits with status 0.
    #[default]
    Exit,
    /// The VM is rebuilt and boots again.
    Restart,
}

/// A disk the guest sees as a virtio-blk device (vda, vdb, ... in order).
#[derive(Debug, Clone, PartialEq, Eq)]
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
#[derive(Debug, Clone, PartialEq, Eq)]
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// The host tap interface.
    pub tap: TapSource,
    /// The guest's MAC address; a random locally administered one if None.
    pub mac: Option<[u8; 6]>,
}

/// A complete description of one VM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Kernel image: a Linux bzImage, or an ELF with a PVH entry note.
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
        }
    }
}

/// The command line used when none is given.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1";

/// Time a guest gets to shut down after the power button, as vmd gives.
pub const DEFAULT_SHUTDOWN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Smallest guest memory Kapsel accepts.
pub const MIN_MEMORY: u64 = 32 << 20;
