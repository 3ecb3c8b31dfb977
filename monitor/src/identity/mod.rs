//! Who owns a socket, in the terms policies select on: cgroup path from the cgroup id the
//! kernel side records (cgroup v2: the id is the inode number of the cgroup directory), and
//! from that path the container and the Kubernetes pod, where the path shows one.

pub mod holders;
pub mod iter;

use procfs::FromRead;
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Resolves cgroup ids to paths relative to the cgroup v2 root ("/system.slice/x.service").
/// Results (including misses) are cached; a miss is retried after `retry_after` lookups of
/// other ids so new cgroups are found without rescanning on every tick.
pub struct CgroupPaths {
    root: PathBuf,
    cache: HashMap<u64, Option<String>>,
}

impl Default for CgroupPaths {
    fn default() -> Self {
        CgroupPaths::new(cgroup2_root())
    }
}

/// Where the cgroup v2 hierarchy is mounted: `/sys/fs/cgroup` on unified systems,
/// `/sys/fs/cgroup/unified` on hybrid ones (v1 controllers at `/sys/fs/cgroup/<controller>`,
/// whose directory inodes are not cgroup v2 ids). From `/proc/self/mountinfo`.
pub fn cgroup2_root() -> PathBuf {
    std::fs::read("/proc/self/mountinfo")
        .ok()
        .and_then(cgroup2_in_mountinfo)
        .unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup"))
}

fn cgroup2_in_mountinfo(mountinfo: impl AsRef<[u8]>) -> Option<PathBuf> {
    let mounts = procfs::process::MountInfos::from_read(mountinfo.as_ref()).ok()?;
    mounts
        .into_iter()
        .find(|m| m.fs_type == "cgroup2")
        .map(|m| m.mount_point)
}

impl CgroupPaths {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        CgroupPaths {
            root: root.into(),
            cache: HashMap::new(),
        }
    }

    /// The cgroup path for `id`, or None if no cgroup directory has that inode.
    pub fn path(&mut self, id: u64) -> Option<String> {
        if let Some(hit) = self.cache.get(&id) {
            return hit.clone();
        }
        // One scan indexes every cgroup, so later ids are usually cache hits.
        let mut found = None;
        let root = self.root.clone();
        walk(&root, &root, &mut |ino, rel| {
            self.cache.insert(ino, Some(rel.to_string()));
            if ino == id {
                found = Some(rel.to_string());
            }
        });
        if found.is_none() {
            self.cache.insert(id, None);
        }
        if self.cache.len() > 100_000 {
            self.cache.clear();
        }
        found
    }
}

fn walk(root: &Path, dir: &Path, f: &mut dyn FnMut(u64, &str)) {
    let dev = std::fs::metadata(root).map(|m| m.dev()).unwrap_or(0);
    walk_dev(root, dir, dev, f)
}

/// Only directories of the cgroup2 file system itself (never into another mount below it).
fn walk_dev(root: &Path, dir: &Path, dev: u64, f: &mut dyn FnMut(u64, &str)) {
    let Ok(meta) = std::fs::metadata(dir) else {
        return;
    };
    if meta.dev() != dev {
        return;
    }
    let rel = match dir.strip_prefix(root) {
        Ok(r) if r.as_os_str().is_empty() => "/".to_string(),
        Ok(r) => format!("/{}", r.display()),
        Err(_) => return,
    };
    f(meta.ino(), &rel);
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            walk_dev(root, &e.path(), dev, f);
        }
    }
}

/// The container (and pod) a cgroup path belongs to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Workload {
    /// `containerd`, `cri-o`, `docker`, `podman`, or `kubernetes` (a cgroupfs-driver pod
    /// cgroup, which does not name its runtime).
    pub runtime: Option<String>,
    /// Container id (64 hex digits for the common runtimes).
    pub container_id: Option<String>,
    /// Kubernetes pod UID (dashed form).
    pub pod_uid: Option<String>,
    pub pod_namespace: Option<String>,
    pub pod_name: Option<String>,
}

impl Workload {
    pub fn is_empty(&self) -> bool {
        self.container_id.is_none() && self.pod_uid.is_none()
    }
}

/// A container id: 12 to 64 lowercase hex digits.
fn container_id(s: &str) -> Option<&str> {
    (s.len() >= 12
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
    .then_some(s)
}

/// A pod UID as cgroup paths spell it: `pod<uid>` (cgroupfs driver, dashes) or
/// `…-pod<uid>.slice` (systemd driver, dashes written as underscores).
fn pod_uid(component: &str) -> Option<String> {
    let rest = if let Some(slice) = component.strip_suffix(".slice") {
        let at = slice.rfind("-pod")?;
        &slice[at + 4..]
    } else {
        component.strip_prefix("pod")?
    };
    let uid = rest.replace('_', "-");
    let ok = uid.len() == 36
        && uid.bytes().enumerate().all(|(i, b)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                b == b'-'
            } else {
                b.is_ascii_hexdigit()
            }
        });
    ok.then_some(uid)
}

