//! Atomic add for counters shared across CPUs. The bpf target has no compare-and-swap, so
//! `AtomicU64::fetch_add` is unavailable; the intrinsic lowers to the BPF atomic add insn.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

/// `*dst += v`, atomically (result unused, so LLVM emits the plain `lock add`).
#[inline(always)]
pub unsafe fn add(dst: *mut u64, v: u64) {
    // SAFETY: the caller passes a pointer into a live map value.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(dst, v) };
}
