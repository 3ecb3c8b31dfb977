//! The read hook: the local application read received data (read-side progress), with a
//! per-CPU negative cache so reads of untracked sockets cost no hash lookup.

use crate::kernel::{configured, now, off, Mem};
use crate::maps::{track_gen, READ_MISS};
use crate::refresh::{refresh_recv, refresh_send};
use crate::track::{drop_if_drained, key_of, lookup};

/// read: the local application consumed received data on `sk`.
#[inline(always)]
pub(crate) fn on_read<M: Mem>(sk: *const u8) {
    if !configured::<M>() {
        return;
    }
    let gen = track_gen();
    let Some(miss) = READ_MISS.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU slot, no concurrent writer on this CPU.
    let miss = unsafe { &mut *miss };
    if miss.sk == sk as u64 && miss.gen == gen {
        return;
    }
    let Some(tp) = M::tcp_sk(sk) else { return };
    let key = key_of::<M>(sk);
    let Some(p) = lookup::<M>(tp, key) else {
        miss.sk = sk as u64;
        miss.gen = gen;
        return;
    };
    let t = now();
    // SAFETY: map value pointer valid for this invocation.
    let s = unsafe { &mut *p };
    refresh_recv::<M>(s, tp, t);
    let una: u32 = M::ld(tp, off!(snd_una));
    refresh_send::<M>(s, tp, t, una);
    drop_if_drained(s, key);
}
