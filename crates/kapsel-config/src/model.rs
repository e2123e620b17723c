//! The typed configuration model shared by the daemon, `kapsel start` and the API.

use crate::size::{ByteSize, MIB};
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::str::FromStr;

/// The memory of a VM that does not say `memory` (vmd's default).
pub const DEFAULT_VM_MEMORY: ByteSize = ByteSize(512 * MIB);
/// The vCPUs of a VM that does not say `cpus` (vmd has exactly one).
pub const DEFAULT_VM_CPUS: u32 = 1;
/// The most vCPUs a VM may have.
pub const MAX_VM_CPUS: u32 = 255;
/// The most network interfaces `interfaces N` may ask for.
pub const MAX_VM_INTERFACES: u32 = 32;
/// The longest chain of instances of instances.
pub const MAX_INSTANCE_DEPTH: usize = 16;
/// The longest VM, container or switch name (vmd's `VMM_MAX_NAME_LEN` less its NUL).
pub const MAX_NAME_LEN: usize = 63;
/// The program a container runs as its PID 1 when it does not say `init`.
pub const DEFAULT_CONTAINER_INIT: &str = "/sbin/init";
/// The highest `pids` limit: Linux's `PID_MAX_LIMIT` on 64-bit hosts.
pub const MAX_CONTAINER_PIDS: u64 = 4_194_304;
/// The file name endings `image` accepts for a tarball (anything else is
/// taken for a directory holding an OCI image layout).
pub const CONTAINER_IMAGE_EXTENSIONS: &[&str] = &[".tar", ".tar.gz", ".tgz", ".tar.xz", ".tar.zst"];
/// The longest Linux network interface name (`IFNAMSIZ` less its NUL).
pub const MAX_IFNAME_LEN: usize = 15;

/// Where something was declared. `line` 0 means "not from a file".
#[derive(Debug, Clone, PartialEq, Eq, Default, Hash, serde::Serialize, serde::Deserialize)]
pub struct Span {
    /// The file, as named on the command line or by `include`.
    pub file: PathBuf,
    /// 1-based line.
    pub line: u32,
    /// 1-based column, in characters.
    pub col: u32,
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.col)
    }
}

/// A whole vm.conf: global options, switches, VMs and containers, in file order.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Config {
    /// Global options.
    pub globals: Globals,
    /// `switch` blocks.
    pub switches: Vec<SwitchSpec>,
    /// `vm` blocks, instances included (see [`Config::effective_vm`]).
    pub vms: Vec<VmSpec>,
    /// `container` blocks.
    pub containers: Vec<ContainerSpec>,
}

/// Global options.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Globals {
    /// `local prefix`: the IPv4 range for `local interface`s.
    pub local_prefix: Ipv4Prefix,
    /// `local inet6 [prefix ...]`: IPv6 for `local interface`s, `None` when off.
    pub local_inet6: Option<Ipv6Prefix>,
    /// `socket owner`: who may use the control socket besides root.
    pub socket_owner: Option<Owner>,
    /// `staggered start`: how VMs are started at boot; `None` is all CPUs, 30 s.
    pub staggered_start: Option<StaggeredStart>,
    /// `agentx`: parsed for compatibility; Kapsel has no SNMP agent.
    pub agentx: Option<AgentX>,
}

/// An IPv4 prefix, `100.64.0.0/10`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Ipv4Prefix {
    /// The network address.
    pub addr: Ipv4Addr,
    /// The prefix length, 0 to 32.
    pub len: u8,
}

impl Default for Ipv4Prefix {
    /// vmd's default `local prefix`, 100.64.0.0/10.
    fn default() -> Self {
        Ipv4Prefix {
            addr: Ipv4Addr::new(100, 64, 0, 0),
            len: 10,
        }
    }
}

/// An IPv6 prefix, `fd00::/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Ipv6Prefix {
    /// The network address.
    pub addr: Ipv6Addr,
    /// The prefix length, 0 to 128.
    pub len: u8,
}

impl Default for Ipv6Prefix {
    /// vmd's default `local inet6 prefix`, fd00::/8.
    fn default() -> Self {
        Ipv6Prefix {
            addr: Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0),
            len: 8,
        }
    }
}

