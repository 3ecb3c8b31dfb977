// Embeds the eBPF object built by `cargo xtask build-ebpf`. When it has not been built yet the
// agent still compiles (so pure-logic unit tests run anywhere) and says at run time what to do.
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap())
        .parent()
        .unwrap()
        .to_path_buf();
    let obj = std::env::var("TCPSTALL_EBPF_OBJ")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target/bpfel-unknown-none/release/monitor"));
    println!("cargo:rerun-if-env-changed=TCPSTALL_EBPF_OBJ");
    println!("cargo:rerun-if-changed={}", obj.display());
    println!("cargo:rustc-check-cfg=cfg(tcpstall_ebpf_obj)");
    // Tests that need a tool `cargo xtask test` installs run under CI=true (and fail there when
    // it is missing) and are ignored elsewhere, so a skip shows as one.
    println!("cargo:rerun-if-env-changed=CI");
    let ci = std::env::var("CI").as_deref() == Ok("true");
    println!("cargo:rustc-check-cfg=cfg(tcpstall_ci)");
    if ci {
        println!("cargo:rustc-cfg=tcpstall_ci");
    }
    // Tests that need root are ignored unless built as root or under CI=true (where a test
    // that cannot run must fail); /proc/self belongs to the effective uid reading it.
    println!("cargo:rustc-check-cfg=cfg(root_tests)");
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    if root || ci {
        println!("cargo:rustc-cfg=root_tests");
    }
    if obj.exists() {
        println!("cargo:rustc-cfg=tcpstall_ebpf_obj");
        println!("cargo:rustc-env=TCPSTALL_EBPF_OBJ_PATH={}", obj.display());
    }
}
