//! The sock_diag kernel modules (`inet_diag`, `tcp_diag`).
//!
//! Lookups and SOCK_DESTROY go through `inet_diag` and its TCP handler `tcp_diag`. Debian's
//! stock kernels build both as modules, and while they are not loaded every request for a
//! TCP socket fails with `ENOENT`, exactly like "no such socket". [`ensure_diag_modules`]
//! loads them at start-up (or says precisely why it could not).
//!
//! Built-in modules without parameters have no `/sys/module/NAME` entry, so "present" also
//! means listed in `modules.builtin`, and as a last resort sock_diag is asked directly
//! (a dump of listening TCP sockets only, which is small on any host).

use super::*;
use std::process::{Command, Stdio};

/// The modules, in loading order (`tcp_diag` depends on `inet_diag`, so loading it pulls
/// `inet_diag` in too).
pub const DIAG_MODULES: [&str; 2] = ["tcp_diag", "inet_diag"];

/// Longest a `modprobe` may take before it is killed.
const MODPROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// What [`ensure_with`] needs from the system (a fake in the unit tests).
trait ModuleEnv {
    /// Whether `module` is loaded or built in.
    fn present(&self, module: &str) -> bool;
    /// Whether the kernel supports loadable modules at all (`/proc/modules` exists).
    fn can_load(&self) -> bool;
    /// Run `modprobe module`: `Err` says what went wrong (not found, its stderr, ...).
    fn modprobe(&mut self, module: &str) -> Result<(), String>;
    /// Whether sock_diag answers a TCP dump (i.e. a TCP handler is there, however it got
    /// there). `Err` says why not.
    fn tcp_diag_answers(&self) -> Result<(), String>;
    /// Whether we run as root (modprobe needs CAP_SYS_MODULE).
    fn is_root(&self) -> bool;
}

/// Make sure the `inet_diag` and `tcp_diag` kernel modules are there, loading them with
/// `modprobe` when they are missing. `Ok` lists the modules this call loaded (empty when
/// they were already loaded or are built into the kernel). `Err` is one actionable
/// message: what failed, why (modprobe's own words), and what to do.
pub fn ensure_diag_modules() -> Result<Vec<String>, String> {
    let r = ensure_with(&mut SystemModules::new());
    match &r {
        Ok(loaded) if !loaded.is_empty() => log::info!("loaded kernel modules {loaded:?}"),
        Ok(_) => {}
        Err(e) => log::warn!("{e}"),
    }
    r
}

fn ensure_with(env: &mut impl ModuleEnv) -> Result<Vec<String>, String> {
    let missing: Vec<&str> = DIAG_MODULES
        .into_iter()
        .filter(|m| !env.present(m))
        .collect();
    if missing.is_empty() {
        return Ok(Vec::new());
    }
    if !env.can_load() {
        // No loadable modules: sock_diag is built in (no /sys/module entry) or absent.
        return match env.tcp_diag_answers() {
            Ok(()) => Ok(Vec::new()),
            Err(why) => Err(no_module_support_message(&why)),
        };
    }
    let mut attempts = Vec::new();
    for m in DIAG_MODULES {
        // Loading tcp_diag normally pulls in inet_diag; try it on its own only if not.
        if !env.present(m) {
            attempts.push((m, env.modprobe(m)));
        }
    }
    let loaded: Vec<String> = missing
        .iter()
        .filter(|m| env.present(m))
        .map(|m| m.to_string())
        .collect();
    let still: Vec<&str> = DIAG_MODULES
        .into_iter()
        .filter(|m| !env.present(m))
        .collect();
    if still.is_empty() {
        return Ok(loaded);
    }
    // Built in with neither a /sys/module entry nor a modules.builtin list: ask sock_diag.
    if env.tcp_diag_answers().is_ok() {
        return Ok(loaded);
    }
    Err(modprobe_failure_message(&still, &attempts, env.is_root()))
}

