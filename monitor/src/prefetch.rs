//! Asking the CPU to bring a record into cache ahead of use. The tick works through tens of
//! thousands of per-socket records a few hundred bytes each, spread over the heap: touched
//! one after the other, each costs a cache miss per line. Prefetching the next few records'
//! lines lets those misses overlap (`agent/tick.rs`).

/// Prefetch every cache line of `*r` (a hint: no effect on what the program computes).
#[inline]
pub fn record<T>(r: &T) {
    let start = r as *const T as *const u8;
    let mut off = 0;
    while off < std::mem::size_of::<T>() {
        line(start.wrapping_add(off));
        off += 64;
    }
}

#[inline]
fn line(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetch is a hint: it never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p as *const i8);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
