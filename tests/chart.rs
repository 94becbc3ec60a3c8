//! The Helm chart and the Argo CD health check, checked with the real tools a user runs.
//!
//! `helm lint --strict` and `helm template` render the chart with the default values and with a
//! namespaced + leader-election + ServiceMonitor + PodDisruptionBudget variant; the rendered
//! manifests are checked for pod hardening, least-privilege RBAC, probes and one environment
//! variable per `koodrive-operator run` flag, then validated against the Kubernetes schemas by
//! `kubernetes-validate`. The Argo CD health check runs in a real Lua 5.1 against status
//! fixtures. Tools come from PATH or `.tools/bin` (`scripts/install-test-tools.sh`); a missing
//! tool fails the test rather than skipping it.

use clap::{CommandFactory, Parser};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, EnvVar, PodSpec, Probe, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use koodrive_operator::cli::{Cli, Command as CliCommand};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const RELEASE: &str = "koodrive-operator";
const RELEASE_NAMESPACE: &str = "koodrive-system";
const WATCHED_NAMESPACE: &str = "team-a";
/// The Kubernetes version the crate's API types target (k8s-openapi feature `v1_33`).
const KUBE_VERSION: &str = "1.33.0";

/// Namespaced operator, several replicas behind a Lease, Prometheus Operator and a budget.
const VARIANT_VALUES: &str = "\
watchNamespace: team-a
replicaCount: 2
leaderElection:
  enabled: true
  leaseName: koodrive-leader
  leaseDuration: 20s
metrics:
  serviceMonitor:
    enabled: true
    interval: 15s
    labels:
      release: prometheus
podDisruptionBudget:
  enabled: true
  minAvailable: 1
";

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn chart_dir() -> PathBuf {
    repo_root().join("charts/koodrive-operator")
}

fn is_executable(path: &Path) -> bool {
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// An external tool from PATH or the project's `.tools/bin`.
fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([repo_root().join(".tools/bin")])
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is needed by this test but is neither on PATH nor in .tools/bin; \
                 run scripts/install-test-tools.sh"
            )
        })
}

fn output_text(output: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn run_ok(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n{}",
        output.status,
        output_text(&output)
    );
    String::from_utf8(output.stdout).expect("tool output is UTF-8")
}

fn values_file(values: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    file.write_all(values.as_bytes()).unwrap();
    file
}

/// `helm template` with the given values (and `--set` pairs); returns the raw output.
fn helm_template(values: Option<&str>, set: &[&str]) -> Output {
    let file = values.map(values_file);
    let mut command = Command::new(tool("helm"));
    command
        .args(["template", RELEASE])
        .arg(chart_dir())
        .args(["--namespace", RELEASE_NAMESPACE])
        .args(["--kube-version", KUBE_VERSION])
        .arg("--include-crds");
    if let Some(file) = &file {
        command.arg("--values").arg(file.path());
    }
    for pair in set {
        command.args(["--set", pair]);
    }
    command
        .output()
        .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"))
}

/// One rendered manifest: its YAML text as helm printed it, and its parsed form.
struct Manifest {
    text: String,
    value: Value,
}

impl Manifest {
    fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or_default()
    }
    fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or_default()
    }
    fn namespace(&self) -> Option<&str> {
        self.value["metadata"]["namespace"].as_str()
    }
    fn typed<T: DeserializeOwned>(&self) -> T {
        serde_json::from_value(self.value.clone()).unwrap_or_else(|e| {
            panic!(
                "{} {} does not deserialize as its Kubernetes type: {e}",
                self.kind(),
                self.name()
            )
        })
    }
}

struct Rendered {
    manifests: Vec<Manifest>,
}

impl Rendered {
    fn of_kind(&self, kind: &str) -> Vec<&Manifest> {
        self.manifests.iter().filter(|m| m.kind() == kind).collect()
    }

    fn one<T: DeserializeOwned>(&self, kind: &str) -> T {
        let found = self.of_kind(kind);
        assert_eq!(
            found.len(),
            1,
            "expected exactly one {kind}, found {}",
            found.len()
        );
        found[0].typed()
    }

    fn deployment(&self) -> Deployment {
        self.one("Deployment")
    }
}

fn pod_spec(deployment: &Deployment) -> PodSpec {
    deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .expect("Deployment has a pod spec")
}