/// The container and pod a cgroup v2 path shows, for the common layouts:
///
/// * Kubernetes, systemd driver:
///   `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<UID>.slice/cri-containerd-<ID>.scope`
///   (also `crio-<ID>.scope`, `docker-<ID>.scope`);
/// * Kubernetes, cgroupfs driver: `/kubepods/burstable/pod<UID>/<ID>`;
/// * Docker: `/system.slice/docker-<ID>.scope`, or `/docker/<ID>` (cgroupfs driver);
/// * Podman: `…/libpod-<ID>.scope` (rootful under `machine.slice`, rootless under the
///   user's slice; `libpod-conmon-<ID>.scope` is the monitor, not the container).
///
/// Returns an empty [`Workload`] for anything else.
pub fn workload(path: &str) -> Workload {
    let parts: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let mut w = Workload::default();
    let in_kube = parts
        .first()
        .is_some_and(|p| *p == "kubepods" || *p == "kubepods.slice");
    for (i, c) in parts.iter().enumerate() {
        if in_kube {
            if let Some(uid) = pod_uid(c) {
                w.pod_uid = Some(uid);
                continue;
            }
        }
        let scoped = |prefix: &str| {
            c.strip_prefix(prefix)
                .and_then(|r| r.strip_suffix(".scope"))
                .and_then(container_id)
        };
        let found = [
            ("cri-containerd-", "containerd"),
            ("crio-", "cri-o"),
            ("docker-", "docker"),
            ("libpod-", "podman"),
        ]
        .iter()
        .find_map(|(prefix, rt)| scoped(prefix).map(|id| (id, *rt)));
        if let Some((id, rt)) = found {
            w.container_id = Some(id.to_string());
            w.runtime = Some(rt.to_string());
            continue;
        }
        // cgroupfs drivers: a bare id under a pod (Kubernetes) or under /docker.
        if let Some(id) = container_id(c) {
            if w.pod_uid.is_some() {
                w.container_id = Some(id.to_string());
                w.runtime = Some("kubernetes".into());
            } else if i == 1 && parts[0] == "docker" {
                w.container_id = Some(id.to_string());
                w.runtime = Some("docker".into());
            }
        }
    }
    if w.pod_uid.is_some() && w.runtime.is_none() {
        w.runtime = Some("kubernetes".into());
    }
    w
}

/// Pod namespace and name by UID, from the kubelet's log directories
/// (`/var/log/pods/<namespace>_<name>_<uid>`): no API call. Rescanned at most every
/// [`PODS_RESCAN`] when a UID is not found.
pub struct PodDirectory {
    dir: PathBuf,
    pods: HashMap<String, (String, String)>,
    scanned: Option<std::time::Instant>,
}

/// How often a miss may trigger a rescan of the pod log directories.
pub const PODS_RESCAN: std::time::Duration = std::time::Duration::from_secs(5);

impl Default for PodDirectory {
    fn default() -> Self {
        PodDirectory::new(
            std::env::var_os("TCPSTALL_PODS_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| "/var/log/pods".into()),
        )
    }
}

impl PodDirectory {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        PodDirectory {
            dir: dir.into(),
            pods: HashMap::new(),
            scanned: None,
        }
    }

    /// (namespace, name) of the pod with this UID, if the node has its directory.
    pub fn lookup(&mut self, uid: &str) -> Option<(String, String)> {
        if let Some(hit) = self.pods.get(uid) {
            return Some(hit.clone());
        }
        if self.scanned.is_some_and(|t| t.elapsed() < PODS_RESCAN) {
            return None;
        }
        self.scanned = Some(std::time::Instant::now());
        self.pods.clear();
        if let Ok(rd) = std::fs::read_dir(&self.dir) {
            for e in rd.flatten().take(100_000) {
                let name = e.file_name();
                let Some(name) = name.to_str() else { continue };
                // Namespace and pod names cannot contain '_' (DNS names); the UID is last.
                let mut it = name.splitn(3, '_');
                if let (Some(ns), Some(pod), Some(uid)) = (it.next(), it.next(), it.next()) {
                    self.pods
                        .insert(uid.to_string(), (ns.to_string(), pod.to_string()));
                }
            }
        }
        self.pods.get(uid).cloned()
    }

    /// The workload of a cgroup path, with the pod's namespace and name filled in.
    pub fn resolve(&mut self, cgroup_path: &str) -> Workload {
        let mut w = workload(cgroup_path);
        if let Some(uid) = w.pod_uid.clone() {
            if let Some((ns, name)) = self.lookup(&uid) {
                w.pod_namespace = Some(ns);
                w.pod_name = Some(name);
            }
        }
        w
    }
}

/// A socket writer's cgroup path and workload, from the cgroup id the kernel recorded.
#[derive(Default)]
pub struct Owners {
    cgroups: CgroupPaths,
    pods: PodDirectory,
}

impl Owners {
    pub fn new(cgroups: CgroupPaths, pods: PodDirectory) -> Owners {
        Owners { cgroups, pods }
    }

