//! Rules that can never match: an earlier rule selects every socket a later one selects
//! (the first matching rule wins). Near-linear in the size of the policy file.
//!
//! Each rule's selectors are normalised once: port lists into disjoint merged ranges, CIDR
//! lists into disjoint merged address ranges per family, names and namespaces into sorted
//! sets. "Earlier covers later" is then, per selector the earlier rule sets, a binary search
//! per entry of the later rule — exact for unions (`[80, 81]` covers `"80-81"`; two /25s
//! cover their /24), where the old per-port loop cost 65,535 steps per wide range.
//!
//! Finding *which* earlier rule covers a later one does not compare every pair. Earlier rules
//! are indexed by group (which selectors they set) and, within a group, by every selector
//! entry: a rule covering the later one must hold the later rule's first entry of each of its
//! selectors (its first port, a network containing its first network, its first process
//! name, ...), so for each group only the shortest of those candidate lists is examined.
//! Rules that are themselves covered by an earlier rule, or repeat an earlier rule's
//! selectors, are not indexed (the earlier one is found instead). The work is counted; a
//! pathological file that needs more than [`WORK_LIMIT`] steps is not checked past that
//! point, and a warning says so.

use super::{PortRange, Selectors};
use ipnet::IpNet;
use std::collections::HashMap;

/// Steps (index lookups, candidates examined, entries compared) the check may take. Real
/// policies need a few per rule; ~20 M steps take well under a second.
pub const WORK_LIMIT: u64 = 20_000_000;

const D_LPORTS: usize = 0;
const D_RPORTS: usize = 1;
const D_LNETS: usize = 2;
const D_RNETS: usize = 3;
const D_COMM: usize = 4;
const D_CGROUP: usize = 5;
const D_NETNS: usize = 6;
const D_K8SNS: usize = 7;
const D_POD: usize = 8;
const DIMS: usize = 9;

/// An address range of one family: (is IPv6, first, last).
type AddrRange = (bool, u128, u128);

/// Selectors normalised for coverage checks. Two rules with equal `Norm`s select the same
/// sockets.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
struct Norm {
    /// Bit `d` set: selector `d` is set.
    mask: u16,
    /// Disjoint, sorted, adjacent ranges merged.
    ports: [Vec<(u16, u16)>; 2],
    /// Disjoint, sorted (IPv4 first), adjacent ranges merged.
    nets: [Vec<AddrRange>; 2],
    comm: Vec<String>,
    cgroup: Vec<String>,
    netns: Vec<u32>,
    k8s_ns: Vec<String>,
    pod: Vec<String>,
}

/// Every prefix of `s` (on character boundaries), shortest first, `s` itself included.
fn str_prefixes(s: &str) -> impl Iterator<Item = &str> {
    s.char_indices()
        .skip(1)
        .map(move |(i, _)| &s[..i])
        .chain(std::iter::once(s))
}

