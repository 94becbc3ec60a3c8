//! The operator at scale (SPEC §9): the real `koodrive-operator run` binary against the
//! in-process Kubernetes API emulator and KooDrive simulator, with no added latency and the
//! KooDrive rate limit lifted.
//!
//! Measures start-to-ready, time until 1000 UserBatches × 10 users are all `Ready`, and the
//! operator's peak RSS there and with 100 UserBatches × 1000 users. Times and memory are
//! reported, never asserted: a slow run still exits 0. A phone submitted other than exactly
//! once, or a batch that never becomes Ready, is a correctness failure and exits non-zero.
//!
//! `cargo bench --bench scale`

#[path = "../tests/it/support.rs"]
mod support;

use futures::{StreamExt, TryStreamExt};
use koodrive_operator::crd::UserBatch;
use koodrive_operator::devtools::emulator_config;
use koodrive_simulator::SimulatorConfig;
use kube::api::{ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use std::collections::{BTreeMap, HashSet};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::{Env, Operator, SECRET_KEY, is_ready, userbatch, users};

/// Only reached when something is broken; a healthy run takes seconds.
const GIVE_UP_AFTER: Duration = Duration::from_secs(180);
/// The readiness probe is polled this often, so the figure is not quantised by the poll.
const PROBE_EVERY: Duration = Duration::from_millis(2);
const START_RUNS: usize = 5;
/// The operator's own default, so the figures describe an unconfigured deployment.
const MAX_IN_FLIGHT: &str = "4";
const MIB: f64 = 1024.0 * 1024.0;

/// Starts the operator with the rate limit lifted and a short result poll.
fn spawn_operator(env: &Env, name: &str) -> Operator {
    let log = env.dir.path().join(format!("{name}.log"));
    let stderr = std::fs::File::create(&log).expect("create the operator's log file");
    // For profiling, e.g. SCALE_WRAPPER="heaptrack -o /tmp/op" (RSS figures then include it).
    let wrapper = std::env::var("SCALE_WRAPPER").unwrap_or_default();
    let mut words = wrapper.split_whitespace();
    let mut command = match words.next() {
        Some(program) => {
            let mut command = Command::new(program);
            command
                .args(words)
                .arg(env!("CARGO_BIN_EXE_koodrive-operator"));
            command
        }
        None => Command::new(env!("CARGO_BIN_EXE_koodrive-operator")),
    };
    let max_in_flight =
        std::env::var("SCALE_MAX_IN_FLIGHT").unwrap_or_else(|_| MAX_IN_FLIGHT.to_string());
    let child = command
        .args([
            "run",
            "--metrics-addr",
            "127.0.0.1:0",
            "--allow-insecure-endpoints",
            "--default-endpoint",
            &env.simulator.url(),
            "--requests-per-second",
            "0",
            "--max-in-flight",
            &max_in_flight,
            "--poll-interval",
            "100ms",
            "--log-level",
            "info",
        ])
        .env("KUBECONFIG", &env.kubeconfig)
        .env("POD_NAME", name)
        .env_remove("KOODRIVE_WATCH_NAMESPACE")
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("start koodrive-operator");
    Operator {
        child: Some(child),
        log,
    }
}

/// Time from `spawned` until `/readyz` answers 200 (the watches have their first list).
async fn time_to_ready(operator: &Operator, spawned: Instant) -> Result<Duration, String> {
    let address = loop {
        let log = support::read_to_string(&operator.log);
        if let Some(address) = log
            .lines()
            .find(|l| l.contains("serving /metrics"))
            .and_then(|l| l.split("address=").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
        {
            break address.to_string();
        }
        if spawned.elapsed() > GIVE_UP_AFTER {
            return Err(format!("the operator never logged its address:\n{log}"));
        }
        tokio::time::sleep(PROBE_EVERY).await;
    };
    let url = format!("http://{address}/readyz");
    let http = reqwest::Client::new();
    loop {
        if let Ok(response) = http.get(&url).send().await
            && response.status() == 200
        {
            return Ok(spawned.elapsed());
        }
        if spawned.elapsed() > GIVE_UP_AFTER {
            return Err(format!("/readyz never answered 200:\n{}", operator.logs()));
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
}

/// Watches the UserBatches until `expected` of them are Ready; returns when that happened.
async fn all_ready(api: Api<UserBatch>, expected: usize) -> Result<Instant, String> {
    let mut ready = HashSet::new();
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .applied_objects();
    let mut stream = std::pin::pin!(stream);
    let wait = async {
        while let Some(ub) = stream.try_next().await.map_err(|e| e.to_string())? {
            if ub.status.as_ref().is_some_and(is_ready) {
                ready.insert(ub.name_any());
            } else {
                ready.remove(&ub.name_any());
            }
            if ready.len() == expected {
                return Ok(Instant::now());
            }
        }
        Err("the watch ended".to_string())
    };
    match tokio::time::timeout(GIVE_UP_AFTER, wait).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "only {} of {expected} UserBatches Ready after {GIVE_UP_AFTER:?}",
            ready.len()
        )),
    }
}

/// A `/proc/<pid>/status` field in KiB (`VmHWM` is the peak resident set).
fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// User + system CPU seconds of a process so far.
fn cpu_seconds(pid: &str) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = text.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on every Linux we run on.
    Some(ticks as f64 / 100.0)
}

