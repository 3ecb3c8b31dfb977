//! Who owns a socket, in the terms policies select on: cgroup path from the cgroup id the
//! kernel side records (cgroup v2: the id is the inode number of the cgroup directory).

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
        CgroupPaths::new("/sys/fs/cgroup")
    }
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
    let Ok(meta) = std::fs::metadata(dir) else {
        return;
    };
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
            walk(root, &e.path(), f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
