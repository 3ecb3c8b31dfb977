//! `tcpstall top`: the running agent's live view, refreshed in place (readable over SSH),
//! or printed once (`--once`, `--json`) for scripts. It only reads the agent's status socket.

use crate::status::{fetch, render, DEFAULT_SOCKET};
use clap::Args;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct TopArgs {
    /// The agent's status socket (`tcpstall run --status-socket`).
    #[arg(long, default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Print the view once and exit (no screen control), for scripts.
    #[arg(long)]
    pub once: bool,
    /// Print the agent's report once as JSON and exit.
    #[arg(long)]
    pub json: bool,
    /// Refresh interval.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    pub interval: Duration,
}

/// Terminal size of stdout, if it is a terminal.
fn term_size() -> Option<(usize, usize)> {
    // SAFETY: TIOCGWINSZ fills a winsize struct.
    unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        (libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) == 0 && ws.ws_col > 0)
            .then_some((ws.ws_col as usize, ws.ws_row as usize))
    }
}

/// Raw keyboard input on a terminal stdin (no echo, no line buffering), restored on drop.
struct RawInput(Option<libc::termios>);

impl RawInput {
    fn new() -> RawInput {
        // SAFETY: termios calls on fd 0 with a local struct.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::isatty(0) == 0 || libc::tcgetattr(0, &mut t) != 0 {
                return RawInput(None);
            }
            let saved = t;
            t.c_lflag &= !(libc::ICANON | libc::ECHO);
            t.c_cc[libc::VMIN] = 0;
            t.c_cc[libc::VTIME] = 0;
            libc::tcsetattr(0, libc::TCSANOW, &t);
            RawInput(Some(saved))
        }
    }

    /// Wait up to `d` for a key; true when it asks to quit (`q`, Ctrl-C, Ctrl-D).
    fn quit_within(&self, d: Duration) -> bool {
        let mut pfd = libc::pollfd {
            fd: 0,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; read into a local byte.
        unsafe {
            if libc::poll(&mut pfd, 1, d.as_millis() as libc::c_int) > 0 {
                let mut b = 0u8;
                if libc::read(0, &mut b as *mut u8 as *mut libc::c_void, 1) == 1 {
                    return matches!(b, b'q' | b'Q' | 3 | 4);
                }
                // EOF on a non-terminal stdin: keep going until a signal.
                if self.0.is_none() {
                    std::thread::sleep(d);
                }
            }
        }
        false
    }
}

impl Drop for RawInput {
    fn drop(&mut self) {
        if let Some(t) = self.0 {
            // SAFETY: restores the saved settings.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) };
        }
    }
}

pub fn run(args: TopArgs) -> ExitCode {
    let timeout = Duration::from_secs(5);
    if args.once || args.json {
        return match fetch(&args.socket, timeout) {
            Ok(r) if args.json => {
                println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
                ExitCode::SUCCESS
            }
            Ok(r) => {
                let width = term_size().map(|(w, _)| w).unwrap_or(200);
                print!("{}", render(&r, width, 0));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let input = RawInput::new();
    let mut out = std::io::stdout();
    // Alternate screen, hidden cursor; restored on the way out.
    let _ = write!(out, "\x1b[?1049h\x1b[?25l");
    let code = loop {
        let (w, h) = term_size().unwrap_or((160, 50));
        let text = match fetch(&args.socket, timeout) {
            Ok(r) => render(&r, w, h),
            Err(e) => format!(
                "error: {e}\n(retrying every {:?}; q to quit)\n",
                args.interval
            ),
        };
        let _ = write!(out, "\x1b[H\x1b[2J{}", text.replace('\n', "\r\n"));
        let _ = write!(out, "\x1b[{h};1Hq: quit");
        let _ = out.flush();
        if input.quit_within(args.interval) {
            break ExitCode::SUCCESS;
        }
    };
    let _ = write!(out, "\x1b[?25h\x1b[?1049l");
    let _ = out.flush();
    code
}