fn split_prefix(s: &str) -> Result<(&str, u8), String> {
    let (addr, len) = s
        .split_once('/')
        .ok_or_else(|| format!("\"{s}\" has no prefix length; write it as ADDRESS/LENGTH"))?;
    let len = len
        .parse::<u8>()
        .ok()
        .filter(|_| len.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| format!("invalid prefix length \"{len}\""))?;
    Ok((addr, len))
}

impl FromStr for Ipv4Prefix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, len) = split_prefix(s)?;
        let addr = addr
            .parse::<Ipv4Addr>()
            .map_err(|_| format!("\"{addr}\" is not an IPv4 address"))?;
        if len > 32 {
            return Err(format!("IPv4 prefix length {len} is above 32"));
        }
        Ok(Ipv4Prefix { addr, len })
    }
}

impl FromStr for Ipv6Prefix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, len) = split_prefix(s)?;
        let addr = addr
            .parse::<Ipv6Addr>()
            .map_err(|_| format!("\"{addr}\" is not an IPv6 address"))?;
        if len > 128 {
            return Err(format!("IPv6 prefix length {len} is above 128"));
        }
        Ok(Ipv6Prefix { addr, len })
    }
}

impl fmt::Display for Ipv4Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl fmt::Display for Ipv6Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// `owner user[:group]` or `owner :group`: at least one of the two is set.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Owner {
    /// The user name or numeric uid.
    pub user: Option<String>,
    /// The group name or numeric gid.
    pub group: Option<String>,
}

impl FromStr for Owner {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (user, group) = match s.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (s, None),
        };
        let valid = |n: &str| {
            !n.is_empty()
                && !n.contains(':')
                && n.chars().all(|c| !c.is_whitespace() && !c.is_control())
        };
        let user = (!user.is_empty()).then(|| user.to_string());
        let group = group.map(str::to_string);
        if user.is_none() && group.as_deref().is_none_or(str::is_empty) {
            return Err(format!("\"{s}\" names neither a user nor a group"));
        }
        for n in user.iter().chain(group.iter()) {
            if !valid(n) {
                return Err(format!("\"{n}\" is not a valid user or group name"));
            }
        }
        Ok(Owner { user, group })
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(u) = &self.user {
            write!(f, "{u}")?;
        }
        if let Some(g) = &self.group {
            write!(f, ":{g}")?;
        }
        Ok(())
    }
}

/// `staggered start parallel N delay S`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct StaggeredStart {
    /// How many VMs start at once.
    pub parallel: u32,
    /// Seconds to wait before starting the next group.
    pub delay_secs: u32,
}

/// `agentx [context NAME] [path PATH]`.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct AgentX {
    /// The SNMP context.
    pub context: Option<String>,
    /// The AgentX master socket.
    pub path: Option<PathBuf>,
}

/// A `switch "name" { ... }` block: a Linux bridge that VM interfaces join.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SwitchSpec {
    /// The switch name that `interface { switch NAME }` refers to.
    pub name: String,
    /// `interface IFNAME`: the bridge device; `None` lets Kapsel pick one.
    pub interface: Option<String>,
    /// `add IFNAME`: host interfaces added to the bridge (vmd's older syntax).
    pub members: Vec<String>,
    /// `group NAME`: the interface group of VM interfaces on this switch.
    pub group: Option<String>,
    /// `locked lladdr`: VM interfaces may only send from their own MAC.
    pub locked_lladdr: bool,
    /// `rdomain N`: routing domain (OpenBSD; ignored on Linux).
    pub rdomain: Option<u32>,
    /// `up` (default) or `down`.
    pub up: bool,
    /// `enable` (default) or `disable`.
    pub enabled: bool,
    /// Where the block starts.
    pub span: Span,
}

impl SwitchSpec {
    /// A switch with the defaults: enabled, up, nothing else set.
    pub fn new(name: impl Into<String>) -> Self {
        SwitchSpec {
            name: name.into(),
            interface: None,
            members: Vec::new(),
            group: None,
            locked_lladdr: false,
            rdomain: None,
            up: true,
            enabled: true,
            span: Span::default(),
        }
    }
}

