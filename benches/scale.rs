//! The operator at scale (SPEC §9, issue #15): the real `koodrive-operator run` binary against
//! the in-process Kubernetes API emulator and KooDrive simulator, with no added latency and
//! the KooDrive rate limit lifted.
//!
//! Scenarios: start-to-ready of an idle operator; 1000 UserBatches × 10 users; the same with
//! 2000 unrelated 100 KB Secrets in other namespaces; 100 UserBatches × 1000 users. Each
//! scenario runs `SCALE_RUNS` times (default 3) and is reported as min / median / max of:
//! time until every UserBatch is Ready, the operator's peak RSS and CPU, the emulator's CPU,
//! the API requests the operator sent per UserBatch and the bytes it received from the API
//! server.
//!
//! Times and memory are reported, never asserted: a slow run still exits 0. A phone submitted
//! other than exactly once, or a batch that never becomes Ready, is a correctness failure and
//! exits non-zero.
//!
//! How things are measured:
//! - the operator runs as the Helm chart's ServiceAccount (its token, the chart's RBAC), so the
//!   emulator can tell its requests and its traffic from the bench's own: requests are counted
//!   from the emulator's request log by user, and bytes received are what the emulator wrote
//!   to that user's connections (status lines, headers, bodies, chunk framing);
//! - the emulator and the simulator are served from their own runtimes (threads `emulator`
//!   and `simulator`), so their CPU is read per thread from `/proc/self/task`, apart from the
//!   bench's own watch and clients;
//! - the operator's CPU and peak RSS come from `/proc/<pid>/stat` and `VmHWM`;
//! - the operator is the binary the image ships, built by `scripts/build-binary.sh` (static,
//!   without the dev tools), not the one `cargo bench` builds.
//!
//! `cargo bench --bench scale`; `SCALE_ONLY=small|secrets|large` runs one scenario,
//! `SCALE_RUNS=N` sets the runs per scenario, `SCALE_MAX_IN_FLIGHT=N` the operator's
//! in-flight limit, `SCALE_BATCHES=N` shrinks a scenario (for profiling), `SCALE_OPERATOR=path`
//! runs another operator binary (e.g. `target/release/koodrive-operator`), and
//! `SCALE_WRAPPER="cmd args"` starts the operator under a profiler.

#[path = "../tests/it/support.rs"]
mod support;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use koodrive_operator::crd::UserBatch;
use koodrive_operator::devtools::emulator_config;
use koodrive_simulator::SimulatorConfig;
use kube::api::{ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use kube_emulator::Identity;
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use support::{Env, Operator, SECRET_KEY, is_ready, userbatch, users};

/// Only reached when something is broken; a healthy run takes seconds.
const GIVE_UP_AFTER: Duration = Duration::from_secs(180);
/// The readiness probe is polled this often, so the figure is not quantised by the poll.
const PROBE_EVERY: Duration = Duration::from_millis(2);
const START_RUNS: usize = 5;
const DEFAULT_RUNS: usize = 3;
/// The operator's own default, so the figures describe an unconfigured deployment.
const MAX_IN_FLIGHT: &str = "4";
const MIB: f64 = 1024.0 * 1024.0;
/// The unrelated Secrets of the "many Secrets" scenario: count, size, namespaces.
const UNRELATED_SECRETS: usize = 2000;
const UNRELATED_SECRET_BYTES: usize = 100 * 1000;
const UNRELATED_NAMESPACES: usize = 20;
/// The kopf 1.45 peer's figures for 1000 × 10 (issue #15), measured with the same emulator,
/// simulator, limits and at-most-once rules.
const KOPF_CPU_SECONDS_1000X10: f64 = 19.0;
const KOPF_REQUESTS_PER_BATCH: f64 = 8.0;

/// The runtimes the emulator and the simulator are served from, apart from the bench's own.
fn runtimes() -> &'static (tokio::runtime::Runtime, tokio::runtime::Runtime) {
    static RUNTIMES: OnceLock<(tokio::runtime::Runtime, tokio::runtime::Runtime)> = OnceLock::new();
    RUNTIMES.get_or_init(|| {
        let runtime = |name: &str| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name(name)
                .enable_all()
                .build()
                .expect("a tokio runtime")
        };
        (runtime("emulator"), runtime("simulator"))
    })
}