fn operator_container(deployment: &Deployment) -> Container {
    let containers = pod_spec(deployment).containers;
    assert_eq!(containers.len(), 1, "the operator pod runs one container");
    containers.into_iter().next().unwrap()
}

/// Renders the chart and splits helm's output into its documents.
fn render(values: Option<&str>) -> Rendered {
    let output = helm_template(values, &[]);
    assert!(
        output.status.success(),
        "helm template failed:\n{}",
        output_text(&output)
    );
    let text = String::from_utf8(output.stdout).expect("helm output is UTF-8");
    let mut manifests = Vec::new();
    for chunk in text.split("\n---\n") {
        let chunk = chunk.strip_prefix("---\n").unwrap_or(chunk);
        let value: Value = serde_saphyr::from_str(chunk)
            .unwrap_or_else(|e| panic!("helm rendered invalid YAML ({e}):\n{chunk}"));
        if !value.is_null() {
            manifests.push(Manifest {
                text: chunk.to_string(),
                value,
            });
        }
    }
    assert!(!manifests.is_empty(), "helm rendered nothing:\n{text}");
    Rendered { manifests }
}

fn renders() -> [(&'static str, Rendered); 2] {
    [
        ("default values", render(None)),
        ("namespaced variant", render(Some(VARIANT_VALUES))),
    ]
}

#[test]
fn chart_lints_strictly_with_default_and_variant_values() {
    run_ok(
        Command::new(tool("helm"))
            .args(["lint", "--strict"])
            .arg(chart_dir()),
    );
    let variant = values_file(VARIANT_VALUES);
    run_ok(
        Command::new(tool("helm"))
            .args(["lint", "--strict"])
            .arg(chart_dir())
            .arg("--values")
            .arg(variant.path()),
    );
}

#[test]
fn operator_pod_is_hardened() {
    for (variant, rendered) in renders() {
        let deployment = rendered.deployment();
        let pod = pod_spec(&deployment);
        let container = operator_container(&deployment);
        let pod_security = pod.security_context.clone().unwrap_or_default();
        let security = container
            .security_context
            .clone()
            .unwrap_or_else(|| panic!("{variant}: container has no securityContext"));

        let non_root = security.run_as_non_root.or(pod_security.run_as_non_root);
        assert_eq!(non_root, Some(true), "{variant}: runAsNonRoot");
        let user = security.run_as_user.or(pod_security.run_as_user);
        assert!(
            user.is_some_and(|uid| uid != 0),
            "{variant}: runs as a numeric non-root user, got {user:?}"
        );
        assert_eq!(
            security.read_only_root_filesystem,
            Some(true),
            "{variant}: readOnlyRootFilesystem"
        );
        assert_eq!(
            security.allow_privilege_escalation,
            Some(false),
            "{variant}: allowPrivilegeEscalation"
        );
        assert_ne!(security.privileged, Some(true), "{variant}: privileged");
        let dropped = security
            .capabilities
            .and_then(|c| c.drop)
            .unwrap_or_default();
        assert!(
            dropped.iter().any(|c| c == "ALL"),
            "{variant}: capabilities.drop must contain ALL, got {dropped:?}"
        );
        // The container-level profile wins over the pod-level one when both are set.
        let seccomp = security
            .seccomp_profile
            .or(pod_security.seccomp_profile)
            .map(|p| p.type_);
        assert_eq!(
            seccomp.as_deref(),
            Some("RuntimeDefault"),
            "{variant}: seccompProfile"
        );
        assert_ne!(pod.host_network, Some(true), "{variant}: hostNetwork");

        let resources = container
            .resources
            .unwrap_or_else(|| panic!("{variant}: container has no resources"));
        for (what, list) in [
            ("requests", resources.requests),
            ("limits", resources.limits),
        ] {
            let list = list.unwrap_or_default();
            for resource in ["cpu", "memory"] {
                assert!(
                    list.contains_key(resource),
                    "{variant}: resources.{what}.{resource} is not set"
                );
            }
        }
    }
}

/// One permission: where it applies (`cluster` or a namespace), API group, resource, verb, and
/// the object name it is limited to.
type Grant = (String, String, String, String, Option<String>);

fn expand(scope: &str, rules: &[PolicyRule]) -> BTreeSet<Grant> {
    let mut grants = BTreeSet::new();
    for rule in rules {
        let groups = rule.api_groups.clone().unwrap_or_default();
        let resources = rule.resources.clone().unwrap_or_default();
        let names: Vec<Option<String>> = match &rule.resource_names {
            Some(names) if !names.is_empty() => names.iter().cloned().map(Some).collect(),
            _ => vec![None],
        };
        for group in &groups {
            for resource in &resources {
                for verb in &rule.verbs {
                    for name in &names {
                        grants.insert((
                            scope.to_string(),
                            group.clone(),
                            resource.clone(),
                            verb.clone(),
                            name.clone(),
                        ));
                    }
                }
            }
        }
    }
    grants
}

fn grants(scope: &str, rules: &[(&str, &str, &[&str], Option<&str>)]) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for (group, resource, verbs, name) in rules {
        for verb in *verbs {
            out.insert((
                scope.to_string(),
                group.to_string(),
                resource.to_string(),
                verb.to_string(),
                name.map(str::to_string),
            ));
        }
    }
    out
}

