//! Parse-time measurement on the running kernel's BTF, run by hand.

use super::*;
use std::time::Duration;
use std::time::Instant;

fn summary(what: &str, mut times: Vec<Duration>) {
    times.sort();
    eprintln!(
        "{what}: min {:?} median {:?} max {:?} ({} runs)",
        times[0],
        times[times.len() / 2],
        times[times.len() - 1],
        times.len()
    );
}

/// `cargo test --release -p monitor --lib btf::timing -- --ignored --nocapture`
#[test]
#[ignore = "timing measurement, run by hand"]
fn parse_time_of_running_kernel() {
    let Ok(bytes) = std::fs::read(DEFAULT_VMLINUX_BTF) else {
        eprintln!("skipping: {DEFAULT_VMLINUX_BTF} not readable");
        return;
    };
    let mut parse = Vec::new();
    let mut index = Vec::new();
    for _ in 0..30 {
        let t = Instant::now();
        let btf = Btf::parse(&bytes).unwrap();
        parse.push(t.elapsed());
        let t = Instant::now();
        assert!(btf.has_tracepoint("tcp_probe"));
        index.push(t.elapsed());
    }
    eprintln!("{DEFAULT_VMLINUX_BTF}: {} bytes", bytes.len());
    summary("Btf::parse", parse);
    summary("first lookup (builds the FUNC/TYPEDEF index)", index);
}