async fn start_env() -> Env {
    let (emulator, simulator) = runtimes();
    Env::start_on(
        emulator_config(),
        SimulatorConfig::default(),
        Some(emulator.handle()),
        Some(simulator.handle()),
    )
    .await
}

/// The user the operator is authenticated as (the chart's ServiceAccount).
fn operator_user() -> String {
    Identity::service_account(support::RELEASE_NAMESPACE, support::SERVICE_ACCOUNT, "").user
}

/// The operator binary: the one the image ships (static, release, no dev tools), which
/// `scripts/build-binary.sh` builds (a no-op when `scripts/test` or `scripts/build-image.sh`
/// already did), or `SCALE_OPERATOR` (to compare builds). Not `cargo bench`'s own build of
/// the binary: that one links the emulator and simulator and glibc dynamically, which adds
/// about 3 MiB of mapped code to every RSS figure.
fn operator_binary() -> &'static str {
    static BINARY: OnceLock<String> = OnceLock::new();
    BINARY.get_or_init(|| {
        if let Ok(binary) = std::env::var("SCALE_OPERATOR") {
            return binary;
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-binary.sh");
        let mut command = Command::new("bash");
        command.arg(&script).stderr(Stdio::inherit());
        // What cargo set for this bench about its own package: build scripts (ring's) declare
        // some of these as inputs, so the nested build would see them changed and rebuild,
        // and the next build from a shell would rebuild again.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if name == "OUT_DIR"
                || [
                    "CARGO_PKG_",
                    "CARGO_MANIFEST_",
                    "CARGO_CRATE_",
                    "CARGO_BIN_",
                    "CARGO_TARGET_TMPDIR",
                    "CARGO_PRIMARY_PACKAGE",
                ]
                .iter()
                .any(|prefix| name.starts_with(prefix))
            {
                command.env_remove(name.as_ref());
            }
        }
        let output = command
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            output.status.success(),
            "{} failed ({}); set SCALE_OPERATOR to measure another binary",
            script.display(),
            output.status
        );
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .to_string()
    })
}

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
            command.args(words).arg(operator_binary());
            command
        }
        None => Command::new(operator_binary()),
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
        // As the chart deploys it: its ServiceAccount's token, bound by the chart's RBAC.
        .env("KUBECONFIG", &env.operator_kubeconfig)
        .env("POD_NAME", name)
        .env("POD_NAMESPACE", support::RELEASE_NAMESPACE)
        .env_remove("KOODRIVE_WATCH_NAMESPACE")
        .env_remove("RUST_LOG")
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

/// User + system CPU seconds of a `/proc/.../stat` file.
fn stat_cpu_seconds(path: &str) -> Option<f64> {
    let text = std::fs::read_to_string(path).ok()?;
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = text.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on every Linux we run on.
    Some(ticks as f64 / 100.0)
}

/// CPU seconds of a process so far.
fn cpu_seconds(pid: u32) -> f64 {
    stat_cpu_seconds(&format!("/proc/{pid}/stat")).unwrap_or(0.0)
}

/// CPU seconds so far of this process's threads whose name starts with `prefix` (tokio
/// names a runtime's workers and blocking threads after it).
fn threads_cpu_seconds(prefix: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    tasks
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|name| name.trim_end().starts_with(prefix))
        })
        .filter_map(|task| stat_cpu_seconds(&task.path().join("stat").to_string_lossy()))
        .sum()
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
    let env = start_env().await;
    let mut runs = Vec::new();
    let mut idle_hwm_kib = 0;
    for run in 0..START_RUNS {
        let spawned = Instant::now();
        let mut operator = spawn_operator(&env, &format!("start-{run}"));
        runs.push(time_to_ready(&operator, spawned).await?);
        // Idle: ready, and a moment to settle.
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Some(child) = &operator.child {
            idle_hwm_kib = idle_hwm_kib.max(proc_status_kib(child.id(), "VmHWM").unwrap_or(0));
        }
        operator.kill();
    }
    runs.sort();
    Ok(StartFigures { runs, idle_hwm_kib })
}

/// One scenario: what to create before the operator starts.
#[derive(Clone, Copy)]
struct Scenario {
    name: &'static str,
    batches: usize,
    users_per_batch: usize,
    unrelated_secrets: usize,
    phone_prefix: &'static str,
}

