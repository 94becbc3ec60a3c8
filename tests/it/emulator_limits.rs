//! The limits and status codes of a real API server, as the emulator answers them to
//! `kubectl` and to a kube client: annotation, request-body and stored-object sizes,
//! conditional updates of custom resources, strategic merge on custom resources, DELETE
//! options, `generateName` retries and RBAC.

use k8s_openapi::api::core::v1::Secret;
use koodrive_operator::devtools::emulator_config;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams, Preconditions};
use kube::{Client, ResourceExt};
use kube_emulator::limits::{MAX_ANNOTATIONS_BYTES, MAX_OBJECT_BYTES, MAX_REQUEST_BODY_BYTES};
use kube_emulator::{Emulator, EmulatorConfig, Identity, Rbac};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// An emulator with the operator's CRD and admission, and a kubeconfig for kubectl.
struct Running {
    emulator: Emulator,
    client: Client,
    dir: tempfile::TempDir,
}

async fn start(config: EmulatorConfig) -> Running {
    let emulator = Emulator::start("127.0.0.1:0".parse().unwrap(), config)
        .await
        .unwrap();
    let client = emulator.client().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    emulator
        .write_kubeconfig(&dir.path().join("kubeconfig"))
        .unwrap();
    Running {
        emulator,
        client,
        dir,
    }
}

impl Running {
    fn file(&self, name: &str, content: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        path.to_str().unwrap().to_string()
    }

    /// Runs kubectl against this emulator: (success, stdout, stderr).
    async fn kubectl(&self, args: &[&str]) -> (bool, String, String) {
        let out = tokio::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(self.dir.path().join("kubeconfig"))
            .arg("--cache-dir")
            .arg(self.dir.path().join("cache"))
            .args(args)
            .output()
            .await
            .expect("kubectl must be on PATH");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    async fn ok(&self, args: &[&str]) -> String {
        let (success, stdout, stderr) = self.kubectl(args).await;
        assert!(success, "kubectl {args:?} failed: {stderr}{stdout}");
        stdout
    }

    async fn fails(&self, args: &[&str]) -> String {
        let (success, stdout, stderr) = self.kubectl(args).await;
        assert!(!success, "kubectl {args:?} should have failed: {stdout}");
        stderr
    }

    /// A raw request; returns the status code and the parsed body.
    async fn raw(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> (u16, Value) {
        let client = reqwest::Client::new();
        let response = client
            .request(
                method.parse().unwrap(),
                format!("{}{path}", self.emulator.url()),
            )
            .header("Content-Type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        let code = response.status().as_u16();
        let body = response.json().await.unwrap_or(Value::Null);
        (code, body)
    }
}

fn userbatch(name: &str) -> Value {
    json!({
        "apiVersion": "koodrive.io/v1alpha1", "kind": "UserBatch",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"credentialsRef": {"name": "creds"}, "users": [{"firstname": "Ada", "phone": "8613800000001"}]},
    })
}

fn secret_with(name: &str, annotation_bytes: usize, data_bytes: usize) -> Value {
    let mut secret = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": "default"},
        "data": {"blob": base64_of(data_bytes)},
    });
    if annotation_bytes > 0 {
        let key = "example.com/note";
        secret["metadata"]["annotations"] =
            json!({ key: "a".repeat(annotation_bytes - key.len()) });
    }
    secret
}

