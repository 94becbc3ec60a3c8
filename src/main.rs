//! `koodrive-operator`: one binary for the controller and its companion tools.

use clap::Parser;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    return_large_buffers_to_the_system();
    let cli = koodrive_operator::cli::Cli::parse();
    match koodrive_operator::cli::dispatch(cli).await {
        Ok(code) => code,
        Err(err) => {
            // One clear line, with the chain of causes, and a non-zero exit.
            eprintln!("error: {}", koodrive_operator::report::chain(err.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// Maps every allocation of 64 KiB or more on its own, so that it goes back to the system
/// when freed. The operator's large buffers come and go with each reconcile (a 1000-user
/// UserBatch is ~100 KB of JSON and a few times that decoded); glibc raises its mmap
/// threshold past such sizes once one is freed, serves them from its arenas from then on
/// and keeps those pages. Peak RSS in `benches/scale.rs` 100 × 1000 was 3.5 MiB higher
/// that way (35.3 → 31.8 MiB, BENCHMARKS.md); 1000 × 10 is unchanged.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn return_large_buffers_to_the_system() {
    // SAFETY: `mallopt` only sets a parameter of the allocator; it has no memory-safety
    // preconditions, and any threshold value is valid.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 * 1024);
    }
}

/// Other allocators (musl's) have no such threshold.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn return_large_buffers_to_the_system() {}
