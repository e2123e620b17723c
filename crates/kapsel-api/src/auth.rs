//! Authentication: passwords (argon2id for realm `kapsel`, PAM for realm
//! `pam`), API tokens, the TOTP second factor and recovery codes, and the
//! login limiter that rate-limits and locks out.
//!
//! The limits follow Proxmox VE (`pveum(1)`, "Limits and Lockout of
//! Two-Factor Authentication"): 8 wrong TOTP codes lock the user's TOTP,
//! 100 wrong recovery codes lock recovery, each for an hour or until an
//! administrator unlocks it. Passwords are limited too: per source address
//! (20 failures in 10 minutes) and per user (5 failures in a row lock the
//! user's password logins for 5 minutes).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::OnceLock;

use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::Argon2;

use crate::store::{ApiToken, TfaState, User};
use crate::totp::Totp;
use crate::util;

/// Wrong TOTP codes in a row before TOTP is locked.
pub const TOTP_FAILURES_LOCK: u32 = 8;
/// Wrong recovery codes in a row before recovery is locked.
pub const RECOVERY_FAILURES_LOCK: u32 = 100;
/// How long a second-factor lock lasts (seconds).
pub const TFA_LOCK_SECS: u64 = 3600;
/// Failed logins from one address in [`ADDRESS_WINDOW_SECS`] before it is refused.
pub const ADDRESS_FAILURES: u32 = 20;
/// The address window (seconds).
pub const ADDRESS_WINDOW_SECS: u64 = 600;
/// Failed password logins in a row before a user is locked.
pub const USER_FAILURES_LOCK: u32 = 5;
/// How long a user lock lasts (seconds).
pub const USER_LOCK_SECS: u64 = 300;
/// Longest password accepted (argon2 and PAM are fed no more).
pub const MAX_PASSWORD: usize = 1024;
/// Shortest password accepted for realm `kapsel`.
pub const MIN_PASSWORD: usize = 8;
/// Bound on the limiter's tables (entries), against memory growth.
const LIMITER_CAP: usize = 16_384;

/// Hash a password with argon2id (the crate's defaults: 19 MiB, 2 passes,
/// OWASP's recommendation) and a random salt.
pub fn hash_password(password: &str) -> Result<String, String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| format!("argon2: {e}"))
}

/// Whether `password` matches the PHC string `hash`.
pub fn verify_password(hash: &str, password: &str) -> bool {
    match argon2::password_hash::phc::PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// A hash to verify against when the user does not exist, so that an
/// unknown user costs as much time as a known one.
pub fn dummy_hash() -> &'static str {
    static H: OnceLock<String> = OnceLock::new();
    H.get_or_init(|| hash_password("kapsel-dummy-password").unwrap_or_default())
}

/// Check a host user's password through PAM service `service` (auth and
/// account management: an expired or locked host account is refused).
/// Blocks (pam_unix delays failures); call it off the async threads.
pub fn pam_authenticate(service: &str, user: &str, password: &str) -> Result<(), String> {
    use pam_client::conv_mock::Conversation;
    use pam_client::{Context, Flag};
    let conv = Conversation::with_credentials(user, password);
    let mut ctx = Context::new(service, Some(user), conv)
        .map_err(|e| format!("PAM service {service}: {e}"))?;
    ctx.authenticate(Flag::DISALLOW_NULL_AUTHTOK)
        .map_err(|e| format!("PAM authentication: {e}"))?;
    ctx.acct_mgmt(Flag::DISALLOW_NULL_AUTHTOK)
        .map_err(|e| format!("PAM account: {e}"))?;
    Ok(())
}

/// Who is calling and how they proved it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The user id (`NAME@REALM`).
    pub userid: String,
    /// The token name, when authenticated by an API token.
    pub token: Option<String>,
    /// Whether the token is privilege-separated.
    pub privsep: bool,
    /// The peer's address.
    pub addr: IpAddr,
    /// Whether the credentials came in a cookie (CSRF applies).
    pub cookie: bool,
}

