//! TOTP (RFC 6238) through the `totp-rs` crate, and recovery codes.
//!
//! Codes are 6 digits, 30 s steps, HMAC-SHA-1 (what every authenticator
//! app does), one step of skew either way; a step is accepted only once.

use totp_rs::{Algorithm, Builder, Secret};

/// The number of recovery codes made at a time.
pub const RECOVERY_CODES: usize = 10;

/// A TOTP generator/checker for a base32 secret.
pub struct Totp(totp_rs::Totp);

impl Totp {
    /// From a base32 secret (RFC 4648, as authenticator apps show it).
    /// The secret must be at least 128 bits.
    pub fn from_base32(secret: &str) -> Result<Totp, String> {
        let clean: String = secret
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '=')
            .map(|c| c.to_ascii_uppercase())
            .collect();
        let bytes = Secret::try_from_base32(&clean)
            .map_err(|_| "the TOTP secret is not base32 (A-Z, 2-7)".to_string())?;
        Totp::from_bytes(bytes.as_bytes().to_vec(), 6, Algorithm::SHA1)
    }

    fn from_bytes(bytes: Vec<u8>, digits: u8, algorithm: Algorithm) -> Result<Totp, String> {
        Builder::new()
            .with_algorithm(algorithm)
            .with_digits(digits)
            .with_skew(1)
            .with_step_duration(30)
            .with_secret(bytes)
            .build()
            .map(Totp)
            .map_err(|e| {
                format!("the TOTP secret is not usable: {e}; use at least 16 random bytes")
            })
    }

    /// The code for Unix time `t`.
    pub fn code_at(&self, t: u64) -> String {
        self.0.generate(t).to_string()
    }

    /// The step `code` matches at Unix time `t`, within one step of skew.
    pub fn check(&self, code: &str, t: u64) -> Option<u64> {
        if code.len() != usize::from(self.0.digits()) || !code.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        self.0.check(code, t)
    }
}

/// A new random TOTP secret (160 bits), base32.
pub fn new_secret() -> std::io::Result<String> {
    let bytes = crate::util::random_bytes(20)?;
    Ok(Secret::new(bytes.into_boxed_slice()).to_base32())
}

/// The `otpauth://` URI authenticator apps import (as a QR code).
pub fn otpauth_uri(account: &str, secret: &str) -> String {
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    };
    format!(
        "otpauth://totp/Kapsel:{}?secret={secret}&issuer=Kapsel&algorithm=SHA1&digits=6&period=30",
        enc(account)
    )
}

/// New recovery codes: the codes (shown once) and their SHA-256 hashes.
pub fn new_recovery_codes() -> std::io::Result<(Vec<String>, Vec<String>)> {
    let mut codes = Vec::new();
    let mut hashes = Vec::new();
    for _ in 0..RECOVERY_CODES {
        let bytes = crate::util::random_bytes(10)?;
        let h = crate::util::hex(&bytes);
        let code = format!("{}-{}-{}-{}", &h[0..5], &h[5..10], &h[10..15], &h[15..20]);
        hashes.push(crate::util::sha256_hex(code.as_bytes()));
        codes.push(code);
    }
    Ok((codes, hashes))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 Appendix B: the test vectors, 8 digits, the three hashes
    /// with their seeds.
    #[test]
    fn rfc6238_test_vectors() {
        let sha1 = b"12345678901234567890".to_vec();
        let sha256 = b"12345678901234567890123456789012".to_vec();
        let sha512 = b"1234567890123456789012345678901234567890123456789012345678901234".to_vec();
        let vectors: [(u64, &str, &str, &str); 6] = [
            (59, "94287082", "46119246", "90693936"),
            (1_111_111_109, "07081804", "68084774", "25091201"),
            (1_111_111_111, "14050471", "67062674", "99943326"),
            (1_234_567_890, "89005924", "91819424", "93441116"),
            (2_000_000_000, "69279037", "90698825", "38618901"),
            (20_000_000_000, "65353130", "77737706", "47863826"),
        ];
        let t1 = Totp::from_bytes(sha1, 8, Algorithm::SHA1).unwrap();
        let t256 = Totp::from_bytes(sha256, 8, Algorithm::SHA256).unwrap();
        let t512 = Totp::from_bytes(sha512, 8, Algorithm::SHA512).unwrap();
        for (t, c1, c256, c512) in vectors {
            assert_eq!(t1.code_at(t), c1, "SHA1 at {t}");
            assert_eq!(t256.code_at(t), c256, "SHA256 at {t}");
            assert_eq!(t512.code_at(t), c512, "SHA512 at {t}");
            assert_eq!(t1.check(c1, t), Some(t / 30));
        }
    }

    #[test]
    fn six_digit_codes_skew_and_junk() {
        // base32 of "12345678901234567890".
        let t = Totp::from_base32("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ").unwrap();
        assert_eq!(t.code_at(59), "287082");
        assert_eq!(t.check("287082", 59 + 30), Some(1));
        assert_eq!(t.check("287082", 59 + 60), None);
        assert_eq!(t.check("28708", 59), None);
        assert_eq!(t.check("2870820", 59), None);
        assert_eq!(t.check("28708a", 59), None);
        assert_eq!(t.check("", 59), None);
        assert!(Totp::from_base32("not base32!").is_err());
        assert!(
            Totp::from_base32("GEZDGNBV").is_err(),
            "40 bits is too short"
        );
        let s = new_secret().unwrap();
        assert_eq!(s.len(), 32);
        assert!(Totp::from_base32(&s).is_ok());
    }

    #[test]
    fn recovery_codes_are_distinct_and_hashed() {
        let (codes, hashes) = new_recovery_codes().unwrap();
        assert_eq!(codes.len(), RECOVERY_CODES);
        for (c, h) in codes.iter().zip(&hashes) {
            assert_eq!(c.len(), 23);
            assert_eq!(&crate::util::sha256_hex(c.as_bytes()), h);
        }
        let mut sorted = codes.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), codes.len());
        assert!(otpauth_uri("a@kapsel", "ABC").contains("Kapsel:a%40kapsel?secret=ABC"));
    }
}
