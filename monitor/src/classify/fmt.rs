//! Numbers for people: durations, byte counts, factors.

use super::NS_PER_MS;

/// "2.0", "1.5", "2.25".
pub fn fmt_factor(f: f64) -> String {
    if f.fract() == 0.0 {
        format!("{f:.1}")
    } else {
        format!("{f}")
    }
}

/// Human duration: "750ms", "3s", "14.2s", "5m", "6m40s", "1h2m".
pub(super) fn fmt_ns(ns: u64) -> String {
    fmt_ms(ns / NS_PER_MS)
}

/// Milliseconds for people: "750ms", "3s", "14.2s", "5m", "6m40s", "1h2m" (tenths of a
/// second below a minute, whole seconds above).
pub fn fmt_ms(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms}ms");
    }
    if ms < 59_950 {
        let tenths = (ms + 50) / 100;
        return if tenths.is_multiple_of(10) {
            format!("{}s", tenths / 10)
        } else {
            format!("{}.{}s", tenths / 10, tenths % 10)
        };
    }
    let s = (ms + 500) / 1000;
    let (h, m, s) = (s / 3600, (s / 60) % 60, s % 60);
    let mut out = String::new();
    for (n, unit) in [(h, "h"), (m, "m"), (s, "s")] {
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
        }
    }
    out
}

/// "512 B", "64.0 KiB", "1.0 MiB".
pub(super) fn fmt_bytes(b: u64) -> String {
    const KIB: u64 = 1024;
    if b < KIB {
        format!("{b} B")
    } else if b < KIB * KIB {
        format!("{:.1} KiB", b as f64 / KIB as f64)
    } else if b < KIB * KIB * KIB {
        format!("{:.1} MiB", b as f64 / (KIB * KIB) as f64)
    } else {
        format!("{:.1} GiB", b as f64 / (KIB * KIB * KIB) as f64)
    }
}
