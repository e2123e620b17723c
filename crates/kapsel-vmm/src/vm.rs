//! Building a VM from a [`VmConfig`] and running it to its end.

use crate::arch::x86_64::boot::{self, BootSpec};
use crate::arch::x86_64::{acpi, cpuid, firmware, layout};
use crate::bus::{Bus, SharedDevice};
use crate::config::{OnReboot, VmConfig, MIN_MEMORY};
use crate::console::{Console, EscapeState, InputTarget};
use crate::control::{self, FrameBuffer, Reply, ReplyFrame, Request, RunState, VmStatus};
use crate::devices::legacy::acpi_pm::{AcpiPm, ACPI_PM_BASE, ACPI_PM_PORT_COUNT};
use crate::devices::legacy::cmos::{Cmos, CMOS_PORT_COUNT};
use crate::devices::legacy::debugcon::{DebugCon, DEBUGCON_PORT};
use crate::devices::legacy::fw_cfg::{FW_CFG_PORT, FW_CFG_PORT_COUNT};
use crate::devices::legacy::i8042::{I8042, I8042_PORT_COUNT};
use crate::devices::legacy::port92::{Port92, PORT92};
use crate::devices::legacy::pvpanic::PvPanic;
use crate::devices::legacy::serial::{SerialDevice, SERIAL_PORT_COUNT};
use crate::devices::legacy::IrqTrigger;
use crate::devices::pci::bus::{
    PciAddress, PciBus, PciConfigIo, PciConfigMmio, PciMmioWindow, PciWindow, PCI_CONFIG_IO_PORT,
    PCI_CONFIG_IO_PORT_COUNT,
};
use crate::devices::pci::msix::InterruptSink;
use crate::devices::virtio::block::VirtioBlock;
use crate::devices::virtio::console::{ConsoleInput, VirtioConsole};
use crate::devices::virtio::net::VirtioNet;
use crate::devices::virtio::rng::VirtioRng;
use crate::devices::virtio::transport::VirtioPciDevice;
use crate::devices::virtio::VirtioDevice;
use crate::error::{Error, Result};
use crate::exit::{ExitSignal, VmExit};
use crate::interrupts::MsiRouter;
use crate::io_thread::{IoDevice, IoThread, QueueDoorbells};
use crate::memory;
use crate::resources::Resources;
use crate::sandbox::{self, seccomp::Filters, seccomp::ThreadKind};
use crate::vcpu::{self, Vcpu, VcpuContext};
use kvm_bindings::{kvm_pit_config, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VmFd};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::signal::Killable;

/// KVM's private pages for the TSS and the real-mode identity map, just
/// below the BIOS area at the top of the 32-bit space (in the MMIO hole).
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;
const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

/// Opens /dev/kvm with an error that says how to fix the usual problems.
pub fn open_kvm() -> Result<Kvm> {
    Kvm::new().map_err(|e| {
        let source = std::io::Error::from_raw_os_error(e.errno());
        let hint = match e.errno() {
            libc::ENOENT | libc::ENODEV | libc::ENXIO => {
                "load the KVM module (modprobe kvm_intel or modprobe kvm_amd) and enable \
                 virtualization in the firmware"
            }
            libc::EACCES | libc::EPERM => {
                "add your user to the kvm group (sudo usermod -aG kvm $USER, then log in again) \
                 or run as root"
            }
            _ => "check that KVM works on this host (dmesg | grep -i kvm)",
        };
        Error::KvmUnavailable { source, hint }
    })
}

/// Bytes of RAM the host has (MemTotal).
pub fn host_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// The most vCPUs Kapsel gives a VM on this host: KVM's limit, capped so
/// that every APIC ID fits the xAPIC's 8 bits (0xff is the broadcast ID).
pub fn max_vcpus(kvm: &Kvm) -> u8 {
    let kvm_max = kvm.check_extension_int(Cap::MaxVcpus).max(1);
    kvm_max.min(254) as u8
}