impl Caller {
    /// The ACL subject: the token id for a token, else the user id.
    pub fn subject(&self) -> String {
        match &self.token {
            Some(t) => format!("{}!{t}", self.userid),
            None => self.userid.clone(),
        }
    }
}

/// Parse a bearer token `USERID!TOKENID=SECRET`.
pub fn parse_token(s: &str) -> Option<(&str, &str, &str)> {
    if s.len() > 512 {
        return None;
    }
    let (id, secret) = s.split_once('=')?;
    let (userid, token) = id.split_once('!')?;
    Some((userid, token, secret))
}

/// Make a token: the secret to show once, and what is stored.
pub fn new_token(
    expire: u64,
    privsep: bool,
    comment: String,
) -> std::io::Result<(String, ApiToken)> {
    let secret = util::hex(&util::random_bytes(32)?);
    let stored = ApiToken {
        secret_sha256: util::sha256_hex(secret.as_bytes()),
        expire,
        privsep,
        comment,
        created: util::now(),
    };
    Ok((secret, stored))
}

/// Whether `secret` is the token's and the token is good at `now`.
pub fn token_valid(t: &ApiToken, secret: &str, now: u64) -> bool {
    let given = util::sha256_hex(secret.as_bytes());
    let ok = util::ct_eq(given.as_bytes(), t.secret_sha256.as_bytes());
    ok && (t.expire == 0 || now < t.expire)
}

/// The outcome of a second-factor check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TfaOutcome {
    /// The code was right.
    Ok,
    /// The code was wrong.
    Wrong,
    /// Second factors are locked until this Unix time.
    Locked(u64),
    /// The TOTP code was right but already used.
    Replayed,
}

/// Check `code` (a TOTP code or a recovery code) against the user's TFA
/// state at `now`, updating counters, the replay guard and used recovery
/// codes in `tfa`.
pub fn check_second_factor(tfa: &mut TfaState, code: &str, now: u64) -> TfaOutcome {
    if tfa.locked_until > now {
        return TfaOutcome::Locked(tfa.locked_until);
    }
    let code = code.trim();
    let is_totp = code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit());
    if is_totp {
        let step = Totp::from_base32(&tfa.totp_secret)
            .ok()
            .and_then(|t| t.check(code, now));
        match step {
            Some(step) if step <= tfa.last_step => TfaOutcome::Replayed,
            Some(step) => {
                tfa.last_step = step;
                tfa.totp_failures = 0;
                TfaOutcome::Ok
            }
            None => {
                tfa.totp_failures = tfa.totp_failures.saturating_add(1);
                if tfa.totp_failures >= TOTP_FAILURES_LOCK {
                    tfa.locked_until = now + TFA_LOCK_SECS;
                    tfa.totp_failures = 0;
                }
                TfaOutcome::Wrong
            }
        }
    } else {
        let h = util::sha256_hex(code.to_ascii_lowercase().as_bytes());
        let slot = tfa.recovery.iter_mut().find(|s| {
            s.as_deref()
                .is_some_and(|s| util::ct_eq(s.as_bytes(), h.as_bytes()))
        });
        match slot {
            Some(slot) => {
                *slot = None;
                tfa.recovery_failures = 0;
                TfaOutcome::Ok
            }
            None => {
                tfa.recovery_failures = tfa.recovery_failures.saturating_add(1);
                if tfa.recovery_failures >= RECOVERY_FAILURES_LOCK {
                    tfa.locked_until = now + TFA_LOCK_SECS;
                    tfa.recovery_failures = 0;
                }
                TfaOutcome::Wrong
            }
        }
    }
}

/// Whether the user's login needs a second factor.
pub fn tfa_required(user: &User, realm_requires: bool) -> bool {
    user.tfa.is_some() || user.require_tfa || realm_requires
}

#[derive(Debug, Clone, Copy)]
struct Window {
    failures: u32,
    since: u64,
}

#[derive(Debug, Clone, Copy)]
struct UserFailures {
    in_a_row: u32,
    locked_until: u64,
}

/// Login rate limiting and lockout, in memory (a restart forgives).
#[derive(Debug, Default)]
pub struct Limiter {
    addresses: HashMap<IpAddr, Window>,
    users: HashMap<String, UserFailures>,
}