/// `boot device cdrom|disk|net`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum BootDevice {
    /// Boot from the `cdrom` image.
    Cdrom,
    /// Boot from the first disk.
    Disk,
    /// Boot from the network.
    Net,
}

impl BootDevice {
    /// The vm.conf keyword.
    pub fn keyword(self) -> &'static str {
        match self {
            BootDevice::Cdrom => "cdrom",
            BootDevice::Disk => "disk",
            BootDevice::Net => "net",
        }
    }
}

/// `firmware bios|uefi`: what a VM without a `boot` kernel boots through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    /// A PC BIOS (SeaBIOS): disks with an MBR boot loader.
    Bios,
    /// UEFI (OVMF): disks with an EFI system partition.
    Uefi,
}

impl Firmware {
    /// The vm.conf keyword.
    pub fn keyword(self) -> &'static str {
        match self {
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
        }
    }
}

/// `format raw|qcow2` of a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum DiskFormat {
    /// A raw image.
    Raw,
    /// A qcow2 image.
    Qcow2,
}

impl DiskFormat {
    /// The vm.conf keyword.
    pub fn keyword(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }
}

/// `disk PATH [format FMT]`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DiskSpec {
    /// The image file.
    pub path: PathBuf,
    /// The format; `None` means detect it from the image header.
    pub format: Option<DiskFormat>,
}

/// A MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct MacAddr(pub [u8; 6]);

impl FromStr for MacAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let err =
            || format!("\"{s}\" is not a MAC address; write six hex bytes, e.g. fe:e1:ba:d0:00:01");
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in out.iter_mut() {
            let p = parts.next().ok_or_else(err)?;
            if p.is_empty() || p.len() > 2 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(err());
            }
            *byte = u8::from_str_radix(p, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(MacAddr(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

/// `[local] interface [NAME] [{ ... }]` of a VM or container.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InterfaceSpec {
    /// The host-side tap name; `None` lets Kapsel pick one.
    pub name: Option<String>,
    /// `local interface`: a point-to-point link with addresses from `local prefix`.
    pub local: bool,
    /// `switch NAME`: the switch this interface joins.
    pub switch: Option<String>,
    /// `lladdr MAC`: the guest's MAC; `None` is a random one.
    pub lladdr: Option<MacAddr>,
    /// `locked lladdr`: the guest may only send from its MAC.
    pub locked: bool,
    /// `group NAME`: interface group (OpenBSD; ignored on Linux).
    pub group: Option<String>,
    /// `rdomain N`: routing domain (OpenBSD; ignored on Linux).
    pub rdomain: Option<u32>,
    /// `up` (default) or `down`.
    pub up: bool,
}

impl Default for InterfaceSpec {
    fn default() -> Self {
        InterfaceSpec {
            name: None,
            local: false,
            switch: None,
            lladdr: None,
            locked: false,
            group: None,
            rdomain: None,
            up: true,
        }
    }
}

/// The settings every guest has, whatever its kind.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GuestCommon {
    /// The name, unique among VMs and containers.
    pub name: String,
    /// `enable` (default) or `disable`: started with the daemon or not.
    pub enabled: bool,
    /// `owner`: who may start, stop and use the console of this guest.
    pub owner: Option<Owner>,
    /// `memory SIZE`: a VM's RAM, a container's limit (see the kinds).
    pub memory: Option<ByteSize>,
    /// `cpus N`: a VM's vCPUs, a container's CPU limit.
    pub cpus: Option<u32>,
    /// `interface` statements, in order.
    pub interfaces: Vec<InterfaceSpec>,
    /// Where the block starts.
    pub span: Span,
}

impl GuestCommon {
    /// A guest with nothing set but its name (enabled).
    pub fn new(name: impl Into<String>) -> Self {
        GuestCommon {
            name: name.into(),
            enabled: true,
            owner: None,
            memory: None,
            cpus: None,
            interfaces: Vec::new(),
            span: Span::default(),
        }
    }
}

/// Which kind of guest something is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GuestKind {
    /// A virtual machine (its own kernel, on KVM).
    Vm,
    /// A system or application container (the host's kernel).
    Container,
}