/// What the controller needs wherever it watches UserBatches.
fn workload_grants(scope: &str) -> BTreeSet<Grant> {
    grants(
        scope,
        &[
            (
                "koodrive.io",
                "userbatches",
                &["get", "list", "watch"],
                None,
            ),
            (
                "koodrive.io",
                "userbatches/status",
                &["get", "patch", "update"],
                None,
            ),
            ("", "secrets", &["get", "list", "watch"], None),
            ("events.k8s.io", "events", &["create", "patch"], None),
        ],
    )
}

fn lease_grants(lease: &str) -> BTreeSet<Grant> {
    grants(
        RELEASE_NAMESPACE,
        &[
            ("coordination.k8s.io", "leases", &["create"], None),
            (
                "coordination.k8s.io",
                "leases",
                &["get", "update", "patch"],
                Some(lease),
            ),
        ],
    )
}

/// Every permission the operator's ServiceAccount ends up with, following the bindings to
/// the rendered roles (a binding to a role the chart does not render grants nothing here).
fn effective_grants(rendered: &Rendered) -> BTreeSet<Grant> {
    let deployment = rendered.deployment();
    let account = pod_spec(&deployment)
        .service_account_name
        .expect("the Deployment names its ServiceAccount");
    let accounts: Vec<ServiceAccount> = rendered
        .of_kind("ServiceAccount")
        .iter()
        .map(|m| m.typed())
        .collect();
    assert!(
        accounts
            .iter()
            .any(|a| a.metadata.name.as_deref() == Some(account.as_str())),
        "the Deployment's ServiceAccount {account} is rendered by the chart"
    );
    let is_operator = |subjects: &Option<Vec<k8s_openapi::api::rbac::v1::Subject>>| {
        subjects.iter().flatten().any(|s| {
            s.kind == "ServiceAccount"
                && s.name == account
                && s.namespace.as_deref() == Some(RELEASE_NAMESPACE)
        })
    };
    let cluster_roles: Vec<ClusterRole> = rendered
        .of_kind("ClusterRole")
        .iter()
        .map(|m| m.typed())
        .collect();
    let roles: Vec<Role> = rendered.of_kind("Role").iter().map(|m| m.typed()).collect();

    let mut all = BTreeSet::new();
    for binding in rendered.of_kind("ClusterRoleBinding") {
        let binding: ClusterRoleBinding = binding.typed();
        if !is_operator(&binding.subjects) {
            continue;
        }
        assert_eq!(binding.role_ref.kind, "ClusterRole");
        let role = cluster_roles
            .iter()
            .find(|r| r.metadata.name.as_deref() == Some(binding.role_ref.name.as_str()))
            .unwrap_or_else(|| panic!("ClusterRole {} is not rendered", binding.role_ref.name));
        all.extend(expand("cluster", role.rules.as_deref().unwrap_or_default()));
    }
    for binding in rendered.of_kind("RoleBinding") {
        let binding: RoleBinding = binding.typed();
        if !is_operator(&binding.subjects) {
            continue;
        }
        let namespace = binding
            .metadata
            .namespace
            .clone()
            .expect("RoleBinding has a namespace");
        assert_eq!(
            binding.role_ref.kind, "Role",
            "RoleBindings bind Roles, never a ClusterRole"
        );
        let role = roles
            .iter()
            .find(|r| {
                r.metadata.name.as_deref() == Some(binding.role_ref.name.as_str())
                    && r.metadata.namespace.as_deref() == Some(namespace.as_str())
            })
            .unwrap_or_else(|| {
                panic!("Role {namespace}/{} is not rendered", binding.role_ref.name)
            });
        all.extend(expand(
            &namespace,
            role.rules.as_deref().unwrap_or_default(),
        ));
    }
    all
}

