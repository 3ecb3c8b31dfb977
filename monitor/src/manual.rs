//! Operator commands that are not the agent loop: `policy check` and `reset`.

use crate::policy::Policy;
use clap::Args;
use std::path::Path;
use std::process::ExitCode;

/// `tcpstall policy check FILE [--events FILE] [--json]`.
pub fn policy_check(file: &Path, events: Option<&Path>, json: bool) -> ExitCode {
    let policy = match Policy::load(file) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&policy.to_json()).unwrap_or_default()
        );
    } else {
        print!("{}", policy.describe());
    }
    if let Some(ev) = events {
        let _ = ev;
    }
    ExitCode::SUCCESS
}

#[derive(Args)]
pub struct ResetArgs {
    /// Socket cookie (as in tcpstall events, or `ss -e`).
    #[arg(long)]
    pub cookie: Option<u64>,
}

/// `tcpstall reset ...`.
pub fn reset(_args: ResetArgs) -> ExitCode {
    eprintln!("error: manual reset is not available in this build yet");
    ExitCode::from(2)
}
