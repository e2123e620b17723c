//! Fuzzes kapseld's control-request handling with its authorization checks
//! in the loop: each input is a few frames, each from one of four peers
//! (root, a guest owner, a member of an owner group, a stranger), fed to
//! one real in-process daemon through the control socket's own request
//! path. No panic; replies bounded and printable; nothing but root
//! changes the configuration or another's guest; refusals where the
//! rules say so. See `kapsel_daemon::fuzzing` for the input format, the
//! configuration and every invariant.
#![no_main]

use kapsel_daemon::fuzzing::Harness;
use libfuzzer_sys::fuzz_target;
use std::cell::RefCell;

thread_local! {
    // One daemon for the whole run; its state goes back to the
    // configuration before each input.
    static HARNESS: RefCell<Harness> = RefCell::new(Harness::new());
}

fuzz_target!(|data: &[u8]| {
    HARNESS.with(|h| h.borrow_mut().run(data));
});