fn assert_no_wildcards(rendered: &Rendered, variant: &str) {
    for manifest in rendered
        .manifests
        .iter()
        .filter(|m| m.kind() == "Role" || m.kind() == "ClusterRole")
    {
        let rules: Vec<PolicyRule> =
            serde_json::from_value(manifest.value["rules"].clone()).unwrap_or_default();
        assert!(
            !rules.is_empty(),
            "{variant}: {} has no rules",
            manifest.name()
        );
        for rule in rules {
            let fields = [
                rule.verbs.clone(),
                rule.api_groups.clone().unwrap_or_default(),
                rule.resources.clone().unwrap_or_default(),
                rule.resource_names.clone().unwrap_or_default(),
            ];
            assert!(
                fields.iter().flatten().all(|item| !item.contains('*')),
                "{variant}: wildcard in {} {}: {rule:?}",
                manifest.kind(),
                manifest.name()
            );
            assert!(
                rule.non_resource_urls.is_none(),
                "{variant}: {} grants non-resource URLs",
                manifest.name()
            );
        }
    }
}

fn assert_secrets_read_only(grants: &BTreeSet<Grant>, variant: &str) {
    let secret_verbs: BTreeSet<&str> = grants
        .iter()
        .filter(|(_, group, resource, _, _)| group.is_empty() && resource == "secrets")
        .map(|(_, _, _, verb, _)| verb.as_str())
        .collect();
    assert_eq!(
        secret_verbs,
        BTreeSet::from(["get", "list", "watch"]),
        "{variant}: Secrets are read-only"
    );
}

#[test]
fn default_rbac_is_a_cluster_role_with_exactly_the_needed_permissions() {
    let rendered = render(None);
    assert_no_wildcards(&rendered, "default values");
    assert_eq!(
        rendered.of_kind("ClusterRole").len(),
        1,
        "one ClusterRole by default"
    );
    let granted = effective_grants(&rendered);
    assert_secrets_read_only(&granted, "default values");

    let mut expected = workload_grants("cluster");
    expected.extend(lease_grants(RELEASE));
    let missing: Vec<_> = expected.difference(&granted).collect();
    let extra: Vec<_> = granted.difference(&expected).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "RBAC differs from least privilege.\nmissing: {missing:#?}\nextra: {extra:#?}"
    );
}

#[test]
fn watch_namespace_confines_permissions_to_that_namespace() {
    let rendered = render(Some(VARIANT_VALUES));
    assert_no_wildcards(&rendered, "namespaced variant");
    let granted = effective_grants(&rendered);
    assert_secrets_read_only(&granted, "namespaced variant");

    let mut expected = workload_grants(WATCHED_NAMESPACE);
    // Nothing cluster-wide is left: the CRD check lists UserBatches in the watched namespace.
    expected.extend(lease_grants("koodrive-leader"));
    let missing: Vec<_> = expected.difference(&granted).collect();
    let extra: Vec<_> = granted.difference(&expected).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "namespaced RBAC differs from least privilege.\nmissing: {missing:#?}\nextra: {extra:#?}"
    );
    let workload_roles: Vec<_> = rendered
        .of_kind("Role")
        .into_iter()
        .filter(|r| r.namespace() == Some(WATCHED_NAMESPACE))
        .collect();
    assert_eq!(workload_roles.len(), 1, "one Role in the watched namespace");
}

#[test]
fn disabling_leader_election_drops_the_lease_role() {
    let rendered = render(Some("leaderElection:\n  enabled: false\n"));
    let granted = effective_grants(&rendered);
    assert!(
        granted
            .iter()
            .all(|(_, _, resource, _, _)| resource != "leases"),
        "no Lease permissions without leader election: {granted:#?}"
    );
    let strategy = rendered
        .deployment()
        .spec
        .and_then(|s| s.strategy)
        .and_then(|s| s.type_);
    assert_eq!(
        strategy.as_deref(),
        Some("Recreate"),
        "without a Lease, old and new pods must never overlap"
    );
}