/// Keeps `peak` at the most file descriptors (mostly sockets) the process held at once.
async fn track_open_files(pid: u32, peak: Arc<AtomicUsize>) {
    loop {
        if let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
            peak.fetch_max(entries.count(), Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

struct StartFigures {
    runs: Vec<Duration>,
    idle_hwm_kib: u64,
}

/// Start-to-ready of an operator with nothing to do, `START_RUNS` times.
async fn start_to_ready() -> Result<StartFigures, String> {
    let env = Env::start_with(emulator_config(), SimulatorConfig::default()).await;
    let mut runs = Vec::new();
    let mut idle_hwm_kib = 0;
    for run in 0..START_RUNS {
        let spawned = Instant::now();
        let mut operator = spawn_operator(&env, &format!("start-{run}"));
        runs.push(time_to_ready(&operator, spawned).await?);
        if let Some(child) = &operator.child {
            idle_hwm_kib = idle_hwm_kib.max(proc_status_kib(child.id(), "VmHWM").unwrap_or(0));
        }
        operator.kill();
    }
    runs.sort();
    Ok(StartFigures { runs, idle_hwm_kib })
}

struct ScaleFigures {
    batches: usize,
    users_per_batch: usize,
    create: Duration,
    readyz: Duration,
    all_ready: Duration,
    hwm_kib: u64,
    peak_fds: usize,
    operator_cpu: f64,
    bench_cpu: f64,
    spec_json: usize,
    stored_json: usize,
    api_requests: BTreeMap<String, usize>,
    koodrive_requests: usize,
}

/// Creates `batches` UserBatches of `users_per_batch` users, starts the operator and waits
/// until every one is Ready; then checks each phone was submitted exactly once.
async fn scale(
    batches: usize,
    users_per_batch: usize,
    phone_prefix: &str,
) -> Result<ScaleFigures, String> {
    let env = Env::start_with(emulator_config(), SimulatorConfig::default()).await;
    env.create_credentials("koodrive-credentials", SECRET_KEY)
        .await;
    let api = env.userbatches();

    let started = Instant::now();
    let created: Vec<UserBatch> = futures::stream::iter(0..batches)
        .map(|b| {
            let api = api.clone();
            let ub = userbatch(
                &format!("scale-{b:04}"),
                "koodrive-credentials",
                users(&format!("{phone_prefix}{b:04}"), users_per_batch, None),
            );
            async move { api.create(&PostParams::default(), &ub).await }
        })
        .buffer_unordered(16)
        .try_collect()
        .await
        .map_err(|e| format!("creating the UserBatches: {e}"))?;
    let create = started.elapsed();
    let spec_json: usize = created
        .iter()
        .map(|ub| serde_json::to_vec(ub).map_or(0, |v| v.len()))
        .sum();
    let expected: HashSet<String> = created
        .iter()
        .flat_map(|ub| ub.spec.users.iter().map(|u| u.phone.clone()))
        .collect();

    // Watching from before the start, so no transition is missed.
    let watch = tokio::spawn(all_ready(api.clone(), batches));
    let bench_cpu_before = cpu_seconds("self").unwrap_or(0.0);
    let spawned = Instant::now();
    let mut operator = spawn_operator(&env, &format!("scale-{batches}x{users_per_batch}"));
    let pid = operator.child.as_ref().map_or(0, |c| c.id());
    let peak_fds = Arc::new(AtomicUsize::new(0));
    let sampler = tokio::spawn(track_open_files(pid, peak_fds.clone()));
    let readyz = time_to_ready(&operator, spawned).await?;
    let done = watch
        .await
        .map_err(|e| format!("the Ready watch panicked: {e}"))??;
    let all_ready = done.duration_since(spawned);
    let hwm_kib = proc_status_kib(pid, "VmHWM").unwrap_or(0);
    let operator_cpu = cpu_seconds(&pid.to_string()).unwrap_or(0.0);
    let bench_cpu = cpu_seconds("self").unwrap_or(0.0) - bench_cpu_before;
    sampler.abort();
    let peak_fds = peak_fds.load(Ordering::Relaxed);
    let logs = operator.logs();
    operator.kill();

    let submissions = env.simulator.submissions();
    let wrong: Vec<String> = expected
        .iter()
        .filter(|p| submissions.get(*p) != Some(&1))
        .map(|p| format!("{p}: {}", submissions.get(p).copied().unwrap_or(0)))
        .take(10)
        .collect();
    if !wrong.is_empty() || submissions.len() != expected.len() {
        return Err(format!(
            "not every phone was submitted exactly once ({} phones expected, {} submitted; e.g. {wrong:?})",
            expected.len(),
            submissions.len()
        ));
    }
    let warnings = logs.lines().filter(|l| l.contains("WARN")).count();
    if warnings > 0 {
        println!("  note: the operator logged {warnings} warnings");
    }

    let stored = api
        .list(&ListParams::default())
        .await
        .map_err(|e| format!("listing the UserBatches: {e}"))?;
    let stored_json = stored
        .items
        .iter()
        .map(|ub| serde_json::to_vec(ub).map_or(0, |v| v.len()))
        .sum();
    let mut api_requests = BTreeMap::new();
    for (verb, path, _) in env.emulator.request_log() {
        let kind = if path.contains("/events") {
            "events"
        } else if path.contains("/secrets") {
            "secrets"
        } else if path.contains("/leases") {
            "leases"
        } else {
            "userbatches"
        };
        *api_requests.entry(format!("{verb} {kind}")).or_insert(0) += 1;
    }
    Ok(ScaleFigures {
        batches,
        users_per_batch,
        create,
        readyz,
        all_ready,
        hwm_kib,
        peak_fds,
        operator_cpu,
        bench_cpu,
        spec_json,
        stored_json,
        api_requests,
        koodrive_requests: env.simulator.request_count(),
    })
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

fn print_scale(f: &ScaleFigures) {
    println!(
        "  {} UserBatches x {} users: created in {:.2} s; /readyz after {:.0} ms; all Ready after {:.2} s",
        f.batches,
        f.users_per_batch,
        f.create.as_secs_f64(),
        f.readyz.as_secs_f64() * 1000.0,
        f.all_ready.as_secs_f64()
    );
    println!(
        "  operator peak RSS (VmHWM) {:.1} MiB; JSON as created {:.1} MiB, as stored when Ready {:.1} MiB",
        f.hwm_kib as f64 / 1024.0,
        f.spec_json as f64 / MIB,
        f.stored_json as f64 / MIB
    );
    println!("  operator's peak open file descriptors: {}", f.peak_fds);
    println!(
        "  CPU while converging: operator {:.2} s, bench process (emulator + simulator + watch) {:.2} s",
        f.operator_cpu, f.bench_cpu
    );
    let per_batch = |n: usize| n as f64 / f.batches as f64;
    let requests: Vec<String> = f
        .api_requests
        .iter()
        .map(|(k, n)| format!("{k} {:.1}", per_batch(*n)))
        .collect();
    println!("  API requests per UserBatch: {}", requests.join(", "));
    println!(
        "  KooDrive requests per UserBatch: {:.1}",
        per_batch(f.koodrive_requests)
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    // `cargo bench` passes `--bench`; nothing here takes arguments.
    println!(
        "operator binary: {}",
        env!("CARGO_BIN_EXE_koodrive-operator")
    );
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(problem) => {
            eprintln!("scale benchmark failed: {problem}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), String> {
    // For profiling one scenario on its own.
    if std::env::var("SCALE_ONLY").as_deref() == Ok("large") {
        println!("100 x 1000:");
        print_scale(&scale(100, 1000, "87").await?);
        return Ok(());
    }
    let start = start_to_ready().await?;
    let median = start.runs[start.runs.len() / 2];
    let runs: Vec<String> = start
        .runs
        .iter()
        .map(|d| format!("{:.0}", d.as_secs_f64() * 1000.0))
        .collect();
    println!(
        "start to ready (empty cluster): median {:.0} ms over {START_RUNS} runs [{} ms]; idle peak RSS {:.1} MiB",
        median.as_secs_f64() * 1000.0,
        runs.join(", "),
        start.idle_hwm_kib as f64 / 1024.0
    );

    println!("1000 x 10:");
    let small = scale(1000, 10, "86").await?;
    print_scale(&small);
    println!("100 x 1000:");
    let large = scale(100, 1000, "87").await?;
    print_scale(&large);

    let rss_ratio = large.hwm_kib as f64 * 1024.0 / large.spec_json as f64;
    println!();
    println!("| SPEC §9 target | measured | |");
    println!("|---|---|---|");
    println!(
        "| start to ready < 200 ms | {:.0} ms (median of {START_RUNS}) | {} |",
        median.as_secs_f64() * 1000.0,
        verdict(median < Duration::from_millis(200))
    );
    println!(
        "| 1000 × 10 all Ready < 10 s | {:.2} s | {} |",
        small.all_ready.as_secs_f64(),
        verdict(small.all_ready < Duration::from_secs(10))
    );
    println!(
        "| 1000 × 10 peak RSS < 40 MiB | {:.1} MiB | {} |",
        small.hwm_kib as f64 / 1024.0,
        verdict(small.hwm_kib < 40 * 1024)
    );
    println!(
        "| 100 × 1000 peak RSS < 2 × JSON ({:.1} MiB) | {:.1} MiB ({rss_ratio:.2} ×) | {} |",
        2.0 * large.spec_json as f64 / MIB,
        large.hwm_kib as f64 / 1024.0,
        verdict(rss_ratio < 2.0)
    );
    println!(
        "| every phone submitted exactly once | {} + {} phones | ok |",
        small.batches * small.users_per_batch,
        large.batches * large.users_per_batch
    );
    Ok(())
}