const SMALL: Scenario = Scenario {
    name: "1000 x 10",
    batches: 1000,
    users_per_batch: 10,
    unrelated_secrets: 0,
    phone_prefix: "86",
};
const SECRETS: Scenario = Scenario {
    name: "1000 x 10 + 2000 unrelated 100 KB Secrets",
    batches: 1000,
    users_per_batch: 10,
    unrelated_secrets: UNRELATED_SECRETS,
    phone_prefix: "85",
};
const LARGE: Scenario = Scenario {
    name: "100 x 1000",
    batches: 100,
    users_per_batch: 1000,
    unrelated_secrets: 0,
    phone_prefix: "87",
};

struct ScaleFigures {
    create: Duration,
    readyz: Duration,
    all_ready: Duration,
    hwm_kib: u64,
    /// Resident memory when all were Ready: anonymous (heap, stacks) and file-backed (the
    /// executable's pages and shared libraries).
    anon_kib: u64,
    file_kib: u64,
    peak_fds: usize,
    operator_cpu: f64,
    emulator_cpu: f64,
    simulator_cpu: f64,
    spec_json: usize,
    stored_json: usize,
    /// The operator's requests about one UserBatch (its GET, its `/status` reads and
    /// writes, patches, Events), by "verb kind".
    api_requests: BTreeMap<String, usize>,
    /// Its other requests, by "verb kind": lists and watches at start-up, Secret reads
    /// (cached, so once per Secret version, not per UserBatch), accounts.
    shared_requests: BTreeMap<String, usize>,
    /// Bytes the emulator wrote to the operator's connections.
    bytes_received: u64,
    koodrive_requests: usize,
}

impl ScaleFigures {
    /// Requests about one UserBatch, in all.
    fn requests(&self) -> usize {
        self.api_requests.values().sum()
    }

    fn shared(&self) -> usize {
        self.shared_requests.values().sum()
    }
}

/// Secrets nobody references, in namespaces no UserBatch is in: what a shared cluster holds.
async fn create_unrelated_secrets(env: &Env, count: usize) -> Result<(), String> {
    let namespaces: Api<Namespace> = Api::all(env.client.clone());
    for n in 0..UNRELATED_NAMESPACES {
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(format!("tenant-{n:02}")),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        namespaces
            .create(&PostParams::default(), &namespace)
            .await
            .map_err(|e| format!("creating a namespace: {e}"))?;
    }
    // Incompressible-looking bytes, so the figure is not flattered by anything.
    let payload: Vec<u8> = (0..UNRELATED_SECRET_BYTES)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3])
        .collect();
    futures::stream::iter(0..count)
        .map(|i| {
            let api: Api<Secret> = Api::namespaced(
                env.client.clone(),
                &format!("tenant-{:02}", i % UNRELATED_NAMESPACES),
            );
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(format!("unrelated-{i:04}")),
                    ..ObjectMeta::default()
                },
                data: Some(BTreeMap::from([(
                    "blob".to_string(),
                    ByteString(payload.clone()),
                )])),
                ..Secret::default()
            };
            async move { api.create(&PostParams::default(), &secret).await }
        })
        .buffer_unordered(8)
        .try_for_each(|_| async { Ok(()) })
        .await
        .map_err(|e| format!("creating the unrelated Secrets: {e}"))
}

