//! Operator commands besides the agent loop: `tcpstall policy check` ([`advice`]) and
//! `tcpstall reset` ([`reset`]). Both exit with the codes below.

pub mod advice;
pub mod recording;
pub mod reset;

/// Exit code: everything fine.
pub const EXIT_OK: u8 = 0;
/// Exit code: refused, not found, failed; for `policy check`: events file unusable.
pub const EXIT_FAILED: u8 = 1;
/// Exit code: usage error / invalid policy.
pub const EXIT_USAGE: u8 = 2;
/// Exit code of `policy check --events`: at least one threshold is UNSAFE.
pub const EXIT_UNSAFE: u8 = 3;
/// Exit code of `policy check --strict`: the policy is valid but has warnings.
pub const EXIT_WARNINGS: u8 = 4;

/// A fresh scratch directory for a test (both commands' tests write policy files).
#[cfg(test)]
pub(crate) fn test_tmp_dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("tcpstall-manual-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
