//! Process memory: the settings the relay's allocators need.
//!
//! On 64-bit targets the `outpost` binary allocates through mimalloc (its
//! `#[global_allocator]` in src/main.rs): musl's malloc, in the static ARM
//! builds, took twice glibc's CPU per change, and mimalloc beat both
//! (docs/performance.md, "The allocator"). mimalloc hands freed memory back
//! to the OS by itself (after about a second); tests/memory_budget.rs checks
//! that RSS comes back down after a stalled subscriber's frames are freed.
//! It needs transparent huge pages off ([`no_huge_pages`]).
//!
//! Where glibc's malloc still serves (the 32-bit glibc build, C code):
//! it raises its mmap threshold each time a large mmapped block is freed (up
//! to 32 MiB), after which large frames (changes of ~1 MiB, their rendered
//! copies) come from the heap arenas, and a freed arena chunk is returned to
//! the OS only when it happens to sit at the top. So after a burst of large
//! frames RSS stayed at its peak: issue 12 measured 640 MB held after a
//! stalled subscriber left. A fixed threshold keeps every large block
//! mmapped (freed with munmap). musl's allocator (the static armv7 build)
//! already unmaps large blocks.

/// Turn transparent huge pages off for this process; call once at start.
///
/// mimalloc reserves memory in large aligned regions. Where the kernel backs
/// those with 2 MiB pages (THP "always", or "madvise" on mimalloc's request,
/// which its `no_thp` feature removes), the relay's RSS doubled at rest and
/// tripled with 1,000 idle clients, past the Pi budgets. A small relay
/// wants the memory more than the TLB hits. On a kernel without THP the call
/// fails and changes nothing.
pub fn no_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes an integer flag and touches no memory
    // of ours.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// Blocks of at least this size are mmapped (glibc's default start value,
/// made fixed so it does not drift upwards).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 128 * 1024;

/// Set the allocator up for a long-running relay; call once at start.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before the
    // relay's threads allocate much, and it is thread-safe in glibc anyway.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}