fn merge_ports(ranges: &[PortRange]) -> Vec<(u16, u16)> {
    let mut v: Vec<(u16, u16)> = ranges.iter().map(|r| (r.first, r.last)).collect();
    v.sort_unstable();
    let mut out: Vec<(u16, u16)> = Vec::with_capacity(v.len());
    for (a, b) in v {
        match out.last_mut() {
            Some(last) if u32::from(a) <= u32::from(last.1) + 1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

/// Whether `port` lies in the merged ranges `ranges` (see [`merge_ports`]).
pub fn ports_contain(ranges: &[(u16, u16)], first: u16, last: u16) -> bool {
    let i = ranges.partition_point(|r| r.0 <= first);
    i > 0 && ranges[i - 1].1 >= last
}

/// Merged port ranges, for callers outside this module.
pub fn merged_ports(ranges: &[PortRange]) -> Vec<(u16, u16)> {
    merge_ports(ranges)
}

fn net_range(n: &IpNet) -> AddrRange {
    match n {
        IpNet::V4(v4) => (
            false,
            u128::from(u32::from(v4.network())),
            u128::from(u32::from(v4.broadcast())),
        ),
        IpNet::V6(v6) => (true, u128::from(v6.network()), u128::from(v6.broadcast())),
    }
}

fn merge_nets(nets: &[IpNet]) -> Vec<AddrRange> {
    let mut v: Vec<AddrRange> = nets.iter().map(net_range).collect();
    v.sort_unstable();
    let mut out: Vec<AddrRange> = Vec::with_capacity(v.len());
    for (f, a, b) in v {
        match out.last_mut() {
            Some(last) if last.0 == f && (last.2 == u128::MAX || a <= last.2 + 1) => {
                last.2 = last.2.max(b)
            }
            _ => out.push((f, a, b)),
        }
    }
    out
}

fn nets_contain(ranges: &[AddrRange], r: AddrRange) -> bool {
    let i = ranges.partition_point(|x| (x.0, x.1) <= (r.0, r.1));
    i > 0 && ranges[i - 1].0 == r.0 && ranges[i - 1].2 >= r.2
}

fn sorted<T: Ord + Clone>(v: &[T]) -> Vec<T> {
    let mut v = v.to_vec();
    v.sort_unstable();
    v.dedup();
    v
}

impl Norm {
    fn of(s: &Selectors) -> Norm {
        let mut n = Norm::default();
        let mut set = |d: usize| n.mask |= 1 << d;
        if s.local_ports.is_some() {
            set(D_LPORTS);
        }
        if s.remote_ports.is_some() {
            set(D_RPORTS);
        }
        if s.local_cidrs.is_some() {
            set(D_LNETS);
        }
        if s.remote_cidrs.is_some() {
            set(D_RNETS);
        }
        if s.comm.is_some() {
            set(D_COMM);
        }
        if s.cgroup_prefix.is_some() {
            set(D_CGROUP);
        }
        if s.netns.is_some() {
            set(D_NETNS);
        }
        if s.k8s_namespace.is_some() {
            set(D_K8SNS);
        }
        if s.pod_prefix.is_some() {
            set(D_POD);
        }
        n.ports = [
            s.local_ports
                .as_deref()
                .map(merge_ports)
                .unwrap_or_default(),
            s.remote_ports
                .as_deref()
                .map(merge_ports)
                .unwrap_or_default(),
        ];
        n.nets = [
            s.local_cidrs.as_deref().map(merge_nets).unwrap_or_default(),
            s.remote_cidrs
                .as_deref()
                .map(merge_nets)
                .unwrap_or_default(),
        ];
        n.comm = s.comm.as_deref().map(sorted).unwrap_or_default();
        n.cgroup = s.cgroup_prefix.as_deref().map(sorted).unwrap_or_default();
        n.netns = s.netns.as_deref().map(sorted).unwrap_or_default();
        n.k8s_ns = s.k8s_namespace.as_deref().map(sorted).unwrap_or_default();
        n.pod = s.pod_prefix.as_deref().map(sorted).unwrap_or_default();
        n
    }

    fn has(&self, d: usize) -> bool {
        self.mask & (1 << d) != 0
    }

    /// Whether every socket `later` selects is selected by `self`.
    fn covers(&self, later: &Norm, work: &mut u64) -> bool {
        if self.mask & !later.mask != 0 {
            return false;
        }
        for d in 0..DIMS {
            if !self.has(d) {
                continue;
            }
            let ok = match d {
                D_LPORTS | D_RPORTS => {
                    let k = d - D_LPORTS;
                    *work += later.ports[k].len() as u64;
                    later.ports[k]
                        .iter()
                        .all(|&(a, b)| ports_contain(&self.ports[k], a, b))
                }
                D_LNETS | D_RNETS => {
                    let k = d - D_LNETS;
                    *work += later.nets[k].len() as u64;
                    later.nets[k]
                        .iter()
                        .all(|&r| nets_contain(&self.nets[k], r))
                }
                D_COMM => {
                    *work += later.comm.len() as u64;
                    later
                        .comm
                        .iter()
                        .all(|c| self.comm.binary_search(c).is_ok())
                }
                D_CGROUP => later.cgroup.iter().all(|path| {
                    cgroup_keys(path).any(|p| {
                        *work += 1;
                        self.cgroup.binary_search_by(|x| x.as_str().cmp(p)).is_ok()
                    })
                }),
                D_NETNS => {
                    *work += later.netns.len() as u64;
                    later
                        .netns
                        .iter()
                        .all(|n| self.netns.binary_search(n).is_ok())
                }
                D_K8SNS => {
                    *work += later.k8s_ns.len() as u64;
                    later
                        .k8s_ns
                        .iter()
                        .all(|c| self.k8s_ns.binary_search(c).is_ok())
                }
                _ => later.pod.iter().all(|name| {
                    str_prefixes(name).any(|p| {
                        *work += 1;
                        self.pod.binary_search_by(|x| x.as_str().cmp(p)).is_ok()
                    })
                }),
            };
            if !ok {
                return false;
            }
        }
        true
    }
}

/// Every cgroup prefix under which `path` lies (`cgroup_under(path, prefix)`): `/` for an
/// absolute path, each leading part ending before a `/`, and the path itself.
fn cgroup_keys(path: &str) -> impl Iterator<Item = &str> {
    let root = path.starts_with('/').then_some("/");
    root.into_iter().chain(
        path.match_indices('/')
            .map(move |(i, _)| &path[..i])
            .filter(|p| !p.is_empty())
            .chain(std::iter::once(path)),
    )
}

/// Segment-tree nodes over ports 0..=65535 whose union is `[a, b]` (at most 32).
fn port_nodes(node: u32, lo: u32, hi: u32, a: u32, b: u32, out: &mut Vec<u32>) {
    if b < lo || hi < a {
        return;
    }
    if a <= lo && hi <= b {
        out.push(node);
        return;
    }
    let mid = (lo + hi) / 2;
    port_nodes(2 * node, lo, mid, a, b, out);
    port_nodes(2 * node + 1, mid + 1, hi, a, b, out);
}

/// The nodes on the path from the root to port `p` (17): those whose range holds `p`.
fn port_path(p: u16) -> impl Iterator<Item = u32> {
    let p = u32::from(p);
    let (mut node, mut lo, mut hi) = (1u32, 0u32, 65535u32);
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        let here = node;
        if lo == hi {
            done = true;
        } else {
            let mid = (lo + hi) / 2;
            if p <= mid {
                node *= 2;
                hi = mid;
            } else {
                node = 2 * node + 1;
                lo = mid + 1;
            }
        }
        Some(here)
    })
}

fn mask_to(v6: bool, addr: u128, len: u8) -> u128 {
    let width: u32 = if v6 { 128 } else { 32 };
    if len == 0 {
        0
    } else {
        let keep = u128::MAX << (width - u32::from(len));
        let keep = if v6 {
            keep
        } else {
            keep & u128::from(u32::MAX)
        };
        addr & keep
    }
}

/// Index key of one selector entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    Name(String),
    Num(u32),
    Node(u32),
    Net(bool, u128, u8),
}

