//! Issue #13: KooDriveAccount and ClusterKooDriveAccount. The platform team holds the AK/SK
//! (in the operator's namespace); tenants name an account, never a Secret. End to end with
//! the real operator binary under the chart's RBAC: who may use a cluster account, a wrong SK
//! reported once on the account, per-account limits; then `check-credentials`, `validate`
//! and the CRDs' rules.

use crate::support::*;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use koodrive_client::SecretKey;
use koodrive_operator::crd::account::{
    AccountLimits, AccountStatus, AllowedNamespaces, ClusterCredentialsRef, ClusterKooDriveAccount,
    ClusterKooDriveAccountSpec, KooDriveAccount, KooDriveAccountSpec, NamespaceSelector,
};
use koodrive_operator::crd::{
    AccountKind, AccountRef, CredentialsRef, SecretKeyRef, User, UserBatch, UserBatchSpec,
};
use koodrive_operator::validation::{Document, validate_manifests, validate_userbatch};
use koodrive_simulator::{Account, Call, Fault, FaultKind, SimulatorConfig};
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The platform team's credentials Secret, in the operator's namespace only.
const PLATFORM_SECRET: &str = "platform-credentials";
const TENANT_LABEL: &str = "koodrive.io/tenant";

async fn create_namespace(env: &Env, name: &str, labels: &[(&str, &str)]) {
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    Api::<Namespace>::all(env.client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .unwrap();
}

fn secret_in(namespace: &str, name: &str, access_key: &str, secret_key: &str) -> Secret {
    let mut secret = credentials_secret(name, secret_key);
    secret.metadata.namespace = Some(namespace.into());
    if let Some(data) = secret.string_data.as_mut() {
        data.insert("accessKey".into(), access_key.into());
    }
    secret
}

async fn create_secret(env: &Env, secret: &Secret) {
    let namespace = secret.metadata.namespace.clone().unwrap();
    Api::<Secret>::namespaced(env.client.clone(), &namespace)
        .create(&PostParams::default(), secret)
        .await
        .unwrap();
}

fn cluster_account(
    name: &str,
    secret: &str,
    allowed: AllowedNamespaces,
    limits: Option<AccountLimits>,
) -> ClusterKooDriveAccount {
    ClusterKooDriveAccount::new(
        name,
        ClusterKooDriveAccountSpec {
            endpoint: None,
            credentials_ref: ClusterCredentialsRef {
                name: secret.into(),
                namespace: None,
                access_key_key: None,
                secret_key_key: None,
                user_id_key: None,
            },
            limits,
            allowed_namespaces: allowed,
        },
    )
}

fn namespaced_account(
    namespace: &str,
    name: &str,
    secret: &str,
    limits: Option<AccountLimits>,
) -> KooDriveAccount {
    let mut account = KooDriveAccount::new(
        name,
        KooDriveAccountSpec {
            endpoint: None,
            credentials_ref: CredentialsRef {
                name: secret.into(),
                access_key_key: None,
                secret_key_key: None,
                user_id_key: None,
            },
            limits,
        },
    );
    account.metadata.namespace = Some(namespace.into());
    account
}

fn by_label() -> AllowedNamespaces {
    AllowedNamespaces {
        names: None,
        selector: Some(NamespaceSelector {
            match_labels: BTreeMap::from([(TENANT_LABEL.to_string(), "true".to_string())]),
            match_expressions: Vec::new(),
        }),
    }
}

fn by_name(names: &[&str]) -> AllowedNamespaces {
    AllowedNamespaces {
        names: Some(names.iter().map(|n| n.to_string()).collect()),
        selector: None,
    }
}

/// A UserBatch in `namespace` that names an account instead of a Secret.
fn account_batch(
    namespace: &str,
    name: &str,
    kind: AccountKind,
    account: &str,
    users: Vec<User>,
) -> UserBatch {
    let mut ub = UserBatch::new(
        name,
        UserBatchSpec {
            credentials_ref: None,
            account_ref: Some(AccountRef {
                kind,
                name: account.into(),
            }),
            endpoint: None,
            users,
            in_doubt_policy: None,
            suspend: None,
            deletion_policy: None,
        },
    );
    ub.metadata.namespace = Some(namespace.into());
    ub
}

async fn create_batch_in(env: &Env, ub: &UserBatch) {
    let namespace = ub.metadata.namespace.clone().unwrap();
    Api::<UserBatch>::namespaced(env.client.clone(), &namespace)
        .create(&PostParams::default(), ub)
        .await
        .unwrap();
}

async fn wait_in(
    env: &Env,
    namespace: &str,
    name: &str,
    what: &str,
    ready: impl Fn(&koodrive_operator::crd::UserBatchStatus) -> bool,
) -> UserBatch {
    wait_for_batch(
        &Api::namespaced(env.client.clone(), namespace),
        name,
        what,
        ready,
    )
    .await
}

fn account_condition<'a>(
    status: &'a AccountStatus,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

fn account_reason(status: &AccountStatus) -> Option<&str> {
    account_condition(status, "Ready").map(|c| c.reason.as_str())
}

async fn wait_for_cluster_account(
    env: &Env,
    name: &str,
    what: &str,
    ready: impl Fn(&AccountStatus) -> bool,
) -> ClusterKooDriveAccount {
    let api: Api<ClusterKooDriveAccount> = Api::all(env.client.clone());
    let mut last = None;
    let start = Instant::now();
    while start.elapsed() < DEADLINE {
        if let Ok(account) = api.get(name).await {
            if account.status.as_ref().is_some_and(&ready) {
                return account;
            }
            last = account.status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("ClusterKooDriveAccount {name} did not reach {what}; last status: {last:#?}");
}

async fn wait_for_namespaced_account(
    env: &Env,
    namespace: &str,
    name: &str,
    what: &str,
    ready: impl Fn(&AccountStatus) -> bool,
) -> KooDriveAccount {
    let api: Api<KooDriveAccount> = Api::namespaced(env.client.clone(), namespace);
    let mut last = None;
    let start = Instant::now();
    while start.elapsed() < DEADLINE {
        if let Ok(account) = api.get(name).await {
            if account.status.as_ref().is_some_and(&ready) {
                return account;
            }
            last = account.status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("KooDriveAccount {namespace}/{name} did not reach {what}; last status: {last:#?}");
}

fn account_is_ready(status: &AccountStatus) -> bool {
    account_condition(status, "Ready").is_some_and(|c| c.status == "True")
}

/// Events about an object of `kind` named `name`, in `namespace`.
async fn events_about(env: &Env, namespace: &str, kind: &str, name: &str) -> Vec<Event> {
    let events: Api<Event> = Api::namespaced(env.client.clone(), namespace);
    events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| {
            e.regarding
                .as_ref()
                .is_some_and(|r| r.kind.as_deref() == Some(kind) && r.name.as_deref() == Some(name))
        })
        .collect()
}

fn kubectl(env: &Env, args: &[&str]) -> String {
    let out = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&env.kubeconfig)
        .arg("--cache-dir")
        .arg(env.dir.path().join("kubectl-cache"))
        .args(args)
        .output()
        .expect("kubectl is installed");
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// --- End to end ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_account_serves_the_namespaces_it_allows_and_nothing_is_sent_for_others() {
    let env = Env::start().await;
    // The AK/SK exist only in the operator's namespace.
    create_secret(
        &env,
        &secret_in(RELEASE_NAMESPACE, PLATFORM_SECRET, ACCESS_KEY, SECRET_KEY),
    )
    .await;
    create_namespace(&env, "team-a", &[(TENANT_LABEL, "true")]).await;
    create_namespace(&env, "team-b", &[]).await;
    Api::<ClusterKooDriveAccount>::all(env.client.clone())
        .create(
            &PostParams::default(),
            &cluster_account("company", PLATFORM_SECRET, by_label(), None),
        )
        .await
        .unwrap();
    let people_a = users("86301", 2, None);
    let people_b = users("86302", 2, None);
    for (namespace, people) in [("team-a", &people_a), ("team-b", &people_b)] {
        create_batch_in(
            &env,
            &account_batch(
                namespace,
                "onboarding",
                AccountKind::ClusterKooDriveAccount,
                "company",
                people.clone(),
            ),
        )
        .await;
    }
    let _operator = env.operator("op", &[]);

    let account = wait_for_cluster_account(&env, "company", "Ready", account_is_ready).await;
    let status = account.status.unwrap();
    assert_eq!(account_reason(&status), Some("CredentialsVerified"));
    assert_eq!(status.observed_generation, account.metadata.generation);
    assert_eq!(
        status.endpoint.as_deref(),
        Some(env.simulator.url().as_str())
    );
    wait_in(&env, "team-a", "onboarding", "Ready", is_ready).await;
    let refused = wait_in(&env, "team-b", "onboarding", "AccountNotAllowed", |s| {
        ready_reason(s) == Some("AccountNotAllowed")
    })
    .await;
    let status = refused.status.unwrap();
    assert!(
        condition(&status, "Stalled").is_some_and(|c| c.status == "True"),
        "a human must act: {status:#?}"
    );
    let message = &condition(&status, "Ready").unwrap().message;
    assert!(
        message.contains("team-b") && message.contains("ClusterKooDriveAccount company"),
        "{message}"
    );
    assert!(status.tasks.is_empty());

    // KooDrive received team-a's users, once each, and nothing of team-b's.
    let submitted = env.simulator.submissions();
    for user in &people_a {
        assert_eq!(submitted.get(&user.phone), Some(&1), "{submitted:?}");
    }
    for user in &people_b {
        assert!(!submitted.contains_key(&user.phone), "{submitted:?}");
    }
    // The operator never looked for credentials in team-b (checked before this test lists
    // Secrets there itself), and the tenants hold none.
    let read_in_b: Vec<_> = env
        .emulator
        .request_log()
        .into_iter()
        .filter(|(_, path, _)| path.contains("/namespaces/team-b/secrets"))
        .collect();
    assert!(
        read_in_b.is_empty(),
        "nothing is read for a namespace the account does not allow: {read_in_b:?}"
    );
    for namespace in ["team-a", "team-b"] {
        let secrets = Api::<Secret>::namespaced(env.client.clone(), namespace)
            .list(&ListParams::default())
            .await
            .unwrap();
        assert!(secrets.items.is_empty(), "{namespace} holds no Secret");
    }

    // Explained where people look: an Event on the refused UserBatch, one on the account
    // (in `default`, where Events about cluster-scoped objects live).
    let warned = events_about(&env, "team-b", "UserBatch", "onboarding").await;
    assert!(
        warned
            .iter()
            .any(|e| e.reason.as_deref() == Some("AccountNotAllowed")),
        "{warned:?}"
    );
    let verified = events_about(&env, "default", "ClusterKooDriveAccount", "company").await;
    assert!(
        verified
            .iter()
            .any(|e| e.reason.as_deref() == Some("CredentialsVerified")),
        "{verified:?}"
    );
    // kubectl: the short name and the printer columns.
    let table = kubectl(&env, &["get", "ckda"]);
    for expected in [
        "NAME",
        "ENDPOINT",
        "READY",
        "REASON",
        "company",
        "True",
        "CredentialsVerified",
    ] {
        assert!(table.contains(expected), "{expected} missing in:\n{table}");
    }

    // The platform team labels team-b: its UserBatch proceeds without being touched.
    Api::<Namespace>::all(env.client.clone())
        .patch(
            "team-b",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {TENANT_LABEL: "true"}}})),
        )
        .await
        .unwrap();
    wait_in(&env, "team-b", "onboarding", "Ready", is_ready).await;
    for user in people_a.iter().chain(&people_b) {
        assert_eq!(env.simulator.submissions().get(&user.phone), Some(&1));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_key_is_reported_once_on_the_account_and_fixing_it_recovers_everything() {
    let env = Env::start().await;
    create_secret(
        &env,
        &secret_in(
            RELEASE_NAMESPACE,
            PLATFORM_SECRET,
            ACCESS_KEY,
            "WRONG-secret-key",
        ),
    )
    .await;
    Api::<ClusterKooDriveAccount>::all(env.client.clone())
        .create(
            &PostParams::default(),
            &cluster_account(
                "company",
                PLATFORM_SECRET,
                by_name(&["team-a", "team-b"]),
                None,
            ),
        )
        .await
        .unwrap();
    let batches = [
        ("team-a", "first", "86311"),
        ("team-a", "second", "86312"),
        ("team-b", "third", "86313"),
    ];
    for (namespace, name, prefix) in batches {
        create_batch_in(
            &env,
            &account_batch(
                namespace,
                name,
                AccountKind::ClusterKooDriveAccount,
                "company",
                users(prefix, 2, None),
            ),
        )
        .await;
    }
    let _operator = env.operator("op", &[]);

    let account = wait_for_cluster_account(&env, "company", "CredentialsInvalid", |s| {
        account_reason(s) == Some("CredentialsInvalid")
    })
    .await;
    let status = account.status.unwrap();
    assert!(account_condition(&status, "Stalled").is_some_and(|c| c.status == "True"));
    let message = &account_condition(&status, "Ready").unwrap().message;
    assert!(
        message.contains(PLATFORM_SECRET),
        "names the Secret: {message}"
    );
    for (namespace, name, _) in batches {
        // Waiting for the account's check first, then for its verdict.
        let ub = wait_in(
            &env,
            namespace,
            name,
            "AccountNotReady with the account's reason",
            |s| {
                ready_reason(s) == Some("AccountNotReady")
                    && condition(s, "Ready")
                        .is_some_and(|c| c.message.contains("CredentialsInvalid"))
            },
        )
        .await;
        let status = ub.status.unwrap();
        let message = &condition(&status, "Ready").unwrap().message;
        assert!(
            message.contains("ClusterKooDriveAccount company")
                && message.contains("CredentialsInvalid"),
            "the UserBatch waits for the account and says why: {message}"
        );
        // Waiting for the account is not this UserBatch's own stall.
        assert!(condition(&status, "Stalled").is_some_and(|c| c.status == "False"));
    }
    // Long enough for several retries of everything: the AK/SK is refused at most twice in
    // all (once, plus one clock-corrected retry), whatever the number of UserBatches.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stats = env.simulator.stats_by_access_key();
    let failed = stats.get(ACCESS_KEY).map_or(0, |s| s.failed_authentication);
    assert!(
        (1..=2).contains(&failed),
        "{failed} failed-auth requests: {stats:?}"
    );
    assert!(env.simulator.request_count() <= 2);
    assert!(env.simulator.submissions().is_empty());
    // Reported once, on the account; the UserBatches announce no credential problem of
    // their own.
    let on_account = events_about(&env, "default", "ClusterKooDriveAccount", "company").await;
    assert_eq!(
        on_account
            .iter()
            .filter(|e| e.reason.as_deref() == Some("CredentialsInvalid"))
            .count(),
        1,
        "{on_account:?}"
    );
    for namespace in ["team-a", "team-b"] {
        let events: Api<Event> = Api::namespaced(env.client.clone(), namespace);
        let reasons: Vec<String> = events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|e| e.reason)
            .collect();
        assert!(
            !reasons.iter().any(|r| r == "CredentialsInvalid"),
            "{namespace}: {reasons:?}"
        );
    }
    let logs = _operator.logs();
    assert_no_secrets("the operator's log", &logs);

    // Fixing the Secret re-checks the account, whose new status releases every UserBatch.
    let fixed = secret_in(RELEASE_NAMESPACE, PLATFORM_SECRET, ACCESS_KEY, SECRET_KEY);
    Api::<Secret>::namespaced(env.client.clone(), RELEASE_NAMESPACE)
        .patch(
            PLATFORM_SECRET,
            &PatchParams::default(),
            &Patch::Merge(&fixed),
        )
        .await
        .unwrap();
    wait_for_cluster_account(&env, "company", "Ready", account_is_ready).await;
    for (namespace, name, _) in batches {
        wait_in(&env, namespace, name, "Ready", is_ready).await;
    }
    for (phone, count) in env.simulator.submissions() {
        assert_eq!(count, 1, "phone {phone} submitted {count} times");
    }
    assert_eq!(env.simulator.submissions().len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_account_limits_hold_for_two_accounts_under_load() {
    const AK_A: &str = "load-access-key-a";
    const AK_B: &str = "load-access-key-b";
    let account = |access_key: &str| Account {
        access_key: access_key.into(),
        secret_key: SecretKey::new(SECRET_KEY.into()),
        user_id: USER_ID.into(),
    };
    let env = Env::start_with(
        koodrive_operator::devtools::emulator_config(),
        SimulatorConfig {
            accounts: vec![account(AK_A), account(AK_B)],
            ..SimulatorConfig::default()
        },
    )
    .await;
    // Every request takes a while, so requests overlap unless a limit keeps them apart.
    env.simulator.inject(Fault {
        call: None,
        times: 100_000,
        kind: FaultKind::Latency(Duration::from_millis(150)),
    });
    // A: a team's KooDriveAccount, one request at a time, 2 per second.
    create_secret(&env, &secret_in("load-a", "creds", AK_A, SECRET_KEY)).await;
    Api::<KooDriveAccount>::namespaced(env.client.clone(), "load-a")
        .create(
            &PostParams::default(),
            &namespaced_account(
                "load-a",
                "team",
                "creds",
                Some(AccountLimits {
                    requests_per_second: Some(2.0),
                    max_in_flight: Some(1),
                }),
            ),
        )
        .await
        .unwrap();
    // B: a ClusterKooDriveAccount, three at a time, 20 per second.
    create_secret(
        &env,
        &secret_in(RELEASE_NAMESPACE, PLATFORM_SECRET, AK_B, SECRET_KEY),
    )
    .await;
    Api::<ClusterKooDriveAccount>::all(env.client.clone())
        .create(
            &PostParams::default(),
            &cluster_account(
                "shared",
                PLATFORM_SECRET,
                by_name(&["load-b"]),
                Some(AccountLimits {
                    requests_per_second: Some(20.0),
                    max_in_flight: Some(3),
                }),
            ),
        )
        .await
        .unwrap();
    const BATCHES: usize = 6;
    for i in 0..BATCHES {
        create_batch_in(
            &env,
            &account_batch(
                "load-a",
                &format!("a-{i}"),
                AccountKind::KooDriveAccount,
                "team",
                users(&format!("8632{i}"), 1, None),
            ),
        )
        .await;
        create_batch_in(
            &env,
            &account_batch(
                "load-b",
                &format!("b-{i}"),
                AccountKind::ClusterKooDriveAccount,
                "shared",
                users(&format!("8633{i}"), 1, None),
            ),
        )
        .await;
    }
    // Every request the operator sends is released by its limiter after this instant.
    let started = Instant::now();
    // The operator-wide limits are lifted (support's defaults: 0 per second, 8 in flight):
    // only the accounts' own limits can hold.
    let _operator = env.operator("op", &[]);
    for i in 0..BATCHES {
        wait_in(&env, "load-a", &format!("a-{i}"), "Ready", is_ready).await;
        wait_in(&env, "load-b", &format!("b-{i}"), "Ready", is_ready).await;
    }

    let log = env.simulator.request_log();
    let stats = koodrive_simulator::stats_by_access_key(&log);
    // KooDrive's view of each request lies within the client's permit (taken before the
    // request left, released after its answer was read), so these bounds hold whatever the
    // machine's speed.
    assert!(stats[AK_A].peak_in_flight <= 1, "{stats:?}");
    assert!(stats[AK_B].peak_in_flight <= 3, "{stats:?}");
    // Rate: every request of A was released by A's limiter (burst 2, then 2 per second)
    // between `started` and its arrival, so no more than 2 + 2 × that span arrived.
    let of_a: Vec<_> = log
        .iter()
        .filter(|r| r.access_key.as_deref() == Some(AK_A))
        .collect();
    let span = of_a
        .iter()
        .map(|r| r.arrived.duration_since(started).as_secs_f64())
        .fold(0.0, f64::max);
    // The check, the creates and the polls: more than the burst, so the rate had to hold.
    assert!(of_a.len() > 2 * BATCHES, "{} requests of A", of_a.len());
    assert!(
        of_a.len() as f64 <= 2.0 + 2.0 * span + 1.0,
        "{} requests of A within {span:.2} s: more than 2 per second",
        of_a.len()
    );
    for (phone, count) in env.simulator.submissions() {
        assert_eq!(count, 1, "phone {phone} submitted {count} times");
    }
    assert!(stats.values().all(|s| s.failed_authentication == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespaced_account_is_used_once_it_exists_and_its_secret_is_never_a_password() {
    let env = Env::start().await;
    env.create_credentials("team-creds", SECRET_KEY).await;
    // Created before its account: it waits for it.
    create_batch_in(
        &env,
        &account_batch(
            NAMESPACE,
            "early",
            AccountKind::KooDriveAccount,
            "team",
            users("86341", 2, None),
        ),
    )
    .await;
    // A tenant naming the account's credentials Secret as a password source.
    let mut sneaky = users("86342", 1, None);
    sneaky[0].password_secret_ref = Some(SecretKeyRef {
        name: "team-creds".into(),
        key: "secretKey".into(),
    });
    create_batch_in(
        &env,
        &account_batch(
            NAMESPACE,
            "sneaky",
            AccountKind::KooDriveAccount,
            "team",
            sneaky,
        ),
    )
    .await;
    let _operator = env.operator("op", &[]);
    let waiting = wait_in(&env, NAMESPACE, "early", "AccountNotFound", |s| {
        ready_reason(s) == Some("AccountNotFound")
    })
    .await;
    let message = &condition(waiting.status.as_ref().unwrap(), "Ready")
        .unwrap()
        .message;
    assert!(
        message.contains(&format!("KooDriveAccount {NAMESPACE}/team")),
        "{message}"
    );

    Api::<KooDriveAccount>::namespaced(env.client.clone(), NAMESPACE)
        .create(
            &PostParams::default(),
            &namespaced_account(NAMESPACE, "team", "team-creds", None),
        )
        .await
        .unwrap();
    wait_for_namespaced_account(&env, NAMESPACE, "team", "Ready", account_is_ready).await;
    wait_in(&env, NAMESPACE, "early", "Ready", is_ready).await;
    let refused = wait_in(&env, NAMESPACE, "sneaky", "InvalidSpec", |s| {
        ready_reason(s) == Some("InvalidSpec")
    })
    .await;
    let message = &condition(refused.status.as_ref().unwrap(), "Ready")
        .unwrap()
        .message;
    assert!(message.contains("never sent as a password"), "{message}");
    assert!(!env.simulator.submissions().contains_key("86342000000"));
    let table = kubectl(&env, &["get", "kda", "-n", NAMESPACE]);
    assert!(
        table.contains("team") && table.contains("CredentialsVerified"),
        "{table}"
    );
    assert_no_secrets("the operator's log", &_operator.logs());
}

// --- check-credentials ----------------------------------------------------------------

async fn check_credentials(endpoint: &str, secret_key: &str) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_koodrive-operator"))
        .args([
            "check-credentials",
            "--endpoint",
            endpoint,
            "--allow-insecure-endpoints",
        ])
        .env("KOODRIVE_ACCESS_KEY", ACCESS_KEY)
        .env("KOODRIVE_SECRET_KEY", secret_key)
        .env("KOODRIVE_USER_ID", USER_ID)
        .env_remove("KOODRIVE_ENDPOINT")
        .output()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_credentials_tells_good_from_wrong_credentials_and_creates_nothing() {
    let env = Env::start().await;
    let url = env.simulator.url();
    let good = check_credentials(&url, SECRET_KEY).await;
    let stdout = String::from_utf8_lossy(&good.stdout);
    assert!(
        good.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&good.stderr)
    );
    assert!(
        stdout.contains("credentials accepted") && stdout.contains(ACCESS_KEY),
        "{stdout}"
    );
    assert_eq!(env.simulator.request_count(), 1, "one request");

    let wrong = check_credentials(&url, "WRONG-secret-key").await;
    let shown = format!(
        "{}{}",
        String::from_utf8_lossy(&wrong.stdout),
        String::from_utf8_lossy(&wrong.stderr)
    );
    assert!(!wrong.status.success(), "{shown}");
    assert!(
        shown.contains("KooDrive refused the credentials") && shown.contains("APIG.0303"),
        "{shown}"
    );
    // Both canonical requests, to tell a wrong SK from a mangled request.
    assert!(
        shown.contains("KooDrive's canonical request:\nGET\n"),
        "{shown}"
    );
    assert_no_secrets("check-credentials output", &shown);
    // Never retried after a refusal (Huawei's lockout), and nothing was created.
    assert_eq!(env.simulator.request_count(), 2);
    assert!(env.simulator.submissions().is_empty() && env.simulator.users().is_empty());
    let log = env.simulator.request_log();
    assert!(log.iter().all(|r| r.call == Some(Call::Get)), "{log:?}");
}

// --- validate and the CRDs' rules -----------------------------------------------------

fn batch_json(spec: serde_json::Value) -> serde_json::Value {
    json!({
        "apiVersion": "koodrive.io/v1alpha1",
        "kind": "UserBatch",
        "metadata": {"name": "b", "namespace": "team-a"},
        "spec": spec,
    })
}

fn problems(violations: &[koodrive_operator::validation::Violation]) -> Vec<String> {
    violations.iter().map(ToString::to_string).collect()
}

#[test]
fn a_userbatch_names_its_credentials_exactly_one_way() {
    let users = json!([{"firstname": "Ada", "phone": "8613800000001"}]);
    let account = json!({"kind": "ClusterKooDriveAccount", "name": "company"});
    let secret = json!({"name": "creds"});
    assert_eq!(
        validate_userbatch(&batch_json(json!({"accountRef": account, "users": users}))),
        vec![]
    );
    assert_eq!(
        validate_userbatch(&batch_json(
            json!({"credentialsRef": secret, "users": users})
        )),
        vec![]
    );
    let neither = validate_userbatch(&batch_json(json!({"users": users})));
    assert_eq!(
        problems(&neither),
        [
            "spec.credentialsRef: Required value: set credentialsRef (a Secret in this namespace) or accountRef (a KooDriveAccount or ClusterKooDriveAccount)"
        ]
    );
    assert_eq!(neither[0].reason(), "FieldValueRequired");
    let both = validate_userbatch(&batch_json(
        json!({"credentialsRef": secret, "accountRef": account, "users": users}),
    ));
    assert_eq!(
        problems(&both),
        [
            "spec.accountRef: Forbidden: credentialsRef and accountRef are mutually exclusive: set exactly one"
        ]
    );
    assert_eq!(both[0].reason(), "FieldValueForbidden");
    let endpoint = validate_userbatch(&batch_json(json!({
        "accountRef": account,
        "endpoint": "https://intl.myhuaweicloud-koodrive.com",
        "users": users,
    })));
    assert_eq!(problems(&endpoint).len(), 1, "{endpoint:?}");
    assert_eq!(endpoint[0].path, "spec.endpoint");
    let unknown_kind = validate_userbatch(&batch_json(json!({
        "accountRef": {"kind": "Secret", "name": "creds"},
        "users": users,
    })));
    assert_eq!(unknown_kind.len(), 1, "{unknown_kind:?}");
    assert_eq!(unknown_kind[0].path, "spec.accountRef.kind");
}

#[test]
fn account_manifests_are_validated_with_their_paths() {
    let manifests = r#"
apiVersion: koodrive.io/v1alpha1
kind: ClusterKooDriveAccount
metadata: {name: company}
spec:
  credentialsRef: {name: platform-credentials}
  limits: {requestsPerSecond: 2.5, maxInFlight: 4}
  allowedNamespaces:
    names: [team-a]
    selector:
      matchLabels: {koodrive.io/tenant: "true"}
      matchExpressions:
        - {key: env, operator: In, values: [prod]}
        - {key: legacy, operator: DoesNotExist}
---
apiVersion: koodrive.io/v1alpha1
kind: ClusterKooDriveAccount
metadata: {name: nobody}
spec:
  credentialsRef: {name: platform-credentials, namespace: Not_A_Namespace}
  limits: {requestsPerSecond: 0, maxInFlight: 100}
  allowedNamespaces:
    selector:
      matchExpressions:
        - {key: env, operator: In}
---
apiVersion: koodrive.io/v1alpha1
kind: ClusterKooDriveAccount
metadata: {name: unrestricted}
spec:
  credentialsRef: {name: platform-credentials}
  allowedNamespaces: {}
---
apiVersion: koodrive.io/v1alpha1
kind: KooDriveAccount
metadata: {name: team, namespace: team-a}
spec:
  endpoint: http://capture.example.com
  credentialsRef: {name: creds}
"#;
    let documents = validate_manifests(manifests).unwrap();
    let mut found = Vec::new();
    for document in documents {
        match document {
            Document::Account {
                kind,
                name,
                violations,
            } => found.push((kind, name, problems(&violations))),
            other => panic!("expected an account, got {other:?}"),
        }
    }
    assert_eq!(found.len(), 4);
    assert_eq!(
        found[0],
        ("ClusterKooDriveAccount", "company".to_string(), vec![])
    );
    let nobody = &found[1].2;
    for expected in [
        "spec.credentialsRef.namespace: Invalid value",
        "spec.limits.requestsPerSecond: Invalid value: 0: must be greater than or equal to 0.01",
        "spec.limits.maxInFlight: Invalid value: 100: must be less than or equal to 64",
    ] {
        assert!(
            nobody.iter().any(|p| p.starts_with(expected)),
            "{expected} not in {nobody:#?}"
        );
    }
    // The CEL rules run on a schema-clean object only; checked on their own below.
    let unrestricted = &found[2].2;
    assert_eq!(
        unrestricted,
        &[
            "spec.allowedNamespaces: Invalid value: \"object\": name the namespaces that may use this account (names) or select them by label (selector; an empty selector {} selects every namespace)"
        ],
    );
    assert_eq!(found[3].0, "KooDriveAccount");
    assert!(
        found[3].2[0].starts_with("spec.endpoint: Invalid value"),
        "{:?}",
        found[3].2
    );

    let values_rule = validate_manifests(
        r#"
apiVersion: koodrive.io/v1alpha1
kind: ClusterKooDriveAccount
metadata: {name: selector}
spec:
  credentialsRef: {name: platform-credentials}
  allowedNamespaces:
    selector:
      matchExpressions:
        - {key: env, operator: In}
        - {key: team, operator: Exists, values: [a]}
"#,
    )
    .unwrap();
    let Document::Account { violations, .. } = &values_rule[0] else {
        panic!("{values_rule:?}");
    };
    let paths: Vec<&str> = violations.iter().map(|v| v.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "spec.allowedNamespaces.selector.matchExpressions[0]",
            "spec.allowedNamespaces.selector.matchExpressions[1]"
        ],
        "{violations:?}"
    );
}

#[test]
fn validate_checks_the_account_examples_and_reports_broken_accounts() {
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_koodrive-operator"))
        .args(["validate", "-f", examples])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    for expected in [
        "ClusterKooDriveAccount company-koodrive is valid",
        "KooDriveAccount default/team-koodrive is valid",
        "UserBatch team-a/onboarding-team-a is valid",
        "UserBatch default/interns-2026-11 is valid",
        "account(s)",
    ] {
        assert!(stderr.contains(expected), "{expected}: {stderr}");
    }

    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("account.yaml");
    std::fs::write(
        &broken,
        "apiVersion: koodrive.io/v1alpha1\nkind: KooDriveAccount\nmetadata: {name: team, namespace: team-a}\nspec:\n  limits: {maxInFlight: 0}\n",
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_koodrive-operator"))
        .args(["validate", "-f"])
        .arg(&broken)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("spec.credentialsRef: Required value"),
        "{stdout}"
    );
    assert!(stdout.contains("spec.limits.maxInFlight"), "{stdout}");
}
