//! `tcpstall`: find wedged TCP connections in the kernel and, under a policy, reset them.

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use monitor::policy::Policy;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "tcpstall",
    version,
    about = "Finds wedged TCP connections (dead, half-open or non-reading peers with data queued) and resets them under a policy."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Attach the kernel hooks and stream NDJSON events on stdout (logs go to stderr).
    /// SIGTERM/SIGINT stop it; SIGHUP reopens --output and reloads --policy.
    Run(RunArgs),
    /// Policy tools.
    Policy {
        #[command(subcommand)]
        cmd: PolicyCmd,
    },
    /// Reset one socket by hand, behind the same guards as the agent.
    Reset(monitor::cli::reset::ResetArgs),
    /// A live view of what the running agent sees: stalled and tracked sockets, recent
    /// resets. Reads the agent's status socket; never attaches anything itself.
    Top(monitor::top::TopArgs),
    /// What the agent keeps across restarts (the pinned kernel map and the state file).
    State {
        #[command(subcommand)]
        cmd: StateCmd,
    },
}

#[derive(Subcommand)]
enum StateCmd {
    /// Remove the pinned kernel map and the state file (deliberate uninstall; refused while
    /// an agent uses them). The next agent starts fresh.
    Clear(StateDirs),
}

#[derive(Args)]
struct StateDirs {
    /// Directory of the state file (cadence histories, rate-limit windows, reset decisions).
    #[arg(long, default_value = monitor::state::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Directory on bpffs where the kernel per-socket map is pinned.
    #[arg(long, default_value = monitor::state::DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Validate a policy file and print the effective rules (exit 2 if invalid), with
    /// warnings about dangerous settings.
    #[command(after_help = monitor::cli::advice::POLICY_CHECK_HELP)]
    Check {
        file: PathBuf,
        /// A recorded event stream (NDJSON from `tcpstall run`): print threshold advice from
        /// the episodes that recovered by themselves.
        #[arg(long)]
        events: Option<PathBuf>,
        /// Print JSON instead of text (the effective rules, plus the advice with --events).
        #[arg(long)]
        json: bool,
        /// Exit 4 when the policy is valid but has warnings (dangerous settings).
        #[arg(long)]
        strict: bool,
        /// Judge the policy as `run --trouble-hooks` does: a rule acting only on classes
        /// those hooks do not see (`slow_drain`, `recv_backlog`) is refused (exit 2), one
        /// listing them among others is a warning
        #[arg(long, env = "TCPSTALL_TROUBLE_HOOKS", value_parser = clap::builder::BoolishValueParser::new())]
        trouble_hooks: bool,
    },
}

#[derive(Args)]
struct RunArgs {
    /// Policy file (TOML). Without it: observe only, 30 s thresholds, 1 s tick.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Tick (overrides the policy's `tick`; same syntax and range, 10ms..1m), e.g. 1s, 500ms.
    #[arg(long, value_parser = monitor::policy::parse_tick)]
    tick: Option<Duration>,
    /// Write events to this file instead of stdout: appended, created with mode 0600; a
    /// regular file only, never through a symbolic link. SIGHUP reopens it (log rotation).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Never reset: every reset becomes a `reset_skipped` event with guard "dry_run".
    #[arg(long)]
    dry_run: bool,
    /// How often to emit `stats`.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    stats_interval: Duration,
    /// Bound of the kernel per-socket map (sockets with data queued tracked at once).
    #[arg(long, default_value_t = monitor_common::DEFAULT_MAX_SOCKETS)]
    max_sockets: u32,
    /// Enable kernel BPF run-time accounting and report our programs' time in `stats`.
    #[arg(long)]
    bpf_stats: bool,
    /// Also attach the per-write hooks (tcp_sendmsg_locked, do_tcp_sendpages): every writer is
    /// then seen as it writes, at a cost on every write to every TCP socket. Off by default:
    /// sockets are tracked from ACKs, retransmits and blocked writes, and a writer not seen
    /// writing is found in /proc.
    #[arg(long, env = "TCPSTALL_PER_WRITE_HOOKS", value_parser = clap::builder::BoolishValueParser::new())]
    per_write_hooks: bool,
    /// Attach the read hook too (tcp_rcv_space_adjust: it runs on every read of every TCP
    /// socket). Off by default: a tracked socket's reads are seen at its next segment, and
    /// for one whose receive side looks full the agent asks sock_diag once per tick.
    #[arg(long, env = "TCPSTALL_READ_HOOK", value_parser = clap::builder::BoolishValueParser::new())]
    read_hook: bool,
    /// Attach only the hooks that fire on trouble: the TCP write timer's expiries (a
    /// retransmission timeout or a zero-window probe), retransmits and state changes; no
    /// hook runs per packet, and a tracked socket's progress is read through sock_diag.
    /// Cheapest for servers whose sockets always have data queued (streaming, SSE), but
    /// `slow_drain` and `recv_backlog` are not seen. Off by default.
    #[arg(long, env = "TCPSTALL_TROUBLE_HOOKS", value_parser = clap::builder::BoolishValueParser::new(),
          conflicts_with_all = ["per_write_hooks", "read_hook"])]
    trouble_hooks: bool,
    /// Stop after this long (default: run until SIGINT/SIGTERM).
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Unix socket `tcpstall top` reads the live view from (root only), or `none`.
    #[arg(long, default_value = monitor::status::DEFAULT_SOCKET)]
    status_socket: String,
    /// Serve Prometheus metrics (/metrics) and health (/healthz, /readyz) over HTTP on
    /// IP:PORT, e.g. 127.0.0.1:9972 (off by default; 0.0.0.0 exposes them to the network).
    #[arg(long, value_name = "IP:PORT")]
    metrics_addr: Option<std::net::SocketAddr>,
    #[command(flatten)]
    state: StateDirs,
    /// Keep nothing across restarts: no pinned kernel map, no state file.
    #[arg(long)]
    no_state: bool,
}