impl GuestKind {
    /// The vm.conf keyword, as messages name the kind: `vm`, `container`.
    pub fn keyword(self) -> &'static str {
        match self {
            GuestKind::Vm => "vm",
            GuestKind::Container => "container",
        }
    }
}

impl fmt::Display for GuestKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.keyword())
    }
}

/// A guest as it runs: the common settings and those of its kind. A VM
/// here is effective (an instance's inherited settings resolved).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GuestSpec {
    /// A `vm` block (or a VM `kapsel start` made).
    Vm(VmSpec),
    /// A `container` block.
    Container(ContainerSpec),
}

impl GuestSpec {
    /// The settings every guest has.
    pub fn common(&self) -> &GuestCommon {
        match self {
            GuestSpec::Vm(v) => &v.common,
            GuestSpec::Container(c) => &c.common,
        }
    }

    /// [`GuestSpec::common`], to change.
    pub fn common_mut(&mut self) -> &mut GuestCommon {
        match self {
            GuestSpec::Vm(v) => &mut v.common,
            GuestSpec::Container(c) => &mut c.common,
        }
    }

    /// The guest's name.
    pub fn name(&self) -> &str {
        &self.common().name
    }

    /// VM or container.
    pub fn kind(&self) -> GuestKind {
        match self {
            GuestSpec::Vm(_) => GuestKind::Vm,
            GuestSpec::Container(_) => GuestKind::Container,
        }
    }

    /// The VM's settings, if it is one.
    pub fn as_vm(&self) -> Option<&VmSpec> {
        match self {
            GuestSpec::Vm(v) => Some(v),
            GuestSpec::Container(_) => None,
        }
    }

    /// The container's settings, if it is one.
    pub fn as_container(&self) -> Option<&ContainerSpec> {
        match self {
            GuestSpec::Container(c) => Some(c),
            GuestSpec::Vm(_) => None,
        }
    }
}

/// `allow instance { ... }`: what instances of a VM may set themselves.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct AllowInstance {
    /// `boot`: the kernel or BIOS image (and `boot device`, `initrd`, `cmdline`).
    pub boot: bool,
    /// `cdrom`: the ISO image.
    pub cdrom: bool,
    /// `disk`: disks of their own.
    pub disk: bool,
    /// `interface`: network interfaces of their own.
    pub interface: bool,
    /// `memory`: the memory size.
    pub memory: bool,
    /// `cpus` (Kapsel): the vCPU count.
    pub cpus: bool,
    /// `instance`: instances of the instances.
    pub instance: bool,
    /// `owner user[:group]`: who may create instances.
    pub owner: Option<Owner>,
}

/// A `vm "name" { ... }` or `vm "parent" instance "name" { ... }` block, as
/// written: an instance leaves inherited settings `None` (see
/// [`Config::effective_vm`]). [`crate::load`] fills in `memory` and `cpus`
/// defaults of VMs that are not instances.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VmSpec {
    /// What every guest has: name, `enable`, `owner`, `memory` (`None` in
    /// an instance: inherited), `cpus`, `interface` statements, where.
    #[serde(flatten)]
    pub common: GuestCommon,
    /// The parent VM when this is an instance.
    pub instance_of: Option<String>,
    /// `boot PATH`: the kernel (Linux bzImage/ELF) or BIOS image.
    pub boot: Option<PathBuf>,
    /// `boot device cdrom|disk|net`.
    pub boot_device: Option<BootDevice>,
    /// `firmware bios|uefi` (Kapsel): what a VM without `boot` boots
    /// through; `None` is BIOS.
    #[serde(default)]
    pub firmware: Option<Firmware>,
    /// `initrd PATH` (Kapsel).
    pub initrd: Option<PathBuf>,
    /// `cmdline "..."` (Kapsel): the kernel command line.
    pub cmdline: Option<String>,
    /// `cdrom PATH`: an ISO image.
    pub cdrom: Option<PathBuf>,
    /// `disk` statements, in order.
    pub disks: Vec<DiskSpec>,
    /// `interfaces N`: at least this many interfaces (default ones are added).
    pub interface_count: Option<u32>,
    /// `allow instance { ... }`.
    pub allow_instance: Option<AllowInstance>,
    /// `sev`: AMD SEV (parsed; not supported on Kapsel yet).
    pub sev: bool,
    /// `seves`: AMD SEV-ES (parsed; not supported on Kapsel yet).
    pub seves: bool,
}

