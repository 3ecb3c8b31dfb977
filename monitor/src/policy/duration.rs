//! The policy's value syntax: durations (`"1m30s"`) and rates (`"1KiB/s"`), parsed and
//! formatted, and the tick range shared by the policy file and `tcpstall run --tick`.

use std::time::Duration;

/// The tick without a policy file or `tick` key.
pub(super) const DEFAULT_TICK: Duration = Duration::from_secs(1);
/// The shortest tick, in the policy file and on the command line.
pub const TICK_MIN: Duration = Duration::from_millis(10);
/// The longest tick, in the policy file and on the command line.
pub const TICK_MAX: Duration = Duration::from_secs(60);

/// A `--tick` command-line value: the policy duration syntax, between [`TICK_MIN`] and
/// [`TICK_MAX`] like the policy file's `tick`.
pub fn parse_tick(s: &str) -> Result<Duration, String> {
    let (lo, hi) = (format_duration(TICK_MIN), format_duration(TICK_MAX));
    let d = parse_duration(s).ok_or_else(|| {
        "not a duration: write whole numbers with a unit (ms, s, m, h) and no spaces, e.g. \
         1s, 500ms"
            .to_string()
    })?;
    if !(TICK_MIN..=TICK_MAX).contains(&d) {
        return Err(format!(
            "out of range: it must be between {lo} and {hi}, e.g. 1s"
        ));
    }
    Ok(d)
}

/// Parse the policy duration syntax: one or more `<whole number><unit>` with units `ms`,
/// `s`, `m`, `h` and no spaces (`"30s"`, `"1m30s"`, `"500ms"`). `None` if malformed.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let b = s.as_bytes();
    if b.is_empty() {
        return None;
    }
    let mut i = 0;
    let mut total_ms: u128 = 0;
    while i < b.len() {
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return None;
        }
        let n: u128 = s[start..i].parse().ok()?;
        let unit_ms: u128 = if b[i..].starts_with(b"ms") {
            i += 2;
            1
        } else {
            let u = match b.get(i) {
                Some(b'h') => 3_600_000,
                Some(b'm') => 60_000,
                Some(b's') => 1_000,
                _ => return None,
            };
            i += 1;
            u
        };
        total_ms = total_ms.checked_add(n.checked_mul(unit_ms)?)?;
    }
    u64::try_from(total_ms).ok().map(Duration::from_millis)
}

/// Format a duration in the policy syntax, exact to the millisecond (`"1m30s"`).
pub fn format_duration(d: Duration) -> String {
    let mut ms = d.as_millis();
    if ms == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    for (unit, size) in [("h", 3_600_000u128), ("m", 60_000), ("s", 1_000), ("ms", 1)] {
        if ms >= size {
            out.push_str(&format!("{}{unit}", ms / size));
            ms %= size;
        }
    }
    out
}

const RATE_UNITS: [(&str, u64); 4] = [
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
    ("B", 1),
];

/// Parse the policy rate syntax: `<whole number><B|KiB|MiB|GiB>/s`, returning bytes per
/// second. `None` if malformed.
pub fn parse_rate(s: &str) -> Option<u64> {
    let body = s.strip_suffix("/s")?;
    let digits = body.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let n: u64 = body[..digits].parse().ok()?;
    let unit = &body[digits..];
    let (_, mult) = RATE_UNITS.iter().find(|(u, _)| *u == unit)?;
    n.checked_mul(*mult)
}

/// Format bytes per second in the policy syntax, in the largest exact unit (`"1KiB/s"`).
pub fn format_rate(bps: u64) -> String {
    if bps == 0 {
        return "0B/s".to_string();
    }
    let (unit, size) = RATE_UNITS
        .iter()
        .find(|(_, size)| bps.is_multiple_of(*size))
        .expect("B divides everything");
    format!("{}{unit}/s", bps / size)
}

/// Best guess at the rate an operator meant by a malformed string (`"1 KB/s"`, `"2mib"`),
/// for hints.
pub(super) fn guess_rate(s: &str) -> Option<u64> {
    let t: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    let lower = t.to_ascii_lowercase();
    let body = ["/s", "/sec", "/second", "ps"]
        .iter()
        .find_map(|suf| lower.strip_suffix(suf))
        .unwrap_or(&lower);
    let num_len = body
        .bytes()
        .take_while(|b| b.is_ascii_digit() || *b == b'.')
        .count();
    let n: f64 = body[..num_len].parse().ok()?;
    let mult: f64 = match &body[num_len..] {
        "" | "b" | "byte" | "bytes" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1048576.0,
        "g" | "gb" | "gib" => 1073741824.0,
        _ => return None,
    };
    let bytes = (n * mult).round();
    (bytes.is_finite() && bytes >= 0.0 && bytes <= u64::MAX as f64).then_some(bytes as u64)
}