fn assert_http_probe(probe: Option<Probe>, path: &str, variant: &str) {
    let get = probe
        .and_then(|p| p.http_get)
        .unwrap_or_else(|| panic!("{variant}: no HTTP probe for {path}"));
    assert_eq!(get.path.as_deref(), Some(path), "{variant}: probe path");
    assert_eq!(
        get.port,
        IntOrString::String("http-metrics".into()),
        "{variant}: probe port"
    );
}

#[test]
fn probes_hit_healthz_and_readyz_on_the_metrics_port() {
    for (variant, rendered) in renders() {
        let container = operator_container(&rendered.deployment());
        let ports = container.ports.clone().unwrap_or_default();
        let metrics = ports
            .iter()
            .find(|p| p.name.as_deref() == Some("http-metrics"))
            .unwrap_or_else(|| panic!("{variant}: no port named http-metrics"));
        assert_eq!(metrics.container_port, 8080, "{variant}: metrics port");
        assert_http_probe(container.liveness_probe, "/healthz", variant);
        assert_http_probe(container.readiness_probe, "/readyz", variant);

        let service: Service = rendered.one("Service");
        let service_port = service
            .spec
            .and_then(|s| s.ports)
            .and_then(|p| p.into_iter().next())
            .expect("metrics Service has a port");
        assert_eq!(
            service_port.target_port,
            Some(IntOrString::String("http-metrics".into()))
        );
    }
}

fn field_ref(var: &EnvVar) -> Option<String> {
    var.value_from
        .as_ref()
        .and_then(|v| v.field_ref.as_ref())
        .map(|f| f.field_path.clone())
}

/// Feeds the Deployment's env to clap the way the binary would read it, so a flag added to
/// `run` without a chart value, or a value the flag's parser rejects, fails here.
fn parse_run_args_from_env(
    env: &BTreeMap<String, EnvVar>,
    variant: &str,
) -> koodrive_operator::commands::run::Args {
    let cli = Cli::command();
    let run = cli
        .find_subcommand("run")
        .expect("the CLI has a `run` subcommand");
    let mut argv = vec!["koodrive-operator".to_string(), "run".to_string()];
    for arg in run.get_arguments() {
        let Some(env_name) = arg.get_env().and_then(|e| e.to_str()) else {
            continue;
        };
        let long = arg.get_long().expect("every run flag has a long name");
        let var = env.get(env_name).unwrap_or_else(|| {
            panic!("{variant}: flag --{long} (env {env_name}) is not set by the Deployment")
        });
        let Some(value) = var.value.as_deref() else {
            assert!(
                field_ref(var).is_some(),
                "{variant}: {env_name} has neither a value nor a fieldRef"
            );
            continue;
        };
        let possible = arg.get_possible_values();
        assert!(
            possible.is_empty() || possible.iter().any(|p| p.matches(value, false)),
            "{variant}: {env_name}={value:?} is not one of {:?}",
            possible.iter().map(|p| p.get_name()).collect::<Vec<_>>()
        );
        if matches!(arg.get_action(), clap::ArgAction::SetTrue) {
            if value == "true" {
                argv.push(format!("--{long}"));
            }
        } else {
            argv.push(format!("--{long}={value}"));
        }
    }
    let cli = Cli::try_parse_from(&argv)
        .unwrap_or_else(|e| panic!("{variant}: the chart's env does not parse ({argv:?}):\n{e}"));
    match cli.command {
        CliCommand::Run(args) => args,
        other => panic!("parsed {other:?} instead of run"),
    }
}

