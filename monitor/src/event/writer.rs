//! The event output: [`EventWriter`] writes NDJSON lines to stdout or to `--output FILE`
//! ([`open_output`]: a regular file only, appended, mode 0600), counting lines it could not write.

use super::Event;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Writes events as NDJSON: each line (with its newline) in one `write(2)` on an unbuffered
/// descriptor, so a line is never split across files by log rotation and never interleaved
/// with a half of another. Counts the lines it could not write (`stats.events_lost`) and, once
/// writing works again, says so in an `events_lost` line. A write error is returned to the
/// caller, who decides (the agent logs it and keeps running: [`EventWriter::emit`]).
pub struct EventWriter {
    out: Box<dyn Write + Send>,
    /// For `--output`: the same open file, to cut a partly written line off again.
    file: Option<std::fs::File>,
    /// For `--output`: the path, to reopen on SIGHUP.
    path: Option<PathBuf>,
    dest: String,
    lost: u64,
    /// Lost since the last `events_lost` line.
    unreported: u64,
    written: u64,
    /// The last write failed (for logging the transitions once, not every line).
    failing: bool,
    /// A previous write failed after emitting part of a line that could not be cut off; the
    /// next line must start on a fresh line so only the broken one is unparsable.
    broken_line: bool,
}

const OUTPUT_FIX: &str = "pass the path of a regular file (created with mode 0600 if missing; \
                          events are appended), or omit --output to write events to stdout";

fn refuse_output(path: &Path, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "cannot use {} as the event output: it is {what}, and tcpstall writes events only \
             to a regular file (a symbolic link could point anywhere; a FIFO, device or \
             directory could block the agent or swallow events); {OUTPUT_FIX}",
            path.display()
        ),
    )
}

/// Open `--output` safely: a regular file only (checked before opening, so a device is
/// never opened, and again on the open descriptor), never through a symbolic link
/// (`O_NOFOLLOW`), appending, created with mode 0600.
pub fn open_output(path: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::io::AsRawFd;
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if let Some(what) = crate::files::not_regular(&m.file_type()) {
            return Err(refuse_output(path, what));
        }
    }
    let file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        // O_NONBLOCK: a FIFO swapped in after the check must not block the open.
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                return refuse_output(path, "a symbolic link");
            }
            let why = match e.kind() {
                io::ErrorKind::NotFound => "its directory does not exist".to_string(),
                io::ErrorKind::PermissionDenied => "permission denied".to_string(),
                _ => e.to_string(),
            };
            io::Error::new(
                e.kind(),
                format!(
                    "cannot open event output {} for appending: {why}; check that the \
                     directory exists and is writable, or omit --output to write to stdout",
                    path.display()
                ),
            )
        })?;
    let m = file.metadata()?;
    if let Some(what) = crate::files::not_regular(&m.file_type()) {
        return Err(refuse_output(path, what));
    }
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let fd = file.as_raw_fd();
        let fl = libc::fcntl(fd, libc::F_GETFL);
        if fl < 0 || libc::fcntl(fd, libc::F_SETFL, fl & !libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(file)
}

impl EventWriter {
    /// Writer to standard output.
    pub fn stdout() -> Self {
        Self::new(Box::new(io::stdout()), "stdout")
    }

    /// Writer for `--output`: `None` is standard output, `Some(path)` a regular file opened
    /// with [`open_output`].
    pub fn open(path: Option<&Path>) -> io::Result<Self> {
        let Some(path) = path else {
            return Ok(Self::stdout());
        };
        let file = open_output(path)?;
        let mut w = Self::new(Box::new(file.try_clone()?), &path.display().to_string());
        w.file = Some(file);
        w.path = Some(path.to_path_buf());
        Ok(w)
    }

    /// Writer over any sink; `dest` names it in error messages.
    pub fn new(out: Box<dyn Write + Send>, dest: &str) -> Self {
        EventWriter {
            out,
            file: None,
            path: None,
            dest: dest.to_string(),
            lost: 0,
            unreported: 0,
            written: 0,
            failing: false,
            broken_line: false,
        }
    }

    /// The `--output` path; `None` for stdout and other sinks.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Open the `--output` path again (after log rotation moved the file away) and write
    /// to the new file from now on; counters carry over. On failure the old file stays in
    /// use. `None` for stdout (nothing to reopen).
    pub fn reopen(&mut self) -> Option<io::Result<()>> {
        let path = self.path.clone()?;
        Some(open_output(&path).and_then(|file| {
            self.out = Box::new(file.try_clone()?);
            self.file = Some(file);
            // A fresh file: nothing half-written in it.
            self.broken_line = false;
            Ok(())
        }))
    }