/// The earlier rules of one group (same set of selectors), by selector entry.
#[derive(Default)]
struct Group {
    by: [HashMap<Key, Vec<u32>>; DIMS],
    /// Per network selector: prefix lengths present (v4 and v6), to look up only those.
    net_lens: [[Vec<bool>; 2]; 2],
}

impl Group {
    fn insert(&mut self, n: &Norm, s: &Selectors, idx: u32) {
        let mut keys: Vec<(usize, Key)> = Vec::new();
        for (k, d) in [(0, D_LPORTS), (1, D_RPORTS)] {
            if n.has(d) {
                for &(a, b) in &n.ports[k] {
                    let mut out = Vec::new();
                    port_nodes(1, 0, 65535, u32::from(a), u32::from(b), &mut out);
                    keys.extend(out.into_iter().map(|node| (d, Key::Node(node))));
                }
            }
        }
        for (k, (d, raw)) in [(D_LNETS, &s.local_cidrs), (D_RNETS, &s.remote_cidrs)]
            .into_iter()
            .enumerate()
        {
            let Some(raw) = raw else { continue };
            for net in IpNet::aggregate(raw) {
                let v6 = matches!(net, IpNet::V6(_));
                let lens = &mut self.net_lens[k][usize::from(v6)];
                if lens.is_empty() {
                    lens.resize(129, false);
                }
                lens[usize::from(net.prefix_len())] = true;
                let (_, first, _) = net_range(&net);
                keys.push((d, Key::Net(v6, first, net.prefix_len())));
            }
        }
        keys.extend(n.comm.iter().map(|c| (D_COMM, Key::Name(c.clone()))));
        keys.extend(n.cgroup.iter().map(|c| (D_CGROUP, Key::Name(c.clone()))));
        keys.extend(n.netns.iter().map(|x| (D_NETNS, Key::Num(*x))));
        keys.extend(n.k8s_ns.iter().map(|c| (D_K8SNS, Key::Name(c.clone()))));
        keys.extend(n.pod.iter().map(|c| (D_POD, Key::Name(c.clone()))));
        for (d, key) in keys {
            self.by[d].entry(key).or_default().push(idx);
        }
    }