#[test]
fn every_run_flag_is_set_from_values_through_the_environment() {
    for (variant, rendered) in renders() {
        let container = operator_container(&rendered.deployment());
        assert_eq!(container.args, Some(vec!["run".to_string()]));
        let env: BTreeMap<String, EnvVar> = container
            .env
            .unwrap_or_default()
            .into_iter()
            .map(|v| (v.name.clone(), v))
            .collect();
        // The Lease holder identity and namespace come from the downward API.
        assert_eq!(
            env.get("POD_NAME").and_then(field_ref).as_deref(),
            Some("metadata.name"),
            "{variant}: POD_NAME"
        );
        assert_eq!(
            env.get("POD_NAMESPACE").and_then(field_ref).as_deref(),
            Some("metadata.namespace"),
            "{variant}: POD_NAMESPACE"
        );

        let args = parse_run_args_from_env(&env, variant);
        assert!(args.leader_elect, "{variant}: leader election is on");
        assert_eq!(args.metrics_addr.port(), 8080);
        assert_eq!(args.max_batch_size, 1000);
        assert_eq!(
            args.default_endpoint,
            "https://intl.myhuaweicloud-koodrive.com"
        );
        assert!(!args.allow_insecure_endpoints);
        if variant == "default values" {
            assert_eq!(args.watch_namespace, "");
            assert_eq!(args.lease_name, RELEASE);
            assert_eq!(args.lease_duration, Duration::from_secs(15));
        } else {
            assert_eq!(args.watch_namespace, WATCHED_NAMESPACE);
            assert_eq!(args.lease_name, "koodrive-leader");
            assert_eq!(args.lease_duration, Duration::from_secs(20));
        }
    }
}

#[test]
fn tuning_values_reach_the_operator() {
    let rendered = render(Some(
        r#"
koodrive:
  maxBatchSize: 250
  maxInFlight: 2
  requestsPerSecond: 0.5
  pollInterval: 2m
  requestTimeout: 10s
  allowInsecureEndpoints: true
  defaultEndpoint: http://simulator:9000
  caBundle:
    configMapName: corporate-ca
    key: bundle.pem
retry:
  baseDelay: 1s
  maxDelay: 1h
logging:
  format: text
  level: debug
metrics:
  bindAddress: "::"
  port: 9090
"#,
    ));
    let container = operator_container(&rendered.deployment());
    let env: BTreeMap<String, EnvVar> = container
        .env
        .unwrap_or_default()
        .into_iter()
        .map(|v| (v.name.clone(), v))
        .collect();
    let args = parse_run_args_from_env(&env, "tuned");
    assert_eq!(args.max_batch_size, 250);
    assert_eq!(args.max_in_flight, 2);
    assert_eq!(args.requests_per_second, 0.5);
    assert_eq!(args.poll_interval, Duration::from_secs(120));
    assert_eq!(args.request_timeout, Duration::from_secs(10));
    assert!(args.allow_insecure_endpoints);
    assert_eq!(args.default_endpoint, "http://simulator:9000");
    assert_eq!(args.retry_base_delay, Duration::from_secs(1));
    assert_eq!(args.retry_max_delay, Duration::from_secs(3600));
    assert_eq!(
        args.log_format,
        koodrive_operator::telemetry::LogFormat::Text
    );
    assert_eq!(args.log_level, "debug");
    assert_eq!(args.metrics_addr, "[::]:9090".parse().unwrap());
    // The CA bundle is the ConfigMap's key, mounted read-only where the variable points.
    let bundle = args.ca_bundle.expect("KOODRIVE_CA_BUNDLE is set");
    let mount = container
        .volume_mounts
        .unwrap_or_default()
        .into_iter()
        .find(|m| bundle.starts_with(&m.mount_path))
        .expect("the CA bundle's directory is mounted");
    assert_eq!(mount.read_only, Some(true));
    assert_eq!(
        bundle.strip_prefix(&mount.mount_path).unwrap(),
        "bundle.pem"
    );
    let volumes = rendered
        .deployment()
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|p| p.volumes)
        .unwrap_or_default();
    let volume = volumes.iter().find(|v| v.name == mount.name).unwrap();
    assert_eq!(
        volume.config_map.as_ref().map(|c| c.name.as_str()),
        Some("corporate-ca")
    );
}

