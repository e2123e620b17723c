//! Byte sizes with K/M/G/T suffixes, as vm.conf and the command line write them.

use std::fmt;
use std::str::FromStr;

/// One kibibyte; vm.conf sizes are binary (`1K` is 1024 bytes), like vmd's.
pub const KIB: u64 = 1 << 10;
/// One mebibyte.
pub const MIB: u64 = 1 << 20;
/// One gibibyte.
pub const GIB: u64 = 1 << 30;
/// One tebibyte.
pub const TIB: u64 = 1 << 40;

/// A size in bytes, written `512M`, `2G`, `1.5G` or a plain number of bytes.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// The size in bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }

    /// Rounds up to a whole number of mebibytes (vmd rounds memory sizes so).
    pub fn round_up_to_mib(self) -> ByteSize {
        let rest = self.0 % MIB;
        if rest == 0 {
            self
        } else {
            ByteSize(self.0.saturating_add(MIB - rest) / MIB * MIB)
        }
    }
}

/// Why a size did not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SizeError {
    /// The text is empty.
    Empty,
    /// The text is not a number with an optional K, M, G or T suffix.
    Invalid(String),
    /// The size does not fit in 64 bits.
    TooLarge(String),
}

impl fmt::Display for SizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SizeError::Empty => write!(f, "empty size"),
            SizeError::Invalid(s) => write!(
                f,
                "invalid size \"{s}\": expected a number with an optional K, M, G or T suffix, e.g. 512M"
            ),
            SizeError::TooLarge(s) => write!(f, "size \"{s}\" is too large"),
        }
    }
}

impl std::error::Error for SizeError {}

/// Parses a size: decimal digits, an optional fraction (`1.5G`), and an
/// optional suffix `K`, `M`, `G` or `T` (either case, optionally followed by
/// `B`). A number without suffix is in bytes.
///
/// ```
/// use kapsel_config::{parse_size, ByteSize};
/// assert_eq!(parse_size("512M"), Ok(ByteSize(512 << 20)));
/// assert_eq!(parse_size("1.5k"), Ok(ByteSize(1536)));
/// assert!(parse_size("12X").is_err());
/// ```
pub fn parse_size(text: &str) -> Result<ByteSize, SizeError> {
    let s = text.trim();
    if s.is_empty() {
        return Err(SizeError::Empty);
    }
    let invalid = || SizeError::Invalid(text.to_string());
    let digits_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(digits_end);
    let unit: u64 = match suffix.to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" => KIB,
        "M" | "MB" => MIB,
        "G" | "GB" => GIB,
        "T" | "TB" => TIB,
        _ => return Err(invalid()),
    };
    let (int_part, frac_part) = match number.split_once('.') {
        Some((i, f)) => (i, f),
        None => (number, ""),
    };
    if int_part.is_empty()
        || frac_part.contains('.')
        || (number.contains('.') && frac_part.is_empty())
    {
        return Err(invalid());
    }
    let too_large = || SizeError::TooLarge(text.to_string());
    let int: u128 = int_part.parse().map_err(|_| too_large())?;
    let mut total = int.checked_mul(u128::from(unit)).ok_or_else(too_large)?;
    if !frac_part.is_empty() {
        // At most 12 fractional digits matter for a 2^40 unit; more would only overflow.
        let frac_digits = &frac_part[..frac_part.len().min(12)];
        let frac: u128 = frac_digits.parse().map_err(|_| invalid())?;
        let scale = 10u128.pow(frac_digits.len() as u32);
        total += frac * u128::from(unit) / scale;
    }
    u64::try_from(total).map(ByteSize).map_err(|_| too_large())
}

impl FromStr for ByteSize {
    type Err = SizeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_size(s)
    }
}

impl fmt::Display for ByteSize {
    /// The largest unit that divides the size exactly: `512M`, `2G`, `1536K`, `100`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (unit, suffix) in [(TIB, "T"), (GIB, "G"), (MIB, "M"), (KIB, "K")] {
            if n != 0 && n.checked_rem(unit) == Some(0) {
                return write!(f, "{}{}", n / unit, suffix);
            }
        }
        write!(f, "{n}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_suffixes() {
        assert_eq!(parse_size("0"), Ok(ByteSize(0)));
        assert_eq!(parse_size("1024"), Ok(ByteSize(1024)));
        assert_eq!(parse_size("4K"), Ok(ByteSize(4096)));
        assert_eq!(parse_size("512m"), Ok(ByteSize(512 * MIB)));
        assert_eq!(parse_size("2G"), Ok(ByteSize(2 * GIB)));
        assert_eq!(parse_size("2GB"), Ok(ByteSize(2 * GIB)));
        assert_eq!(parse_size("1T"), Ok(ByteSize(TIB)));
        assert_eq!(parse_size("1.5G"), Ok(ByteSize(GIB + GIB / 2)));
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "", "G", "1.", ".5G", "1..2", "1X", "-1", "1 G G", "1.2.3M", "M1",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} parsed");
        }
        assert!(matches!(
            parse_size("99999999999999999999999T"),
            Err(SizeError::TooLarge(_))
        ));
        assert!(matches!(
            parse_size("20000000T"),
            Err(SizeError::TooLarge(_))
        ));
    }

    #[test]
    fn displays_largest_exact_unit() {
        assert_eq!(ByteSize(512 * MIB).to_string(), "512M");
        assert_eq!(ByteSize(2 * GIB).to_string(), "2G");
        assert_eq!(ByteSize(1536 * KIB).to_string(), "1536K");
        assert_eq!(ByteSize(100).to_string(), "100");
        assert_eq!(ByteSize(0).to_string(), "0");
        for n in [0, 1, 1023, 4096, 3 * GIB, u64::MAX] {
            assert_eq!(parse_size(&ByteSize(n).to_string()), Ok(ByteSize(n)));
        }
    }

    #[test]
    fn rounds_to_mib() {
        assert_eq!(ByteSize(1).round_up_to_mib(), ByteSize(MIB));
        assert_eq!(ByteSize(MIB).round_up_to_mib(), ByteSize(MIB));
        assert_eq!(ByteSize(u64::MAX).round_up_to_mib().0 % MIB, 0);
    }
}
