//! Reading a policy file safely: a regular file (symbolic links followed) of at most
//! [`MAX_POLICY_BYTES`], checked before and after it is opened.

use super::{Policy, PolicyError, Problem};
use std::path::Path;

/// The largest policy file accepted (1 MiB): bigger files are refused before they are read.
pub const MAX_POLICY_BYTES: u64 = 1 << 20;

/// The text of a policy file, read safely: the path (symbolic links followed) must be a
/// regular file, checked before it is opened (opening a FIFO blocks, opening some devices
/// has effects) and again on the open descriptor; at most [`MAX_POLICY_BYTES`] are read.
/// `Err((what is wrong, what to do))`.
pub(super) fn read_policy_file(path: &Path) -> Result<String, (String, String)> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let usable = "the path of a readable TOML policy file (a symbolic link to one is fine), or \
                  no policy file to run with the built-in defaults (observe only)"
        .to_string();
    let io_err = |e: std::io::Error| {
        let message = match e.kind() {
            std::io::ErrorKind::NotFound => {
                "cannot read the policy file: it does not exist".to_string()
            }
            std::io::ErrorKind::PermissionDenied => {
                "cannot read the policy file: permission denied".to_string()
            }
            _ => format!("cannot read the policy file: {e}"),
        };
        (message, usable.clone())
    };
    let not_regular = |what: &str| {
        (
            format!(
                "cannot read the policy file: it is {what}, not a regular file (reading it \
                 could block or never end)"
            ),
            usable.clone(),
        )
    };
    let too_big = |len: u64| {
        (
            format!(
                "the policy file is too large: {len} bytes, the limit is {MAX_POLICY_BYTES} \
                 bytes (1 MiB)"
            ),
            "a smaller policy: merge rules that share their settings (selectors take lists \
             and port ranges)"
                .to_string(),
        )
    };
    let meta = std::fs::metadata(path).map_err(io_err)?;
    if let Some(what) = crate::files::not_regular(&meta.file_type()) {
        return Err(not_regular(what));
    }
    if meta.len() > MAX_POLICY_BYTES {
        return Err(too_big(meta.len()));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        // Never block in open(): the path may have been swapped for a FIFO since the check.
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(io_err)?;
    let meta = file.metadata().map_err(io_err)?;
    if let Some(what) = crate::files::not_regular(&meta.file_type()) {
        return Err(not_regular(what));
    }
    let mut buf = Vec::with_capacity(meta.len().min(MAX_POLICY_BYTES) as usize);
    file.take(MAX_POLICY_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(io_err)?;
    if buf.len() as u64 > MAX_POLICY_BYTES {
        // It grew while being read.
        return Err(too_big(buf.len() as u64));
    }
    String::from_utf8(buf).map_err(|_| {
        (
            "cannot read the policy file: it is not UTF-8 text".to_string(),
            usable.clone(),
        )
    })
}

impl Policy {
    /// Read and validate a policy file. Unreadable files are reported as a [`PolicyError`]
    /// with a single problem at line 0; so are files that are not regular files (a FIFO
    /// would block the reader, `/dev/zero` never ends) and files over [`MAX_POLICY_BYTES`].
    /// A symbolic link to a regular file is followed (configuration management and
    /// Kubernetes ConfigMaps install policies as links).
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let label = path.display().to_string();
        let src = read_policy_file(path).map_err(|(message, hint)| PolicyError {
            file: label.clone(),
            problems: vec![Problem {
                line: 0,
                col: 0,
                message,
                hint: Some(hint),
            }],
        })?;
        let mut policy = Policy::parse(&src, &label)?;
        policy.source = Some(path.to_path_buf());
        Ok(policy)
    }
}
