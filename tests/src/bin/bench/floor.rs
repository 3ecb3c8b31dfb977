//! The attach floor: programs that do nothing (`r0 = 0; exit`), attached as raw
//! tracepoints at the tracepoints the agent's hooks use, with BPF run-time statistics on.
//! What they cost per run is what any per-event hook at those points costs before its first
//! instruction of logic, so the hot path's loss can be split into "a hook fires here" and
//! "the hook's work".

use crate::util;
use anyhow::{bail, Context, Result};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_RAW_TRACEPOINT_OPEN: libc::c_long = 17;
const BPF_ENABLE_STATS: libc::c_long = 32;
const BPF_PROG_TYPE_RAW_TRACEPOINT: u32 = 17;
const BPF_STATS_RUN_TIME: u32 = 0;

/// `bpf(cmd, attr)` with `attr` a zero-padded `union bpf_attr` image.
fn bpf(cmd: libc::c_long, attr: &mut [u8; 128]) -> std::io::Result<OwnedFd> {
    // SAFETY: attr is a valid, writable buffer of the size passed.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len() as u32) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: these commands return a new file descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(r as i32) })
}

fn put(attr: &mut [u8; 128], at: usize, bytes: &[u8]) {
    attr[at..at + bytes.len()].copy_from_slice(bytes);
}

/// Empty programs attached at some tracepoints; detached when dropped.
pub struct Floor {
    /// (tracepoint, program fd, attachment fd).
    progs: Vec<(String, OwnedFd, OwnedFd)>,
    _stats: Option<OwnedFd>,
}

impl Floor {
    /// Load one empty program per tracepoint and attach it there, with BPF run-time
    /// statistics on (so [`Floor::runs`] counts).
    pub fn attach(tracepoints: &[String]) -> Result<Floor> {
        Self::attach_with(tracepoints, true)
    }

    /// The same with run-time statistics left as they are (off unless something else turned
    /// them on): the floor as an arm of a throughput A/B, where the statistics' own clock
    /// reads would be counted against it. [`Floor::runs`] then reads zeros.
    pub fn attach_quiet(tracepoints: &[String]) -> Result<Floor> {
        Self::attach_with(tracepoints, false)
    }

    fn attach_with(tracepoints: &[String], stats: bool) -> Result<Floor> {
        let stats = if stats {
            let mut attr = [0u8; 128];
            put(&mut attr, 0, &BPF_STATS_RUN_TIME.to_ne_bytes());
            Some(bpf(BPF_ENABLE_STATS, &mut attr).context("BPF_ENABLE_STATS")?)
        } else {
            None
        };
        // mov64 r0, 0; exit
        let insns: [u8; 16] = [0xb7, 0, 0, 0, 0, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0];
        let license = b"GPL\0";
        let mut progs = Vec::new();
        for tp in tracepoints {
            let mut attr = [0u8; 128];
            put(&mut attr, 0, &BPF_PROG_TYPE_RAW_TRACEPOINT.to_ne_bytes());
            put(&mut attr, 4, &2u32.to_ne_bytes());
            put(&mut attr, 8, &(insns.as_ptr() as u64).to_ne_bytes());
            put(&mut attr, 16, &(license.as_ptr() as u64).to_ne_bytes());
            put(&mut attr, 48, b"floor\0");
            let prog = bpf(BPF_PROG_LOAD, &mut attr).context("loading an empty program")?;
            let name = std::ffi::CString::new(tp.as_str())?;
            let mut attr = [0u8; 128];
            put(&mut attr, 0, &(name.as_ptr() as u64).to_ne_bytes());
            put(&mut attr, 8, &(prog.as_raw_fd() as u32).to_ne_bytes());
            let link = bpf(BPF_RAW_TRACEPOINT_OPEN, &mut attr)
                .with_context(|| format!("attaching an empty program at tracepoint {tp}"))?;
            progs.push((tp.clone(), prog, link));
        }
        if progs.is_empty() {
            bail!("no tracepoint to attach the floor programs to");
        }
        Ok(Floor {
            progs,
            _stats: stats,
        })
    }

    /// Total (run_time_ns, run_cnt) of the empty programs so far.
    pub fn runs(&self) -> Result<(u64, u64)> {
        let mut total = (0, 0);
        for (tp, prog, _) in &self.progs {
            let path = format!("/proc/self/fdinfo/{}", prog.as_raw_fd());
            let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
            let fd = util::parse_bpf_fdinfo(&text)
                .with_context(|| format!("no BPF program in {path} (tracepoint {tp})"))?;
            total.0 += fd.run_time_ns;
            total.1 += fd.run_cnt;
        }
        Ok(total)
    }

    pub fn tracepoints(&self) -> Vec<&str> {
        self.progs.iter().map(|(tp, _, _)| tp.as_str()).collect()
    }
}

/// The tracepoints among the agent's attach points (`agent_started.hooks[].attach` of the
/// form `tp_btf/NAME`).
pub fn agent_tracepoints(started: &serde_json::Value) -> Vec<String> {
    started["hooks"]
        .as_array()
        .map(|hooks| {
            hooks
                .iter()
                .filter_map(|h| h["attach"].as_str()?.strip_prefix("tp_btf/"))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_tracepoint_attach_points_are_taken() {
        let started = serde_json::json!({"hooks": [
            {"hook": "send", "attach": "tp_btf/tcp_sendmsg_locked"},
            {"hook": "ack", "attach": "fentry/tcp_rcv_established"},
            {"hook": "read", "attach": null},
        ]});
        assert_eq!(agent_tracepoints(&started), vec!["tcp_sendmsg_locked"]);
    }
}
