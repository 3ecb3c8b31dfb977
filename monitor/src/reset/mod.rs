//! The action stage: reset one TCP connection with netlink `sock_diag` `SOCK_DESTROY`
//! (what `ss -K` does), and look one socket up exactly (`SOCK_DIAG_BY_FAMILY` with
//! `INET_DIAG_INFO`) so the agent can re-verify a socket right before resetting it.
//!
//! A socket is named by its 4-tuple **and** its socket cookie. The kernel first finds the
//! socket by 4-tuple and then compares the cookie (`sock_diag_check_cookie`). That function
//! returns `-ESTALE` on a mismatch, but `inet_diag_find_one_icsk` turns every failure of the
//! cookie check into `-ENOENT`, so a cookie mismatch (a 4-tuple reused by a newer connection)
//! reaches userspace as `ENOENT`, exactly like "no such socket" — checked on Linux 6.18 by
//! the test `tests::wrong_cookie_does_not_kill`. Either way the wrong socket is never reset.
//!
//! The request must come from a `NETLINK_SOCK_DIAG` socket that lives in the target socket's
//! own network namespace. [`Destroyer`] resolves the namespace inode to an open namespace
//! file, enters it with `setns(CLONE_NEWNET)` on a short-lived helper thread (`setns` only
//! affects the calling thread), opens the netlink socket there and keeps it: a socket stays
//! bound to the namespace it was created in after the thread exits.
//!
//! IPv4-mapped IPv6 sockets (an `AF_INET6` socket talking to an IPv4 peer): the kernel looks
//! them up in the IPv4 tables. An `AF_INET6` request whose two addresses are both
//! `::ffff:a.b.c.d` is turned into that IPv4 lookup by the kernel; requests are sent in that
//! form first and, on `ENOENT`, once more as plain `AF_INET` (older kernels).
//!
//! Device-bound sockets (`SO_BINDTODEVICE`, a VRF, IPv6 link-local connections, which the
//! kernel binds to the scope's interface): the kernel's exact lookup matches a bound socket
//! only when the request's `idiag_if` names that interface (an unbound socket matches any
//! value). Every request carries [`Target::ifindex`]; with 0 a bound socket is not found
//! (`ENOENT`), checked on Linux 6.18 by `kernel_tests::bound_sockets_need_their_ifindex`.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[cfg(test)]
pub(crate) mod kernel_tests;
mod modules;
mod orphan;

pub use modules::{ensure_diag_modules, DIAG_MODULES};
pub use orphan::{orphan_probe, OrphanReport};

mod destroyer;
mod dump;
mod netlink;
mod netns;
mod selfprobe;
mod target;
mod wire;

pub use destroyer::*;
pub use dump::*;
use netlink::*;
pub use netns::*;
pub use selfprobe::*;
pub use target::*;
pub use wire::*;

/// Tests against the real kernel (SOCK_DESTROY, lookups, namespaces).
#[cfg(test)]
mod tests;

#[cfg(test)]
mod wire_tests;

/// Real-kernel test fixtures shared by this module's and [`crate::cli::reset`]'s tests.
#[cfg(test)]
pub(crate) mod test_support;

#[cfg(test)]
mod find_tests;