/// Why a login is refused before its credentials are looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Too many failures from this address; retry after this many seconds.
    Address(u64),
    /// The user is locked; retry after this many seconds.
    User(u64),
}

impl Limiter {
    /// Whether a login for `userid` from `addr` may be tried at `now`.
    pub fn admit(&mut self, addr: IpAddr, userid: Option<&str>, now: u64) -> Result<(), Refusal> {
        if let Some(w) = self.addresses.get(&addr) {
            if now >= w.since + ADDRESS_WINDOW_SECS {
                self.addresses.remove(&addr);
            } else if w.failures >= ADDRESS_FAILURES {
                return Err(Refusal::Address(w.since + ADDRESS_WINDOW_SECS - now));
            }
        }
        if let Some(u) = userid.and_then(|u| self.users.get(u)) {
            if u.locked_until > now {
                return Err(Refusal::User(u.locked_until - now));
            }
        }
        Ok(())
    }

    /// Count a failure of `userid` (if the user exists) from `addr`.
    pub fn failed(&mut self, addr: IpAddr, userid: Option<&str>, now: u64) {
        if self.addresses.len() >= LIMITER_CAP || self.users.len() >= LIMITER_CAP {
            self.prune(now);
        }
        if self.addresses.len() < LIMITER_CAP {
            let w = self.addresses.entry(addr).or_insert(Window {
                failures: 0,
                since: now,
            });
            if now >= w.since + ADDRESS_WINDOW_SECS {
                *w = Window {
                    failures: 0,
                    since: now,
                };
            }
            w.failures = w.failures.saturating_add(1);
        }
        if let Some(userid) = userid {
            if self.users.len() < LIMITER_CAP || self.users.contains_key(userid) {
                let u = self
                    .users
                    .entry(userid.to_string())
                    .or_insert(UserFailures {
                        in_a_row: 0,
                        locked_until: 0,
                    });
                u.in_a_row = u.in_a_row.saturating_add(1);
                if u.in_a_row >= USER_FAILURES_LOCK {
                    u.locked_until = now + USER_LOCK_SECS;
                    u.in_a_row = 0;
                }
            }
        }
    }

    /// A good login: the user's count starts over.
    pub fn succeeded(&mut self, userid: &str) {
        self.users.remove(userid);
    }

    /// Lift a user's lock (an administrator's unlock).
    pub fn unlock(&mut self, userid: &str) {
        self.users.remove(userid);
    }

    /// Whether the user is locked at `now`, and until when.
    pub fn user_locked(&self, userid: &str, now: u64) -> Option<u64> {
        self.users
            .get(userid)
            .filter(|u| u.locked_until > now)
            .map(|u| u.locked_until)
    }

