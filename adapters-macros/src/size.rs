//! Memory sizes as written in `max_vram = "24 GiB"`.

/// The units a size string may use, with their value in bytes.
const UNITS: &[(&str, u128)] = &[
    ("B", 1),
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
    ("TiB", 1 << 40),
    ("KB", 1_000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
    ("TB", 1_000_000_000_000),
];

/// Parses `"24 GiB"`, `"512MiB"`, `"1.5 GiB"`, `"80 GB"` or `"1024 B"` into bytes (rounded down).
/// The error is the tail of a message about the string.
pub fn parse(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))
        .unwrap_or(s.len());
    let (number, unit) = (&s[..split], s[split..].trim());
    if number.is_empty() {
        return Err("it does not start with a number".into());
    }
    let unit_bytes = match UNITS.iter().find(|(u, _)| *u == unit) {
        Some((_, b)) => *b,
        None if unit.is_empty() => return Err("it has no unit (`B`, `MiB`, `GiB`, ...)".into()),
        None => {
            let hint = UNITS
                .iter()
                .find(|(u, _)| u.eq_ignore_ascii_case(unit))
                .map(|(u, _)| format!("; did you mean `{u}`?"))
                .unwrap_or_else(|| {
                    "; expected `B`, `KiB`, `MiB`, `GiB`, `TiB`, `KB`, `MB`, `GB` or `TB`".into()
                });
            return Err(format!("`{unit}` is not a unit{hint}"));
        }
    };
    let number = number.replace('_', "");
    let (int, frac) = number.split_once('.').unwrap_or((&number, ""));
    if int.is_empty() || frac.contains('.') || frac.len() > 9 {
        return Err(format!("`{number}` is not a number"));
    }
    let int: u128 = int
        .parse()
        .map_err(|_| format!("`{number}` is too large"))?;
    let frac_value: u128 = if frac.is_empty() {
        0
    } else {
        frac.parse()
            .map_err(|_| format!("`{number}` is not a number"))?
    };
    let scale = 10u128.pow(frac.len() as u32);
    let bytes = int
        .checked_mul(unit_bytes)
        .and_then(|b| b.checked_add(frac_value * unit_bytes / scale))
        .and_then(|b| u64::try_from(b).ok())
        .ok_or_else(|| format!("`{s}` is too large"))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn sizes() {
        assert_eq!(parse("24 GiB"), Ok(24 << 30));
        assert_eq!(parse("512MiB"), Ok(512 << 20));
        assert_eq!(parse("1.5 GiB"), Ok(3 << 29));
        assert_eq!(parse("80 GB"), Ok(80_000_000_000));
        assert_eq!(parse("1_024 B"), Ok(1024));
        assert!(parse("24").is_err());
        assert!(parse("GiB").is_err());
        assert!(parse("24 gigs").is_err());
        assert!(parse("1.2.3 GiB").is_err());
        assert!(parse("99999999999999999999999999 TiB").is_err());
        assert_eq!(
            parse("24 gib"),
            Err("`gib` is not a unit; did you mean `GiB`?".into())
        );
    }
}