    /// The cgroup path of `cgroup_id` and what it shows (empty when unknown).
    pub fn of(&mut self, cgroup_id: Option<u64>) -> (Option<String>, Workload) {
        let path = cgroup_id.and_then(|id| self.cgroups.path(id));
        let w = match &path {
            Some(p) => self.pods.resolve(p),
            None => Workload::default(),
        };
        (path, w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const UID: &str = "6f2a3b1c-1d2e-4f50-8a9b-0c1d2e3f4a5b";

    #[test]
    fn the_cgroup2_mount_is_found_on_unified_and_hybrid_systems() {
        let hybrid = "31 1 0:26 / /sys/fs/cgroup ro - tmpfs tmpfs ro,mode=755\n\
                      33 31 0:28 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n\
                      41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_in_mountinfo(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified = "30 24 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_in_mountinfo(unified),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(
            cgroup2_in_mountinfo("1 2 3:4 / / rw - ext4 /dev/vda rw\n"),
            None
        );
        // The running system's answer is a cgroup2 mount whose root inode is the root
        // cgroup's id (1 on cgroup v2).
        let root = cgroup2_root();
        assert!(root.join("cgroup.procs").exists(), "{}", root.display());
    }

    #[test]
    fn container_and_pod_from_the_common_cgroup_layouts() {
        let us = UID.replace('-', "_");
        let w = workload(&format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{us}.slice/cri-containerd-{ID}.scope"
        ));
        assert_eq!(w.pod_uid.as_deref(), Some(UID));
        assert_eq!(w.container_id.as_deref(), Some(ID));
        assert_eq!(w.runtime.as_deref(), Some("containerd"));
        let w = workload(&format!(
            "/kubepods.slice/kubepods-pod{us}.slice/crio-{ID}.scope"
        ));
        assert_eq!(
            (w.pod_uid.as_deref(), w.runtime.as_deref()),
            (Some(UID), Some("cri-o"))
        );
        let w = workload(&format!("/kubepods/burstable/pod{UID}/{ID}"));
        assert_eq!(w.pod_uid.as_deref(), Some(UID));
        assert_eq!(w.container_id.as_deref(), Some(ID));
        assert_eq!(w.runtime.as_deref(), Some("kubernetes"));
        let w = workload(&format!("/kubepods/pod{UID}/{ID}"));
        assert_eq!(w.pod_uid.as_deref(), Some(UID));
        let w = workload(&format!("/system.slice/docker-{ID}.scope"));
        assert_eq!(
            (w.container_id.as_deref(), w.runtime.as_deref()),
            (Some(ID), Some("docker"))
        );
        assert!(w.pod_uid.is_none());
        let w = workload(&format!("/docker/{ID}"));
        assert_eq!(w.runtime.as_deref(), Some("docker"));
        let w = workload(&format!("/machine.slice/libpod-{ID}.scope"));
        assert_eq!(
            (w.container_id.as_deref(), w.runtime.as_deref()),
            (Some(ID), Some("podman"))
        );
        let w = workload(&format!(
            "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container"
        ));
        assert_eq!(w.runtime.as_deref(), Some("podman"));
        // Not containers.
        assert!(workload(&format!("/machine.slice/libpod-conmon-{ID}.scope")).is_empty());
        assert!(workload("/system.slice/ssh.service").is_empty());
        assert!(workload("/user.slice/user-1000.slice/session-3.scope").is_empty());
        assert!(workload(&format!("/system.slice/pod{UID}/{ID}")).is_empty());
        assert!(workload("/").is_empty());
    }

    #[test]
    fn pod_names_come_from_the_kubelet_log_directories() {
        let tmp = std::env::temp_dir().join(format!("tcpstall-pods-{}", std::process::id()));
        std::fs::create_dir_all(tmp.join(format!("payments_api-7d9f8-x2x_{UID}"))).unwrap();
        let mut d = PodDirectory::new(&tmp);
        let w = d.resolve(&format!("/kubepods/pod{UID}/{ID}"));
        assert_eq!(w.pod_namespace.as_deref(), Some("payments"));
        assert_eq!(w.pod_name.as_deref(), Some("api-7d9f8-x2x"));
        // A pod not on this node: no name, and no rescan before PODS_RESCAN.
        let other = "11111111-2222-3333-4444-555555555555";
        assert!(d.lookup(other).is_none());
        std::fs::create_dir_all(tmp.join(format!("default_late_{other}"))).unwrap();
        assert!(d.lookup(other).is_none());
        d.scanned = None;
        assert_eq!(d.lookup(other), Some(("default".into(), "late".into())));
        std::fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn resolves_directory_inodes_to_relative_paths() {
        let tmp = std::env::temp_dir().join(format!("tcpstall-cg-{}", std::process::id()));
        std::fs::create_dir_all(tmp.join("system.slice/app.service")).unwrap();
        let ino = std::fs::metadata(tmp.join("system.slice/app.service"))
            .unwrap()
            .ino();
        let mut c = CgroupPaths::new(&tmp);
        assert_eq!(c.path(ino).as_deref(), Some("/system.slice/app.service"));
        assert_eq!(c.path(1).as_deref(), None);
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