#[test]
fn service_monitor_and_budget_select_what_they_should() {
    let default = render(None);
    assert!(default.of_kind("ServiceMonitor").is_empty());
    assert!(default.of_kind("PodDisruptionBudget").is_empty());

    let rendered = render(Some(VARIANT_VALUES));
    let deployment = rendered.deployment();
    let pod_labels = deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let selects = |selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>| {
        !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    };

    let budget: PodDisruptionBudget = rendered.one("PodDisruptionBudget");
    let budget_selector = budget
        .spec
        .and_then(|s| s.selector)
        .and_then(|s| s.match_labels)
        .unwrap_or_default();
    assert!(
        selects(&budget_selector, &pod_labels),
        "the budget selects the operator pods"
    );

    let service: Service = rendered.one("Service");
    let service_labels = service.metadata.labels.clone().unwrap_or_default();
    let service_selector = service.spec.and_then(|s| s.selector).unwrap_or_default();
    assert!(
        selects(&service_selector, &pod_labels),
        "the metrics Service selects the operator pods"
    );

    let monitor = &rendered.of_kind("ServiceMonitor")[0].value;
    let monitor_selector: BTreeMap<String, String> =
        serde_json::from_value(monitor["spec"]["selector"]["matchLabels"].clone()).unwrap();
    assert!(
        selects(&monitor_selector, &service_labels),
        "the ServiceMonitor selects the metrics Service"
    );
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "http-metrics");
    assert_eq!(monitor["spec"]["endpoints"][0]["interval"], "15s");
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
}

#[test]
fn rendered_manifests_are_valid_kubernetes_objects() {
    let validator = tool("kubernetes-validate");
    for (variant, rendered) in renders() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = Vec::new();
        // The ServiceMonitor is a Prometheus Operator CRD kind without a built-in schema.
        for (index, manifest) in rendered
            .manifests
            .iter()
            .filter(|m| m.kind() != "ServiceMonitor")
            .enumerate()
        {
            let file = dir.path().join(format!(
                "{index:02}-{}-{}.yaml",
                manifest.kind(),
                manifest.name()
            ));
            std::fs::write(&file, &manifest.text).unwrap();
            files.push(file);
        }
        let output = Command::new(&validator)
            .args(["--strict", "--kubernetes-version", KUBE_VERSION])
            .args(&files)
            .output()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", validator.display()));
        let report = output_text(&output);
        assert!(
            output.status.success(),
            "{variant}: kubernetes-validate rejected the chart:\n{report}"
        );
        // kubernetes-validate only warns about kinds it has no schema for; here that would
        // mean an object went unchecked.
        assert!(
            !report.contains("Couldn't find schema"),
            "{variant}: some manifests were not checked:\n{report}"
        );
        assert_eq!(
            report.matches(" passed for resource ").count(),
            files.len(),
            "{variant}: every manifest passes:\n{report}"
        );
    }
}

#[test]
fn unsafe_or_misspelt_values_are_refused() {
    let cases: [(&[&str], &str); 6] = [
        (&["koodrive.maxBatchSize=5000"], "maxBatchSize"),
        (
            &["replicaCount=2", "leaderElection.enabled=false"],
            "leaderElection.enabled",
        ),
        (&["logging.format=xml"], "format"),
        (&["watchNamespaces=team-a"], "watchNamespaces"),
        (&["koodrive.pollInterval=soon"], "pollInterval"),
        (
            &[
                "podDisruptionBudget.enabled=true",
                "podDisruptionBudget.maxUnavailable=1",
            ],
            "only one of minAvailable and maxUnavailable",
        ),
    ];
    for (set, expected) in cases {
        let output = helm_template(None, set);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "helm accepted {set:?}");
        assert!(
            stderr.contains(expected),
            "refusing {set:?} should mention {expected:?}, got:\n{stderr}"
        );
    }
}

fn readme() -> String {
    std::fs::read_to_string(chart_dir().join("README.md")).expect("chart README.md exists")
}

/// Leaf values declared by values.schema.json, as dotted paths (`metrics.service.port`).
fn schema_leaves(schema: &Value, prefix: &str, out: &mut Vec<String>) {
    let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
        out.push(prefix.to_string());
        return;
    };
    for (key, sub) in properties {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        schema_leaves(sub, &path, out);
    }
}

fn lookup<'a>(values: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(values, |v, key| v.get(key))
}