fn base64_of(bytes: usize) -> Value {
    serde_json::to_value(k8s_openapi::ByteString(vec![b'x'; bytes])).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn annotations_hold_at_most_256_kib_in_all() {
    let env = start(emulator_config()).await;
    let secrets: Api<Secret> = Api::default_namespaced(env.client.clone());
    let fits: Secret =
        serde_json::from_value(secret_with("fits", MAX_ANNOTATIONS_BYTES, 1)).unwrap();
    secrets.create(&PostParams::default(), &fits).await.unwrap();
    let over: Secret =
        serde_json::from_value(secret_with("over", MAX_ANNOTATIONS_BYTES + 1, 1)).unwrap();
    let kube::Error::Api(err) = secrets
        .create(&PostParams::default(), &over)
        .await
        .unwrap_err()
    else {
        panic!("expected an API error")
    };
    assert_eq!((err.code, err.reason.as_str()), (422, "Invalid"));
    assert_eq!(
        err.message,
        "Secret \"over\" is invalid: metadata.annotations: Too long: must have at most 262144 bytes"
    );

    // Client-side apply copies the manifest into an annotation: a manifest of more than
    // 256 KiB cannot be applied that way, but can be created or applied server-side.
    let mut big = userbatch("big");
    big["metadata"]["labels"] = json!({"size": "big"});
    big["spec"]["users"][0]["surname"] = json!("L".repeat(120));
    big["metadata"]["annotations"] = json!({"example.com/notes": "n".repeat(200_000)});
    let file = env.file("big.json", &big.to_string());
    let stderr = env.fails(&["apply", "-f", &file]).await;
    assert!(
        stderr.contains("metadata.annotations: Too long: must have at most 262144 bytes"),
        "{stderr}"
    );
    env.ok(&["apply", "--server-side", "-f", &file]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_over_3_mib_get_413_with_a_status() {
    let env = start(emulator_config()).await;
    let body = vec![b' '; MAX_REQUEST_BODY_BYTES + 1];
    let (code, status) = env
        .raw(
            "POST",
            "/api/v1/namespaces/default/secrets",
            "application/json",
            body,
        )
        .await;
    assert_eq!(code, 413);
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["reason"], "RequestEntityTooLarge");
    assert_eq!(
        status["message"],
        "Request entity too large: limit is 3145728"
    );

    // kubectl shows the same, for a Secret whose manifest is over 3 MiB.
    let file = env.file("huge.json", &secret_with("huge", 0, 2_400_000).to_string());
    let stderr = env.fails(&["create", "-f", &file]).await;
    assert!(
        stderr.contains("Request entity too large: limit is 3145728"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_over_etcds_1_5_mib_are_refused_as_etcd_refuses_them() {
    let env = start(emulator_config()).await;
    // A Secret's data may hold 1 MiB at most.
    let file = env.file(
        "big.json",
        &secret_with("big", 0, 1024 * 1024 + 1).to_string(),
    );
    let stderr = env.fails(&["create", "-f", &file]).await;
    assert!(
        stderr.contains("data: Too long: must have at most 1048576 bytes"),
        "{stderr}"
    );
    // Labels have no limit of their own: under the body limit, over etcd's.
    let mut large = secret_with("large", 0, 1);
    large["metadata"]["labels"] = (0..20_000)
        .map(|i| (format!("example.com/label-{i:05}"), json!("v".repeat(63))))
        .collect::<serde_json::Map<_, _>>()
        .into();
    let size = large.to_string().len();
    assert!(
        size > MAX_OBJECT_BYTES && size < MAX_REQUEST_BODY_BYTES,
        "{size}"
    );
    let file = env.file("large.json", &large.to_string());
    let stderr = env.fails(&["create", "-f", &file]).await;
    assert!(
        stderr.contains("Error from server") && stderr.contains("etcdserver: request is too large"),
        "{stderr}"
    );
    let (code, status) = env
        .raw(
            "POST",
            "/api/v1/namespaces/default/secrets",
            "application/json",
            std::fs::read(&file).unwrap(),
        )
        .await;
    assert_eq!(code, 500);
    assert_eq!(status["message"], "etcdserver: request is too large");
    assert!(status.get("reason").is_none(), "{status}");
    // A dry run never reaches etcd.
    env.ok(&["create", "--dry-run=server", "-f", &file]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_resources_take_only_conditional_updates_and_no_strategic_merge() {
    let env = start(emulator_config()).await;
    let file = env.file("b.json", &userbatch("b").to_string());
    env.ok(&["create", "-f", &file]).await;
    // A PUT without resourceVersion: an unconditional update.
    let mut edited = userbatch("b");
    edited["spec"]["users"][0]["firstname"] = json!("Augusta");
    let (code, status) = env
        .raw(
            "PUT",
            "/apis/koodrive.io/v1alpha1/namespaces/default/userbatches/b",
            "application/json",
            edited.to_string().into_bytes(),
        )
        .await;
    assert_eq!(code, 422);
    assert_eq!(
        status["message"],
        "UserBatch.koodrive.io \"b\" is invalid: metadata.resourceVersion: Invalid value: 0x0: must be specified for an update"
    );
    // kubectl replace reads the live version first when the manifest has none.
    let edited = env.file("edited.json", &edited.to_string());
    env.ok(&["replace", "-f", &edited]).await;
    let (code, status) = env
        .raw(
            "PUT",
            "/apis/koodrive.io/v1alpha1/namespaces/default/userbatches/b/status",
            "application/json",
            userbatch("b").to_string().into_bytes(),
        )
        .await;
    assert_eq!((code, status["reason"].as_str()), (422, Some("Invalid")));

    // Built-ins update the latest version without one.
    let secret = env.file("s.json", &secret_with("s", 0, 3).to_string());
    env.ok(&["create", "-f", &secret]).await;
    env.ok(&["replace", "-f", &secret]).await;

    // kubectl patches with strategic merge by default; custom resources refuse it.
    let stderr = env
        .fails(&[
            "patch",
            "ub",
            "b",
            "-p",
            r#"{"spec":{"endpoint":"https://e.example.com"}}"#,
        ])
        .await;
    assert!(
        stderr.contains("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml"),
        "{stderr}"
    );
    env.ok(&[
        "patch",
        "ub",
        "b",
        "--type=merge",
        "-p",
        r#"{"spec":{"endpoint":"https://e.example.com"}}"#,
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_options_are_honoured() {
    let env = start(emulator_config()).await;
    let file = env.file("b.json", &userbatch("b").to_string());
    env.ok(&["create", "-f", &file]).await;
    env.ok(&["delete", "ub", "b", "--dry-run=server"]).await;
    env.ok(&["get", "ub", "b"]).await;

    let api = ub_api(env.client.clone(), "default");
    let live = api.get("b").await.unwrap();
    let wrong_uid = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some("not-the-uid".into()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    let kube::Error::Api(err) = api.delete("b", &wrong_uid).await.unwrap_err() else {
        panic!("expected an API error")
    };
    assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));
    assert!(
        err.message.contains(&format!(
            "Precondition failed: UID in precondition: not-the-uid, UID in object meta: {}",
            live.uid().unwrap()
        )),
        "{}",
        err.message
    );
    let stale = DeleteParams {
        preconditions: Some(Preconditions {
            uid: None,
            resource_version: Some("1".into()),
        }),
        ..DeleteParams::default()
    };
    let kube::Error::Api(err) = api.delete("b", &stale).await.unwrap_err() else {
        panic!("expected an API error")
    };
    assert!(
        err.message.contains("Precondition failed: ResourceVersion"),
        "{}",
        err.message
    );

    let right = DeleteParams {
        preconditions: Some(Preconditions {
            uid: live.uid(),
            resource_version: live.resource_version(),
        }),
        ..DeleteParams::background()
    };
    let deleted = api.delete("b", &right).await.unwrap();
    let status = deleted
        .right()
        .expect("a deleted object answers with a Status");
    assert_eq!(
        status.status,
        Some(kube::core::response::StatusSummary::Success)
    );
    env.fails(&["get", "ub", "b"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_names_are_retried_on_collision() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    // The first two suffixes collide, the third does not.
    let suffixes = ["aaaaa", "aaaaa", "bbbbb"];
    let env = start(EmulatorConfig {
        name_suffixes: Some(Arc::new(move || {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            suffixes[n.min(suffixes.len() - 1)].to_string()
        })),
        ..emulator_config()
    })
    .await;
    let manifest =
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"generateName": "creds-"}});
    let file = env.file("gen.json", &manifest.to_string());
    let first = env.ok(&["create", "-f", &file]).await;
    assert!(first.contains("creds-aaaaa"), "{first}");
    let second = env.ok(&["create", "-f", &file]).await;
    assert!(second.contains("creds-bbbbb"), "{second}");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    // Out of luck eight times in a row: the API server's conflict.
    let stderr = env.fails(&["create", "-f", &file]).await;
    assert!(
        stderr.contains("secrets \"creds-bbbbb\" already exists, the server was not able to generate a unique name for the object"),
        "{stderr}"
    );
}

fn rbac(objects: Vec<Value>) -> Rbac {
    Rbac {
        objects,
        identities: vec![
            Identity::service_account("ops", "reader", "reader-token"),
            Identity {
                token: "dev-token".into(),
                user: "dev@example.com".into(),
                groups: vec!["developers".into(), "system:authenticated".into()],
            },
        ],
    }
}

async fn client_as(emulator: &Emulator, token: &str) -> Client {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    emulator.write_kubeconfig_as(&path, token).unwrap();
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_mode_grants_what_the_rules_say_and_refuses_the_rest_with_403() {
    let objects = vec![
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "ub-reader"},
               "rules": [{"apiGroups": ["koodrive.io"], "resources": ["userbatches"], "verbs": ["get", "list"]},
                         {"apiGroups": ["koodrive.io"], "resources": ["userbatches/status"], "verbs": ["patch"]},
                         {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"], "resourceNames": ["allowed"]}]}),
        // Granted only in namespace team-a, through a RoleBinding to the ClusterRole.
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "r", "namespace": "team-a"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "ub-reader"},
               "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": "ops"}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "devs"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "ub-reader"},
               "subjects": [{"kind": "Group", "name": "developers"}]}),
    ];
    let env = start(EmulatorConfig {
        rbac: Some(rbac(objects)),
        ..emulator_config()
    })
    .await;
    // The test's own client is the administrator.
    for ns in ["team-a", "default"] {
        let mut ub = userbatch("b");
        ub["metadata"]["namespace"] = json!(ns);
        let file = env.file(&format!("{ns}.json"), &ub.to_string());
        env.ok(&["create", "-f", &file]).await;
    }
    for name in ["allowed", "other"] {
        let mut secret = secret_with(name, 0, 1);
        secret["metadata"]["namespace"] = json!("team-a");
        let file = env.file(&format!("{name}.json"), &secret.to_string());
        env.ok(&["create", "-f", &file]).await;
    }

    let reader = client_as(&env.emulator, "reader-token").await;
    let in_team: Api<DynamicObject> = ub_api(reader.clone(), "team-a");
    in_team.get("b").await.unwrap();
    in_team.list(&Default::default()).await.unwrap();
    in_team
        .patch_status(
            "b",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Pending"}})),
        )
        .await
        .unwrap();
    let forbidden = |err: kube::Error| match err {
        kube::Error::Api(status) => {
            assert_eq!((status.code, status.reason.as_str()), (403, "Forbidden"));
            status.message
        }
        other => panic!("expected 403, got {other:?}"),
    };
    let message = forbidden(in_team.watch(&Default::default(), "0").await.err().unwrap());
    assert_eq!(
        message,
        "userbatches.koodrive.io is forbidden: User \"system:serviceaccount:ops:reader\" cannot watch resource \"userbatches\" in API group \"koodrive.io\" in the namespace \"team-a\""
    );
    let message = forbidden(
        in_team
            .patch(
                "b",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})),
            )
            .await
            .unwrap_err(),
    );
    assert!(
        message.contains("cannot patch resource \"userbatches\""),
        "{message}"
    );
    let message = forbidden(
        in_team
            .replace_status(
                "b",
                &PostParams::default(),
                &in_team.get("b").await.unwrap(),
            )
            .await
            .unwrap_err(),
    );
    assert!(
        message.contains("cannot update resource \"userbatches/status\""),
        "{message}"
    );
    let elsewhere: Api<DynamicObject> = ub_api(reader.clone(), "default");
    let message = forbidden(elsewhere.get("b").await.unwrap_err());
    assert_eq!(
        message,
        "userbatches.koodrive.io \"b\" is forbidden: User \"system:serviceaccount:ops:reader\" cannot get resource \"userbatches\" in API group \"koodrive.io\" in the namespace \"default\""
    );
    let message = forbidden(
        ub_api_all(reader.clone())
            .list(&Default::default())
            .await
            .unwrap_err(),
    );
    assert!(message.contains("at the cluster scope"), "{message}");
    let secrets: Api<Secret> = Api::namespaced(reader.clone(), "team-a");
    secrets.get("allowed").await.unwrap();
    let message = forbidden(secrets.get("other").await.unwrap_err());
    assert!(
        message.contains("secrets \"other\" is forbidden"),
        "{message}"
    );
    forbidden(secrets.list(&Default::default()).await.unwrap_err());
    let message = forbidden(
        secrets
            .delete("allowed", &DeleteParams::default())
            .await
            .unwrap_err(),
    );
    assert!(
        message.contains("cannot delete resource \"secrets\""),
        "{message}"
    );

    // A group binding reaches every namespace.
    let dev = client_as(&env.emulator, "dev-token").await;
    ub_api(dev.clone(), "default").get("b").await.unwrap();
    ub_api_all(dev).list(&Default::default()).await.unwrap();

    // Unknown tokens are not authenticated.
    let stranger = client_as(&env.emulator, "nobody-has-this").await;
    match ub_api(stranger, "team-a").get("b").await.unwrap_err() {
        kube::Error::Api(status) => {
            assert_eq!((status.code, status.reason.as_str()), (401, "Unauthorized"))
        }
        other => panic!("expected 401, got {other:?}"),
    }

    // RBAC objects are served and take effect at once: revoke, and the reader is refused.
    env.ok(&["delete", "rolebinding", "r", "-n", "team-a"])
        .await;
    forbidden(in_team.get("b").await.unwrap_err());
    let roles = env.ok(&["get", "clusterroles"]).await;
    assert!(roles.contains("ub-reader"), "{roles}");
}

fn ub_resource() -> kube::api::ApiResource {
    kube::api::ApiResource::from_gvk_with_plural(
        &kube::api::GroupVersionKind::gvk("koodrive.io", "v1alpha1", "UserBatch"),
        "userbatches",
    )
}

fn ub_api(client: Client, namespace: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client, namespace, &ub_resource())
}

fn ub_api_all(client: Client) -> Api<DynamicObject> {
    Api::all_with(client, &ub_resource())
}

/// kubectl sends built-in kinds as protobuf and does not fall back to JSON on 415.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_create_secret_generic_works_as_the_chart_notes_say() {
    let env = start(emulator_config()).await;
    let sk = env.file("sk", "the-secret-key");
    env.ok(&[
        "create",
        "secret",
        "generic",
        "koodrive-credentials",
        "--from-literal=accessKey=AK",
        &format!("--from-file=secretKey={sk}"),
        "--from-literal=userId=1505084218764547200",
    ])
    .await;
    let secrets: Api<Secret> = Api::default_namespaced(env.client.clone());
    let secret = secrets.get("koodrive-credentials").await.unwrap();
    let data = secret.data.unwrap();
    assert_eq!(data["secretKey"].0, b"the-secret-key");
    assert_eq!(data["accessKey"].0, b"AK");
    assert_eq!(secret.type_.as_deref(), Some("Opaque"));
    env.ok(&["create", "namespace", "team-a"]).await;
    env.ok(&[
        "create",
        "clusterrole",
        "reader",
        "--verb=get",
        "--resource=secrets",
    ])
    .await;
    env.ok(&[
        "create",
        "rolebinding",
        "reader",
        "--clusterrole=reader",
        "--serviceaccount=team-a:bot",
        "-n",
        "team-a",
    ])
    .await;
    let binding = env
        .ok(&["get", "rolebinding", "reader", "-n", "team-a", "-o", "json"])
        .await;
    let binding: Value = serde_json::from_str(&binding).unwrap();
    assert_eq!(binding["subjects"][0]["name"], "bot");
    assert_eq!(binding["roleRef"]["name"], "reader");
    // The same protobuf body for a custom resource: 415, as a real server answers.
    let (code, status) = env
        .raw(
            "POST",
            "/apis/koodrive.io/v1alpha1/namespaces/default/userbatches",
            "application/vnd.kubernetes.protobuf",
            b"k8s\0".to_vec(),
        )
        .await;
    assert_eq!(
        (code, status["reason"].as_str()),
        (415, Some("UnsupportedMediaType"))
    );
}

