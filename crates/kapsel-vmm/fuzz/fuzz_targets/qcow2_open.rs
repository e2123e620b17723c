//! Fuzzes qcow2 header and metadata parsing (imago, as kapsel-image uses
//! it): the input is the image file. Opening must fail cleanly or give an
//! image that can be read, and (opened writable) written and flushed.
//! Backing and external data files are not followed: their names in a
//! hostile header could point at any host file.
#![no_main]

use imago::file::File as ImagoFile;
use imago::qcow2::Qcow2;
use imago::{FormatAccess, StorageOpenOptions};
use libfuzzer_sys::fuzz_target;
use std::os::unix::fs::FileExt;

thread_local! {
    static FILE: std::fs::File = tempfile::tempfile().unwrap();
}

fn open(file: &std::fs::File, writable: bool) -> Option<FormatAccess<ImagoFile>> {
    let storage = ImagoFile::from_open_file(
        file.try_clone().ok()?,
        StorageOpenOptions::new().write(writable),
    )
    .ok()?;
    let mut qcow2 = Qcow2::<ImagoFile>::open_image(storage, writable).ok()?;
    if qcow2.requires_external_data_file() {
        return None;
    }
    qcow2.set_data_file(None);
    qcow2.set_backing(None);
    Some(FormatAccess::new(qcow2))
}

fn exercise(image: &FormatAccess<ImagoFile>, writable: bool) {
    let size = image.size();
    let mut buf = vec![0u8; 4096];
    for offset in [0, size / 2, size.saturating_sub(4096)] {
        let offset = offset & !511;
        let n = (size - offset.min(size)).min(4096) as usize;
        let _ = image.read(&mut buf[..n], offset);
        if writable && n > 0 {
            let _ = image.write(&buf[..n], offset);
        }
    }
    let _ = image.flush();
}

fuzz_target!(|data: &[u8]| {
    // Keep images small: the file is rewritten on every run.
    if data.len() > 1 << 20 {
        return;
    }
    FILE.with(|file| {
        file.set_len(0).unwrap();
        file.write_all_at(data, 0).unwrap();
        if let Some(image) = open(file, false) {
            exercise(&image, false);
        }
        if let Some(image) = open(file, true) {
            exercise(&image, true);
        }
    });
});
