//! Fuzzes the API's request path with authentication and authorization in
//! the loop: each input is one HTTP request (method, path, headers, body)
//! from one of six callers, sent through the real router. No 5xx, JSON
//! errors, and no change by a caller the rules refuse. See
//! `kapsel_api::fuzzing` for the input format and every invariant.
#![no_main]

use kapsel_api::fuzzing::Harness;
use libfuzzer_sys::fuzz_target;
use std::cell::RefCell;

thread_local! {
    // One harness for the whole run; its state goes back to the start
    // before each input.
    static HARNESS: RefCell<Harness> = RefCell::new(Harness::new());
}

fuzz_target!(|data: &[u8]| {
    HARNESS.with(|h| h.borrow_mut().run(data));
});