/// Checks a configuration against this host before anything is built.
pub fn validate(cfg: &VmConfig, kvm: &Kvm) -> Result<()> {
    if cfg.memory < MIN_MEMORY {
        return Err(Error::InvalidConfig(format!(
            "--memory {}: a VM needs at least {} MiB",
            cfg.memory,
            MIN_MEMORY >> 20
        )));
    }
    if let Some(host) = host_memory() {
        if cfg.memory > host {
            return Err(Error::InvalidConfig(format!(
                "--memory {} MiB is more than this host has ({} MiB); give less",
                cfg.memory >> 20,
                host >> 20
            )));
        }
    }
    let max = max_vcpus(kvm);
    if cfg.cpus == 0 || cfg.cpus > max {
        return Err(Error::InvalidConfig(format!(
            "--cpus {}: this host's KVM allows 1 to {max} vCPUs",
            cfg.cpus
        )));
    }
    cpuid::validate_hidden(&cfg.hide_cpuid)?;
    for cap in [Cap::Irqchip, Cap::Pit2, Cap::Irqfd, Cap::UserMemory] {
        if !kvm.check_extension(cap) {
            return Err(Error::KvmUnsupported(format!("missing capability {cap:?}")));
        }
    }
    Ok(())
}

/// SIGTERM, SIGINT and SIGHUP, delivered to the event loop through a
/// signalfd while a VM runs, and unblocked again afterwards (the mask is
/// set before the vCPU and I/O threads are spawned, which inherit it).
type StopSignals = kapsel_host::signals::SignalFd;

fn block_stop_signals() -> Result<StopSignals> {
    StopSignals::block(&[libc::SIGTERM, libc::SIGINT, libc::SIGHUP])
        .map_err(|e| Error::io("creating a signalfd", e))
}

/// Boots the VM described by `cfg` and runs it until it powers off, fails,
/// or resets (a reset boots it again under [`OnReboot::Restart`]).
///
/// Every host resource is opened first; then, unless `cfg.sandbox` is off,
/// the process confines itself ([`crate::sandbox`]) before the first boot.
/// Every boot, the first and those after a reset, is built from the same
/// open resources under the same sandbox.
pub fn run(cfg: &VmConfig) -> Result<VmExit> {
    run_controlled(cfg, None)
}

/// [`run`], with the VM process's control channel (see [`crate::control`]):
/// a connected Unix stream socket whose requests the event loop serves.
pub fn run_controlled(cfg: &VmConfig, control: Option<OwnedFd>) -> Result<VmExit> {
    let mut control = control.map(ControlChannel::new).transpose()?;
    let resources = Resources::open(cfg)?;
    if let Some(fd) = cfg.ready_fd {
        crate::resources::say_ready(fd);
    }
    vcpu::install_kick_handler()?;
    let signals = block_stop_signals()?;
    let filters = if cfg.sandbox {
        Some(confine()?)
    } else {
        tracing::warn!("the VM process runs without its sandbox (--no-sandbox)");
        None
    };
    let mut escape = EscapeState::default();
    let mut life = Life {
        started: std::time::Instant::now(),
        boots: 0,
    };
    loop {
        life.boots += 1;
        let exit = boot_once(
            &resources,
            cfg,
            filters.as_ref(),
            &signals,
            &mut escape,
            &mut control,
            &life,
        )?;
        if exit == VmExit::Reset && cfg.on_reboot == OnReboot::Restart {
            tracing::info!("guest reset; booting it again (--on-reboot restart)");
            continue;
        }
        return Ok(exit);
    }
}

/// Since when the VM runs, and how often it booted.
struct Life {
    started: std::time::Instant,
    boots: u32,
}

/// How long a pause may take before it is given up.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(2);

/// The VM process's end of its control channel, served by the event loop
/// (on the main thread, whose seccomp filter already has what it needs:
/// read, write and poll).
struct ControlChannel {
    fd: OwnedFd,
    received: FrameBuffer,
}