/// Creates the scenario's objects, starts the operator and waits until every UserBatch is
/// Ready; then checks each phone was submitted exactly once.
async fn scale(mut scenario: Scenario, run: usize) -> Result<ScaleFigures, String> {
    // For profiling a scenario at a smaller size.
    if let Some(batches) = std::env::var("SCALE_BATCHES")
        .ok()
        .and_then(|b| b.parse().ok())
    {
        scenario.batches = batches;
    }
    let Scenario {
        batches,
        users_per_batch,
        phone_prefix,
        ..
    } = scenario;
    let env = start_env().await;
    env.create_credentials("koodrive-credentials", SECRET_KEY)
        .await;
    if scenario.unrelated_secrets > 0 {
        create_unrelated_secrets(&env, scenario.unrelated_secrets).await?;
    }
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
    drop(created);

    // Watching from before the start, so no transition is missed.
    let watch = tokio::spawn(all_ready(api.clone(), batches));
    let emulator_cpu_before = threads_cpu_seconds("emulator");
    let simulator_cpu_before = threads_cpu_seconds("simulator");
    let spawned = Instant::now();
    let name = format!("scale-{batches}x{users_per_batch}-{run}");
    let mut operator = spawn_operator(&env, &name);
    let pid = operator.child.as_ref().map_or(0, |c| c.id());
    let peak_fds = Arc::new(AtomicUsize::new(0));
    let sampler = tokio::spawn(track_open_files(pid, peak_fds.clone()));
    let readyz = time_to_ready(&operator, spawned).await?;
    let done = watch
        .await
        .map_err(|e| format!("the Ready watch panicked: {e}"))??;
    let all_ready = done.duration_since(spawned);
    let hwm_kib = proc_status_kib(pid, "VmHWM").unwrap_or(0);
    let anon_kib = proc_status_kib(pid, "RssAnon").unwrap_or(0);
    let file_kib = proc_status_kib(pid, "RssFile").unwrap_or(0);
    let operator_cpu = cpu_seconds(pid);
    let emulator_cpu = threads_cpu_seconds("emulator") - emulator_cpu_before;
    let simulator_cpu = threads_cpu_seconds("simulator") - simulator_cpu_before;
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
        println!("    note: the operator logged {warnings} warnings");
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
    let user = operator_user();
    let mut api_requests = BTreeMap::new();
    let mut shared_requests = BTreeMap::new();
    for record in env.emulator.request_records() {
        if record.user != user {
            continue;
        }
        let kind = ["events", "secrets", "leases", "userbatches"]
            .into_iter()
            .find(|kind| record.path.contains(&format!("/{kind}")))
            .unwrap_or("other");
        let status = if record.path.ends_with("/status") {
            "/status"
        } else {
            ""
        };
        let about_one_batch = kind == "events"
            || record
                .path
                .split_once("/userbatches/")
                .is_some_and(|(_, rest)| !rest.is_empty());
        let counts = if about_one_batch {
            &mut api_requests
        } else {
            &mut shared_requests
        };
        *counts
            .entry(format!("{} {kind}{status}", record.verb))
            .or_insert(0) += 1;
    }
    Ok(ScaleFigures {
        create,
        readyz,
        all_ready,
        hwm_kib,
        anon_kib,
        file_kib,
        peak_fds,
        operator_cpu,
        emulator_cpu,
        simulator_cpu,
        spec_json,
        stored_json,
        api_requests,
        shared_requests,
        bytes_received: env.emulator.bytes_sent_to(&user),
        koodrive_requests: env.simulator.request_count(),
    })
}

fn print_run(scenario: &Scenario, f: &ScaleFigures) {
    let per_batch = |n: f64| n / scenario.batches as f64;
    println!(
        "    created in {:.2} s; /readyz after {:.0} ms; all Ready after {:.2} s",
        f.create.as_secs_f64(),
        f.readyz.as_secs_f64() * 1000.0,
        f.all_ready.as_secs_f64()
    );
    println!(
        "    operator: peak RSS (VmHWM) {:.1} MiB (when Ready: {:.1} MiB anonymous, {:.1} MiB file-backed), CPU {:.2} s, peak open fds {}; emulator CPU {:.2} s, simulator CPU {:.2} s",
        f.hwm_kib as f64 / 1024.0,
        f.anon_kib as f64 / 1024.0,
        f.file_kib as f64 / 1024.0,
        f.operator_cpu,
        f.peak_fds,
        f.emulator_cpu,
        f.simulator_cpu
    );
    println!(
        "    JSON of the UserBatches as created {:.1} MiB, as stored when Ready {:.1} MiB",
        f.spec_json as f64 / MIB,
        f.stored_json as f64 / MIB
    );
    let requests: Vec<String> = f
        .api_requests
        .iter()
        .map(|(k, n)| format!("{k} {:.2}", per_batch(*n as f64)))
        .collect();
    let shared: Vec<String> = f
        .shared_requests
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    println!(
        "    operator's API requests per UserBatch: {:.2} ({}); besides, {} in all ({}) = {:.3} per UserBatch; KooDrive requests per UserBatch {:.1}",
        per_batch(f.requests() as f64),
        requests.join(", "),
        f.shared(),
        shared.join(", "),
        per_batch(f.shared() as f64),
        per_batch(f.koodrive_requests as f64)
    );
    println!(
        "    bytes the operator received from the API server: {:.2} MiB ({:.0} per UserBatch)",
        f.bytes_received as f64 / MIB,
        per_batch(f.bytes_received as f64)
    );
}