#[test]
fn readme_documents_every_value_with_its_default() {
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(chart_dir().join("values.schema.json")).unwrap(),
    )
    .unwrap();
    let values: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(chart_dir().join("values.yaml")).unwrap())
            .unwrap();
    let readme = readme();
    let table_rows: Vec<&str> = readme.lines().filter(|l| l.starts_with('|')).collect();
    let mut leaves = Vec::new();
    schema_leaves(&schema, "", &mut leaves);
    leaves.retain(|leaf| leaf != "global");
    assert!(leaves.len() > 40, "schema lists the chart's values");
    for leaf in &leaves {
        assert!(
            lookup(&values, leaf).is_some(),
            "{leaf} is in values.schema.json but has no default in values.yaml"
        );
        let cell = format!("| `{leaf}` |");
        assert!(
            table_rows.iter().any(|row| row.starts_with(&cell)),
            "the README's values table has no row for `{leaf}`"
        );
    }
}

/// A JSON value as a Lua table constructor; JSON null becomes an absent key, as in Argo CD.
fn lua_literal(value: &Value) -> String {
    match value {
        Value::Null => "nil".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => lua_string(s),
        Value::Array(items) => {
            assert!(
                items.iter().all(|i| !i.is_null()),
                "a null inside an array has no Lua table equivalent"
            );
            let items: Vec<String> = items.iter().map(lua_literal).collect();
            format!("{{{}}}", items.join(", "))
        }
        Value::Object(fields) => {
            let fields: Vec<String> = fields
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| format!("[{}] = {}", lua_string(k), lua_literal(v)))
                .collect();
            format!("{{{}}}", fields.join(", "))
        }
    }
}

/// A Lua 5.1 string literal; every byte that is not plain printable ASCII is a `\ddd` escape.
fn lua_string(text: &str) -> String {
    let mut out = String::from("\"");
    for byte in text.bytes() {
        match byte {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(byte as char),
            _ => out.push_str(&format!("\\{byte:03}")),
        }
    }
    out.push('"');
    out
}

/// Runs the health check the way Argo CD does: `obj` is a global, the script returns `hs`.
fn argo_health(health_lua: &Path, object: &Value) -> (String, String) {
    let harness = format!(
        "obj = {}\nlocal check = assert(loadfile({}))\nlocal hs = check()\n\
         io.write(tostring(hs.status), \"\\n\", tostring(hs.message))\n",
        lua_literal(object),
        lua_string(health_lua.to_str().expect("UTF-8 path")),
    );
    let mut child = Command::new(tool("lua5.1"))
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start lua5.1");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(harness.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "lua5.1 failed on the health check:\n{}",
        output_text(&output)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    let (status, message) = text.split_once('\n').expect("status and message");
    (status.to_string(), message.to_string())
}

#[test]
fn argocd_health_check_maps_every_status_fixture() {
    let health_lua = chart_dir().join("argocd/health.lua");
    let fixtures = repo_root().join("tests/fixtures/argocd");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&fixtures)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    assert!(
        paths.len() >= 8,
        "at least 8 fixtures, found {}",
        paths.len()
    );
    let mut statuses = BTreeSet::new();
    let mut failures = Vec::new();
    for path in &paths {
        let fixture: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let expected = (
            fixture["expected"]["status"].as_str().unwrap().to_string(),
            fixture["expected"]["message"].as_str().unwrap().to_string(),
        );
        let actual = argo_health(&health_lua, &fixture["object"]);
        statuses.insert(expected.0.clone());
        if actual != expected {
            failures.push(format!(
                "{}: expected {expected:?}, got {actual:?}",
                path.file_name().unwrap().to_string_lossy()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(
        statuses,
        BTreeSet::from(["Degraded".into(), "Healthy".into(), "Progressing".into()]),
        "the fixtures cover every health status"
    );
}

#[test]
fn readme_shows_the_tested_health_check_verbatim() {
    let lua = std::fs::read_to_string(chart_dir().join("argocd/health.lua")).unwrap();
    let readme = readme();
    assert!(
        readme.contains(&format!("```lua\n{lua}```")),
        "the README's Lua block differs from argocd/health.lua; copy the file into it"
    );
    // The argocd-cm example carries the same script in a YAML block scalar, indented.
    let indented: String = lua
        .lines()
        .map(|line| {
            if line.is_empty() {
                "\n".to_string()
            } else {
                format!("    {line}\n")
            }
        })
        .collect();
    assert!(
        readme.contains(&indented),
        "the README's argocd-cm example differs from argocd/health.lua; paste the file into \
         it indented by 4 spaces"
    );
}
