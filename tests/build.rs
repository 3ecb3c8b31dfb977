//! Sets `cfg(root_tests)` when the root-only tests are to run: when building as root, and
//! always under `CI=true` (where a test that cannot run must fail, never skip). Without it
//! those tests are `#[ignore]`d, so a run without root shows them as ignored rather than
//! passed.

use std::os::unix::fs::MetadataExt;

fn main() {
    println!("cargo:rustc-check-cfg=cfg(root_tests)");
    println!("cargo:rerun-if-env-changed=CI");
    let ci = std::env::var("CI").as_deref() == Ok("true");
    // /proc/self belongs to the effective uid of the process reading it.
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    if ci || root {
        println!("cargo:rustc-cfg=root_tests");
    }
}
