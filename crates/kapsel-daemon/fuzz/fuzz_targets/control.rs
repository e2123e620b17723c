//! Fuzzes the control protocol with what any local user may send: a frame
//! is read or refused, a request decoded or refused, its bounds checked,
//! and its text made fit for the log, never a panic.
#![no_main]

use kapsel_daemon::proto::{self, Envelope, MAX_MESSAGE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut frame = data;
    if let Ok(body) = proto::read_frame(&mut frame) {
        assert!(body.len() <= MAX_MESSAGE as usize);
        let text = String::from_utf8_lossy(&body);
        let logged = proto::log_safe(&text);
        assert!(!logged.chars().any(char::is_control), "{logged:?}");
    }
    let mut message = data;
    if let Ok(envelope) = proto::read_message::<Envelope>(&mut message) {
        let _ = envelope.request.check();
        let logged = proto::log_safe(&format!("{:?}", envelope.request));
        assert!(!logged.contains('\n'));
    }
});