    fn prune(&mut self, now: u64) {
        self.addresses
            .retain(|_, w| now < w.since + ADDRESS_WINDOW_SECS);
        self.users
            .retain(|_, u| u.locked_until > now || u.in_a_row > 0);
        if self.users.len() >= LIMITER_CAP {
            self.users.retain(|_, u| u.locked_until > now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argon2id_hashes_verify() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify_password(&h, "correct horse"));
        assert!(!verify_password(&h, "wrong horse"));
        assert!(!verify_password("not a hash", "x"));
        assert_ne!(h, hash_password("correct horse").unwrap(), "salted");
    }

    #[test]
    fn tokens() {
        assert_eq!(
            parse_token("a@kapsel!ci=s3cr3t"),
            Some(("a@kapsel", "ci", "s3cr3t"))
        );
        assert_eq!(parse_token("a@kapsel=s"), None);
        assert_eq!(parse_token("a@kapsel!ci"), None);
        let (secret, t) = new_token(100, true, String::new()).unwrap();
        assert_eq!(secret.len(), 64);
        assert!(token_valid(&t, &secret, 99));
        assert!(!token_valid(&t, &secret, 100), "expired");
        assert!(!token_valid(&t, "nope", 99));
        assert!(!t.secret_sha256.contains(&secret));
    }

    fn tfa() -> TfaState {
        let (_, hashes) = crate::totp::new_recovery_codes().unwrap();
        TfaState {
            totp_secret: "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ".into(),
            recovery: hashes.into_iter().map(Some).collect(),
            last_step: 0,
            totp_failures: 0,
            recovery_failures: 0,
            locked_until: 0,
        }
    }

    #[test]
    fn totp_once_per_step_and_lockout() {
        let mut t = tfa();
        let now = 1_234_567_890;
        let code = Totp::from_base32(&t.totp_secret).unwrap().code_at(now);
        assert_eq!(check_second_factor(&mut t, &code, now), TfaOutcome::Ok);
        assert_eq!(
            check_second_factor(&mut t, &code, now),
            TfaOutcome::Replayed
        );
        for i in 1..TOTP_FAILURES_LOCK {
            assert_eq!(
                check_second_factor(&mut t, "000000", now),
                TfaOutcome::Wrong,
                "{i}"
            );
            assert_eq!(t.locked_until, 0);
        }
        assert_eq!(
            check_second_factor(&mut t, "000000", now),
            TfaOutcome::Wrong
        );
        assert_eq!(t.locked_until, now + TFA_LOCK_SECS);
        let later = Totp::from_base32(&t.totp_secret).unwrap().code_at(now + 60);
        assert_eq!(
            check_second_factor(&mut t, &later, now + 60),
            TfaOutcome::Locked(now + TFA_LOCK_SECS)
        );
        let after = now + TFA_LOCK_SECS + 30;
        let code = Totp::from_base32(&t.totp_secret).unwrap().code_at(after);
        assert_eq!(check_second_factor(&mut t, &code, after), TfaOutcome::Ok);
    }

    #[test]
    fn recovery_codes_are_single_use() {
        let (codes, hashes) = crate::totp::new_recovery_codes().unwrap();
        let mut t = tfa();
        t.recovery = hashes.into_iter().map(Some).collect();
        assert_eq!(check_second_factor(&mut t, &codes[3], 1), TfaOutcome::Ok);
        assert_eq!(check_second_factor(&mut t, &codes[3], 1), TfaOutcome::Wrong);
        assert_eq!(t.recovery.iter().filter(|s| s.is_none()).count(), 1);
        assert_eq!(
            check_second_factor(&mut t, &codes[4].to_uppercase(), 1),
            TfaOutcome::Ok
        );
    }

    #[test]
    fn limiter_locks_users_and_addresses() {
        let mut l = Limiter::default();
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        for _ in 0..USER_FAILURES_LOCK {
            assert!(l.admit(a, Some("u@kapsel"), 10).is_ok());
            l.failed(a, Some("u@kapsel"), 10);
        }
        assert_eq!(
            l.admit(b, Some("u@kapsel"), 10),
            Err(Refusal::User(USER_LOCK_SECS))
        );
        assert!(l.admit(b, Some("v@kapsel"), 10).is_ok());
        assert!(l.admit(a, Some("u@kapsel"), 10 + USER_LOCK_SECS).is_ok());
        for _ in USER_FAILURES_LOCK..ADDRESS_FAILURES {
            l.failed(a, None, 11);
        }
        assert_eq!(
            l.admit(a, Some("v@kapsel"), 11),
            Err(Refusal::Address(ADDRESS_WINDOW_SECS - 1))
        );
        assert!(l.admit(b, Some("v@kapsel"), 11).is_ok());
        assert!(l.admit(a, None, 10 + ADDRESS_WINDOW_SECS).is_ok());
        l.unlock("u@kapsel");
        assert_eq!(l.user_locked("u@kapsel", 10), None);
    }

    #[test]
    fn limiter_is_bounded() {
        let mut l = Limiter::default();
        for i in 0..(LIMITER_CAP as u32 + 100) {
            let addr = IpAddr::from(i.to_be_bytes());
            l.failed(addr, Some(&format!("u{i}@kapsel")), 5);
        }
        assert!(l.addresses.len() <= LIMITER_CAP);
        assert!(l.users.len() <= LIMITER_CAP);
    }
}