/// Min, median and max of a figure over runs.
fn spread(values: impl IntoIterator<Item = f64>) -> (f64, f64, f64) {
    let mut values: Vec<f64> = values.into_iter().collect();
    values.sort_by(f64::total_cmp);
    let median = values.get(values.len() / 2).copied().unwrap_or(f64::NAN);
    let min = values.first().copied().unwrap_or(f64::NAN);
    let max = values.last().copied().unwrap_or(f64::NAN);
    (min, median, max)
}

fn spread_text(values: impl IntoIterator<Item = f64>, digits: usize, unit: &str) -> String {
    let (min, median, max) = spread(values);
    format!("{median:.digits$}{unit} ({min:.digits$}–{max:.digits$})")
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    // `cargo bench` passes `--bench`; nothing here takes arguments.
    println!("operator binary: {}", operator_binary());
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(problem) => {
            eprintln!("scale benchmark failed: {problem}");
            ExitCode::FAILURE
        }
    }
}

async fn run_scenario(scenario: Scenario, runs: usize) -> Result<Vec<ScaleFigures>, String> {
    println!("{}:", scenario.name);
    let mut figures = Vec::new();
    for run in 0..runs {
        println!("  run {}:", run + 1);
        let f = scale(scenario, run).await?;
        print_run(&scenario, &f);
        figures.push(f);
    }
    Ok(figures)
}

