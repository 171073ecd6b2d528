//! Dates for the `strftime_now(format)` global: the local time and Python's `strftime`.

use std::fmt::Write;

/// A civil date and time of day, as `strftime_now` formats it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DateTime {
    /// The year (`2024`).
    pub year: i32,
    /// The month, 1–12.
    pub month: u8,
    /// The day of the month, 1–31.
    pub day: u8,
    /// The hour, 0–23.
    pub hour: u8,
    /// The minute, 0–59.
    pub minute: u8,
    /// The second, 0–59 (60 on a leap second).
    pub second: u8,
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// Day names, Monday first.
const WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

impl DateTime {
    /// A date and time; `None` when a field is out of range (month 13, February 30, hour 24, …).
    pub fn new(year: i32, month: u8, day: u8, hour: u8, minute: u8, second: u8) -> Option<Self> {
        let ok = (1..=12).contains(&month)
            && day >= 1
            && day <= days_in_month(year, month)
            && hour < 24
            && minute < 60
            && second <= 60;
        ok.then_some(Self {
            year,
            month,
            day,
            hour,
            minute,
            second,
        })
    }

    /// The UTC date and time `secs` seconds after the Unix epoch.
    pub fn from_unix_utc(secs: i64) -> Self {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        Self {
            year,
            month,
            day,
            hour: (rem / 3600) as u8,
            minute: (rem / 60 % 60) as u8,
            second: (rem % 60) as u8,
        }
    }

    /// The current UTC date and time.
    pub fn now_utc() -> Self {
        let secs = match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
        };
        Self::from_unix_utc(secs)
    }

    /// The current local date and time (what Python's `datetime.now()` gives): the C library's
    /// `localtime_r` on Unix, the UTC time elsewhere or when it fails.
    pub fn now_local() -> Self {
        local_now().unwrap_or_else(Self::now_utc)
    }

    /// The day of the week, 0 = Monday … 6 = Sunday.
    pub fn weekday(&self) -> u8 {
        // 1970-01-01 was a Thursday (3).
        (days_from_civil(self.year, self.month, self.day) + 3).rem_euclid(7) as u8
    }

    /// The day of the year, 1–366.
    pub fn day_of_year(&self) -> u16 {
        (days_from_civil(self.year, self.month, self.day) - days_from_civil(self.year, 1, 1) + 1)
            as u16
    }

    /// Formats like Python's `strftime` under glibc: `%d %m %Y %y %B %b %h %A %a %H %I %M %S %p
    /// %j %e %u %w %C %D %F %T %R %%`, and the glibc flag `-` (`%-d`: no padding). Other
    /// directives are written as they are.
    pub fn strftime(&self, format: &str) -> String {
        let mut out = String::with_capacity(format.len() + 16);
        let mut chars = format.chars().peekable();
        while let Some(c) = chars.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            let no_pad = chars.peek() == Some(&'-');
            if no_pad {
                chars.next();
            }
            let Some(d) = chars.next() else {
                out.push('%');
                if no_pad {
                    out.push('-');
                }
                break;
            };
            let num = |out: &mut String, v: i64, width: usize, pad: char| {
                if no_pad {
                    let _ = write!(out, "{v}");
                } else if pad == ' ' {
                    let _ = write!(out, "{v:>width$}");
                } else {
                    let _ = write!(out, "{v:0width$}");
                }
            };
            let hour12 = match self.hour % 12 {
                0 => 12,
                h => h,
            };
            match d {
                'd' => num(&mut out, self.day.into(), 2, '0'),
                'e' => num(&mut out, self.day.into(), 2, ' '),
                'm' => num(&mut out, self.month.into(), 2, '0'),
                'Y' => {
                    let _ = write!(out, "{}", self.year);
                }
                'y' => num(&mut out, i64::from(self.year).rem_euclid(100), 2, '0'),
                'C' => num(&mut out, i64::from(self.year).div_euclid(100), 2, '0'),
                'B' => out.push_str(MONTHS[usize::from(self.month - 1)]),
                'b' | 'h' => out.push_str(&MONTHS[usize::from(self.month - 1)][..3]),
                'A' => out.push_str(WEEKDAYS[usize::from(self.weekday())]),
                'a' => out.push_str(&WEEKDAYS[usize::from(self.weekday())][..3]),
                'u' => num(&mut out, i64::from(self.weekday()) + 1, 1, '0'),
                'w' => num(&mut out, (i64::from(self.weekday()) + 1) % 7, 1, '0'),
                'H' => num(&mut out, self.hour.into(), 2, '0'),
                'I' => num(&mut out, hour12.into(), 2, '0'),
                'M' => num(&mut out, self.minute.into(), 2, '0'),
                'S' => num(&mut out, self.second.into(), 2, '0'),
                'p' => out.push_str(if self.hour < 12 { "AM" } else { "PM" }),
                'j' => num(&mut out, self.day_of_year().into(), 3, '0'),
                'D' => out.push_str(&self.strftime("%m/%d/%y")),
                'F' => out.push_str(&self.strftime("%Y-%m-%d")),
                'T' => out.push_str(&self.strftime("%H:%M:%S")),
                'R' => out.push_str(&self.strftime("%H:%M")),
                '%' => out.push('%'),
                other => {
                    out.push('%');
                    if no_pad {
                        out.push('-');
                    }
                    out.push(other);
                }
            }
        }
        out
    }
}