/// Unknown fields: dropped with a warning by default, silently with `--validate=false`, and
/// refused with 400 under `fieldValidation=Strict` (kubectl's default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_fields_follow_the_field_validation_mode() {
    let env = start(emulator_config()).await;
    let mut with_extra = userbatch("b");
    with_extra["spec"]["users"][0]["lastname"] = json!("Lovelace");
    with_extra["spec"]["colour"] = json!("red");
    let file = env.file("b.json", &with_extra.to_string());
    let stderr = env.fails(&["apply", "-f", &file]).await;
    assert!(
        stderr.contains("UserBatch in version \"v1alpha1\" cannot be handled as a UserBatch: strict decoding error: unknown field \"spec.colour\", unknown field \"spec.users[0].lastname\""),
        "{stderr}"
    );
    let (success, _, stderr) = env
        .kubectl(&["apply", "--validate=warn", "-f", &file])
        .await;
    assert!(success, "{stderr}");
    assert!(
        stderr.contains("Warning: unknown field \"spec.colour\"")
            && stderr.contains("Warning: unknown field \"spec.users[0].lastname\""),
        "{stderr}"
    );
    let stored = env.ok(&["get", "ub", "b", "-o", "json"]).await;
    let stored: Value = serde_json::from_str(&stored).unwrap();
    assert!(stored["spec"].get("colour").is_none(), "{stored}");
    assert!(stored["spec"]["users"][0].get("lastname").is_none());

    // A built-in kind knows its type's fields; metadata is ObjectMeta.
    let mut secret = secret_with("s", 0, 1);
    secret["metadata"]["colour"] = json!("red");
    secret["extra"] = json!(true);
    let file = env.file("s.json", &secret.to_string());
    let stderr = env.fails(&["create", "-f", &file]).await;
    assert!(
        stderr.contains(
            "strict decoding error: unknown field \"extra\", unknown field \"metadata.colour\""
        ),
        "{stderr}"
    );
    env.ok(&["create", "--validate=false", "-f", &file]).await;
    let (code, body) = env
        .raw(
            "POST",
            "/api/v1/namespaces/default/secrets?fieldValidation=Strict",
            "application/json",
            secret.to_string().into_bytes(),
        )
        .await;
    assert_eq!((code, body["reason"].as_str()), (400, Some("BadRequest")));

    // kube clients send no fieldValidation: Warn, the API server's default.
    let client = reqwest::Client::new();
    let mut other = with_extra.clone();
    other["metadata"]["name"] = json!("c");
    let response = client
        .post(format!(
            "{}/apis/koodrive.io/v1alpha1/namespaces/default/userbatches",
            env.emulator.url()
        ))
        .header("Content-Type", "application/json")
        .body(other.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    let warnings: Vec<&str> = response
        .headers()
        .get_all("warning")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(
        warnings,
        [
            r#"299 - "unknown field \"spec.colour\"""#,
            r#"299 - "unknown field \"spec.users[0].lastname\"""#
        ]
    );
}

