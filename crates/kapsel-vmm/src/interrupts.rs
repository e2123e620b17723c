//! Message-signalled interrupts (MSI-X) delivered by KVM from irqfds.
//!
//! Each distinct MSI message (address, data) the guest programs gets a GSI
//! routed to it (KVM_SET_GSI_ROUTING) and an eventfd bound to that GSI
//! (KVM_IRQFD); signalling the message is then an eventfd write, which KVM
//! turns into the interrupt in the kernel. Routes are made on first use, so
//! a guest reprogramming its MSI-X table needs no hook; past
//! [`MAX_MSI_ROUTES`] distinct messages (a guest churning addresses),
//! messages are injected directly with KVM_SIGNAL_MSI.

use crate::devices::pci::msix::InterruptSink;
use kvm_bindings::{
    kvm_irq_routing_entry, kvm_irq_routing_msi, kvm_msi, KvmIrqRouting, KVM_IRQCHIP_IOAPIC,
    KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::VmFd;
use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// GSIs 0–23 are the IOAPIC's pins (0–15 also the PICs'); MSI routes follow.
pub const FIRST_MSI_GSI: u32 = 24;
/// Most distinct MSI messages given an irqfd route.
pub const MAX_MSI_ROUTES: usize = 1024;
const IOAPIC_PINS: u32 = 24;
const PIC_PINS: u32 = 16;

fn irqchip_route(gsi: u32, irqchip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        ..Default::default()
    };
    e.u.irqchip.irqchip = irqchip;
    e.u.irqchip.pin = pin;
    e
}

fn msi_route(gsi: u32, address: u64, data: u32) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_MSI,
        ..Default::default()
    };
    e.u.msi = kvm_irq_routing_msi {
        address_lo: address as u32,
        address_hi: (address >> 32) as u32,
        data,
        ..Default::default()
    };
    e
}

/// The routes KVM sets up with its in-kernel irqchip: GSI n to IOAPIC pin n
/// and, below 16, to the master or slave PIC. A routing table replaces
/// them all, so every table Kapsel sets starts with these.
pub fn legacy_routes() -> Vec<kvm_irq_routing_entry> {
    let mut routes = Vec::new();
    for gsi in 0..IOAPIC_PINS {
        routes.push(irqchip_route(gsi, KVM_IRQCHIP_IOAPIC, gsi));
        if gsi < PIC_PINS {
            let pic = if gsi < 8 {
                KVM_IRQCHIP_PIC_MASTER
            } else {
                KVM_IRQCHIP_PIC_SLAVE
            };
            routes.push(irqchip_route(gsi, pic, gsi % 8));
        }
    }
    routes
}

struct Route {
    gsi: u32,
    event: EventFd,
}

/// Delivers MSI messages through irqfds, making routes as messages appear.
pub struct MsiRouter {
    vm: Arc<VmFd>,
    routes: Mutex<HashMap<(u64, u32), Route>>,
}

impl MsiRouter {
    /// A router for `vm` (which must have an in-kernel irqchip).
    pub fn new(vm: Arc<VmFd>) -> Self {
        MsiRouter {
            vm,
            routes: Mutex::new(HashMap::new()),
        }
    }

