//! Network interface names: the one rule every part of Kapsel checks a
//! name against before it reaches the kernel, `nft` rules or a log line.

/// The longest Linux interface name (`IFNAMSIZ` less its NUL).
pub const IFNAMSIZ: usize = 15;

/// A name refused by [`validate_ifname`], with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("\"{name}\" is not a valid interface name: {reason}")]
pub struct InvalidIfname {
    /// The name.
    pub name: String,
    /// Why it is refused.
    pub reason: &'static str,
}

/// Checks that `name` is a name the kernel accepts for an interface
/// (`dev_valid_name`: 1 to 15 bytes, not `.` or `..`, no `/`, `:` or white
/// space), less quotes and backslashes: legal for the kernel, but they
/// would need escaping in `nft` rules and no sane setup uses them.
pub fn validate_ifname(name: &str) -> Result<(), InvalidIfname> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > IFNAMSIZ {
        Some("it is longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("it is a path component")
    } else if name
        .bytes()
        .any(|b| b"/:\"\\\0".contains(&b) || b.is_ascii_whitespace())
    {
        Some("it contains '/', ':', a quote, a backslash, a NUL or white space")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(InvalidIfname {
            name: name.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_are_checked_like_the_kernel_does() {
        for ok in ["eth0", "kbr-uplink", "a", "123456789012345", "br.lan"] {
            assert!(validate_ifname(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "1234567890123456",
            "a/b",
            "a:b",
            "a b",
            "a\tb",
            ".",
            "..",
            "a\"b",
            "a\\b",
            "a\0b",
        ] {
            assert!(validate_ifname(bad).is_err(), "{bad:?}");
        }
        let e = validate_ifname("a/b").unwrap_err();
        assert_eq!(
            e.to_string(),
            "\"a/b\" is not a valid interface name: it contains '/', ':', a quote, a \
             backslash, a NUL or white space"
        );
    }
}