/// Events are validated as the API server does: events.k8s.io/v1 strictly on create,
/// core v1 by the legacy rules only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_validated_like_the_api_server_does() {
    let env = start(emulator_config()).await;
    let valid = json!({
        "apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "b.1", "namespace": "default"},
        "eventTime": "2026-01-01T00:00:00.000000Z", "reportingController": "koodrive-operator",
        "reportingInstance": "koodrive-operator-0", "action": "Submit", "type": "Normal",
        "reason": "Submitted", "note": "sent 1 user",
        "regarding": {"apiVersion": "koodrive.io/v1alpha1", "kind": "UserBatch", "name": "b", "namespace": "default"},
    });
    env.ok(&["create", "-f", &env.file("valid.json", &valid.to_string())])
        .await;

    let mut invalid = valid.clone();
    invalid["metadata"]["name"] = json!("b.2");
    invalid["note"] = json!("n".repeat(1025));
    invalid["type"] = json!("Info");
    invalid.as_object_mut().unwrap().remove("action");
    invalid.as_object_mut().unwrap().remove("eventTime");
    let stderr = env
        .fails(&[
            "create",
            "-f",
            &env.file("invalid.json", &invalid.to_string()),
        ])
        .await;
    assert!(
        stderr.contains("\"b.2\" is invalid")
            && stderr.contains("eventTime: Required value")
            && stderr.contains("type: Invalid value: \"\": has invalid value: Info"),
        "{stderr}"
    );
    let mut long_note = valid.clone();
    long_note["metadata"]["name"] = json!("b.3");
    long_note["note"] = json!("n".repeat(1025));
    long_note.as_object_mut().unwrap().remove("action");
    let stderr = env
        .fails(&[
            "create",
            "-f",
            &env.file("long.json", &long_note.to_string()),
        ])
        .await;
    assert!(
        stderr.contains("action: Required value")
            && stderr.contains("message: Invalid value: \"\": can have at most 1024 characters"),
        "{stderr}"
    );

    // Core v1: only the legacy rules, here the namespace of the involved object.
    let core = json!({
        "apiVersion": "v1", "kind": "Event", "metadata": {"name": "b.4", "namespace": "default"},
        "reason": "Submitted", "message": "m", "type": "Normal",
        "involvedObject": {"kind": "UserBatch", "name": "b", "namespace": "team-a"},
    });
    let stderr = env
        .fails(&["create", "-f", &env.file("core.json", &core.to_string())])
        .await;
    assert!(
        stderr.contains(
            "involvedObject.namespace: Invalid value: \"team-a\": does not match event.namespace"
        ),
        "{stderr}"
    );
    let mut core = core;
    core["involvedObject"]["namespace"] = json!("default");
    env.ok(&["create", "-f", &env.file("core-ok.json", &core.to_string())])
        .await;

    // Updates keep what identifies an Event.
    let events: Api<DynamicObject> = Api::namespaced_with(
        env.client.clone(),
        "default",
        &kube::api::ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk("events.k8s.io", "v1", "Event"),
            "events",
        ),
    );
    let kube::Error::Api(err) = events
        .patch(
            "b.1",
            &PatchParams::default(),
            &Patch::Merge(json!({"reason": "Changed"})),
        )
        .await
        .unwrap_err()
    else {
        panic!("expected an API error")
    };
    assert_eq!(err.code, 422);
    assert!(
        err.message
            .contains("reason: Invalid value: \"object\": field is immutable"),
        "{}",
        err.message
    );
}

