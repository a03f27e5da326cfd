//! glibc malloc settings for a server that streams large buffers.
//!
//! A cold blob fill moves hundreds of MiB through buffers of a few hundred
//! KiB (hyper's read buffer, split into `Bytes` that live a while in the
//! fill's window and queues). With glibc's defaults, freeing them shrinks
//! the thread arenas again (`madvise(MADV_DONTNEED)`), so the next buffer
//! takes a page fault and a zeroed page for every 4 KiB it receives: about
//! a tenth of the process's CPU in a profile of a cold 600 MiB stream.
//! Buffers up to 8 MiB come from the arenas, and an arena keeps up to
//! 32 MiB of free memory at its top instead of returning it at once.

/// Applies the settings; call it first thing, before threads start.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; it is called before
    // any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 8 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 32 << 20);
    }
}