    /// Write `event` stamped with the current time.
    pub fn write(&mut self, event: &Event) -> io::Result<()> {
        self.write_at(event, SystemTime::now())
    }

    /// Write `event`; on failure log it (once per outage, and once when writing works
    /// again) and carry on: the loss is counted in [`events_lost`](Self::events_lost) and
    /// reported by an `events_lost` line once the output works again. What the agent uses:
    /// a failed write never stops it.
    pub fn emit(&mut self, event: &Event) {
        match self.write(event) {
            Ok(()) => {
                if self.failing {
                    self.failing = false;
                    log::warn!(
                        "event output {} works again ({} events lost in all)",
                        self.dest,
                        self.lost
                    );
                }
            }
            Err(e) => {
                if !self.failing {
                    self.failing = true;
                    log::error!(
                        "{e}; the agent keeps running and enforcing, counts the events it \
                         cannot write (stats.events_lost) and writes an events_lost line once \
                         the output works again; free space on the output's filesystem, or \
                         read the agent's stdout"
                    );
                }
            }
        }
    }

    /// Write `event` stamped with `ts`. On failure the event is counted in
    /// [`events_lost`](Self::events_lost) and the error says where writing failed. After a
    /// failure, the first line written successfully is followed by an `events_lost` line.
    pub fn write_at(&mut self, event: &Event, ts: SystemTime) -> io::Result<()> {
        match self.put(event, ts) {
            Ok(()) => {
                self.written += 1;
                if self.unreported > 0 {
                    let note = Event::EventsLost {
                        count: self.unreported,
                        total: self.lost,
                    };
                    // Not counted if it fails: the next success reports the losses again.
                    if self.put(&note, ts).is_ok() {
                        self.written += 1;
                        self.unreported = 0;
                    }
                }
                Ok(())
            }
            Err(e) => {
                self.lost += 1;
                self.unreported += 1;
                Err(io::Error::new(
                    e.kind(),
                    format!(
                        "cannot write {} event to {}: {e} ({} events lost so far)",
                        event.name(),
                        self.dest,
                        self.lost
                    ),
                ))
            }
        }
    }

    /// One line, in one `write(2)` unless the kernel takes only part of it.
    fn put(&mut self, event: &Event, ts: SystemTime) -> io::Result<()> {
        let mut buf = String::with_capacity(512);
        if self.broken_line {
            buf.push('\n');
        }
        buf.push_str(&event.to_json_line(ts));
        buf.push('\n');
        match self.write_all_tracking(buf.as_bytes()) {
            Ok(()) => {
                self.broken_line = false;
                Ok(())
            }
            Err((e, written)) => {
                let lead = usize::from(self.broken_line);
                if written > lead && !self.cut_partial(written - lead) {
                    // Bytes of this line made it out: terminate it before the next one.
                    self.broken_line = true;
                } else if written >= lead {
                    // Nothing of the line is left (or the leading newline alone made it out,
                    // which finished the old broken line).
                    self.broken_line = false;
                }
                Err(e)
            }
        }
    }

    /// A regular file took `written` bytes of a line and then refused the rest (disk full):
    /// cut them off again so the file holds whole lines only. Assumes tcpstall is the only
    /// writer of the file. False when that is not possible.
    fn cut_partial(&mut self, written: usize) -> bool {
        let Some(file) = &self.file else {
            return false;
        };
        match file.metadata() {
            Ok(m) => file.set_len(m.len().saturating_sub(written as u64)).is_ok(),
            Err(_) => false,
        }
    }

    /// `write_all` + flush that reports how many bytes went out before an error.
    fn write_all_tracking(&mut self, mut bytes: &[u8]) -> Result<(), (io::Error, usize)> {
        let mut written = 0;
        while !bytes.is_empty() {
            match self.out.write(bytes) {
                Ok(0) => {
                    return Err((
                        io::Error::new(io::ErrorKind::WriteZero, "output accepted no more bytes"),
                        written,
                    ))
                }
                Ok(n) => {
                    written += n;
                    bytes = &bytes[n..];
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err((e, written)),
            }
        }
        self.out.flush().map_err(|e| (e, written))
    }

    /// Events that could not be written since the writer was created.
    pub fn events_lost(&self) -> u64 {
        self.lost
    }

    /// Lines written since the writer was created (including `events_lost` lines).
    pub fn events_written(&self) -> u64 {
        self.written
    }
}