/// A paginated list is one snapshot: later pages show the first page's state; once that
/// state is compacted away, 410 with a token that continues from the latest state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paginated_lists_are_one_snapshot_until_it_expires() {
    use kube::api::ListParams;
    let env = start(EmulatorConfig {
        watch_history: 20,
        ..emulator_config()
    })
    .await;
    let secrets: Api<Secret> = Api::default_namespaced(env.client.clone());
    for i in 0..5 {
        let secret: Secret = serde_json::from_value(secret_with(&format!("s{i}"), 0, 1)).unwrap();
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
    }
    let first = secrets.list(&ListParams::default().limit(2)).await.unwrap();
    let names = |list: &kube::core::ObjectList<Secret>| -> Vec<String> {
        list.items.iter().map(|s| s.name_any()).collect()
    };
    assert_eq!(names(&first), ["s0", "s1"]);
    let token = first.metadata.continue_.clone().unwrap();
    // Changes after the first page do not show in the later ones.
    secrets
        .delete("s3", &DeleteParams::default())
        .await
        .unwrap();
    let late: Secret = serde_json::from_value(secret_with("s2a", 0, 1)).unwrap();
    secrets.create(&PostParams::default(), &late).await.unwrap();
    let second = secrets
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(names(&second), ["s2", "s3"]);
    assert_eq!(
        second.metadata.resource_version,
        first.metadata.resource_version
    );
    let third = secrets
        .list(
            &ListParams::default()
                .limit(2)
                .continue_token(second.metadata.continue_.as_deref().unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(names(&third), ["s4"]);
    assert!(third.metadata.continue_.is_none());

    // Expired: more writes than the history keeps.
    let first = secrets.list(&ListParams::default().limit(2)).await.unwrap();
    for i in 0..25 {
        let secret: Secret =
            serde_json::from_value(secret_with(&format!("t{i:02}"), 0, 1)).unwrap();
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
    }
    let path = format!(
        "/api/v1/namespaces/default/secrets?limit=2&continue={}",
        first.metadata.continue_.clone().unwrap()
    );
    let response = reqwest::get(format!("{}{path}", env.emulator.url()))
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 410);
    let status: Value = response.json().await.unwrap();
    assert_eq!(status["reason"], "Expired");
    assert!(status["message"].as_str().unwrap().starts_with(
        "The provided continue parameter is too old to display a consistent list result."
    ));
    let latest = status["metadata"]["continue"].as_str().unwrap().to_string();
    let rest = secrets
        .list(&ListParams::default().continue_token(&latest))
        .await
        .unwrap();
    assert!(
        names(&rest).contains(&"t24".to_string()),
        "continues from the latest state"
    );
    // kubectl pages through the same way.
    let all = env
        .ok(&["get", "secrets", "--chunk-size=3", "-o", "name"])
        .await;
    assert_eq!(all.lines().count(), 4 + 1 + 25, "{all}");
}

