//! `koodrive-operator`: one binary for the controller and its companion tools.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    // Before any thread exists: the allocator's settings apply to the arenas threads get.
    tune_the_allocator();
    let cli = koodrive_operator::cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(koodrive_operator::cli::dispatch(cli)) {
        Ok(code) => code,
        Err(err) => {
            // One clear line, with the chain of causes, and a non-zero exit.
            eprintln!("error: {}", koodrive_operator::report::chain(err.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// One heap for all threads, and every allocation of 64 KiB or more mapped on its own.
///
/// glibc gives each thread that meets contention an arena of its own, and memory freed in
/// one arena serves only that arena's threads: with tokio moving tasks between workers,
/// each arena grows to the peak it ever saw. The operator is I/O-bound (about a second of
/// CPU for 1000 UserBatches), so contention on one arena costs nothing measurable, while
/// peak RSS in `benches/scale.rs` fell by 0.5 MiB (1000 × 10) and 1.6 MiB (100 × 1000).
///
/// Large buffers are mapped so that they go back to the system when freed. They come and
/// go with each reconcile (a 1000-user UserBatch is ~100 KB of JSON and a few times that
/// decoded); glibc raises its mmap threshold past such sizes once one is freed, serves
/// them from its arenas from then on and keeps those pages: 100 × 1000 peaked 3.5 MiB
/// higher that way (BENCHMARKS.md).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_the_allocator() {
    // SAFETY: `mallopt` only sets parameters of the allocator; it has no memory-safety
    // preconditions, and these values are valid for both parameters.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 * 1024);
    }
}

/// Other allocators (musl's) have neither setting.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_the_allocator() {}