async fn run() -> Result<(), String> {
    let runs: usize = std::env::var("SCALE_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(DEFAULT_RUNS)
        .max(1);
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
    println!(
        "machine: {cpu}, {} CPUs; load average at start: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let only = std::env::var("SCALE_ONLY").unwrap_or_default();
    let scenarios: Vec<Scenario> = match only.as_str() {
        "" => vec![SMALL, SECRETS, LARGE],
        "small" => vec![SMALL],
        "secrets" => vec![SMALL, SECRETS],
        "large" => vec![LARGE],
        other => return Err(format!("SCALE_ONLY={other}: use small, secrets or large")),
    };
    let start = if only.is_empty() {
        let start = start_to_ready().await?;
        let runs: Vec<String> = start
            .runs
            .iter()
            .map(|d| format!("{:.0}", d.as_secs_f64() * 1000.0))
            .collect();
        println!(
            "start to ready (empty cluster): median {:.0} ms over {START_RUNS} runs [{} ms]; idle peak RSS {:.1} MiB",
            start.runs[start.runs.len() / 2].as_secs_f64() * 1000.0,
            runs.join(", "),
            start.idle_hwm_kib as f64 / 1024.0
        );
        Some(start)
    } else {
        None
    };
    let mut results = Vec::new();
    for scenario in scenarios {
        let figures = run_scenario(scenario, runs).await?;
        results.push((scenario, figures));
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "load average at the end: {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    summary(start.as_ref(), &results, runs);
    Ok(())
}

/// The targets of SPEC §9 and issue #15, as medians over the runs (min–max in brackets).
fn summary(start: Option<&StartFigures>, results: &[(Scenario, Vec<ScaleFigures>)], runs: usize) {
    let find = |name: &str| {
        results
            .iter()
            .find(|(s, _)| s.name == name)
            .map(|(s, f)| (s, f.as_slice()))
    };
    println!();
    println!("| target (median of {runs} runs, min–max) | measured | |");
    println!("|---|---|---|");
    if let Some(start) = start {
        let median = start.runs[start.runs.len() / 2];
        println!(
            "| start to ready < 200 ms | {:.0} ms (median of {START_RUNS}); idle RSS {:.1} MiB | {} |",
            median.as_secs_f64() * 1000.0,
            start.idle_hwm_kib as f64 / 1024.0,
            verdict(median < Duration::from_millis(200))
        );
    }
    let mib = |f: &ScaleFigures| f.hwm_kib as f64 / 1024.0;
    if let Some((scenario, small)) = find(SMALL.name) {
        let (_, ready, _) = spread(small.iter().map(|f| f.all_ready.as_secs_f64()));
        println!(
            "| 1000 × 10 all Ready < 10 s | {} | {} |",
            spread_text(small.iter().map(|f| f.all_ready.as_secs_f64()), 2, " s"),
            verdict(ready < 10.0)
        );
        let (_, rss, _) = spread(small.iter().map(mib));
        println!(
            "| 1000 × 10 peak RSS ≤ 20 MiB | {} | {} |",
            spread_text(small.iter().map(mib), 1, " MiB"),
            verdict(rss <= 20.0)
        );
        let per_batch = |f: &ScaleFigures| f.requests() as f64 / scenario.batches as f64;
        let shared = |f: &ScaleFigures| f.shared() as f64 / scenario.batches as f64;
        let (_, requests, _) = spread(small.iter().map(per_batch));
        println!(
            "| 1000 × 10 API requests per UserBatch ≤ 7 (kopf: {KOPF_REQUESTS_PER_BATCH}) | {}, plus {} shared (start-up lists and watches, Secret reads) | {} |",
            spread_text(small.iter().map(per_batch), 2, ""),
            spread_text(small.iter().map(shared), 3, ""),
            verdict(requests <= 7.0)
        );
        let (_, cpu, _) = spread(small.iter().map(|f| f.operator_cpu));
        println!(
            "| 1000 × 10 operator CPU ≥ 10× below kopf's {KOPF_CPU_SECONDS_1000X10} s | {} = {:.1}× below | {} |",
            spread_text(small.iter().map(|f| f.operator_cpu), 2, " s"),
            KOPF_CPU_SECONDS_1000X10 / cpu,
            verdict(cpu * 10.0 <= KOPF_CPU_SECONDS_1000X10)
        );
        println!(
            "| 1000 × 10 emulator CPU (reported) | {} | |",
            spread_text(small.iter().map(|f| f.emulator_cpu), 2, " s"),
        );
        if let Some((_, many)) = find(SECRETS.name) {
            let (_, base_rss, _) = spread(small.iter().map(mib));
            let (_, rss, _) = spread(many.iter().map(mib));
            println!(
                "| + 2000 unrelated 100 KB Secrets: peak RSS within 10 % | {} vs {base_rss:.1} MiB: {:+.1} % | {} |",
                spread_text(many.iter().map(mib), 1, " MiB"),
                (rss / base_rss - 1.0) * 100.0,
                verdict(rss <= base_rss * 1.1)
            );
            let received = |f: &ScaleFigures| f.bytes_received as f64 / MIB;
            let (_, base_bytes, _) = spread(small.iter().map(received));
            let (_, bytes, _) = spread(many.iter().map(received));
            println!(
                "| + 2000 unrelated 100 KB Secrets: bytes received within 10 % | {} vs {base_bytes:.2} MiB: {:+.1} % | {} |",
                spread_text(many.iter().map(received), 2, " MiB"),
                (bytes / base_bytes - 1.0) * 100.0,
                verdict(bytes <= base_bytes * 1.1)
            );
        }
    }
    if let Some((_, large)) = find(LARGE.name) {
        let (_, ready, _) = spread(large.iter().map(|f| f.all_ready.as_secs_f64()));
        println!(
            "| 100 × 1000 all Ready < 12 s | {} | {} |",
            spread_text(large.iter().map(|f| f.all_ready.as_secs_f64()), 2, " s"),
            verdict(ready < 12.0)
        );
        let (_, rss, _) = spread(large.iter().map(mib));
        let json = large.first().map_or(0.0, |f| f.spec_json as f64 / MIB);
        println!(
            "| 100 × 1000 peak RSS ≤ 24 MiB (2 × JSON = {:.1} MiB) | {} | {} |",
            2.0 * json,
            spread_text(large.iter().map(mib), 1, " MiB"),
            verdict(rss <= 24.0)
        );
        let ratio = |f: &ScaleFigures| f.emulator_cpu / f.operator_cpu.max(0.01);
        let (_, emulator_ratio, _) = spread(large.iter().map(ratio));
        println!(
            "| 100 × 1000 emulator CPU ≤ 3× the operator's | {} vs {} = {} | {} |",
            spread_text(large.iter().map(|f| f.emulator_cpu), 2, " s"),
            spread_text(large.iter().map(|f| f.operator_cpu), 2, " s"),
            spread_text(large.iter().map(ratio), 2, "×"),
            verdict(emulator_ratio <= 3.0)
        );
    }
    let phones: usize = results
        .iter()
        .map(|(s, f)| s.batches * s.users_per_batch * f.len())
        .sum();
    println!("| every phone submitted exactly once | {phones} phones | ok |");
}