/// `koodrive-operator emulator --rbac … --identity … --kubeconfig-token …`: the standalone
/// emulator enforces the chart's RBAC for the written kubeconfig's identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standalone_emulator_enforces_rbac_for_the_kubeconfigs_identity() {
    use crate::support::{RELEASE_NAMESPACE, SERVICE_ACCOUNT, chart_rbac};
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let rendered: Vec<String> = chart_rbac().iter().map(Value::to_string).collect();
    let rbac_file = dir.path().join("rbac.yaml");
    std::fs::write(&rbac_file, rendered.join("\n---\n")).unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let identity = format!("op-token=system:serviceaccount:{RELEASE_NAMESPACE}:{SERVICE_ACCOUNT}");
    /// Kills the emulator process however the test ends.
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Killed(
        std::process::Command::new(env!("CARGO_BIN_EXE_koodrive-operator"))
            .args(["emulator", "--listen", "127.0.0.1:0", "--kubeconfig"])
            .arg(&kubeconfig)
            .arg("--rbac")
            .arg(&rbac_file)
            .args(["--identity", &identity, "--kubeconfig-token", "op-token"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    std::io::BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("listening on"), "{line}");
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&kubeconfig).unwrap(),
        &Default::default(),
    )
    .await
    .unwrap();
    let client = Client::try_from(config).unwrap();
    // Granted by the chart's ClusterRole.
    ub_api_all(client.clone())
        .list(&Default::default())
        .await
        .unwrap();
    // Not granted: the operator never deletes Secrets.
    let secrets: Api<Secret> = Api::namespaced(client, "default");
    match secrets
        .delete("any", &DeleteParams::default())
        .await
        .unwrap_err()
    {
        kube::Error::Api(status) => assert_eq!(status.code, 403, "{}", status.message),
        other => panic!("expected 403, got {other:?}"),
    }
}