    /// Keys under which an earlier rule of this group covering `l` must be listed, for
    /// selector `d`: derived from `l`'s first entry of it.
    fn probe_keys(&self, l: &Norm, d: usize) -> Vec<Key> {
        match d {
            D_LPORTS | D_RPORTS => match l.ports[d - D_LPORTS].first() {
                Some(&(p, _)) => port_path(p).map(Key::Node).collect(),
                None => Vec::new(),
            },
            D_LNETS | D_RNETS => {
                let k = d - D_LNETS;
                let Some(&(v6, first, _)) = l.nets[k].first() else {
                    return Vec::new();
                };
                // A covering rule has a network holding `first`: one of its supernets.
                let lens = &self.net_lens[k][usize::from(v6)];
                let width: u8 = if v6 { 128 } else { 32 };
                (0..=width)
                    .filter(|len| lens.get(usize::from(*len)).copied().unwrap_or(false))
                    .map(|len| Key::Net(v6, mask_to(v6, first, len), len))
                    .collect()
            }
            D_COMM => l
                .comm
                .first()
                .map(|c| vec![Key::Name(c.clone())])
                .unwrap_or_default(),
            D_CGROUP => l
                .cgroup
                .first()
                .map(|p| cgroup_keys(p).map(|k| Key::Name(k.to_string())).collect())
                .unwrap_or_default(),
            D_NETNS => l
                .netns
                .first()
                .map(|x| vec![Key::Num(*x)])
                .unwrap_or_default(),
            D_K8SNS => l
                .k8s_ns
                .first()
                .map(|c| vec![Key::Name(c.clone())])
                .unwrap_or_default(),
            _ => l
                .pod
                .first()
                .map(|p| str_prefixes(p).map(|k| Key::Name(k.to_string())).collect())
                .unwrap_or_default(),
        }
    }
}