/// What to do, in every failure message.
const WHAT_TO_DO: &str = "load them with `modprobe tcp_diag` (and `inet_diag`) before \
    starting tcpstall, or add them to /etc/modules-load.d/ (e.g. a file tcpstall.conf with \
    the two lines tcp_diag and inet_diag); in a container, load them on the host";

fn modprobe_failure_message(
    still: &[&str],
    attempts: &[(&str, Result<(), String>)],
    root: bool,
) -> String {
    let tried: Vec<String> = attempts
        .iter()
        .map(|(m, r)| match r {
            Ok(()) => format!(
                "`modprobe {m}` succeeded but {m} did not appear in /sys/module or \
                 /proc/modules (modules for another kernel? compare `uname -r` with \
                 /lib/modules)"
            ),
            Err(why) => format!("`modprobe {m}` failed: {why}"),
        })
        .collect();
    let who = if root {
        ""
    } else {
        " (modprobe needs root: CAP_SYS_MODULE)"
    };
    format!(
        "kernel module{} {} not loaded and could not be loaded{who}: {}. Without them \
         tcpstall cannot look sockets up or reset them (sock_diag answers ENOENT for every \
         TCP socket): {WHAT_TO_DO}",
        if still.len() == 1 { "" } else { "s" },
        still.join(" and "),
        if tried.is_empty() {
            "modprobe was not tried".to_string()
        } else {
            tried.join("; ")
        },
    )
}

fn no_module_support_message(why: &str) -> String {
    format!(
        "sock_diag has no TCP handler ({why}) and this kernel has no loadable module support \
         (/proc/modules is missing), so tcp_diag cannot be loaded: the kernel was built \
         without CONFIG_INET_DIAG / CONFIG_INET_TCP_DIAG. tcpstall cannot look sockets up or \
         reset them on it; run observe-only or use a kernel with them (as modules: {WHAT_TO_DO})"
    )
}

/// The real system.
struct SystemModules {
    /// Module names from `/lib/modules/$(uname -r)/modules.builtin`.
    builtin: Vec<String>,
}

impl SystemModules {
    fn new() -> SystemModules {
        let builtin = crate::btf::uname_release()
            .and_then(|r| fs::read_to_string(format!("/lib/modules/{r}/modules.builtin")).ok())
            .map(|s| parse_builtin(&s))
            .unwrap_or_default();
        SystemModules { builtin }
    }
}

/// Normalised module name (`modprobe` treats `-` and `_` alike).
fn norm(m: &str) -> String {
    m.replace('-', "_")
}

/// Module names of a `modules.builtin` file (lines like `kernel/net/ipv4/tcp_diag.ko`).
fn parse_builtin(s: &str) -> Vec<String> {
    s.lines()
        .filter_map(|l| l.trim().rsplit('/').next())
        .filter_map(|f| f.strip_suffix(".ko"))
        .map(norm)
        .collect()
}

/// Whether `/proc/modules` text lists `module` (first field of a line).
fn proc_modules_lists(text: &str, module: &str) -> bool {
    let want = norm(module);
    text.lines()
        .filter_map(|l| l.split_whitespace().next())
        .any(|m| norm(m) == want)
}

impl ModuleEnv for SystemModules {
    fn present(&self, module: &str) -> bool {
        Path::new("/sys/module").join(module).exists()
            || fs::read_to_string("/proc/modules").is_ok_and(|t| proc_modules_lists(&t, module))
            || self.builtin.contains(&norm(module))
    }

    fn can_load(&self) -> bool {
        Path::new("/proc/modules").exists()
    }

    fn modprobe(&mut self, module: &str) -> Result<(), String> {
        run_modprobe(module)
    }

    fn tcp_diag_answers(&self) -> Result<(), String> {
        tcp_diag_answers().map_err(|e| e.to_string())
    }

    fn is_root(&self) -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }
}