impl ControlChannel {
    /// Takes over the inherited socket: it must be a connected stream
    /// socket; it is made non-blocking so that a slow peer cannot stall
    /// the event loop.
    fn new(fd: OwnedFd) -> Result<ControlChannel> {
        let raw = fd.as_raw_fd();
        let bad = |why: String| {
            Error::InvalidConfig(format!(
                "--control-fd {raw}: {why}; pass one end of a Unix stream socket pair, left \
                 open across exec"
            ))
        };
        let mut kind: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `kind`.
        let rc = unsafe {
            libc::getsockopt(
                raw,
                libc::SOL_SOCKET,
                libc::SO_TYPE,
                (&mut kind as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(bad(format!(
                "not a socket ({})",
                std::io::Error::last_os_error()
            )));
        }
        if kind != libc::SOCK_STREAM {
            return Err(bad("not a stream socket".into()));
        }
        // SAFETY: F_GETFL/F_SETFL on a descriptor we own touch no memory.
        let ok = unsafe {
            let flags = libc::fcntl(raw, libc::F_GETFL);
            flags >= 0 && libc::fcntl(raw, libc::F_SETFL, flags | libc::O_NONBLOCK) == 0
        };
        if !ok {
            return Err(bad(std::io::Error::last_os_error().to_string()));
        }
        Ok(ControlChannel {
            fd,
            received: FrameBuffer::default(),
        })
    }

    /// Reads what arrived; false when the peer closed the channel.
    fn receive(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        // Bounded: a peer that floods the channel cannot keep the loop here.
        for _ in 0..16 {
            match read_fd(self.fd.as_raw_fd(), &mut chunk) {
                Ok(0) => return false,
                Ok(n) => self.received.push(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        true
    }

    /// Sends one reply whole; false when it cannot (the peer does not
    /// read its replies, or is gone).
    fn send(&self, reply: &ReplyFrame) -> bool {
        let frame = control::encode(reply);
        // SAFETY: writes from a live buffer of its length.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
        n == frame.len() as isize
    }
}

/// Enters the sandbox and installs the main thread's seccomp filter;
/// returns the filters the vCPU and I/O threads install when they start.
fn confine() -> Result<Arc<Filters>> {
    #[cfg(debug_assertions)]
    let log_only = sandbox::debug::log_only();
    #[cfg(not(debug_assertions))]
    let log_only = false;
    // Compiled before the sandbox: a failure is then reported while the
    // process still has everything it needs to say so.
    let filters = Filters::compile(log_only)?;
    let confinement = sandbox::enter()?;
    filters.install(ThreadKind::Main)?;
    tracing::info!(
        "sandbox: root {:?}{}, no_new_privs, no capabilities, seccomp filters{}",
        confinement.root,
        if confinement.user_namespace {
            " (in a user namespace)"
        } else {
            ""
        },
        if log_only { " (log only)" } else { "" }
    );
    #[cfg(debug_assertions)]
    sandbox::debug::violate_if_asked();
    Ok(Arc::new(filters))
}

/// What [`add_pci`] built.
struct PciParts {
    /// The devices the I/O thread serves.
    io_devices: Vec<IoDevice>,
    /// The virtio console's input, if there is one.
    hvc_input: Option<ConsoleInput>,
    /// Where the disks sit, in order.
    disks: Vec<PciAddress>,
}

/// The PCI host bridge with the virtio devices of `cfg`, reachable through
/// the configuration ports, ECAM and the 32-bit BAR window; returns the
/// devices for the I/O thread. With `firmware`, the reset control register
/// at 0xCF9 works and a second BAR window covers the rest of the 32-bit
/// hole, where the firmware moves the BARs.
fn add_pci(
    cfg: &VmConfig,
    res: &Resources,
    vm: &Arc<VmFd>,
    mem: &memory::GuestMem,
    buses: (&mut Bus, &mut Bus),
    firmware: Option<&Arc<ExitSignal>>,
) -> Result<PciParts> {
    let (pio, mmio) = buses;
    let window = PciWindow {
        base: layout::PCI_MMIO32_START,
        size: layout::PCI_MMIO32_SIZE,
    };
    let pci_err = |e: &dyn std::fmt::Display| Error::InvalidConfig(format!("PCI: {e}"));
    let mut pci = PciBus::new(window, None).map_err(|e| pci_err(&e))?;
    let sink: Arc<dyn InterruptSink> = Arc::new(MsiRouter::new(vm.clone()));
    let mut devices: Vec<Box<dyn VirtioDevice>> = Vec::new();
    for disk in &res.disks {
        devices.push(Box::new(VirtioBlock::with_fast_file(
            Box::new(disk.backend.clone()),
            disk.options.clone(),
            disk.fast.clone(),
        )));
    }
    for net in &res.nets {
        devices.push(Box::new(VirtioNet::new(Box::new(net.tap.clone()), net.mac)));
    }
    if cfg.rng {
        devices.push(Box::new(VirtioRng::new()));
    }
    let mut hvc_input = None;
    if let Some(out) = res.console.virtio_output()? {
        let hvc =
            VirtioConsole::new(out).map_err(|e| Error::io("creating the virtio console", e))?;
        hvc_input = Some(hvc.input());
        devices.push(Box::new(hvc));
    }
    let mut io_devices = Vec::new();
    let mut disks = Vec::new();
    let disk_count = res.disks.len();
    for (i, device) in devices.into_iter().enumerate() {
        let mut pci_dev =
            VirtioPciDevice::new(device, mem.clone(), sink.clone()).map_err(|e| pci_err(&e))?;
        let doorbells = Arc::new(QueueDoorbells::new(vm.clone(), pci_dev.queue_count())?);
        pci_dev.set_notify_registrar(doorbells.clone());
        let pci_dev = Arc::new(Mutex::new(pci_dev));
        let addr = pci.add_device(pci_dev.clone()).map_err(|e| pci_err(&e))?;
        if i < disk_count {
            disks.push(addr);
        }
        io_devices.push(IoDevice {
            device: pci_dev,
            doorbells,
        });
    }
    let pci = Arc::new(pci);
    let bus_err = |e: crate::bus::BusError| Error::Memory(format!("PCI address map: {e}"));
    let mut config_io = PciConfigIo::new(pci.clone());
    if let Some(exit) = firmware {
        config_io = config_io.with_reset_control(exit.clone());
    }
    pio.insert(
        u64::from(PCI_CONFIG_IO_PORT),
        PCI_CONFIG_IO_PORT_COUNT,
        Arc::new(Mutex::new(config_io)),
    )
    .map_err(bus_err)?;
    mmio.insert(
        layout::PCI_ECAM_START,
        layout::PCI_ECAM_SIZE,
        Arc::new(Mutex::new(PciConfigMmio::new(pci.clone()))),
    )
    .map_err(bus_err)?;
    mmio.insert(
        window.base,
        window.size,
        Arc::new(Mutex::new(PciMmioWindow::new(pci.clone(), window.base))),
    )
    .map_err(bus_err)?;
    if firmware.is_some() {
        let (base, size) = firmware::PCI_WINDOWS[1];
        mmio.insert(
            base,
            size,
            Arc::new(Mutex::new(PciMmioWindow::new(pci, base))),
        )
        .map_err(bus_err)?;
    }
    Ok(PciParts {
        io_devices,
        hvc_input,
        disks,
    })
}

/// One running instance of the machine, from power-on to its exit.
struct Machine {
    _vm: Arc<VmFd>,
    serial: Arc<Mutex<SerialDevice>>,
    hvc_input: Option<ConsoleInput>,
    power_button: EventFd,
    exit: Arc<ExitSignal>,
    stop: Arc<AtomicBool>,
    gate: Arc<vcpu::PauseGate>,
    threads: Vec<JoinHandle<()>>,
    io_thread: IoThread,
    /// The firmware image's read-only mapping, kept as long as the VM.
    _rom: Option<firmware::RomMapping>,
    /// Last, so that it is dropped after everything that may hold a clone
    /// of it (the devices of the I/O thread and the buses).
    mem: memory::GuestRam,
}

fn boot_once(
    res: &Resources,
    cfg: &VmConfig,
    filters: Option<&Arc<Filters>>,
    signals: &StopSignals,
    escape: &mut EscapeState,
    control: &mut Option<ControlChannel>,
    life: &Life,
) -> Result<VmExit> {
    let mut machine = build(res, cfg, filters)?;
    let mut events = Events {
        signals,
        escape,
        control,
        life,
        deadline: None,
    };
    let result = event_loop(&machine, cfg, &res.console, &mut events);
    machine.shut_down();
    tracing::info!(
        "guest memory resident at exit: {} KiB",
        memory::resident_bytes(&machine.mem) >> 10
    );
    result
}

fn build(res: &Resources, cfg: &VmConfig, filters: Option<&Arc<Filters>>) -> Result<Machine> {
    let kvm = &res.kvm;
    let console = &res.console;
    let vm = Arc::new(
        kvm.create_vm()
            .map_err(|e| Error::kvm("KVM_CREATE_VM", e))?,
    );
    // A firmware image may reach down to 16 MiB below 4 GiB: KVM's pages
    // then go below it.
    let (identity_map, tss) = match res.firmware {
        Some(_) => (
            firmware::KVM_IDENTITY_MAP_ADDRESS,
            firmware::KVM_TSS_ADDRESS,
        ),
        None => (KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS),
    };
    vm.set_identity_map_address(identity_map)
        .map_err(|e| Error::kvm("KVM_SET_IDENTITY_MAP_ADDR", e))?;
    vm.set_tss_address(tss)
        .map_err(|e| Error::kvm("KVM_SET_TSS_ADDR", e))?;
    vm.create_irq_chip()
        .map_err(|e| Error::kvm("KVM_CREATE_IRQCHIP", e))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit)
        .map_err(|e| Error::kvm("KVM_CREATE_PIT2", e))?;

    let mem = memory::create(cfg.memory)?;
    memory::register(&vm, &mem)?;
    let (entry, rom) =
        match (&res.firmware, &res.kernel) {
            (Some(image), _) => {
                // vCPU 0 starts at the reset vector, as KVM creates it; the
                // firmware builds the tables it hands the OS from fw_cfg.
                firmware::load_isa_copy(&mem, image)?;
                if !kvm.check_extension(Cap::ReadonlyMem) {
                    return Err(Error::KvmUnsupported(
                        "read-only memory slots (KVM_CAP_READONLY_MEM), needed for the firmware \
                     image"
                            .into(),
                    ));
                }
                let slot = layout::ram_ranges(cfg.memory).len() as u32;
                (None, Some(firmware::map_rom(&vm, slot, image)?))
            }
            (None, Some(kernel)) => {
                let rsdp = acpi::write_tables(&mem, cfg.cpus)?;
                let entry = boot::load(
                    &mem,
                    &BootSpec {
                        kernel,
                        initrd: res.initrd.as_ref(),
                        cmdline: &cfg.cmdline,
                        memory: cfg.memory,
                        rsdp,
                    },
                )?;
                (Some(entry), None)
            }
            (None, None) => return Err(Error::InvalidConfig(
                "no kernel and no firmware to boot: give --kernel PATH, or --disk PATH to boot \
                 through the firmware"
                    .into(),
            )),
        };

    let exit = Arc::new(ExitSignal::new().map_err(|e| Error::io("creating an eventfd", e))?);
    let serial_irq = EventFd::new(EFD_NONBLOCK).map_err(|e| Error::io("creating an eventfd", e))?;
    vm.register_irqfd(&serial_irq, layout::COM1_IRQ)
        .map_err(|e| Error::kvm("KVM_IRQFD", e))?;
    let serial = Arc::new(Mutex::new(SerialDevice::new(
        IrqTrigger(serial_irq),
        console.output()?,
    )));

    let mut pio = Bus::new();
    let cmos = Arc::new(Mutex::new(Cmos::new()));
    let devices: [(u16, u64, SharedDevice); 5] = [
        (layout::COM1_PORT, SERIAL_PORT_COUNT, serial.clone()),
        (
            layout::I8042_DATA_PORT,
            I8042_PORT_COUNT,
            Arc::new(Mutex::new(I8042::new(exit.clone()))),
        ),
        (layout::CMOS_PORT, CMOS_PORT_COUNT, cmos.clone()),
        (
            ACPI_PM_BASE,
            ACPI_PM_PORT_COUNT,
            Arc::new(Mutex::new(AcpiPm::new(exit.clone()))),
        ),
        (
            layout::PVPANIC_PORT,
            1,
            Arc::new(Mutex::new(PvPanic::new(exit.clone()))),
        ),
    ];
    for (port, count, dev) in devices {
        pio.insert(u64::from(port), count, dev)
            .map_err(|e| Error::Memory(format!("port map: {e}")))?;
    }
    let mut mmio = Bus::new();
    let fw_exit = res.firmware.as_ref().map(|_| &exit);
    let pci = add_pci(cfg, res, &vm, &mem, (&mut pio, &mut mmio), fw_exit)?;
    let (io_devices, hvc_input) = (pci.io_devices, pci.hvc_input);
    if let Some(image) = &res.firmware {
        add_firmware_devices(cfg, image, &mem, &exit, &cmos, &pci.disks, &mut pio)?;
    }
    let power_button =
        EventFd::new(EFD_NONBLOCK).map_err(|e| Error::io("creating an eventfd", e))?;
    vm.register_irqfd(&power_button, layout::GED_GSI)
        .map_err(|e| Error::kvm("KVM_IRQFD", e))?;
    let io_thread = IoThread::start(io_devices, filters.cloned())?;

    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| Error::kvm("KVM_GET_SUPPORTED_CPUID", e))?;
    let host = cpuid::HostCaps {
        tsc_deadline: kvm.check_extension(Cap::TscDeadlineTimer),
    };
    let mut vcpus = Vec::with_capacity(cfg.cpus.into());
    for id in 0..cfg.cpus {
        let vcpu = Vcpu::new(&vm, id)?;
        let boot = entry.filter(|_| id == 0).map(|e| (&*mem, e));
        vcpu.configure(&supported, cfg.cpus, host, &cfg.hide_cpuid, boot)?;
        vcpus.push(vcpu);
    }

    let ctx = VcpuContext {
        pio: Arc::new(pio),
        mmio: Arc::new(mmio),
        exit: exit.clone(),
        stop: Arc::new(AtomicBool::new(false)),
        gate: Arc::new(vcpu::PauseGate::default()),
    };
    let stop = ctx.stop.clone();
    let gate = ctx.gate.clone();
    let mut machine = Machine {
        _vm: vm,
        serial,
        hvc_input,
        power_button,
        exit,
        stop,
        gate,
        threads: Vec::new(),
        io_thread,
        _rom: rom,
        mem,
    };
    for vcpu in vcpus {
        let ctx = ctx.clone();
        let id = machine.threads.len();
        let filters = filters.cloned();
        match std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || {
                // Before the first KVM_RUN: the guest never runs on a
                // thread without its filter.
                if let Some(Err(e)) = filters.map(|f| f.install(ThreadKind::Vcpu)) {
                    ctx.exit.raise(VmExit::KvmFailure {
                        cpu: id as u8,
                        reason: e.to_string(),
                    });
                    return;
                }
                vcpu.run(ctx)
            }) {
            Ok(handle) => machine.threads.push(handle),
            Err(e) => {
                machine.shut_down();
                return Err(Error::io("starting a vCPU thread", e));
            }
        }
    }
    Ok(machine)
}

/// The devices only a firmware boot has: fw_cfg, port 0x92, the debug
/// port, and the CMOS memory-size bytes.
fn add_firmware_devices(
    cfg: &VmConfig,
    image: &firmware::FirmwareImage,
    mem: &memory::GuestMem,
    exit: &Arc<ExitSignal>,
    cmos: &Arc<Mutex<Cmos>>,
    disks: &[PciAddress],
    pio: &mut Bus,
) -> Result<()> {
    let low = layout::low_ram_end(cfg.memory);
    cmos.lock()
        .unwrap_or_else(|e| e.into_inner())
        .set_memory_fields(low, cfg.memory - low, cfg.cpus);
    let fw_cfg = firmware::fw_cfg(
        mem.clone(),
        &firmware::MachineInfo {
            memory: cfg.memory,
            cpus: cfg.cpus,
            disks,
            image_size: image.bytes.len() as u64,
        },
    )?;
    let debug = tracing::enabled!(tracing::Level::DEBUG);
    let devices: [(u16, u64, SharedDevice); 3] = [
        (FW_CFG_PORT, FW_CFG_PORT_COUNT, Arc::new(Mutex::new(fw_cfg))),
        (PORT92, 1, Arc::new(Mutex::new(Port92::new(exit.clone())))),
        (DEBUGCON_PORT, 1, Arc::new(Mutex::new(DebugCon::new(debug)))),
    ];
    for (port, count, dev) in devices {
        pio.insert(u64::from(port), count, dev)
            .map_err(|e| Error::Memory(format!("port map: {e}")))?;
    }
    Ok(())
}

impl Machine {
    /// Stops every vCPU thread and waits for it.
    fn shut_down(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.gate.release();
        for handle in self.threads.drain(..) {
            // KVM_RUN may be entered just after a kick: keep kicking until
            // the thread has seen the stop flag.
            while !handle.is_finished() {
                let _ = handle.kill(vcpu::kick_signal());
                std::thread::sleep(Duration::from_micros(200));
            }
            if handle.join().is_err() {
                tracing::error!("a vCPU thread panicked");
            }
        }
        self.io_thread.stop();
    }
}

impl Machine {
    /// Stops every vCPU out of KVM_RUN and parks it.
    fn pause(&self) -> std::result::Result<(), String> {
        let kick = || {
            if self.exit.is_raised() {
                return false;
            }
            for handle in &self.threads {
                if !handle.is_finished() {
                    let _ = handle.kill(vcpu::kick_signal());
                }
            }
            true
        };
        self.gate.pause(self.threads.len(), kick, PAUSE_TIMEOUT)
    }

    /// The figures of [`Request::Status`].
    fn status(&self, cfg: &VmConfig, life: &Life, powering_off: bool) -> VmStatus {
        VmStatus {
            state: if self.gate.is_paused() {
                RunState::Paused
            } else {
                RunState::Running
            },
            vcpus: cfg.cpus,
            memory_bytes: cfg.memory,
            resident_bytes: memory::resident_bytes(&self.mem),
            uptime_ms: u64::try_from(life.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            boots: life.boots,
            powering_off,
        }
    }
}

/// What the event loop serves besides the machine, and its own state.
struct Events<'a> {
    signals: &'a StopSignals,
    escape: &'a mut EscapeState,
    control: &'a mut Option<ControlChannel>,
    life: &'a Life,
    /// When the guest must have powered off after the power button.
    deadline: Option<std::time::Instant>,
}

impl Events<'_> {
    fn press_power_button(&mut self, m: &Machine, cfg: &VmConfig) {
        if self.deadline.is_none() {
            let _ = m.power_button.write(1);
            self.deadline = Some(std::time::Instant::now() + cfg.shutdown_timeout);
        }
    }

    /// Serves the requests that arrived on the control channel.
    fn serve_control(&mut self, m: &Machine, cfg: &VmConfig) {
        let Some(mut channel) = self.control.take() else {
            return;
        };
        let open = channel.receive();
        let mut replies = Vec::new();
        let mut broken = !open;
        while let Some(frame) = channel.received.next_frame() {
            let body = match frame {
                Ok(body) => body,
                Err(message) => {
                    // The stream cannot be followed past a bad length.
                    replies.push(ReplyFrame {
                        id: 0,
                        reply: Reply::Error { message },
                    });
                    broken = true;
                    break;
                }
            };
            let frame = match control::parse_request(&body) {
                Ok(frame) => frame,
                Err(reply) => {
                    replies.push(reply);
                    continue;
                }
            };
            let reply = match frame.request {
                Request::PowerButton => {
                    if self.deadline.is_none() {
                        eprintln!(
                            "\r\nkapsel: control: pressing the guest's ACPI power button; it \
                             has {} s to power off\r",
                            cfg.shutdown_timeout.as_secs()
                        );
                    }
                    self.press_power_button(m, cfg);
                    Reply::Ok
                }
                Request::Pause => match m.pause() {
                    Ok(()) => {
                        eprintln!("\r\nkapsel: control: paused (every vCPU stopped)\r");
                        Reply::Ok
                    }
                    Err(message) => Reply::Error { message },
                },
                Request::Resume => {
                    if m.gate.is_paused() {
                        eprintln!("\r\nkapsel: control: resumed\r");
                    }
                    m.gate.resume();
                    Reply::Ok
                }
                Request::Status => Reply::Status {
                    status: m.status(cfg, self.life, self.deadline.is_some()),
                },
            };
            replies.push(ReplyFrame {
                id: frame.id,
                reply,
            });
        }
        for reply in &replies {
            if !channel.send(reply) {
                tracing::warn!("control: the peer does not take its replies; closing the channel");
                broken = true;
                break;
            }
        }
        if broken {
            tracing::info!("control: channel closed; the VM runs on");
        } else {
            *self.control = Some(channel);
        }
    }
}

fn poll(fds: &mut [libc::pollfd], timeout_ms: i32) -> std::io::Result<()> {
    // SAFETY: `fds` is a valid, initialised slice of pollfd for its length.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if n < 0 {
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
    Ok(())
}

fn read_fd(fd: RawFd, buf: &mut [u8]) -> std::io::Result<usize> {
    // SAFETY: reading into a valid, writable buffer of the given length.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Waits for the VM's end while feeding console input to the guest. The
/// first stop signal presses the ACPI power button; a second one, or the
/// guest not powering off within the shutdown timeout, stops the VM.
fn event_loop(m: &Machine, cfg: &VmConfig, console: &Console, ev: &mut Events) -> Result<VmExit> {
    let exit_fd = m.exit.event().as_raw_fd();
    let mut input = console.input_fd();
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let deadline = ev.deadline;
        if let Some(reason) = m.exit.reason() {
            return Ok(reason);
        }
        if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
            return Ok(VmExit::ShutdownTimeout {
                seconds: cfg.shutdown_timeout.as_secs(),
            });
        }
        let mut fds = vec![
            kapsel_host::fd::pollin(exit_fd),
            kapsel_host::fd::pollin(ev.signals.as_raw_fd()),
            // A negative descriptor is left out by poll.
            kapsel_host::fd::pollin(ev.control.as_ref().map_or(-1, |c| c.fd.as_raw_fd())),
        ];
        // Read more input only when the guest took what we had.
        if let (Some(fd), true) = (input, pending.is_empty()) {
            fds.push(kapsel_host::fd::pollin(fd));
        }
        let mut timeout = if pending.is_empty() { -1 } else { 10 };
        if let Some(d) = deadline {
            let left = d.saturating_duration_since(std::time::Instant::now());
            let left_ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX).max(1);
            timeout = if timeout < 0 {
                left_ms
            } else {
                timeout.min(left_ms)
            };
        }
        poll(&mut fds, timeout).map_err(|e| Error::io("waiting for events", e))?;
        if fds[2].revents != 0 {
            ev.serve_control(m, cfg);
        }
        if fds[1].revents != 0 && ev.signals.drain() > 0 {
            if deadline.is_some() {
                return Ok(VmExit::ForcedStop {
                    reason: "stopped by a second signal".into(),
                });
            }
            eprintln!(
                "\r\nkapsel: pressing the guest's ACPI power button; it has {} s to power \
                 off (signal again to stop it now)\r",
                cfg.shutdown_timeout.as_secs()
            );
            ev.press_power_button(m, cfg);
        }
        if fds.len() > 3 && fds[3].revents != 0 {
            let mut buf = [0u8; 256];
            match read_fd(fds[3].fd, &mut buf) {
                Ok(0) | Err(_) => input = None, // end of input: stop reading
                Ok(n) => {
                    let (bytes, quit) = if console.is_terminal() {
                        ev.escape.filter(&buf[..n])
                    } else {
                        (buf[..n].to_vec(), false)
                    };
                    pending.extend_from_slice(&bytes);
                    if quit {
                        eprintln!("\r\nkapsel: console escape (Ctrl-A x): stopping the VM\r");
                        return Ok(VmExit::PowerOff);
                    }
                }
            }
        }
        if !pending.is_empty() {
            let taken = match (console.input_target(), &m.hvc_input) {
                (Some(InputTarget::Virtio), Some(hvc)) => hvc.enqueue(&pending),
                _ => m
                    .serial
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .enqueue_input(&pending),
            };
            pending.drain(..taken);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_memory_is_read() {
        assert!(host_memory().unwrap() > 64 << 20);
    }
}