/// For each rule (in file order; `None` = skip it: broken or without selectors), the index
/// of the first earlier rule that covers it, if any; and `Some(i)` when the work limit was
/// reached at rule `i`: rules from there on were not checked (their entries are `None`).
pub fn shadowing(rules: &[Option<&Selectors>]) -> (Vec<Option<usize>>, Option<usize>) {
    let mut out = vec![None; rules.len()];
    let mut work: u64 = 0;
    let mut first_match_all: Option<usize> = None;
    let mut seen: HashMap<Norm, usize> = HashMap::new();
    let mut norms: Vec<Option<Norm>> = vec![None; rules.len()];
    let mut groups: Vec<(u16, Group)> = Vec::new();
    for (j, sel) in rules.iter().enumerate() {
        let Some(sel) = sel else { continue };
        if work > WORK_LIMIT {
            return (out, Some(j));
        }
        if sel.match_all {
            out[j] = first_match_all;
            first_match_all.get_or_insert(j);
            continue;
        }
        let n = Norm::of(sel);
        let mut best = first_match_all;
        if let Some(&i) = seen.get(&n) {
            best = Some(best.map_or(i, |b| b.min(i)));
        }
        for (mask, g) in &groups {
            if mask & !n.mask != 0 {
                continue;
            }
            // The shortest candidate list of this group.
            let mut pick: Option<Vec<&Vec<u32>>> = None;
            let mut pick_len = usize::MAX;
            for d in 0..DIMS {
                if mask & (1 << d) == 0 {
                    continue;
                }
                let keys = g.probe_keys(&n, d);
                work += keys.len() as u64 + 1;
                let lists: Vec<&Vec<u32>> = keys.iter().filter_map(|k| g.by[d].get(k)).collect();
                let len: usize = lists.iter().map(|l| l.len()).sum();
                if len < pick_len {
                    pick_len = len;
                    pick = Some(lists);
                }
                if len == 0 {
                    break;
                }
            }
            for list in pick.unwrap_or_default() {
                for &i in list {
                    let i = i as usize;
                    if best.is_some_and(|b| i >= b) {
                        break; // lists are in file order
                    }
                    work += 1;
                    if norms[i].as_ref().is_some_and(|e| e.covers(&n, &mut work)) {
                        best = Some(i);
                        break;
                    }
                }
            }
        }
        out[j] = best;
        if best.is_none() {
            // Neither covered nor a repeat: later rules may be covered by this one.
            let g = match groups.iter_mut().position(|(m, _)| *m == n.mask) {
                Some(p) => &mut groups[p].1,
                None => {
                    groups.push((n.mask, Group::default()));
                    &mut groups.last_mut().expect("just pushed").1
                }
            };
            g.insert(&n, sel, j as u32);
            work += (n.ports[0].len() + n.ports[1].len()) as u64 * 32
                + (n.nets[0].len() + n.nets[1].len() + n.comm.len() + n.cgroup.len()) as u64
                + (n.netns.len() + n.k8s_ns.len() + n.pod.len()) as u64;
            seen.insert(n.clone(), j);
            norms[j] = Some(n);
        }
    }
    (out, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn ports(v: &[(u16, u16)]) -> Option<Vec<PortRange>> {
        Some(
            v.iter()
                .map(|&(first, last)| PortRange { first, last })
                .collect(),
        )
    }

    fn nets(v: &[&str]) -> Option<Vec<IpNet>> {
        Some(v.iter().map(|s| s.parse().unwrap()).collect())
    }

    /// Brute force: does `e` select every socket `l` selects? Ports and addresses are
    /// enumerated over the small spaces the generator uses.
    fn oracle(e: &Selectors, l: &Selectors) -> bool {
        if e.match_all {
            return true;
        }
        if l.match_all {
            return false;
        }
        fn dim<T>(e: &Option<Vec<T>>, l: &Option<Vec<T>>, f: impl Fn(&[T], &[T]) -> bool) -> bool {
            match (e, l) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(e), Some(l)) => f(e, l),
            }
        }
        let port_cov = |e: &[PortRange], l: &[PortRange]| {
            l.iter()
                .all(|r| (r.first..=r.last).all(|p| e.iter().any(|x| x.contains(p))))
        };
        let net_cov = |e: &[IpNet], l: &[IpNet]| {
            l.iter().all(|n| {
                n.hosts()
                    .chain([n.network(), n.broadcast()])
                    .all(|a: IpAddr| e.iter().any(|x| x.contains(&a)))
            })
        };
        dim(&e.local_ports, &l.local_ports, port_cov)
            && dim(&e.remote_ports, &l.remote_ports, port_cov)
            && dim(&e.local_cidrs, &l.local_cidrs, net_cov)
            && dim(&e.remote_cidrs, &l.remote_cidrs, net_cov)
            && dim(&e.comm, &l.comm, |e, l| l.iter().all(|x| e.contains(x)))
            && dim(&e.cgroup_prefix, &l.cgroup_prefix, |e, l| {
                l.iter().all(|p| {
                    e.iter()
                        .any(|pre| super::super::selectors::cgroup_under(p, pre))
                })
            })
            && dim(&e.netns, &l.netns, |e, l| l.iter().all(|x| e.contains(x)))
            && dim(&e.k8s_namespace, &l.k8s_namespace, |e, l| {
                l.iter().all(|x| e.contains(x))
            })
            && dim(&e.pod_prefix, &l.pod_prefix, |e, l| {
                l.iter()
                    .all(|x| e.iter().any(|p| x.starts_with(p.as_str())))
            })
    }

    /// A tiny deterministic generator (xorshift).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn random_selectors(r: &mut Rng) -> Selectors {
        let mut s = Selectors::default();
        if r.below(20) == 0 {
            s.match_all = true;
            return s;
        }
        loop {
            if r.below(2) == 0 {
                let n = 1 + r.below(3);
                s.local_ports = ports(
                    &(0..n)
                        .map(|_| {
                            let a = 1 + r.below(12) as u16;
                            (a, a + r.below(4) as u16)
                        })
                        .collect::<Vec<_>>(),
                );
            }
            if r.below(3) == 0 {
                let p = 1 + r.below(3) as u16;
                s.remote_ports = ports(&[(p, p + r.below(2) as u16)]);
            }
            if r.below(3) == 0 {
                let all = [
                    "10.0.0.0/29",
                    "10.0.0.0/30",
                    "10.0.0.4/30",
                    "10.0.0.8/29",
                    "10.0.0.0/28",
                    "10.0.0.2/31",
                    "10.0.0.6/32",
                    "fd00::/126",
                    "fd00::/127",
                ];
                let n = 1 + r.below(2);
                let v: Vec<&str> = (0..n)
                    .map(|_| all[r.below(all.len() as u64) as usize])
                    .collect();
                s.remote_cidrs = nets(&v);
            }
            if r.below(3) == 0 {
                let all = ["a", "b", "c"];
                let n = 1 + r.below(2);
                s.comm = Some(
                    (0..n)
                        .map(|_| all[r.below(3) as usize].to_string())
                        .collect(),
                );
            }
            if r.below(4) == 0 {
                let all = ["/", "/a", "/a/b", "/a/b/c", "/b"];
                s.cgroup_prefix = Some(vec![all[r.below(5) as usize].to_string()]);
            }
            if r.below(5) == 0 {
                s.netns = Some(vec![1 + r.below(2) as u32]);
            }
            if r.below(5) == 0 {
                let all = ["prod", "dev"];
                s.k8s_namespace = Some(vec![all[r.below(2) as usize].to_string()]);
            }
            if r.below(5) == 0 {
                let all = ["a", "ap", "api", "api-1", "b"];
                s.pod_prefix = Some(vec![all[r.below(5) as usize].to_string()]);
            }
            if !s.is_empty() {
                return s;
            }
        }
    }

    #[test]
    fn agrees_with_brute_force_on_random_policies() {
        let mut r = Rng(0x9e37_79b9_7f4a_7c15);
        for round in 0..300 {
            let rules: Vec<Selectors> = (0..12).map(|_| random_selectors(&mut r)).collect();
            let opts: Vec<Option<&Selectors>> = rules.iter().map(Some).collect();
            let (got, stopped) = shadowing(&opts);
            assert_eq!(stopped, None);
            for j in 0..rules.len() {
                let want = (0..j).find(|&i| oracle(&rules[i], &rules[j]));
                assert_eq!(
                    got[j], want,
                    "round {round}, rule {j}: {:?}\nrules: {rules:#?}",
                    rules[j]
                );
            }
        }
    }

    #[test]
    fn unions_cover() {
        let a = Selectors {
            local_ports: ports(&[(80, 80), (81, 81)]),
            remote_cidrs: nets(&["10.0.0.0/25", "10.0.0.128/25"]),
            ..Selectors::default()
        };
        let b = Selectors {
            local_ports: ports(&[(80, 81)]),
            remote_cidrs: nets(&["10.0.0.0/24"]),
            ..Selectors::default()
        };
        assert_eq!(shadowing(&[Some(&a), Some(&b)]).0, vec![None, Some(0)]);
        assert_eq!(shadowing(&[Some(&b), Some(&a)]).0, vec![None, Some(0)]);
    }

    #[test]
    fn cgroup_keys_are_the_prefixes_a_path_lies_under() {
        let keys: Vec<&str> = cgroup_keys("/a/b/c").collect();
        assert_eq!(keys, ["/", "/a", "/a/b", "/a/b/c"]);
        for k in keys {
            assert!(super::super::selectors::cgroup_under("/a/b/c", k), "{k}");
        }
        assert!(!super::super::selectors::cgroup_under("/a/bc", "/a/b"));
        assert!(!cgroup_keys("/a/bc").any(|k| k == "/a/b"));
    }

    #[test]
    fn port_nodes_and_paths_agree() {
        for (a, b) in [
            (0u32, 65535u32),
            (1, 65535),
            (80, 80),
            (1000, 2000),
            (65535, 65535),
        ] {
            let mut nodes = Vec::new();
            port_nodes(1, 0, 65535, a, b, &mut nodes);
            assert!(nodes.len() <= 32);
            for p in [
                0u16, 1, 79, 80, 81, 999, 1000, 1500, 2000, 2001, 65534, 65535,
            ] {
                let hit = port_path(p).filter(|n| nodes.contains(n)).count();
                let inside = (a..=b).contains(&u32::from(p));
                assert_eq!(hit, usize::from(inside), "[{a}, {b}] port {p}");
            }
        }
    }
}
