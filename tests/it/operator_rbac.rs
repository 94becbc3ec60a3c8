//! The operator under the Helm chart's RBAC (every end-to-end test runs it that way, see
//! `support::Env`): a permission the chart does not grant fails loudly, and a missing rule
//! surfaces on the UserBatch as `Ready=False`/`PermissionDenied`, naming what was refused.

use crate::support::*;
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::Api;
use kube::api::{Patch, PatchParams};

/// The chart's ClusterRole (default values): `<release>-<release namespace>`.
fn cluster_role_name() -> String {
    format!("{RELEASE}-{RELEASE_NAMESPACE}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_runs_with_only_the_charts_permissions() {
    let env = Env::start().await;
    env.create_credentials("creds", SECRET_KEY).await;
    env.create_batch("granted", "creds", users("86160", 2, None))
        .await;
    let _operator = env.operator("op", &[]);
    env.wait_for("granted", "Ready", is_ready).await;
    // The operator's own token is what the emulator authorized: its requests are in the log
    // next to the test's, and none of them was refused.
    let refused: Vec<_> = env
        .emulator
        .request_log()
        .into_iter()
        .filter(|(_, _, status)| *status == 403)
        .collect();
    assert!(refused.is_empty(), "refused requests: {refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_rule_surfaces_as_permission_denied() {
    let env = Env::start().await;
    env.create_credentials("creds", SECRET_KEY).await;
    // The chart grants secrets get/list/watch; take `get` away (list and watch stay, so the
    // operator still starts and watches Secrets).
    let roles: Api<ClusterRole> = Api::all(env.client.clone());
    let mut role = roles.get(&cluster_role_name()).await.unwrap();
    let rules = role.rules.as_mut().unwrap();
    let secrets = rules
        .iter_mut()
        .find(|r| {
            r.resources
                .as_ref()
                .is_some_and(|rs| rs.contains(&"secrets".to_string()))
        })
        .expect("the chart grants access to Secrets");
    secrets.verbs.retain(|v| v != "get");
    roles
        .patch(
            &cluster_role_name(),
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"rules": rules})),
        )
        .await
        .unwrap();

    env.create_batch("denied", "creds", users("86161", 2, None))
        .await;
    let _operator = env.operator("op", &[]);
    // First the refusal itself, so a failure below is about how the operator reports it.
    eventually(
        "the emulator to refuse the operator's read of the Secret",
        || {
            let refused = env
                .emulator
                .request_log()
                .iter()
                .any(|(verb, path, status)| {
                    verb == "get" && path.contains("/secrets/creds") && *status == 403
                });
            async move { refused.then_some(()) }
        },
    )
    .await;
    let ub = env
        .wait_for("denied", "Ready=False/PermissionDenied", |s| {
            ready_reason(s) == Some("PermissionDenied")
        })
        .await;
    let ready = condition(ub.status.as_ref().unwrap(), "Ready").unwrap();
    assert_eq!(ready.status, "False");
    assert!(
        ready.message.contains("get") && ready.message.contains("secrets"),
        "the message names the forbidden verb and resource: {}",
        ready.message
    );
    assert!(env.simulator.submissions().is_empty(), "nothing was sent");
    assert!(
        env.emulator
            .request_log()
            .iter()
            .any(|(verb, path, status)| verb == "get"
                && path.contains("/secrets/creds")
                && *status == 403),
        "the emulator refused the Secret read"
    );
}