/// Run `modprobe module` (from `PATH`, else /usr/sbin or /sbin), bounded in time.
fn run_modprobe(module: &str) -> Result<(), String> {
    let mut child = None;
    let mut not_found = None;
    for prog in ["modprobe", "/usr/sbin/modprobe", "/sbin/modprobe"] {
        match Command::new(prog)
            .arg(module)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
        {
            Ok(c) => {
                child = Some(c);
                break;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => not_found = Some(e),
            Err(e) => return Err(format!("cannot run {prog}: {e}")),
        }
    }
    let Some(mut child) = child else {
        return Err(format!(
            "modprobe not found in PATH, /usr/sbin or /sbin ({}); install kmod",
            not_found.map_or_else(|| "not found".to_string(), |e| e.to_string())
        ));
    };
    let deadline = Instant::now() + MODPROBE_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "modprobe did not finish within {} s and was killed",
                    MODPROBE_TIMEOUT.as_secs()
                ));
            }
            Err(e) => return Err(format!("waiting for modprobe: {e}")),
        }
    };
    if status.success() {
        return Ok(());
    }
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut stderr);
    }
    Err(modprobe_exit_text(status.code(), &stderr))
}

fn modprobe_exit_text(code: Option<i32>, stderr: &str) -> String {
    let how = match code {
        Some(c) => format!("exit status {c}"),
        None => "killed by a signal".to_string(),
    };
    let said = stderr.split_whitespace().collect::<Vec<_>>().join(" ");
    if said.is_empty() {
        how
    } else {
        format!("{how}: {said}")
    }
}