fn load_policy(path: Option<&PathBuf>) -> Result<Policy, ExitCode> {
    match path {
        None => Ok(Policy::default()),
        Some(p) => Policy::load(p).map_err(|e| {
            eprintln!("{e}");
            ExitCode::from(2)
        }),
    }
}

fn run(args: RunArgs) -> ExitCode {
    let policy = match load_policy(args.policy.as_ref()) {
        Ok(p) => p,
        Err(code) => return code,
    };
    for w in policy.warning_lines() {
        log::warn!("{w}");
    }
    // A rule the chosen hooks cannot serve is refused before anything is attached.
    if args.trouble_hooks {
        match policy.fit_trouble_hooks().into_result() {
            Ok(warnings) => warnings.iter().for_each(|w| log::warn!("{w}")),
            Err(refused) => {
                eprintln!("{refused}");
                return ExitCode::from(2);
            }
        }
    }
    // Refuse an unusable --output before anything is attached (the agent opens it again).
    if let Some(path) = &args.output {
        if let Err(e) = monitor::event::open_output(path) {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    }
    // Both are in policy::TICK_MIN..=TICK_MAX (parse_tick and the policy file check it).
    let tick = args.tick.unwrap_or(policy.tick);
    let metrics_addr = args.metrics_addr;
    let cfg = monitor::agent::Config {
        policy,
        tick,
        stats_interval: args.stats_interval,
        output: args.output,
        dry_run: args.dry_run,
        max_sockets: args.max_sockets,
        bpf_stats: args.bpf_stats,
        per_write_hooks: args.per_write_hooks,
        read_hook: args.read_hook,
        trouble_hooks: args.trouble_hooks,
        duration: args.duration,
        status_socket: monitor::status::socket_path(&args.status_socket),
        state: (!args.no_state).then_some(monitor::state::StatePaths {
            state_dir: args.state.state_dir,
            pin_dir: args.state.pin_dir,
        }),
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let res = rt.block_on(async {
        let signals = monitor::agent::Signals::install()?;
        // Listen before anything is attached: a taken port fails the start cleanly.
        let metrics = metrics_addr.map(monitor::metrics::bind).transpose()?;
        let mut agent = monitor::agent::Agent::start(cfg)?;
        if let Some(listener) = metrics {
            agent.serve_metrics(listener)?;
        }
        agent.run(signals).await
    });
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `tcpstall state clear`: exit 0 when removed (or nothing was there), 1 when refused.
fn state_clear(dirs: StateDirs) -> ExitCode {
    let paths = monitor::state::StatePaths {
        state_dir: dirs.state_dir,
        pin_dir: dirs.pin_dir,
    };
    match monitor::state::clear(&paths) {
        Ok(removed) if removed.is_empty() => {
            println!(
                "nothing to remove in {} and {}",
                paths.state_dir.display(),
                paths.pin_dir.display()
            );
            ExitCode::SUCCESS
        }
        Ok(removed) => {
            for r in removed {
                println!("removed {r}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .target(env_logger::Target::Stderr)
        .init();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run(args) => run(args),
        Cmd::Policy {
            cmd:
                PolicyCmd::Check {
                    file,
                    events,
                    json,
                    strict,
                    trouble_hooks,
                },
        } => monitor::cli::advice::policy_check(
            &file,
            events.as_deref(),
            json,
            strict,
            trouble_hooks,
        ),
        Cmd::Reset(args) => monitor::cli::reset::reset(args),
        Cmd::Top(args) => monitor::top::run(args),
        Cmd::State {
            cmd: StateCmd::Clear(dirs),
        } => state_clear(dirs),
    }
}
