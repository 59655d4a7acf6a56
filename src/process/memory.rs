//! Handing freed memory back to the operating system.
//!
//! The operator runs on mimalloc (`src/main.rs`), which keeps pages freed by the program for
//! reuse and returns them to the OS only after a delay, and only when the allocator is called
//! again. After a burst of per-credential state is dropped (many `coderRef` tokens, their
//! clients evicted at once) those pages would stay resident while the operator idles.
//! [`release_freed_memory`] returns the wholly free ones at once. Measured with 300 tokens
//! (`memory_of_300_coder_ref_tokens_returns_once_they_are_gone`, and a byte-counting allocator
//! for the live heap): of the 4.2 MiB of RSS kept over the baseline, 0.6 MiB was live and 3.6 MiB
//! freed; this returns about 1 MiB of those (RSS +16% → +13%). The rest lies in pages that still
//! hold a few live blocks, which no allocator call can return; fewer such blocks are left since
//! the clients share their HTTP transport and the client cache is rebuilt once empty (+5–8%,
//! tools/bench/RESULTS.md, "memory of many coderRef tokens").

/// Returns the memory the calling thread's heap freed (and abandoned heaps of exited threads)
/// to the OS now. Costs a walk over the thread's heap pages, so it is meant for after a large
/// drop, not for every free. Harmless where mimalloc is not the global allocator (its own heap
/// is then empty).
pub fn release_freed_memory() {
    // SAFETY: mi_collect only walks and releases mimalloc's own free pages; it takes no
    // pointers and is safe to call from any thread at any time.
    unsafe { libmimalloc_sys::mi_collect(true) }
}