impl VmSpec {
    /// A VM with nothing set but its name (enabled; no defaults filled in).
    pub fn new(name: impl Into<String>) -> Self {
        VmSpec {
            common: GuestCommon::new(name),
            instance_of: None,
            boot: None,
            boot_device: None,
            firmware: None,
            initrd: None,
            cmdline: None,
            cdrom: None,
            disks: Vec::new(),
            interface_count: None,
            allow_instance: None,
            sev: false,
            seves: false,
        }
    }

    /// The number of network interfaces the VM gets: its `interface`
    /// statements, or `interfaces N` if that is more.
    pub fn interface_total(&self) -> usize {
        let n = self.interface_count.unwrap_or(0) as usize;
        n.max(self.common.interfaces.len())
    }
}

/// The id mapping of an `unprivileged` container: the container's uids and
/// gids 0..count are the host's `host_id..host_id + count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UserMap {
    /// The host id of the container's root (never 0).
    pub host_id: u32,
    /// How many ids are mapped, at least 1; `host_id + count` fits in 32
    /// bits (the last host id is at most 4294967294, as (uid_t)-1 is none).
    pub count: u32,
}

impl UserMap {
    /// `unprivileged` alone: container ids 0..65535 are host ids
    /// 100000..165535 (Proxmox VE's default, and enough for a
    /// distribution's users, `nobody` 65534 included).
    pub const DEFAULT: UserMap = UserMap {
        host_id: 100_000,
        count: 65_536,
    };
}

/// A `container "name" { ... }` block: a system container (its own init,
/// usually `/sbin/init`) or an application container (`init` names the
/// command). A loaded container has exactly one of `root` and `image`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ContainerSpec {
    /// What every guest has: name (shared with VM names), `enable`,
    /// `owner`, `memory` and `cpus` (limits; `None` is unlimited),
    /// `interface` statements, where.
    #[serde(flatten)]
    pub common: GuestCommon,
    /// `root PATH`: an absolute path to the directory that becomes the
    /// container's `/`.
    pub root: Option<PathBuf>,
    /// `image PATH`: an absolute path to a tarball (`.tar`, `.tar.gz`,
    /// `.tgz`, `.tar.xz`, `.tar.zst`) or a directory holding a local OCI
    /// image layout, unpacked once into the container's root.
    pub image: Option<PathBuf>,
    /// `init PROGRAM [ARG ...]`: the command run as PID 1, program first;
    /// empty means [`DEFAULT_CONTAINER_INIT`] (see [`ContainerSpec::init_command`]).
    pub init: Vec<String>,
    /// `pids N`: the most processes and threads, 1 to [`MAX_CONTAINER_PIDS`];
    /// `None` is unlimited.
    pub pids: Option<u64>,
    /// `unprivileged [map HOSTID COUNT]`: run in a user namespace whose
    /// ids 0..COUNT are the host's HOSTID.. (uids and gids alike);
    /// `None` runs the container as the host's root.
    pub unprivileged: Option<UserMap>,
}

impl ContainerSpec {
    /// A container with nothing set but its name (enabled).
    pub fn new(name: impl Into<String>) -> Self {
        ContainerSpec {
            common: GuestCommon::new(name),
            root: None,
            image: None,
            init: Vec::new(),
            pids: None,
            unprivileged: None,
        }
    }

    /// The command run as PID 1: `init` as given, or
    /// [`DEFAULT_CONTAINER_INIT`] alone.
    pub fn init_command(&self) -> Vec<String> {
        if self.init.is_empty() {
            vec![DEFAULT_CONTAINER_INIT.to_string()]
        } else {
            self.init.clone()
        }
    }
}

impl Config {
    /// The VM called `name`, as declared.
    pub fn vm(&self, name: &str) -> Option<&VmSpec> {
        self.vms.iter().find(|v| v.common.name == name)
    }

