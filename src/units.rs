//! Parsers for command-line quantities: sizes with units (`256MiB`, `1G`), durations
//! (`90s`, `5m`) and points in time (RFC 3339, or seconds since the epoch).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `4096`, `64KiB`, `256MiB`, `1GiB`, `1G` (= GiB: capture tools count in powers of two),
/// `10MB` (decimal). Case-insensitive units.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size: expected a number and a unit, e.g. 256MiB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        u => {
            return Err(format!(
                "`{s}`: unknown size unit `{u}` (use KiB, MiB, GiB, TiB, KB, MB, GB)"
            ))
        }
    };
    Ok((n * mult as f64) as u64)
}

/// A value parser for a size flag that takes only `min..=max` (both inclusive): clap prints
/// `invalid value '0' for '--frame-size <SIZE>': must be between 4KiB and 256MiB`.
pub fn size_in(min: u64, max: u64) -> impl Fn(&str) -> Result<u64, String> + Clone {
    move |s| {
        let n = parse_size(s)?;
        if n < min || n > max {
            return Err(format!(
                "must be between {} and {}",
                size_text(min),
                size_text(max)
            ));
        }
        Ok(n)
    }
}

/// A size as the flags take it: the largest binary unit that divides it exactly (`4KiB`,
/// `1TiB`, `1536`), so a printed range can be typed back.
pub fn size_text(n: u64) -> String {
    for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if n != 0 && n % (1u64 << shift) == 0 {
            return format!("{}{unit}", n >> shift);
        }
    }
    n.to_string()
}

/// A value parser for a duration flag that takes only `min..=max` (both inclusive).
pub fn duration_in(
    min: Duration,
    max: Duration,
) -> impl Fn(&str) -> Result<Duration, String> + Clone {
    move |s| {
        let d = parse_duration(s)?;
        if d < min || d > max {
            return Err(format!(
                "must be between {} and {}",
                duration_text(min),
                duration_text(max)
            ));
        }
        Ok(d)
    }
}

/// A duration as the flags take it: the largest of d, h, m, s, ms that divides it exactly.
pub fn duration_text(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit_ms, unit) in [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1_000, "s"),
    ] {
        if ms != 0 && ms % unit_ms == 0 {
            return format!("{}{unit}", ms / unit_ms);
        }
    }
    format!("{ms}ms")
}

/// `--speed X`: a finite number above 0, at most `max` (1 = real time).
pub fn speed_up_to(max: f64) -> impl Fn(&str) -> Result<f64, String> + Clone {
    move |s| match s.trim().parse::<f64>() {
        Ok(x) if x > 0.0 && x <= max => Ok(x),
        _ => Err(format!(
            "must be a number above 0 and at most {max} (1 = real time, 2 = twice as fast)"
        )),
    }
}

/// `90s`, `5m`, `1h 30m`, `250ms` (humantime), or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if let Ok(secs) = s.trim().parse::<f64>() {
        if secs >= 0.0 {
            return Ok(Duration::from_secs_f64(secs));
        }
    }
    humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration ({e}); e.g. 90s, 5m, 1h"))
}

/// A point in time as nanoseconds since the epoch: RFC 3339 (`2026-11-25T10:02:00Z`, with
/// `T` or a space) or epoch seconds (`1764064920.5`).
pub fn parse_time(s: &str) -> Result<i64, String> {
    let t = s.trim();
    if let Ok(secs) = t.parse::<f64>() {
        return Ok((secs * 1e9).round() as i64);
    }
    let st = humantime::parse_rfc3339_weak(t).map_err(|e| {
        format!(
            "`{s}` is not a time ({e}); use RFC 3339 like 2026-11-25T10:02:00Z, or epoch seconds"
        )
    })?;
    Ok(system_to_ns(st))
}

pub fn system_to_ns(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i64,
        Err(e) => -(e.duration().as_nanos() as i64),
    }
}

/// RFC 3339 with nanoseconds, for listings.
pub fn format_ns(ns: i64) -> String {
    let t = if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    };
    humantime::format_rfc3339_nanos(t).to_string()
}

/// Human-readable byte count (binary units).
pub fn human_bytes(n: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("1.5k"), Ok(1536));
        assert_eq!(parse_size("10MB"), Ok(10_000_000));
        assert!(parse_size("12 parsecs")
            .unwrap_err()
            .contains("unknown size unit"));
        assert!(parse_size("MiB").is_err());
    }

    #[test]
    fn ranges_reject_what_lies_outside_and_say_the_range() {
        let p = size_in(4 << 10, 1 << 40);
        assert_eq!(p("4KiB"), Ok(4096));
        assert_eq!(p("1TiB"), Ok(1 << 40));
        for bad in ["0", "4095", "1.5", "1025GiB", "99999999999T"] {
            assert_eq!(
                p(bad),
                Err("must be between 4KiB and 1TiB".to_string()),
                "{bad}"
            );
        }
        assert!(p("lots").unwrap_err().contains("not a size"));
        assert_eq!(size_text(1536), "1536");
        assert_eq!(size_text(3 << 20), "3MiB");
        assert_eq!(size_text(0), "0");

        let d = duration_in(Duration::from_millis(100), Duration::from_secs(3600));
        assert_eq!(d("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(d("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["0", "0s", "99ms", "61m"] {
            assert_eq!(
                d(bad),
                Err("must be between 100ms and 1h".to_string()),
                "{bad}"
            );
        }
        assert_eq!(duration_text(Duration::from_secs(365 * 86_400)), "365d");
        assert_eq!(duration_text(Duration::from_secs(90)), "90s");

        let sp = speed_up_to(1e6);
        assert_eq!(sp("0.5"), Ok(0.5));
        for bad in ["0", "-1", "NaN", "inf", "1e7", "fast"] {
            assert!(sp(bad).unwrap_err().contains("above 0"), "{bad}");
        }
    }

    #[test]
    fn durations_and_times() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2.5"), Ok(Duration::from_millis(2500)));
        assert!(parse_duration("soon").is_err());
        assert_eq!(parse_time("1.5"), Ok(1_500_000_000));
        assert_eq!(parse_time("1970-01-01T00:00:02Z"), Ok(2_000_000_000));
        assert_eq!(parse_time("1970-01-01 00:00:02.25Z"), Ok(2_250_000_000));
        assert!(parse_time("yesterday").unwrap_err().contains("RFC 3339"));
        assert_eq!(format_ns(1_500_000_000), "1970-01-01T00:00:01.500000000Z");
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }
}
