//! The process's allocator: mimalloc (cargo feature `mimalloc`, on by default), for every
//! binary linking the library, tuned for inference by [`tune_allocator`].
//!
//! Inference allocates a fresh buffer per op. With glibc, blocks past its 32 MB mmap ceiling
//! are unmapped on free and page-faulted (zeroed by the kernel) back on the next op: ~15 % of a
//! VQGAN decode. A DALL·E decode step's ~300 small Flex allocations also cost less in mimalloc.

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's option numbers (`mi_option_e` in its `mimalloc.h`, v3 as bundled by
/// libmimalloc-sys 0.1.49); the crate leaves these two unnamed. A test checks them against the
/// environment variables mimalloc reads for them.
#[cfg(feature = "mimalloc")]
const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
#[cfg(feature = "mimalloc")]
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Called first thing by the CLI and the benches. Freed memory is kept for reuse instead of
/// being returned to the OS after mimalloc's default 10 ms (even a 1 s delay still returned the
/// big activation blocks between ops, and was then slower than glibc on SD). Arenas are
/// committed as used, not eagerly: eager commit made the DALL·E image another ~3 % faster but
/// put SD's peak RSS at 5.04 GiB, over its 5 GiB budget. Measured on 2 cores against glibc,
/// alternated runs: DALL·E Mini image 7.76 → 7.19 s (median of 4 pairs), SD VAE decode
/// 7.0–7.3 → 6.5 s; SD 20-step image peak RSS 4.95 GiB. The cost: a server's RSS stays at its
/// peak between requests. An option set in the environment (`MIMALLOC_ARENA_EAGER_COMMIT`,
/// `MIMALLOC_PURGE_DELAY`) is left as given.
pub fn tune_allocator() {
    #[cfg(feature = "mimalloc")]
    for (option, var, value) in [
        (ARENA_EAGER_COMMIT, "MIMALLOC_ARENA_EAGER_COMMIT", 0),
        (PURGE_DELAY, "MIMALLOC_PURGE_DELAY", -1),
    ] {
        if std::env::var_os(var).is_none() {
            // SAFETY: `mi_option_set` stores a number in mimalloc's option table; both options
            // may change at any time (they are read when memory is committed or purged).
            unsafe { libmimalloc_sys::mi_option_set(option, value) };
        }
    }
}

#[cfg(all(test, feature = "mimalloc"))]
mod tests {
    /// The option numbers are the ones mimalloc reads `MIMALLOC_ARENA_EAGER_COMMIT` and
    /// `MIMALLOC_PURGE_DELAY` into (it reads them at start-up, so in a child process).
    #[test]
    fn option_numbers_match_mimalloc() {
        const CHILD: &str = "KILN_ALLOC_TEST_CHILD";
        if std::env::var_os(CHILD).is_some() {
            // SAFETY: reads an option's value.
            let (eager, purge) = unsafe {
                (
                    libmimalloc_sys::mi_option_get(super::ARENA_EAGER_COMMIT),
                    libmimalloc_sys::mi_option_get(super::PURGE_DELAY),
                )
            };
            assert_eq!((eager, purge), (7, 1234));
            // The environment's values win over the tuning; without them it applies.
            super::tune_allocator();
            // SAFETY: as above.
            let purge = unsafe { libmimalloc_sys::mi_option_get(super::PURGE_DELAY) };
            assert_eq!(purge, 1234);
            // SAFETY: this child process runs only this test, so no other thread reads the
            // environment meanwhile.
            unsafe { std::env::remove_var("MIMALLOC_PURGE_DELAY") };
            super::tune_allocator();
            // SAFETY: as above.
            let purge = unsafe { libmimalloc_sys::mi_option_get(super::PURGE_DELAY) };
            assert_eq!(purge, -1);
            return;
        }
        let exe = std::env::current_exe().expect("test binary path");
        let out = std::process::Command::new(exe)
            .args(["--exact", "alloc::tests::option_numbers_match_mimalloc"])
            .env(CHILD, "1")
            .env("MIMALLOC_ARENA_EAGER_COMMIT", "7")
            .env("MIMALLOC_PURGE_DELAY", "1234")
            .output()
            .expect("run the test binary");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("1 passed"),
            "child: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
