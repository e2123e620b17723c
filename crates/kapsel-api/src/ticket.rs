//! Session tickets and CSRF tokens, signed with HMAC-SHA-256 under the key
//! in the state directory (Proxmox's `PVEAuthCookie` + `CSRFPreventionToken`
//! scheme, with a symmetric key since the same process issues and checks).
//!
//! Ticket: `KAPSEL1:USERID:ISSUED_MS_HEX::SIGNATURE_HEX`.
//! CSRF token: `ISSUED_MS_HEX:SIGNATURE_HEX`, bound to the user id.

use hmac::{KeyInit, Mac};

/// How long a ticket is good for.
pub const TICKET_LIFETIME_MS: u64 = 2 * 3600 * 1000;
/// How far in the future an issue time may lie (clock steps).
const FUTURE_SKEW_MS: u64 = 5 * 60 * 1000;
/// The cookie browsers carry the ticket in.
pub const COOKIE: &str = "KapselAuth";
/// The header that carries the CSRF token.
pub const CSRF_HEADER: &str = "CSRFPreventionToken";
/// Largest ticket accepted (user ids are short).
const MAX_TICKET: usize = 512;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

fn sign(key: &[u8], data: &str) -> String {
    // HMAC accepts keys of any length: this cannot fail.
    let mut mac = match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(data.as_bytes());
    crate::util::hex(&mac.finalize().into_bytes())
}

fn verify(key: &[u8], data: &str, sig_hex: &str) -> bool {
    let expect = sign(key, data);
    !expect.is_empty() && crate::util::ct_eq(expect.as_bytes(), sig_hex.as_bytes())
}

/// A new ticket for `userid`, issued at `now_ms`.
pub fn issue(key: &[u8], userid: &str, now_ms: u64) -> String {
    let data = format!("KAPSEL1:{userid}:{now_ms:X}");
    let sig = sign(key, &data);
    format!("{data}::{sig}")
}

/// The user id and issue time of a good, unexpired ticket.
pub fn check(key: &[u8], ticket: &str, now_ms: u64) -> Option<(String, u64)> {
    if ticket.len() > MAX_TICKET {
        return None;
    }
    let (data, sig) = ticket.split_once("::")?;
    if !verify(key, data, sig) {
        return None;
    }
    let rest = data.strip_prefix("KAPSEL1:")?;
    let (userid, issued) = rest.rsplit_once(':')?;
    let issued = u64::from_str_radix(issued, 16).ok()?;
    if issued > now_ms.saturating_add(FUTURE_SKEW_MS)
        || now_ms.saturating_sub(issued) > TICKET_LIFETIME_MS
    {
        return None;
    }
    Some((userid.to_string(), issued))
}

/// The CSRF token for `userid` at `now_ms`.
pub fn csrf_token(key: &[u8], userid: &str, now_ms: u64) -> String {
    let sig = sign(key, &format!("CSRF:{userid}:{now_ms:X}"));
    format!("{now_ms:X}:{sig}")
}

/// Whether `token` is a good, unexpired CSRF token for `userid`.
pub fn check_csrf(key: &[u8], userid: &str, token: &str, now_ms: u64) -> bool {
    if token.len() > MAX_TICKET {
        return false;
    }
    let Some((ts, sig)) = token.split_once(':') else {
        return false;
    };
    let Ok(issued) = u64::from_str_radix(ts, 16) else {
        return false;
    };
    if issued > now_ms.saturating_add(FUTURE_SKEW_MS)
        || now_ms.saturating_sub(issued) > TICKET_LIFETIME_MS
    {
        return false;
    }
    verify(key, &format!("CSRF:{userid}:{issued:X}"), sig)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn tickets_verify_expire_and_resist_tampering() {
        let t = issue(KEY, "alice@kapsel", 1_000_000);
        assert_eq!(
            check(KEY, &t, 1_000_000),
            Some(("alice@kapsel".into(), 1_000_000))
        );
        assert_eq!(
            check(KEY, &t, 1_000_000 + TICKET_LIFETIME_MS).map(|x| x.1),
            Some(1_000_000)
        );
        assert_eq!(check(KEY, &t, 1_000_001 + TICKET_LIFETIME_MS), None);
        assert_eq!(check(b"another key", &t, 1_000_000), None);
        let forged = t.replace("alice", "admin");
        assert_eq!(check(KEY, &forged, 1_000_000), None);
        assert_eq!(check(KEY, "KAPSEL1:x", 0), None);
        assert_eq!(check(KEY, "", 0), None);
        assert_eq!(check(KEY, &"A".repeat(100_000), 0), None);
        // Issued far in the future: refused.
        let future = issue(KEY, "alice@kapsel", 1_000_000 + 2 * FUTURE_SKEW_MS);
        assert_eq!(check(KEY, &future, 1_000_000), None);
    }

    #[test]
    fn csrf_tokens_bind_the_user() {
        let c = csrf_token(KEY, "alice@kapsel", 5000);
        assert!(check_csrf(KEY, "alice@kapsel", &c, 6000));
        assert!(!check_csrf(KEY, "bob@kapsel", &c, 6000));
        assert!(!check_csrf(
            KEY,
            "alice@kapsel",
            &c,
            5001 + TICKET_LIFETIME_MS
        ));
        assert!(!check_csrf(KEY, "alice@kapsel", "zz:00", 6000));
        assert!(!check_csrf(KEY, "alice@kapsel", "", 6000));
    }
}