    /// The switch called `name`.
    pub fn switch(&self, name: &str) -> Option<&SwitchSpec> {
        self.switches.iter().find(|s| s.name == name)
    }

    /// The container called `name`.
    pub fn container(&self, name: &str) -> Option<&ContainerSpec> {
        self.containers.iter().find(|c| c.common.name == name)
    }

    /// The VM called `name` with everything an instance inherits resolved,
    /// the way vmd builds an instance: settings it does not set come from
    /// the parent, except disks (never shared) and interface names and MAC
    /// addresses (fresh ones). `memory` and `cpus` are always `Some`.
    /// `None` if there is no such VM or its parents do not resolve.
    pub fn effective_vm(&self, name: &str) -> Option<VmSpec> {
        self.effective_with(name, |n| self.vm(n))
    }

    /// [`Config::effective_vm`] with a faster way to find VMs by name.
    pub(crate) fn effective_with<'a>(
        &'a self,
        name: &str,
        lookup: impl Fn(&str) -> Option<&'a VmSpec>,
    ) -> Option<VmSpec> {
        let mut chain = vec![lookup(name)?];
        while let Some(parent) = chain.last().and_then(|v| v.instance_of.as_deref()) {
            if chain.len() > MAX_INSTANCE_DEPTH {
                return None; // too deep or a cycle; the checks report it
            }
            chain.push(lookup(parent)?);
        }
        let mut iter = chain.into_iter().rev();
        let mut eff = iter.next()?.clone();
        for child in iter {
            eff = inherit(&eff, child);
        }
        eff.common.memory.get_or_insert(DEFAULT_VM_MEMORY);
        eff.common.cpus.get_or_insert(DEFAULT_VM_CPUS);
        Some(eff)
    }

    /// Every guest as it runs: the VMs (effective, in file order; an
    /// instance whose parents do not resolve is left out, as the checks
    /// report it), then the containers.
    pub fn guests(&self) -> Vec<GuestSpec> {
        let vms = self
            .vms
            .iter()
            .filter_map(|v| self.effective_vm(&v.common.name));
        vms.map(GuestSpec::Vm)
            .chain(self.containers.iter().cloned().map(GuestSpec::Container))
            .collect()
    }

    /// Forgets where everything was declared, e.g. to compare
    /// configurations read from different files.
    pub fn clear_spans(&mut self) {
        for s in &mut self.switches {
            s.span = Span::default();
        }
        for v in &mut self.vms {
            v.common.span = Span::default();
        }
        for c in &mut self.containers {
            c.common.span = Span::default();
        }
    }
}

/// The settings of `child`, an instance of `parent` (already effective).
fn inherit(parent: &VmSpec, child: &VmSpec) -> VmSpec {
    let (p, c) = (&parent.common, &child.common);
    let mut interfaces = c.interfaces.clone();
    for iface in p.interfaces.iter().skip(c.interfaces.len()) {
        interfaces.push(InterfaceSpec {
            name: None,
            lladdr: None,
            ..iface.clone()
        });
    }
    VmSpec {
        common: GuestCommon {
            name: c.name.clone(),
            enabled: c.enabled,
            owner: c.owner.clone().or_else(|| p.owner.clone()),
            memory: c.memory.or(p.memory),
            cpus: c.cpus.or(p.cpus),
            interfaces,
            span: c.span.clone(),
        },
        instance_of: child.instance_of.clone(),
        boot: child.boot.clone().or_else(|| parent.boot.clone()),
        boot_device: child.boot_device.or(parent.boot_device),
        firmware: child.firmware.or(parent.firmware),
        initrd: child.initrd.clone().or_else(|| parent.initrd.clone()),
        cmdline: child.cmdline.clone().or_else(|| parent.cmdline.clone()),
        cdrom: child.cdrom.clone().or_else(|| parent.cdrom.clone()),
        disks: child.disks.clone(),
        interface_count: child.interface_count.max(parent.interface_count),
        allow_instance: child
            .allow_instance
            .clone()
            .or_else(|| parent.allow_instance.clone()),
        sev: child.sev || parent.sev,
        seves: child.seves || parent.seves,
    }
}
