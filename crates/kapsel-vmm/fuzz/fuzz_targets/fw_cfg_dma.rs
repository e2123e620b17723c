//! Fuzzes the fw_cfg device as a guest drives it: the input is a sequence
//! of port accesses (selector writes, data reads, DMA address writes) and
//! the guest memory the DMA descriptors and buffers live in. Nothing the
//! guest does may panic, and no DMA may write outside the guest's RAM.
#![no_main]

use kapsel_vmm::bus::BusDevice;
use kapsel_vmm::devices::legacy::fw_cfg::FwCfg;
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const RAM: usize = 64 << 10;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let split = (usize::from(data[0]) * 64).min(data.len() - 1);
    let (ram_seed, ops) = data[1..].split_at(split.min(data.len() - 1));
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), RAM)]).unwrap();
    mem.write_slice(&ram_seed[..ram_seed.len().min(RAM)], GuestAddress(0))
        .unwrap();
    let mut cfg = FwCfg::new(mem.clone());
    cfg.add_file("etc/a", (0..200u8).collect()).unwrap();
    cfg.add_file("etc/empty", Vec::new()).unwrap();
    for op in ops.chunks(5) {
        let arg = |i: usize| op.get(i).copied().unwrap_or(0);
        let value = [arg(1), arg(2), arg(3), arg(4)];
        match arg(0) % 6 {
            0 => cfg.write(0, &value[..2]),
            1 => {
                let mut b = [0u8; 4];
                let n = 1 + usize::from(arg(1) % 4);
                cfg.read(u64::from(arg(2) % 12), &mut b[..n]);
            }
            2 => cfg.write(4, &value),
            // A descriptor address inside RAM most of the time.
            3 => cfg.write(8, &(u32::from_be_bytes(value) % (RAM as u32 + 64)).to_be_bytes()),
            4 => cfg.write(8, &value),
            _ => cfg.write(u64::from(arg(1) % 16), &value[..usize::from(arg(2) % 5)]),
        }
    }
});
