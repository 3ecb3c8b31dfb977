//! Unit tests of the ACK-progress and gap-ring bookkeeping.

use super::*;

const MS: u64 = 1_000_000;
const T0: u64 = 1_000_000 * MS;

/// A socket tracked since `T0` with `snd_una` at `una`.
fn sock(una: u32) -> SockState {
    let mut s = SockState::zeroed();
    s.snd_una = una;
    s.times.first_seen_ns = T0;
    s.times.last_progress_ns = T0;
    s
}

#[test]
fn sequence_comparison_wraps() {
    assert!(seq_after(2, 1));
    assert!(!seq_after(1, 1));
    assert!(!seq_after(1, 2));
    assert!(seq_after(5, u32::MAX - 5), "after, across the wrap");
    assert!(!seq_after(u32::MAX - 5, 5));
    assert!(seq_after(0x7fff_ffff, 0));
    assert!(
        !seq_after(0x8000_0000, 0),
        "half the space away is not after"
    );
}

#[test]
fn a_gap_is_recorded_only_from_min_gap_ns() {
    let mut s = sock(1000);
    // Just under the minimum: progress, no gap.
    record_progress(&mut s, 1100, T0 + MIN_GAP_NS - 1);
    assert_eq!((s.snd_una, s.bytes_acked, s.gap_count), (1100, 100, 0));
    assert_eq!(s.times.last_progress_ns, T0 + MIN_GAP_NS - 1);
    assert_eq!(s.gaps, [Gap::default(); GAP_SLOTS]);
    // Exactly the minimum after that progress: a gap.
    let end = T0 + 2 * MIN_GAP_NS - 1;
    record_progress(&mut s, 1300, end);
    assert_eq!((s.snd_una, s.bytes_acked, s.gap_count), (1300, 300, 1));
    assert_eq!(
        s.gaps[0],
        Gap {
            start_ns: T0 + MIN_GAP_NS - 1,
            end_ns: end,
            acked: 200,
            zero_window: 0,
        }
    );
    assert_eq!(s.times.last_progress_ns, end);
}

#[test]
fn no_progress_changes_nothing() {
    let mut s = sock(1000);
    s.flags = flags::ZERO_WINDOW_SEEN;
    let before = s;
    // The same una, and an old (duplicate, reordered) one, long after the last progress.
    record_progress(&mut s, 1000, T0 + 10 * MIN_GAP_NS);
    record_progress(&mut s, 900, T0 + 10 * MIN_GAP_NS);
    assert_eq!(
        (
            s.snd_una,
            s.bytes_acked,
            s.gap_count,
            s.times.last_progress_ns
        ),
        (before.snd_una, 0, 0, T0)
    );
    assert_eq!(s.flags, flags::ZERO_WINDOW_SEEN, "still sticky");
}

#[test]
fn the_ring_wraps_at_gap_slots() {
    let mut s = sock(0);
    let n = GAP_SLOTS as u32 + 2;
    for k in 1..=n {
        record_progress(&mut s, k * 10, T0 + k as u64 * MIN_GAP_NS);
    }
    assert_eq!(s.gap_count, n);
    assert_eq!(s.bytes_acked, n as u64 * 10);
    // Slot k % GAP_SLOTS holds the newest gap with that index: the oldest two were
    // overwritten by gaps GAP_SLOTS and GAP_SLOTS + 1 (counting from 0).
    for (slot, g) in s.gaps.iter().enumerate() {
        let k = if slot < 2 { slot + GAP_SLOTS } else { slot } as u64 + 1;
        assert_eq!(g.end_ns, T0 + k * MIN_GAP_NS, "slot {slot}");
        assert_eq!(g.start_ns, T0 + (k - 1) * MIN_GAP_NS, "slot {slot}");
        assert_eq!(g.acked, 10);
    }
}

#[test]
fn a_zero_window_seen_since_the_last_progress_makes_a_zero_window_gap() {
    let mut s = sock(0);
    // The window closed, then re-opened before the ACK that ends the gap.
    set_zero_window(&mut s, true);
    assert_eq!(s.flags, flags::ZERO_WINDOW | flags::ZERO_WINDOW_SEEN);
    set_zero_window(&mut s, false);
    assert_eq!(
        s.flags,
        flags::ZERO_WINDOW_SEEN,
        "seen stays until progress"
    );
    record_progress(&mut s, 100, T0 + MIN_GAP_NS);
    assert_eq!(s.gaps[0].zero_window, 1);
    assert_eq!(s.flags, 0, "progress clears the seen flag");
    // The next gap, with the window open all along, is no zero-window gap.
    record_progress(&mut s, 200, T0 + 2 * MIN_GAP_NS);
    assert_eq!(s.gaps[1].zero_window, 0);
    // Window still zero at the ACK that ends the gap: zero-window gap, and the current
    // window state survives the progress.
    set_zero_window(&mut s, true);
    record_progress(&mut s, 300, T0 + 3 * MIN_GAP_NS);
    assert_eq!(s.gaps[2].zero_window, 1);
    assert_eq!(s.flags, flags::ZERO_WINDOW);
    // Progress too short for a gap clears the seen flag all the same.
    set_zero_window(&mut s, false);
    s.flags |= flags::ZERO_WINDOW_SEEN;
    record_progress(&mut s, 400, T0 + 3 * MIN_GAP_NS + 1);
    assert_eq!((s.flags, s.gap_count), (0, 3));
    record_progress(&mut s, 500, T0 + 4 * MIN_GAP_NS + 1);
    assert_eq!(s.gaps[3].zero_window, 0);
}

#[test]
fn progress_across_the_sequence_wrap() {
    let mut s = sock(u32::MAX - 99);
    record_progress(&mut s, 400, T0 + MIN_GAP_NS);
    assert_eq!((s.snd_una, s.bytes_acked, s.gap_count), (400, 500, 1));
    assert_eq!(s.gaps[0].acked, 500);
    // A stale ACK from before the wrap is no progress.
    record_progress(&mut s, u32::MAX - 50, T0 + 2 * MIN_GAP_NS);
    assert_eq!((s.snd_una, s.bytes_acked, s.gap_count), (400, 500, 1));
}
