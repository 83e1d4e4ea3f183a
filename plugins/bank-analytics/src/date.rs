//! Calendar dates without a date library (keeps the component small).

/// A UTC date `YYYY-MM-DD`, written on the stack for years up to 9999, so a
/// deposit can look its day up without allocating or formatting.
pub enum UtcDate {
    /// Years 0 to 9999: the ten ASCII bytes.
    Short([u8; 10]),
    /// Later years, with all their digits.
    Long(String),
}

impl UtcDate {
    /// The date as text.
    pub fn as_str(&self) -> &str {
        match self {
            UtcDate::Short(bytes) => {
                foldhost_guest::text::from_utf8(bytes).expect("digits and dashes")
            }
            UtcDate::Long(text) => text,
        }
    }
}

/// The UTC date of a Unix timestamp in milliseconds.
pub fn utc_date(unix_ms: u64) -> UtcDate {
    // Howard Hinnant's civil_from_days, for days since 1970-01-01.
    let days = (unix_ms / 86_400_000) as i64;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    if year > 9999 {
        return UtcDate::Long(format!("{year:04}-{month:02}-{day:02}"));
    }
    let mut text = *b"0000-00-00";
    for (at, value, digits) in [(0, year, 4), (5, month, 2), (8, day, 2)] {
        let mut value = value;
        for slot in text[at..at + digits].iter_mut().rev() {
            *slot = b'0' + (value % 10) as u8;
            value /= 10;
        }
    }
    UtcDate::Short(text)
}

#[cfg(test)]
mod tests {
    use super::utc_date;

    #[test]
    fn known_dates() {
        for (unix_ms, date) in [
            (0, "1970-01-01"),
            (86_399_999, "1970-01-01"),
            (86_400_000, "1970-01-02"),
            (951_782_400_000, "2000-02-29"),
            (1_709_164_800_000, "2024-02-29"),
            (1_735_689_599_999, "2024-12-31"),
            (4_102_444_800_000, "2100-01-01"),
            (253_402_300_799_999, "9999-12-31"),
            (253_402_300_800_000, "10000-01-01"),
        ] {
            assert_eq!(utc_date(unix_ms).as_str(), date, "{unix_ms}");
        }
    }
}
