//! The signing target as a ratio, measured so that a loaded machine cannot skew it: building
//! and signing a 1000-user `batchRegister/create` request (`Client::prepare_create`) against
//! one SHA-256 of the same body bytes, the two timed alternately (a few calls of each, many
//! rounds), so that whatever else the machine does falls on both alike. Prints the CPU, the
//! minimum, 10th percentile and median of each, and the ratios.
//!
//! Measured twice, under two policies of glibc's allocator, because the 135 KB body is a
//! fresh allocation per call and what that costs depends on the policy, not on this code:
//! - heap kept (mmap and trim thresholds pinned high): the body comes from memory the
//!   process already has. This is the encoding and signing alone. With glibc's default
//!   (dynamic) thresholds a process lands in this mode or, when the heap happens to be
//!   trimmed after each free, in the next one: that is why unpinned runs are bimodal.
//! - as the operator runs (`mallopt(M_MMAP_THRESHOLD, 64 KiB)`, src/main.rs): every body is
//!   a fresh mapping, so each call also takes ~34 page faults (a few µs each under a VM).
//!   The operator accepts that for its memory (it frees 100 KB+ buffers on every reconcile).
//!
//! `cargo bench -p koodrive-client --bench signing_ratio` (criterion's `signing` bench gives
//! the same figures one after the other, which a shared machine's load can tilt).

#[path = "fixture.rs"]
mod fixture;

use fixture::Fixture;
use koodrive_client::signer;
use std::hint::black_box;
use std::time::Instant;

const ROUNDS: usize = 1000;
const CALLS_PER_ROUND: u32 = 5;

/// Microseconds per call of `f`, over one round.
fn time(mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    for _ in 0..CALLS_PER_ROUND {
        f();
    }
    start.elapsed().as_secs_f64() * 1e6 / f64::from(CALLS_PER_ROUND)
}

struct Spread {
    min: f64,
    p10: f64,
    median: f64,
}

fn spread(mut samples: Vec<f64>) -> Spread {
    samples.sort_by(f64::total_cmp);
    Spread {
        min: samples[0],
        p10: samples[samples.len() / 10],
        median: samples[samples.len() / 2],
    }
}

fn main() {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let Fixture {
        client,
        users,
        trace_id,
        now,
        body,
    } = fixture::fixture();
    println!(
        "CPU: {cpu}; load average: {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "{ROUNDS} rounds of {CALLS_PER_ROUND} calls each, alternating; {} bytes of JSON",
        body.len()
    );
    for policy in [HeapPolicy::Kept, HeapPolicy::AsTheOperator] {
        policy.apply();
        println!("{}:", policy.name());
        let (mut hash, mut sign) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            hash.push(time(|| {
                black_box(signer::sha256_hex(black_box(&body)));
            }));
            sign.push(time(|| {
                black_box(
                    client
                        .prepare_create(black_box(&users), &trace_id, now)
                        .expect("valid request"),
                );
            }));
        }
        report(spread(hash), spread(sign));
    }
}

#[derive(Clone, Copy)]
enum HeapPolicy {
    Kept,
    AsTheOperator,
}

impl HeapPolicy {
    fn name(self) -> &'static str {
        match self {
            HeapPolicy::Kept => "heap kept (encoding and signing alone)",
            HeapPolicy::AsTheOperator => {
                "as the operator runs (64 KiB mmap threshold: every body a fresh mapping)"
            }
        }
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn apply(self) {
        let (mmap, trim) = match self {
            HeapPolicy::Kept => (64 << 20, 256 << 20),
            HeapPolicy::AsTheOperator => (64 << 10, 128 << 10),
        };
        // SAFETY: `mallopt` only sets parameters of the allocator; it has no memory-safety
        // preconditions, and these values are valid for both.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, mmap);
            libc::mallopt(libc::M_TRIM_THRESHOLD, trim);
        }
    }

    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    fn apply(self) {}
}

fn report(hash: Spread, sign: Spread) {
    for (name, s) in [("sha256_body_only", &hash), ("serialize_and_sign", &sign)] {
        println!(
            "{name:>20}: min {:.1} µs, p10 {:.1} µs, median {:.1} µs",
            s.min, s.p10, s.median
        );
    }
    println!(
        "ratio (target ≤ 1.5): {:.3} by minimum, {:.3} by 10th percentile, {:.3} by median",
        sign.min / hash.min,
        sign.p10 / hash.p10,
        sign.median / hash.median
    );
}
