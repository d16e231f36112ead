//! Process memory: make freed frames go back to the OS.
//!
//! glibc's malloc raises its mmap threshold each time a large mmapped block
//! is freed (up to 32 MiB), after which large frames (changes of ~1 MiB,
//! their rendered copies) come from the heap arenas, and a freed arena
//! chunk is returned to the OS only when it happens to sit at the top. So
//! after a burst of large frames RSS stayed at its peak: issue 12 measured
//! 640 MB held after a stalled subscriber left. A fixed threshold keeps
//! every large block mmapped (freed with munmap), and `trim` hands the
//! arenas' free pages back after a large release.
//!
//! musl's allocator (the static ARM builds) already unmaps large blocks:
//! there both calls are no-ops.

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

/// Return free heap pages to the OS (after a large release of frames).
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim is thread-safe and only releases free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}