fn is_leap(year: i32) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i32, month: u8) -> u8 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i32, month: u8, day: u8) -> i64 {
    let y = i64::from(year) - i64::from(month <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date `days` days after 1970-01-01 (inverse of [`days_from_civil`]).
fn civil_from_days(days: i64) -> (i32, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year as i32, month, day)
}

#[cfg(unix)]
fn local_now() -> Option<DateTime> {
    let secs = libc::time_t::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_secs(),
    )
    .ok()?;
    // SAFETY: `localtime_r` reads `secs` and writes only the `tm` it is given (no shared static
    // buffer, unlike `localtime`); an all-zero `tm` is a valid value of that plain C struct.
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&secs, &mut tm).is_null() {
            return None;
        }
        tm
    };
    DateTime::new(
        tm.tm_year.checked_add(1900)?,
        u8::try_from(tm.tm_mon + 1).ok()?,
        u8::try_from(tm.tm_mday).ok()?,
        u8::try_from(tm.tm_hour).ok()?,
        u8::try_from(tm.tm_min).ok()?,
        u8::try_from(tm.tm_sec).ok()?,
    )
}

#[cfg(not(unix))]
fn local_now() -> Option<DateTime> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_python_directives() {
        let t = DateTime::new(2024, 7, 26, 9, 5, 3).unwrap();
        assert_eq!(t.strftime("%d %b %Y"), "26 Jul 2024");
        assert_eq!(t.strftime("%A, %B %d, %Y"), "Friday, July 26, 2024");
        assert_eq!(t.strftime("%a %y-%m-%d %H:%M:%S"), "Fri 24-07-26 09:05:03");
        assert_eq!(
            t.strftime("%j|%I%p|%e|%-d|%-m|%%|%u%w"),
            "208|09AM|26|26|7|%|55"
        );
        assert_eq!(t.strftime("%F %T %D"), "2024-07-26 09:05:03 07/26/24");
        assert_eq!(t.strftime("100%Q and %"), "100%Q and %");
        let t = DateTime::new(2000, 1, 2, 0, 0, 0).unwrap();
        assert_eq!(t.strftime("%a %e %j %I %p %y"), "Sun  2 002 12 AM 00");
        let t = DateTime::new(2024, 12, 31, 23, 59, 59).unwrap();
        assert_eq!(t.strftime("%j %A %I%p"), "366 Tuesday 11PM");
    }

    #[test]
    fn civil_dates_round_trip() {
        assert_eq!(
            DateTime::from_unix_utc(0),
            DateTime::new(1970, 1, 1, 0, 0, 0).unwrap()
        );
        assert_eq!(
            DateTime::from_unix_utc(1_721_984_703),
            DateTime::new(2024, 7, 26, 9, 5, 3).unwrap()
        );
        assert_eq!(
            DateTime::from_unix_utc(-1),
            DateTime::new(1969, 12, 31, 23, 59, 59).unwrap()
        );
        for days in (-800_000..800_000).step_by(997) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(DateTime::new(2023, 2, 29, 0, 0, 0), None);
        assert!(DateTime::new(2024, 2, 29, 0, 0, 0).is_some());
        assert_eq!(DateTime::new(2024, 1, 1, 24, 0, 0), None);
    }

    #[test]
    fn now_is_plausible() {
        let now = DateTime::now_local();
        assert!(now.year >= 2024, "{now:?}");
        let utc = DateTime::now_utc();
        assert!((now.year - utc.year).abs() <= 1);
    }
}