/// Ask sock_diag for the listening TCP sockets of our own namespace: succeeds only when a
/// TCP handler (tcp_diag) is there. Needs no privilege; the answer is small on any host.
fn tcp_diag_answers() -> Result<(), ResetError> {
    let fd = open_diag_socket_here()?;
    let id = WireId::any(AF_INET);
    let seq = 1;
    let mut msg = encode_request(SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq, &id, 0);
    // idiag_states: TCP_LISTEN (10) only.
    msg[NLMSG_HDRLEN + 4..NLMSG_HDRLEN + 8].copy_from_slice(&(1u32 << 10).to_ne_bytes());
    send_request(fd.as_raw_fd(), &msg)?;
    let mut buf = vec![0u8; DUMP_BUF_LEN];
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut sink = Vec::new();
    loop {
        let n = recv_datagram(fd.as_raw_fd(), &mut buf, deadline)?;
        if parse_dump_datagram(&buf[..n], seq, &mut sink)? {
            return Ok(());
        }
        sink.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[derive(Default)]
    struct Fake {
        present: HashSet<String>,
        no_modules: bool,
        /// modprobe NAME loads these (or fails with the message).
        loads: HashMap<String, Result<Vec<String>, String>>,
        answers: Option<String>,
        root: bool,
        ran: Vec<String>,
    }

    impl ModuleEnv for Fake {
        fn present(&self, m: &str) -> bool {
            self.present.contains(m)
        }
        fn can_load(&self) -> bool {
            !self.no_modules
        }
        fn modprobe(&mut self, m: &str) -> Result<(), String> {
            self.ran.push(m.to_string());
            match self.loads.get(m).cloned().unwrap_or(Ok(vec![])) {
                Ok(mods) => {
                    self.present.extend(mods);
                    Ok(())
                }
                Err(e) => Err(e),
            }
        }
        fn tcp_diag_answers(&self) -> Result<(), String> {
            match &self.answers {
                None => Ok(()),
                Some(e) => Err(e.clone()),
            }
        }
        fn is_root(&self) -> bool {
            self.root
        }
    }

    fn set(v: &[&str]) -> HashSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn present_modules_load_nothing() {
        let mut f = Fake {
            present: set(&["tcp_diag", "inet_diag"]),
            answers: Some("must not be asked".into()),
            ..Fake::default()
        };
        assert_eq!(ensure_with(&mut f), Ok(vec![]));
        assert!(f.ran.is_empty());
    }

    #[test]
    fn tcp_diag_pulls_inet_diag() {
        let mut f = Fake {
            root: true,
            answers: Some("no handler".into()),
            ..Fake::default()
        };
        f.loads.insert(
            "tcp_diag".into(),
            Ok(vec!["tcp_diag".into(), "inet_diag".into()]),
        );
        assert_eq!(
            ensure_with(&mut f),
            Ok(vec!["tcp_diag".to_string(), "inet_diag".to_string()])
        );
        assert_eq!(f.ran, ["tcp_diag"]);
        // Only inet_diag there already: tcp_diag is loaded and reported alone.
        let mut f = Fake {
            present: set(&["inet_diag"]),
            ..Fake::default()
        };
        f.loads
            .insert("tcp_diag".into(), Ok(vec!["tcp_diag".into()]));
        assert_eq!(ensure_with(&mut f), Ok(vec!["tcp_diag".to_string()]));
        // tcp_diag loaded, inet_diag not pulled (odd packaging): tried separately.
        let mut f = Fake::default();
        f.loads
            .insert("tcp_diag".into(), Ok(vec!["tcp_diag".into()]));
        f.loads
            .insert("inet_diag".into(), Ok(vec!["inet_diag".into()]));
        assert_eq!(
            ensure_with(&mut f),
            Ok(vec!["tcp_diag".to_string(), "inet_diag".to_string()])
        );
        assert_eq!(f.ran, ["tcp_diag", "inet_diag"]);
    }

    #[test]
    fn built_in_without_sysfs_entries() {
        // No module support at all (this test host): sock_diag answering is enough.
        let mut f = Fake {
            no_modules: true,
            ..Fake::default()
        };
        assert_eq!(ensure_with(&mut f), Ok(vec![]));
        assert!(f.ran.is_empty());
        let mut f = Fake {
            no_modules: true,
            answers: Some("ENOENT".into()),
            ..Fake::default()
        };
        let e = ensure_with(&mut f).unwrap_err();
        assert!(e.contains("no loadable module support"), "{e}");
        assert!(e.contains("CONFIG_INET_TCP_DIAG"), "{e}");
        assert!(e.contains("ENOENT"), "{e}");
        // Module kernel, modprobe fails (no modules.builtin), but it is built in.
        let mut f = Fake::default();
        f.loads
            .insert("tcp_diag".into(), Err("exit status 1: not found".into()));
        f.loads
            .insert("inet_diag".into(), Err("exit status 1: not found".into()));
        assert_eq!(ensure_with(&mut f), Ok(vec![]));
    }

    #[test]
    fn failure_says_what_why_and_what_to_do() {
        let mut f = Fake {
            answers: Some("ENOENT".into()),
            root: true,
            ..Fake::default()
        };
        f.loads.insert(
            "tcp_diag".into(),
            Err(modprobe_exit_text(
                Some(1),
                "modprobe: FATAL: Module tcp_diag not found in directory \
                 /lib/modules/6.1.0-13-cloud-amd64\n",
            )),
        );
        f.loads.insert(
            "inet_diag".into(),
            Err(modprobe_exit_text(
                Some(1),
                "modprobe: FATAL: Module inet_diag not found in directory \
                 /lib/modules/6.1.0-13-cloud-amd64\n",
            )),
        );
        let e = ensure_with(&mut f).unwrap_err();
        assert_eq!(
            e,
            "kernel modules tcp_diag and inet_diag not loaded and could not be loaded: \
             `modprobe tcp_diag` failed: exit status 1: modprobe: FATAL: Module tcp_diag not \
             found in directory /lib/modules/6.1.0-13-cloud-amd64; `modprobe inet_diag` \
             failed: exit status 1: modprobe: FATAL: Module inet_diag not found in directory \
             /lib/modules/6.1.0-13-cloud-amd64. Without them tcpstall cannot look sockets up \
             or reset them (sock_diag answers ENOENT for every TCP socket): load them with \
             `modprobe tcp_diag` (and `inet_diag`) before starting tcpstall, or add them to \
             /etc/modules-load.d/ (e.g. a file tcpstall.conf with the two lines tcp_diag and \
             inet_diag); in a container, load them on the host"
        );
        // Not root; modprobe missing; one module already there.
        let mut f = Fake {
            present: set(&["inet_diag"]),
            answers: Some("ENOENT".into()),
            ..Fake::default()
        };
        f.loads.insert(
            "tcp_diag".into(),
            Err(
                "modprobe not found in PATH, /usr/sbin or /sbin (No such file or directory \
                 (os error 2)); install kmod"
                    .into(),
            ),
        );
        let e = ensure_with(&mut f).unwrap_err();
        assert!(
            e.starts_with(
                "kernel module tcp_diag not loaded and could not be loaded (modprobe needs \
                 root: CAP_SYS_MODULE): `modprobe tcp_diag` failed: modprobe not found"
            ),
            "{e}"
        );
        assert!(e.contains("install kmod"), "{e}");
        assert!(e.contains("/etc/modules-load.d/"), "{e}");
        // modprobe "succeeds" but nothing appears.
        let mut f = Fake {
            answers: Some("ENOENT".into()),
            root: true,
            ..Fake::default()
        };
        let e = ensure_with(&mut f).unwrap_err();
        assert!(
            e.contains("`modprobe tcp_diag` succeeded but tcp_diag did not appear"),
            "{e}"
        );
        assert!(e.contains("uname -r"), "{e}");
    }

    #[test]
    fn modprobe_output_and_module_lists() {
        assert_eq!(modprobe_exit_text(Some(1), ""), "exit status 1");
        assert_eq!(modprobe_exit_text(None, "  \n"), "killed by a signal");
        assert_eq!(
            modprobe_exit_text(
                Some(1),
                "modprobe: ERROR: could not insert 'tcp_diag':\n Operation not permitted\n"
            ),
            "exit status 1: modprobe: ERROR: could not insert 'tcp_diag': Operation not permitted"
        );
        let b = parse_builtin("kernel/net/ipv4/inet_diag.ko\nkernel/net/ipv4/tcp_diag.ko\n\nkernel/drivers/foo-bar.ko\n");
        assert_eq!(b, ["inet_diag", "tcp_diag", "foo_bar"]);
        let pm =
            "tcp_diag 16384 0 - Live 0x0000000000000000\ninet_diag 28672 1 tcp_diag, Live 0x0\n";
        assert!(proc_modules_lists(pm, "tcp_diag") && proc_modules_lists(pm, "inet_diag"));
        assert!(!proc_modules_lists(pm, "udp_diag"));
        assert!(!proc_modules_lists(
            "tcp_diag_x 1 0 - Live 0x0\n",
            "tcp_diag"
        ));
    }

    /// The real system. Needs no privilege when the modules are already there or built in
    /// (the fallback check is an unprivileged sock_diag dump); never loads modules itself.
    #[test]
    fn real_system_reports_nothing_loaded_when_present() {
        let sys = SystemModules::new();
        let all_present = DIAG_MODULES.iter().all(|m| sys.present(m));
        if !all_present && sys.can_load() {
            // Loading kernel modules changes the machine: only on CI, where it is the
            // point (the real modprobe path), and only as root.
            if std::env::var("CI").as_deref() == Ok("true") && sys.is_root() {
                let loaded = ensure_diag_modules().expect("modprobe tcp_diag on CI");
                assert!(!loaded.is_empty(), "{loaded:?}");
                assert!(DIAG_MODULES.iter().all(|m| sys.present(m)));
                assert_eq!(
                    ensure_diag_modules(),
                    Ok(vec![]),
                    "second call loads nothing"
                );
                return;
            }
            eprintln!(
                "SKIP real_system_reports_nothing_loaded_when_present: {DIAG_MODULES:?} are \
                 not all loaded, and unit tests load kernel modules only as root with CI=true"
            );
            return;
        }
        assert_eq!(ensure_diag_modules(), Ok(vec![]));
        if !all_present {
            // Built in without /sys/module entries (this test host): sock_diag answers.
            tcp_diag_answers().unwrap();
        }
    }
}
