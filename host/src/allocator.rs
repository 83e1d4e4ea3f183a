//! Tuning of glibc's malloc for a long-running server; nothing on other platforms.

/// Caps glibc's malloc arenas at one per core, unless `MALLOC_ARENA_MAX` says otherwise.
///
/// glibc gives allocating threads arenas of their own up to eight per core, and memory freed
/// into an arena stays resident there: the blocking pool's threads (one per command waiting
/// on its commit) would otherwise each keep a half-empty arena. Call it before any thread
/// starts.
pub(crate) fn cap_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, |cores| cores.get());
        let arenas = libc::c_int::try_from(cores).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only changes malloc's tuning, and no other thread is running yet.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, arenas) };
    }
}

/// Hands the pages malloc holds free back to the system, e.g. the compiler's working memory
/// after a plugin is compiled, which would otherwise stay resident in the arenas.
pub(crate) fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory; it is safe from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}