    fn set_routing(&self, routes: &HashMap<(u64, u32), Route>) -> io::Result<()> {
        let mut entries = legacy_routes();
        entries.extend(routes.iter().map(|(&(a, d), r)| msi_route(r.gsi, a, d)));
        let table = KvmIrqRouting::from_entries(&entries)
            .map_err(|e| io::Error::other(format!("routing table: {e:?}")))?;
        self.vm
            .set_gsi_routing(&table)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))
    }

    /// Adds a route and irqfd for a new message; the caller holds the lock.
    fn add_route(
        &self,
        routes: &mut HashMap<(u64, u32), Route>,
        address: u64,
        data: u32,
    ) -> io::Result<()> {
        let gsi = FIRST_MSI_GSI + routes.len() as u32;
        let event = EventFd::new(EFD_NONBLOCK)?;
        routes.insert((address, data), Route { gsi, event });
        let registered = self.set_routing(routes).and_then(|()| {
            let route = &routes[&(address, data)];
            self.vm
                .register_irqfd(&route.event, gsi)
                .map_err(|e| io::Error::from_raw_os_error(e.errno()))
        });
        if let Err(e) = registered {
            routes.remove(&(address, data));
            let _ = self.set_routing(routes);
            return Err(e);
        }
        tracing::debug!("MSI {address:#x}/{data:#x} routed to GSI {gsi}");
        Ok(())
    }

    fn signal_directly(&self, address: u64, data: u32) -> io::Result<()> {
        let msi = kvm_msi {
            address_lo: address as u32,
            address_hi: (address >> 32) as u32,
            data,
            ..Default::default()
        };
        self.vm
            .signal_msi(msi)
            .map(|_| ())
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))
    }
}

impl InterruptSink for MsiRouter {
    fn signal_msi(&self, address: u64, data: u32) -> io::Result<()> {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        if !routes.contains_key(&(address, data)) {
            if routes.len() >= MAX_MSI_ROUTES {
                drop(routes);
                return self.signal_directly(address, data);
            }
            if let Err(e) = self.add_route(&mut routes, address, data) {
                tracing::warn!("no irqfd route for MSI {address:#x}/{data:#x}: {e}");
                drop(routes);
                return self.signal_directly(address, data);
            }
        }
        routes[&(address, data)].event.write(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_routes_match_kvms_defaults() {
        let routes = legacy_routes();
        assert_eq!(routes.len(), 24 + 16);
        let pin = |gsi: u32, chip: u32| {
            routes.iter().find_map(|e| {
                // SAFETY: every entry here is an irqchip route.
                let r = unsafe { e.u.irqchip };
                (e.gsi == gsi && r.irqchip == chip).then_some(r.pin)
            })
        };
        assert_eq!(pin(4, KVM_IRQCHIP_IOAPIC), Some(4));
        assert_eq!(pin(4, KVM_IRQCHIP_PIC_MASTER), Some(4));
        assert_eq!(pin(10, KVM_IRQCHIP_PIC_SLAVE), Some(2));
        assert_eq!(pin(20, KVM_IRQCHIP_IOAPIC), Some(20));
        assert_eq!(pin(20, KVM_IRQCHIP_PIC_SLAVE), None);
    }

    #[test]
    fn msi_route_splits_the_address() {
        let e = msi_route(30, 0x1_fee0_1000, 0x4021);
        assert_eq!((e.gsi, e.type_), (30, KVM_IRQ_ROUTING_MSI));
        // SAFETY: the entry was built as an MSI route.
        let m = unsafe { e.u.msi };
        assert_eq!(
            (m.address_lo, m.address_hi, m.data),
            (0xfee0_1000, 1, 0x4021)
        );
    }

    #[test]
    fn messages_get_routes_on_first_use_when_kvm_is_here() {
        let Ok(kvm) = kvm_ioctls::Kvm::new() else {
            println!("SKIP: /dev/kvm not accessible");
            return;
        };
        let vm = Arc::new(kvm.create_vm().unwrap());
        vm.create_irq_chip().unwrap();
        let router = MsiRouter::new(vm);
        router.signal_msi(0xfee0_0000, 0x21).unwrap();
        router.signal_msi(0xfee0_0000, 0x21).unwrap();
        router.signal_msi(0xfee0_0000, 0x22).unwrap();
        let routes = router.routes.lock().unwrap();
        assert_eq!(routes.len(), 2);
        assert_eq!(routes[&(0xfee0_0000, 0x21)].gsi, FIRST_MSI_GSI);
        assert_eq!(routes[&(0xfee0_0000, 0x22)].gsi, FIRST_MSI_GSI + 1);
    }
}
