//! Production behaviour of `koodrive-operator run`: leader election between two replicas,
//! readiness after sync, and Prometheus metrics — against the API emulator and simulator.

use crate::support::*;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube_emulator::{Fault as ApiFault, FaultKind as ApiFaultKind};
use std::time::Duration;

async fn lease_holder(env: &Env) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), LEASE_NAMESPACE);
    leases
        .get_opt("koodrive-operator")
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_submits_and_a_standby_takes_over() {
    let env = Env::start().await;
    env.create_credentials("creds", SECRET_KEY).await;
    let ha = [
        "--leader-elect",
        "--lease-duration",
        "3s",
        "--lease-namespace",
        LEASE_NAMESPACE,
    ];
    let mut first = env.operator("replica-a", &ha);
    let mut second = env.operator("replica-b", &ha);

    let leader = eventually("a leader to be elected", || async {
        lease_holder(&env).await
    })
    .await;
    env.create_batch("one", "creds", users("86150", 5, None))
        .await;
    env.wait_for("one", "Ready", is_ready).await;

    // Only the leader's log shows submissions.
    let (leader_op, standby_op) = if leader == "replica-a" {
        (&mut first, &mut second)
    } else {
        (&mut second, &mut first)
    };
    assert!(leader_op.logs().contains("submitted users to KooDrive"));
    assert!(!standby_op.logs().contains("submitted users to KooDrive"));

    // The leader dies without releasing the Lease; the standby takes over after expiry.
    leader_op.kill();
    let new_leader = eventually("the standby to take over", || {
        let env = &env;
        let old = leader.clone();
        async move { lease_holder(env).await.filter(|h| *h != old) }
    })
    .await;
    assert_ne!(new_leader, leader);
    env.create_batch("two", "creds", users("86151", 5, None))
        .await;
    env.wait_for("two", "Ready", is_ready).await;
    assert!(standby_op.logs().contains("submitted users to KooDrive"));
    let counts = env.simulator.submissions();
    assert_eq!(counts.len(), 10);
    assert!(counts.values().all(|&c| c == 1), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_waits_for_sync_and_metrics_move() {
    let env = Env::start().await;
    env.create_credentials("creds", SECRET_KEY).await;
    env.create_batch("metered", "creds", users("86152", 4, None))
        .await;
    // Hold the initial list of UserBatches so the watches cannot sync yet.
    env.emulator.inject(ApiFault {
        verb: Some("list".into()),
        path_contains: Some("/userbatches".into()),
        // The CRD check and the watcher's first list.
        times: 2,
        kind: ApiFaultKind::Delay(Duration::from_secs(5)),
    });
    let operator = env.operator("op", &[]);
    let addr = operator.metrics_addr().await;
    let (code, _) = http_get(&format!("http://{addr}/healthz"))
        .await
        .expect("healthz answers");
    assert_eq!(code, 200);
    let (code, _) = http_get(&format!("http://{addr}/readyz"))
        .await
        .expect("readyz answers");
    assert_eq!(code, 503, "ready before the watches synced");

    env.wait_for("metered", "Ready", is_ready).await;
    eventually("readiness after sync", || {
        let url = format!("http://{addr}/readyz");
        async move { http_get(&url).await.filter(|(code, _)| *code == 200) }
    })
    .await;
    let metrics = eventually("metrics to count the submission", || {
        let url = format!("http://{addr}/metrics");
        async move {
            http_get(&url)
                .await
                .map(|(_, body)| body)
                .filter(|b| b.contains(r#"koodrive_operator_users_total{outcome="submitted"} 4"#))
        }
    })
    .await;
    for needle in [
        r#"koodrive_operator_reconciles_total{result="success"}"#,
        r#"koodrive_operator_koodrive_requests_total{call="create",outcome="success"} 1"#,
        "koodrive_operator_reconcile_duration_seconds_bucket",
        "koodrive_operator_koodrive_request_duration_seconds_bucket",
        r#"koodrive_operator_userbatches{phase="Completed"} 1"#,
    ] {
        assert!(
            metrics.contains(needle),
            "{needle} missing from /metrics:\n{metrics}"
        );
    }
}
