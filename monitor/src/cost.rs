//! What the ACK hook's time is made of (issue 14): the benchmark attaches one of two
//! programs at the ACK hook's tracepoint (`tcp_probe`) on its streams, after the agent has
//! stopped, and compares their run time (`monitor-ebpf/src/cost.rs`):
//! [`Step::Reach`] repeats the agent's ACK hook up to its map lookup, [`Step::Lookup`] adds
//! the lookup of the socket's entry in a map as full as the agent's.
//!
//! Only the benchmark uses this; the agent never loads these programs.

use anyhow::{anyhow, bail, Context, Result};
use aya::{maps::PerCpuArray, programs::BtfTracePoint, Ebpf};
use monitor_common::{Offsets, DEFAULT_MAX_SOCKETS};

/// Which of the two programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The socket, the early exit, the clock and the cookie.
    Reach,
    /// The same and the socket's entry in a hash map of the agent's size.
    Lookup,
}

impl Step {
    pub fn program(self) -> &'static str {
        match self {
            Step::Reach => "tcpstall_cost_reach",
            Step::Lookup => "tcpstall_cost_lookup",
        }
    }
}

/// How far the program's runs went (cumulative, all CPUs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reached {
    /// Past the early exit (a socket with data of its own queued, or its receive window
    /// closed): the runs that go on to the map lookup in the agent's hook.
    pub past_exit: u64,
    /// Found the socket's entry ([`Step::Lookup`] only).
    pub found: u64,
    /// Created it (its first ACK here; [`Step::Lookup`] only).
    pub created: u64,
}

/// The programs key entries by socket cookie, which tracing programs get from Linux 5.12 on.
pub fn supported(offsets: &Offsets) -> bool {
    offsets.mode & monitor_common::mode::KEY_BY_ADDR == 0
}

/// One cost program, loaded and attached; detached when dropped.
pub struct AckCost {
    step: Step,
    ebpf: Ebpf,
}

impl AckCost {
    /// Load the object with the running kernel's `offsets` (socket cookies as keys, as the
    /// agent on this kernel) and attach the program of `step` at `tcp_probe`.
    pub fn attach(offsets: &Offsets, step: Step) -> Result<AckCost> {
        if !supported(offsets) {
            bail!("the ACK cost programs need socket cookies (Linux 5.12 or later)");
        }
        let (mut ebpf, btf) = crate::probes::load_for_measurement(offsets, DEFAULT_MAX_SOCKETS)?;
        let name = step.program();
        let prog: &mut BtfTracePoint = ebpf
            .program_mut(name)
            .with_context(|| format!("program {name} missing from the eBPF object"))?
            .try_into()?;
        prog.load("tcp_probe", &btf)
            .map_err(|e| anyhow!("loading {name} (tp_btf/tcp_probe): {e:#}"))?;
        prog.attach()
            .map_err(|e| anyhow!("attaching {name}: {e}"))?;
        Ok(AckCost { step, ebpf })
    }

    pub fn step(&self) -> Step {
        self.step
    }

    /// The program's cumulative (run time ns, runs), counted while BPF run-time statistics
    /// are enabled (`aya::sys::enable_stats`).
    pub fn runs(&self) -> Result<(u64, u64)> {
        let prog: &BtfTracePoint = self
            .ebpf
            .program(self.step.program())
            .context("cost program missing")?
            .try_into()?;
        let info = prog.info().map_err(|e| anyhow!("program info: {e}"))?;
        Ok((info.run_time().as_nanos() as u64, info.run_count()))
    }

    /// How far its runs went so far.
    pub fn reached(&self) -> Result<Reached> {
        let map: PerCpuArray<_, u64> = PerCpuArray::try_from(
            self.ebpf
                .map("COST_RUNS")
                .context("map COST_RUNS missing from the eBPF object")?,
        )?;
        let sum = |i: u32| -> Result<u64> {
            Ok(map
                .get(&i, 0)
                .map_err(|e| anyhow!("reading COST_RUNS[{i}]: {e}"))?
                .iter()
                .sum())
        };
        Ok(Reached {
            past_exit: sum(0)?,
            found: sum(1)?,
            created: sum(2)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{ErrorKind, Write};
    use std::net::{TcpListener, TcpStream};
    use std::time::{Duration, Instant};

    /// Both programs load and attach on this kernel, and count the ACKs of a sender with
    /// data outstanding to a reader that does not read (each such ACK gets past the early
    /// exit): the lookup program makes the socket's entry at the first and finds it at the
    /// next ones (the persist timer's window probes keep drawing ACKs).
    #[test]
    #[cfg_attr(
        not(root_tests),
        ignore = "needs root: loads and attaches eBPF programs"
    )]
    fn cost_programs_count_acks_past_the_early_exit() {
        crate::reset::test_support::require_root("cost_programs_count_acks_past_the_early_exit");
        let (offsets, _) = crate::btf::load_offsets().expect("kernel offsets");
        assert!(
            supported(&offsets),
            "this kernel gives tracing programs no socket cookies"
        );
        let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("BPF run-time stats");
        for step in [Step::Reach, Step::Lookup] {
            let p = AckCost::attach(&offsets, step).expect("attach");
            assert_eq!(p.step(), step);
            let l = TcpListener::bind("127.0.0.1:0").expect("bind");
            let mut w = TcpStream::connect(l.local_addr().unwrap()).expect("connect");
            let (_r, _) = l.accept().expect("accept");
            w.set_nonblocking(true).unwrap();
            let chunk = [7u8; 65536];
            let deadline = Instant::now() + Duration::from_secs(10);
            let done = |r: &Reached| match step {
                Step::Reach => r.past_exit > 0,
                Step::Lookup => r.created > 0 && r.found > 0,
            };
            let reached = loop {
                // Keep the queue full: the reader never reads.
                loop {
                    match w.write(&chunk) {
                        Ok(_) => continue,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) => panic!("write: {e}"),
                    }
                }
                let r = p.reached().expect("COST_RUNS");
                if done(&r) {
                    break r;
                }
                assert!(
                    Instant::now() < deadline,
                    "{}: runs never got that far in 10 s: {r:?}",
                    step.program()
                );
                std::thread::sleep(Duration::from_millis(50));
            };
            let (ns, runs) = p.runs().expect("run statistics");
            assert!(
                runs >= reached.past_exit && ns > 0,
                "{runs} runs, {ns} ns, {reached:?}"
            );
            if step == Step::Reach {
                assert_eq!((reached.found, reached.created), (0, 0));
            }
        }
    }
}
