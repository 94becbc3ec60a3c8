//! The Helm chart and the Argo CD health check, checked with the real tools a user runs.
//!
//! `helm lint --strict` and `helm template` render the chart with the default values, with a
//! namespaced + leader-election + ServiceMonitor + PodDisruptionBudget variant and with every
//! optional feature on; the rendered manifests are checked for pod hardening, least-privilege
//! RBAC (the operator's and the roles aggregated for tenants), probes and one environment
//! variable per `koodrive-operator run` flag, then validated against the Kubernetes schemas by
//! `kubernetes-validate`. The CRDs are rendered from `files/crds/`, and the packaged `.tgz`
//! renders like the directory. The NetworkPolicy is evaluated against the documented traffic;
//! the PrometheusRule goes through `promtool check rules` and `promtool test rules`; alerts and
//! the Grafana dashboard may only use the metrics in `METRIC_CONTRACT`. The Argo CD health
//! check runs in a real Lua 5.1 against status fixtures. Tools come from PATH or `.tools/bin`
//! (`scripts/install-test-tools.sh`); a missing tool fails the test rather than skipping it.

use clap::{CommandFactory, Parser};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, EnvVar, PodSpec, Probe, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use koodrive_operator::cli::{Cli, Command as CliCommand};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
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

/// Every optional feature of the chart switched on at once (cluster-wide).
const ALL_ON_VALUES: &str = "\
replicaCount: 2
crds:
  install: true
  keep: true
metrics:
  serviceMonitor:
    enabled: true
    interval: 15s
    scrapeTimeout: 10s
    labels:
      release: prometheus
podDisruptionBudget:
  enabled: true
  minAvailable: 1
networkPolicy:
  enabled: true
  metrics:
    from:
      - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: monitoring}}
  extraEgress:
    - to: [{ipBlock: {cidr: 10.0.0.0/8}}]
      ports: [{port: 3128, protocol: TCP}]
extraArgs: [\"--log-level=debug\"]
extraVolumes:
  - name: scratch
    emptyDir: {}
extraVolumeMounts:
  - name: scratch
    mountPath: /scratch
caBundle:
  configMap:
    name: corporate-ca
terminationGracePeriodSeconds: 45
prometheusRule:
  enabled: true
  labels:
    release: prometheus
grafanaDashboard:
  enabled: true
  annotations:
    grafana_folder: KooDrive
";

/// On top of ALL_ON_VALUES: the PodMonitor instead of the ServiceMonitor, the CA bundle from
/// a Secret, the Service off.
const POD_MONITOR_INSTEAD: &[&str] = &[
    "metrics.serviceMonitor.enabled=false",
    "metrics.podMonitor.enabled=true",
    "metrics.service.enabled=false",
    "caBundle.configMap.name=",
    "caBundle.secret.name=corporate-ca",
];

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
    helm_template_chart(&chart_dir(), values, set)
}

/// `helm template` of a chart directory or packaged `.tgz`.
fn helm_template_chart(chart: &Path, values: Option<&str>, set: &[&str]) -> Output {
    let file = values.map(values_file);
    let mut command = Command::new(tool("helm"));
    command
        .args(["template", RELEASE])
        .arg(chart)
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
    render_with(values, &[])
}

/// `render` with `--set` pairs on top of the values.
fn render_with(values: Option<&str>, set: &[&str]) -> Rendered {
    let output = helm_template(values, set);
    assert!(
        output.status.success(),
        "helm template failed:\n{}",
        output_text(&output)
    );
    let text = String::from_utf8(output.stdout).expect("helm output is UTF-8");
    split_manifests(&text)
}

fn split_manifests(text: &str) -> Rendered {
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
    let variants: [(&str, &[&str]); 4] = [
        (VARIANT_VALUES, &[]),
        (ALL_ON_VALUES, &[]),
        (ALL_ON_VALUES, POD_MONITOR_INSTEAD),
        (ALL_ON_VALUES, &["crds.install=false"]),
    ];
    for (values, set) in variants {
        let variant = values_file(values);
        let mut command = Command::new(tool("helm"));
        command
            .args(["lint", "--strict"])
            .arg(chart_dir())
            .arg("--values")
            .arg(variant.path());
        for pair in set {
            command.args(["--set", pair]);
        }
        run_ok(&mut command);
    }
}

/// `renders()` plus every optional feature switched on.
fn all_renders() -> Vec<(&'static str, Rendered)> {
    let mut all = Vec::from(renders());
    all.push(("everything on", render(Some(ALL_ON_VALUES))));
    all
}

#[test]
fn operator_pod_is_hardened() {
    for (variant, rendered) in all_renders() {
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
                // patch: the deletionPolicy finalizer and consuming confirm-deletions.
                &["get", "list", "watch", "patch"],
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
            ("koodrive.io", "koodriveaccounts", &["list", "watch"], None),
            ("koodrive.io", "koodriveaccounts/status", &["patch"], None),
        ],
    )
}

/// What the controller needs only cluster-wide: the ClusterKooDriveAccounts and the labels
/// their namespace selectors match.
fn cluster_grants() -> BTreeSet<Grant> {
    grants(
        "cluster",
        &[
            (
                "koodrive.io",
                "clusterkoodriveaccounts",
                &["list", "watch"],
                None,
            ),
            (
                "koodrive.io",
                "clusterkoodriveaccounts/status",
                &["patch"],
                None,
            ),
            ("", "namespaces", &["list", "watch"], None),
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
    // The aggregated tenant roles (see userbatch_access_is_aggregated_...) are not the
    // operator's: nothing binds them.
    assert_eq!(
        operator_cluster_roles(&rendered).len(),
        1,
        "one ClusterRole by default"
    );
    let granted = effective_grants(&rendered);
    assert_secrets_read_only(&granted, "default values");

    let mut expected = workload_grants("cluster");
    expected.extend(cluster_grants());
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
    for (variant, rendered) in all_renders() {
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

/// Environment variables the chart sets only when their value is configured (`caBundle`); the
/// operator's flag then has no default, and its absence means "off".
const CONDITIONAL_ENV: &[&str] = &["KOODRIVE_CA_BUNDLE"];

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
        let Some(var) = env.get(env_name) else {
            assert!(
                CONDITIONAL_ENV.contains(&env_name),
                "{variant}: flag --{long} (env {env_name}) is not set by the Deployment"
            );
            assert!(
                arg.get_default_values().is_empty(),
                "{variant}: the chart leaves {env_name} unset unless configured, so --{long} \
                 must mean \"off\" when absent, but it has a default"
            );
            continue;
        };
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

const PROMETHEUS_OPERATOR_KINDS: [&str; 3] = ["ServiceMonitor", "PodMonitor", "PrometheusRule"];

#[test]
fn rendered_manifests_are_valid_kubernetes_objects() {
    let validator = tool("kubernetes-validate");
    let mut variants = Vec::from(renders());
    variants.push(("everything on", render(Some(ALL_ON_VALUES))));
    variants.push((
        "everything on, CRDs installed separately",
        render_with(Some(ALL_ON_VALUES), &["crds.install=false"]),
    ));
    variants.push((
        "everything on, PodMonitor instead of ServiceMonitor",
        render_with(Some(ALL_ON_VALUES), POD_MONITOR_INSTEAD),
    ));
    for (variant, rendered) in variants {
        let dir = tempfile::tempdir().unwrap();
        let mut files = Vec::new();
        // Prometheus Operator kinds are CRDs without a built-in schema; they are checked by
        // their own tests (and the rules by promtool).
        let unchecked = |m: &&Manifest| PROMETHEUS_OPERATOR_KINDS.contains(&m.kind());
        assert!(
            rendered.manifests.iter().any(|m| !unchecked(&m)),
            "{variant}: nothing to validate"
        );
        for (index, manifest) in rendered
            .manifests
            .iter()
            .filter(|m| !unchecked(m))
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
    let grace = "must be longer than koodrive.requestTimeout";
    let cases: [(&[&str], &str); 11] = [
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
        (&["terminationGracePeriodSeconds=30"], grace),
        (&["koodrive.requestTimeout=1m"], grace),
        (
            &[
                "metrics.serviceMonitor.enabled=true",
                "metrics.podMonitor.enabled=true",
            ],
            "enable only one of metrics.serviceMonitor and metrics.podMonitor",
        ),
        (
            &[
                "koodrive.requestTimeout=1m30s",
                "terminationGracePeriodSeconds=90",
            ],
            grace,
        ),
        (
            &[
                "caBundle.configMap.name=corp-ca",
                "caBundle.secret.name=corp-ca",
            ],
            "only one of caBundle.configMap.name and caBundle.secret.name",
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
        BTreeSet::from([
            "Degraded".into(),
            "Healthy".into(),
            "Progressing".into(),
            "Suspended".into()
        ]),
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

/// A Lua 5.1 function that writes a table (or scalar) as JSON with sorted keys; a table
/// with a sequence part is an array. Enough for Kubernetes objects (no empty lists).
const LUA_JSON: &str = r#"
local function encode(v)
  local t = type(v)
  if t == "nil" then return "null" end
  if t == "boolean" then return tostring(v) end
  if t == "number" then return string.format("%.17g", v) end
  if t == "string" then
    return '"' .. v:gsub('[%c"\\]', function(c)
      if c == '"' then return '\\"' end
      if c == "\\" then return "\\\\" end
      return string.format("\\u%04x", c:byte())
    end) .. '"'
  end
  if #v > 0 then
    local items = {}
    for _, item in ipairs(v) do items[#items + 1] = encode(item) end
    return "[" .. table.concat(items, ",") .. "]"
  end
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = k end
  table.sort(keys)
  local fields = {}
  for _, k in ipairs(keys) do fields[#fields + 1] = encode(k) .. ":" .. encode(v[k]) end
  return "{" .. table.concat(fields, ",") .. "}"
end
"#;

/// Runs an Argo CD Lua script (discovery or action) as Argo CD does — `obj` a global, the
/// script's return value the answer — and returns that value as JSON.
fn argo_script(script: &Path, object: &Value) -> Value {
    let harness = format!(
        "{LUA_JSON}\nobj = {}\nlocal run = assert(loadfile({}))\nio.write(encode(run()))\n",
        lua_literal(object),
        lua_string(script.to_str().expect("UTF-8 path")),
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
        "lua5.1 failed on {}:\n{}",
        script.display(),
        output_text(&output)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "{} returned no JSON ({e}): {}",
            script.display(),
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

/// The actions the chart ships: every directory of `argocd/actions/` holds an `action.lua`.
fn argo_actions() -> Vec<(String, PathBuf)> {
    let dir = chart_dir().join("argocd/actions");
    let mut actions: Vec<(String, PathBuf)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, p.join("action.lua"))
        })
        .collect();
    actions.sort();
    actions
}

/// What an action should make of `object`: the annotation it sets, nothing else changed.
fn expected_after_action(action: &str, object: &Value) -> Value {
    let mut expected = object.clone();
    let value = match action {
        "retry-failed" | "resubmit-in-doubt" => json!("<timestamp>"),
        "confirm-deletions" => match object["status"]["deletionsToConfirm"].as_i64() {
            Some(count) => json!(count.to_string()),
            // Nothing to confirm: the object is left as it is.
            None => return expected,
        },
        other => panic!("no expectation for action {other}"),
    };
    expected["metadata"]["annotations"][format!("koodrive.io/{action}")] = value;
    expected
}

#[test]
fn argocd_actions_are_offered_when_they_help_and_set_exactly_their_annotation() {
    let actions = argo_actions();
    let names: Vec<&str> = actions.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["confirm-deletions", "resubmit-in-doubt", "retry-failed"]
    );
    let discovery = chart_dir().join("argocd/actions/discovery.lua");
    let fixtures = repo_root().join("tests/fixtures/argocd/actions");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&fixtures)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    assert!(paths.len() >= 6, "{} fixtures", paths.len());
    let timestamp = regex::Regex::new(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$").unwrap();
    let mut offered = BTreeSet::new();
    for path in &paths {
        let fixture: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let name = path.file_name().unwrap().to_string_lossy();
        let object = &fixture["object"];
        let found = argo_script(&discovery, object);
        let disabled: BTreeMap<String, bool> = found
            .as_object()
            .unwrap_or_else(|| panic!("{name}: discovery returned {found}"))
            .iter()
            .map(|(k, v)| (k.clone(), v["disabled"].as_bool().unwrap_or(false)))
            .collect();
        let expected: BTreeMap<String, bool> =
            serde_json::from_value(fixture["expected"]["disabled"].clone()).unwrap();
        assert_eq!(disabled, expected, "{name}: which actions are offered");
        for (action, script) in &actions {
            if !disabled[action] {
                offered.insert(action.clone());
            }
            let mut after = argo_script(script, object);
            let timed = ["retry-failed", "resubmit-in-doubt"].contains(&action.as_str());
            if let Some(value) = after
                .pointer_mut(&format!("/metadata/annotations/koodrive.io~1{action}"))
                .filter(|_| timed)
            {
                let text = value.as_str().unwrap_or_default();
                assert!(timestamp.is_match(text), "{name}/{action}: {text}");
                *value = json!("<timestamp>");
            }
            assert_eq!(
                after,
                expected_after_action(action, object),
                "{name}: {action} changed more (or less) than its annotation"
            );
        }
    }
    assert_eq!(
        offered.len(),
        actions.len(),
        "each action is offered by a fixture"
    );
}

/// Indents every non-empty line of `text` by `n` spaces (a YAML block scalar's content).
fn indented(text: &str, n: usize) -> String {
    text.lines()
        .map(|line| {
            if line.is_empty() {
                "\n".to_string()
            } else {
                format!("{}{line}\n", " ".repeat(n))
            }
        })
        .collect()
}

#[test]
fn readme_shows_the_tested_actions_verbatim() {
    let readme = readme();
    let discovery =
        std::fs::read_to_string(chart_dir().join("argocd/actions/discovery.lua")).unwrap();
    assert!(
        readme.contains(&format!("```lua\n{discovery}```")),
        "the README's discovery.lua block differs from argocd/actions/discovery.lua"
    );
    let mut cm = format!(
        "  resource.customizations.actions.koodrive.io_UserBatch: |\n    discovery.lua: |\n{}    definitions:\n",
        indented(&discovery, 6)
    );
    for (name, script) in argo_actions() {
        let lua = std::fs::read_to_string(&script).unwrap();
        assert!(
            readme.contains(&format!("`{name}/action.lua`:\n\n```lua\n{lua}```")),
            "the README's {name}/action.lua block differs from the chart's file"
        );
        cm.push_str(&format!(
            "      - name: {name}\n        action.lua: |\n{}",
            indented(&lua, 10)
        ));
    }
    assert!(
        readme.contains(&cm),
        "the README's argocd-cm actions example differs from argocd/actions/; expected:\n{cm}"
    );
}

fn yaml_file(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The generated CRDs the chart ships, one per file in `files/crds/`.
fn committed_crds() -> Vec<Value> {
    let dir = chart_dir().join("files/crds");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    paths.sort();
    paths.iter().map(|p| yaml_file(p)).collect()
}

/// Where two JSON values first differ, as a path with both sides, or None when equal.
fn first_difference(expected: &Value, actual: &Value, path: &str) -> Option<String> {
    match (expected, actual) {
        (Value::Object(a), Value::Object(b)) => a
            .keys()
            .chain(b.keys())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .find_map(|key| {
                let (x, y) = (a.get(key), b.get(key));
                let path = format!("{path}.{key}");
                match (x, y) {
                    (Some(x), Some(y)) => first_difference(x, y, &path),
                    _ => Some(format!("{path}: {x:?} vs {y:?}")),
                }
            }),
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (x, y))| first_difference(x, y, &format!("{path}[{i}]"))),
        // fromYaml reads every number as a float64 and toYaml prints `0.0` as `0`: the API
        // server compares numbers by value, and so does this.
        (Value::Number(a), Value::Number(b)) if a.as_f64() == b.as_f64() => None,
        _ if expected == actual => None,
        _ => Some(format!("{path}: {expected} vs {actual}")),
    }
}

fn crd_named<'a>(rendered: &'a Rendered, name: &str) -> Option<&'a Manifest> {
    rendered
        .of_kind("CustomResourceDefinition")
        .into_iter()
        .find(|m| m.name() == name)
}

#[test]
fn crds_are_templates_so_upgrades_update_them_and_uninstall_keeps_them() {
    // Helm installs crds/ once and never upgrades it: nothing may live there.
    assert!(
        !chart_dir().join("crds").exists(),
        "charts/koodrive-operator/crds/ is never upgraded by Helm; CRDs belong in files/crds/"
    );
    let committed = committed_crds();
    assert!(!committed.is_empty(), "files/crds/ holds the UserBatch CRD");
    let rendered = render(None);
    assert_eq!(
        rendered.of_kind("CustomResourceDefinition").len(),
        committed.len(),
        "one rendered CRD per file in files/crds/"
    );
    let deployment_labels = rendered
        .deployment()
        .metadata
        .labels
        .expect("the Deployment has labels");
    for crd in &committed {
        let name = crd["metadata"]["name"].as_str().expect("CRD name");
        let manifest = crd_named(&rendered, name)
            .unwrap_or_else(|| panic!("CRD {name} from files/crds/ is not rendered"));
        let metadata = &manifest.value["metadata"];
        assert_eq!(
            metadata["annotations"]["helm.sh/resource-policy"], "keep",
            "{name}: crds.keep defaults to true"
        );
        for key in [
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/managed-by",
            "helm.sh/chart",
        ] {
            assert_eq!(
                metadata["labels"][key].as_str(),
                deployment_labels.get(key).map(String::as_str),
                "{name}: label {key}"
            );
        }
        // Apart from the labels and annotations the chart adds, the rendered CRD is the
        // generated one, byte for byte as data: the fromYaml/toYaml round trip loses nothing.
        let mut stripped = manifest.value.clone();
        let mut original = crd.clone();
        for value in [&mut stripped, &mut original] {
            let metadata = value["metadata"].as_object_mut().unwrap();
            metadata.remove("labels");
            metadata.remove("annotations");
        }
        if let Some(difference) = first_difference(&original, &stripped, "") {
            panic!(
                "{name}: the rendered CRD differs from files/crds/ beyond labels and \
                 annotations, at {difference}"
            );
        }
    }

    let not_kept = render_with(None, &["crds.keep=false"]);
    for manifest in not_kept.of_kind("CustomResourceDefinition") {
        assert!(
            manifest.value["metadata"]["annotations"]
                .get("helm.sh/resource-policy")
                .is_none(),
            "crds.keep=false: {} has no keep policy",
            manifest.name()
        );
    }
    assert_eq!(
        not_kept.of_kind("CustomResourceDefinition").len(),
        committed.len()
    );

    let external = render_with(None, &["crds.install=false"]);
    assert!(
        external.of_kind("CustomResourceDefinition").is_empty(),
        "crds.install=false renders no CRD"
    );
    assert_eq!(
        external.manifests.len() + committed.len(),
        rendered.manifests.len(),
        "crds.install only removes the CRDs"
    );
}

#[test]
fn chart_version_and_app_version_are_the_operators_version() {
    let chart = yaml_file(&chart_dir().join("Chart.yaml"));
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(chart["version"], version, "Chart.yaml version");
    assert_eq!(chart["appVersion"], version, "Chart.yaml appVersion");
}

#[test]
fn packaged_chart_lints_and_renders_like_the_chart_directory() {
    let version = env!("CARGO_PKG_VERSION");
    let dir = tempfile::tempdir().unwrap();
    run_ok(
        Command::new(tool("helm"))
            .arg("package")
            .arg(chart_dir())
            .arg("--destination")
            .arg(dir.path()),
    );
    let package = dir.path().join(format!("koodrive-operator-{version}.tgz"));
    assert!(
        package.is_file(),
        "helm package wrote no {}",
        package.display()
    );
    let shown = run_ok(
        Command::new(tool("helm"))
            .args(["show", "chart"])
            .arg(&package),
    );
    let shown: Value = serde_saphyr::from_str(&shown).unwrap();
    assert_eq!(shown["version"], version);
    assert_eq!(shown["appVersion"], version);

    for values in [None, Some(VARIANT_VALUES), Some(ALL_ON_VALUES)] {
        let file = values.map(values_file);
        let mut lint = Command::new(tool("helm"));
        lint.args(["lint", "--strict"]).arg(&package);
        if let Some(file) = &file {
            lint.arg("--values").arg(file.path());
        }
        run_ok(&mut lint);

        // Everything the templates read (files/crds/, files/dashboards/) made it into the
        // package: it renders exactly what the directory renders.
        let from_package = helm_template_chart(&package, values, &[]);
        let from_directory = helm_template(values, &[]);
        assert!(
            from_package.status.success(),
            "helm template of the package failed:\n{}",
            output_text(&from_package)
        );
        assert_eq!(
            String::from_utf8_lossy(&from_package.stdout),
            String::from_utf8_lossy(&from_directory.stdout),
            "the packaged chart renders differently from charts/koodrive-operator"
        );
    }
}

fn env_of(container: &Container) -> BTreeMap<String, EnvVar> {
    container
        .env
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|v| (v.name.clone(), v))
        .collect()
}

#[test]
fn grace_period_outlasts_the_request_timeout() {
    let mut variants = Vec::from(renders());
    variants.push((
        "long timeout",
        render(Some(
            "koodrive:\n  requestTimeout: 1m30s\nterminationGracePeriodSeconds: 120\n",
        )),
    ));
    for (variant, rendered) in variants {
        let deployment = rendered.deployment();
        let grace = pod_spec(&deployment)
            .termination_grace_period_seconds
            .unwrap_or_else(|| panic!("{variant}: terminationGracePeriodSeconds is not set"));
        let container = operator_container(&deployment);
        let timeout = parse_run_args_from_env(&env_of(&container), variant).request_timeout;
        assert!(
            Duration::from_secs(grace.try_into().unwrap()) > timeout,
            "{variant}: a {grace}s grace period cuts a {timeout:?} KooDrive request short"
        );
        if variant == "default values" {
            assert_eq!(grace, 60, "{variant}: documented default");
        }
    }
    // The chart's own check, with a timeout in another unit than seconds.
    let output = helm_template(
        None,
        &[
            "koodrive.requestTimeout=2m",
            "terminationGracePeriodSeconds=120",
        ],
    );
    assert!(
        !output.status.success(),
        "a grace period equal to the timeout is refused"
    );
}

#[test]
fn extra_args_volumes_and_mounts_reach_the_operator_container() {
    let rendered = render(Some(
        r#"
extraArgs: ["--log-level=debug", "--max-in-flight=2"]
extraVolumes:
  - name: scratch
    emptyDir: {medium: Memory, sizeLimit: 16Mi}
extraVolumeMounts:
  - name: scratch
    mountPath: /scratch
extraEnv:
  - name: HTTPS_PROXY
    value: http://proxy.example:3128
"#,
    ));
    let deployment = rendered.deployment();
    let container = operator_container(&deployment);
    let args = container.args.clone().unwrap_or_default();
    assert_eq!(args, ["run", "--log-level=debug", "--max-in-flight=2"]);
    // The operator's own parser accepts them after `run`.
    let argv = std::iter::once("koodrive-operator".to_string()).chain(args);
    let cli = Cli::try_parse_from(argv).expect("extraArgs parse as run flags");
    assert!(matches!(cli.command, CliCommand::Run(_)));

    let volumes = pod_spec(&deployment).volumes.unwrap_or_default();
    assert!(
        volumes
            .iter()
            .any(|v| v.name == "scratch" && v.empty_dir.is_some()),
        "extraVolumes reach the pod: {volumes:?}"
    );
    let mounts = container.volume_mounts.clone().unwrap_or_default();
    assert!(
        mounts
            .iter()
            .any(|m| m.name == "scratch" && m.mount_path == "/scratch"),
        "extraVolumeMounts reach the container: {mounts:?}"
    );
    assert_eq!(
        env_of(&container)
            .get("HTTPS_PROXY")
            .and_then(|v| v.value.as_deref()),
        Some("http://proxy.example:3128")
    );
}

#[test]
fn ca_bundle_is_mounted_read_only_and_named_by_the_environment() {
    // No bundle: no variable, no volume; the operator trusts its built-in roots alone.
    for (variant, rendered) in renders() {
        let deployment = rendered.deployment();
        let container = operator_container(&deployment);
        assert!(
            !env_of(&container).contains_key("KOODRIVE_CA_BUNDLE"),
            "{variant}: KOODRIVE_CA_BUNDLE without a configured bundle"
        );
        assert!(
            pod_spec(&deployment)
                .volumes
                .unwrap_or_default()
                .iter()
                .all(|v| v.name != "ca-bundle"),
            "{variant}: a ca-bundle volume without a configured bundle"
        );
    }

    for source in ["configMap", "secret"] {
        let values =
            format!("caBundle:\n  {source}:\n    name: corporate-ca\n    key: bundle.pem\n");
        let rendered = render(Some(&values));
        let deployment = rendered.deployment();
        let container = operator_container(&deployment);
        let env = env_of(&container);
        let path = env
            .get("KOODRIVE_CA_BUNDLE")
            .and_then(|v| v.value.clone())
            .unwrap_or_else(|| panic!("{source}: KOODRIVE_CA_BUNDLE is not set"));

        let volumes = pod_spec(&deployment).volumes.unwrap_or_default();
        let volume = volumes
            .iter()
            .find(|v| v.name == "ca-bundle")
            .unwrap_or_else(|| panic!("{source}: no ca-bundle volume"));
        let (name, items) = match source {
            "configMap" => {
                let c = volume.config_map.clone().expect("a ConfigMap volume");
                (c.name, c.items)
            }
            _ => {
                let s = volume.secret.clone().expect("a Secret volume");
                (s.secret_name.unwrap_or_default(), s.items)
            }
        };
        assert_eq!(name, "corporate-ca", "{source}: the configured object");
        let items = items.unwrap_or_default();
        assert_eq!(items.len(), 1, "{source}: only the bundle is projected");
        assert_eq!(items[0].key, "bundle.pem", "{source}: the configured key");

        let mounts = container.volume_mounts.clone().unwrap_or_default();
        let mount = mounts
            .iter()
            .find(|m| m.name == "ca-bundle")
            .unwrap_or_else(|| panic!("{source}: the bundle is not mounted"));
        assert_eq!(mount.read_only, Some(true), "{source}: mounted read-only");
        assert_eq!(
            path,
            format!("{}/{}", mount.mount_path, items[0].path),
            "{source}: KOODRIVE_CA_BUNDLE names the mounted file"
        );
        assert!(path.starts_with("/etc/koodrive-operator/ca/"));
        // Once `run` has --ca-bundle, this also checks that the flag accepts the path.
        parse_run_args_from_env(&env, source);
    }
}

const AGGREGATE_LABEL_PREFIX: &str = "rbac.authorization.k8s.io/aggregate-to-";

/// The ClusterRoles aggregated into built-in roles, with the roles each feeds.
fn aggregated_cluster_roles(rendered: &Rendered) -> Vec<(ClusterRole, BTreeSet<String>)> {
    rendered
        .of_kind("ClusterRole")
        .into_iter()
        .map(|m| m.typed::<ClusterRole>())
        .filter_map(|role| {
            let into: BTreeSet<String> = role
                .metadata
                .labels
                .iter()
                .flatten()
                .filter(|(_, v)| v.as_str() == "true")
                .filter_map(|(k, _)| k.strip_prefix(AGGREGATE_LABEL_PREFIX))
                .map(str::to_string)
                .collect();
            (!into.is_empty()).then_some((role, into))
        })
        .collect()
}

fn operator_cluster_roles(rendered: &Rendered) -> Vec<ClusterRole> {
    rendered
        .of_kind("ClusterRole")
        .into_iter()
        .map(|m| m.typed::<ClusterRole>())
        .filter(|role| {
            !role
                .metadata
                .labels
                .iter()
                .flatten()
                .any(|(k, _)| k.starts_with(AGGREGATE_LABEL_PREFIX))
        })
        .collect()
}

#[test]
fn userbatch_access_is_aggregated_into_the_default_namespace_roles() {
    let read: &[&str] = &["get", "list", "watch"];
    let write: &[&str] = &[
        "get",
        "list",
        "watch",
        "create",
        "update",
        "patch",
        "delete",
        "deletecollection",
    ];
    for (variant, rendered) in renders() {
        let aggregated = aggregated_cluster_roles(&rendered);
        let mut feeds: BTreeMap<String, BTreeSet<Grant>> = BTreeMap::new();
        for (role, into) in &aggregated {
            let grants = expand("cluster", role.rules.as_deref().unwrap_or_default());
            for target in into {
                feeds
                    .entry(target.clone())
                    .or_default()
                    .extend(grants.clone());
            }
        }
        let mut expected: BTreeMap<String, BTreeSet<Grant>> =
            [("view", read), ("edit", write), ("admin", write)]
                .into_iter()
                .map(|(target, verbs)| {
                    (
                        target.to_string(),
                        grants("cluster", &[("koodrive.io", "userbatches", verbs, None)]),
                    )
                })
                .collect();
        // Tenants read their namespaces' KooDriveAccounts (view, and through it edit and
        // admin); they never write them.
        if let Some(view) = expected.get_mut("view") {
            view.extend(grants(
                "cluster",
                &[("koodrive.io", "koodriveaccounts", read, None)],
            ));
        }
        assert_eq!(
            feeds, expected,
            "{variant}: exactly these UserBatch grants reach view, edit and admin"
        );
        // `view` must stay read-only: a role aggregated into view must not write.
        for (role, into) in &aggregated {
            if into.contains("view") {
                assert_eq!(
                    into,
                    &BTreeSet::from(["view".to_string()]),
                    "{variant}: the read role feeds only view"
                );
            }
            let name = role.metadata.name.clone().unwrap_or_default();
            for kind in ["ClusterRoleBinding", "RoleBinding"] {
                for binding in rendered.of_kind(kind) {
                    assert_ne!(
                        binding.value["roleRef"]["name"], name,
                        "{variant}: {name} works through aggregation; nothing binds it"
                    );
                }
            }
        }
    }
    for set in [
        &["rbac.aggregateToDefaultRoles=false"][..],
        &["rbac.create=false"][..],
    ] {
        let rendered = render_with(None, set);
        assert!(
            aggregated_cluster_roles(&rendered).is_empty(),
            "{set:?}: no aggregated ClusterRoles"
        );
    }
}

/// One end of a connection as a NetworkPolicy sees it: an address, and for a pod its
/// namespace, the namespace's labels and the pod's labels.
#[derive(Clone, Debug)]
struct Endpoint {
    ip: std::net::IpAddr,
    pod: Option<PodIdentity>,
}

#[derive(Clone, Debug)]
struct PodIdentity {
    namespace: String,
    namespace_labels: BTreeMap<String, String>,
    labels: BTreeMap<String, String>,
}

impl Endpoint {
    fn external(ip: &str) -> Self {
        Endpoint {
            ip: ip.parse().unwrap(),
            pod: None,
        }
    }

    fn pod(ip: &str, namespace: &str, labels: &[(&str, &str)]) -> Self {
        let owned = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        Endpoint {
            ip: ip.parse().unwrap(),
            pod: Some(PodIdentity {
                namespace: namespace.to_string(),
                // The label every namespace carries since Kubernetes 1.22.
                namespace_labels: owned(&[("kubernetes.io/metadata.name", namespace)]),
                labels: owned(labels),
            }),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Direction {
    Ingress,
    Egress,
}

/// Traffic to or from the operator pod: the peer, the protocol and the port on the side that
/// listens (the operator for ingress, the peer for egress).
#[derive(Clone, Debug)]
struct Traffic {
    direction: Direction,
    peer: Endpoint,
    protocol: &'static str,
    port: i32,
}

fn ingress(peer: &Endpoint, protocol: &'static str, port: i32) -> Traffic {
    Traffic {
        direction: Direction::Ingress,
        peer: peer.clone(),
        protocol,
        port,
    }
}

fn egress(peer: &Endpoint, protocol: &'static str, port: i32) -> Traffic {
    Traffic {
        direction: Direction::Egress,
        peer: peer.clone(),
        protocol,
        port,
    }
}

fn selector_matches(
    selector: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    labels: &BTreeMap<String, String>,
) -> bool {
    let by_labels = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let by_expressions = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.clone().unwrap_or_default();
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            other => panic!("unknown label selector operator {other}"),
        }
    });
    by_labels && by_expressions
}

fn cidr_contains(cidr: &str, ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    let (network, bits) = cidr
        .split_once('/')
        .unwrap_or_else(|| panic!("{cidr} is not a CIDR"));
    let network: IpAddr = network.parse().unwrap_or_else(|e| panic!("{cidr}: {e}"));
    let bits: u32 = bits.parse().unwrap_or_else(|e| panic!("{cidr}: {e}"));
    let (network, ip, width) = match (network, ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) => (u32::from(n) as u128, u32::from(i) as u128, 32),
        (IpAddr::V6(n), IpAddr::V6(i)) => (u128::from(n), u128::from(i), 128),
        _ => return false,
    };
    assert!(bits <= width, "{cidr}: prefix longer than the address");
    let shift = width - bits;
    shift == width || (network >> shift) == (ip >> shift)
}

fn peer_matches(
    peer: &k8s_openapi::api::networking::v1::NetworkPolicyPeer,
    policy_namespace: &str,
    endpoint: &Endpoint,
) -> bool {
    if let Some(block) = &peer.ip_block {
        return cidr_contains(&block.cidr, endpoint.ip)
            && !block
                .except
                .iter()
                .flatten()
                .any(|except| cidr_contains(except, endpoint.ip));
    }
    // Selectors only ever match pods.
    let Some(pod) = &endpoint.pod else {
        return false;
    };
    let namespace_ok = match &peer.namespace_selector {
        None => pod.namespace == policy_namespace,
        Some(selector) => selector_matches(selector, &pod.namespace_labels),
    };
    let pod_ok = peer
        .pod_selector
        .as_ref()
        .is_none_or(|selector| selector_matches(selector, &pod.labels));
    namespace_ok && pod_ok
}

/// Whether one NetworkPolicy, the only one selecting the operator pod, lets `traffic` through.
/// Named ports are resolved against the operator's container ports (ingress only: for
/// egress they would name the peer's ports, which this chart never does).
fn network_policy_allows(
    policy: &k8s_openapi::api::networking::v1::NetworkPolicy,
    operator: &Container,
    traffic: &Traffic,
) -> bool {
    let spec = policy.spec.as_ref().expect("NetworkPolicy has a spec");
    let policy_namespace = policy.metadata.namespace.as_deref().unwrap_or_default();
    let types = spec.policy_types.clone().unwrap_or_default();
    let wanted = match traffic.direction {
        Direction::Ingress => "Ingress",
        Direction::Egress => "Egress",
    };
    if !types.iter().any(|t| t == wanted) {
        return true; // Not isolated in that direction.
    }
    let port_matches = |port: &k8s_openapi::api::networking::v1::NetworkPolicyPort| {
        let protocol = port.protocol.as_deref().unwrap_or("TCP");
        let number = match &port.port {
            None => return protocol == traffic.protocol,
            Some(IntOrString::Int(n)) => *n,
            Some(IntOrString::String(name)) => {
                assert_eq!(
                    traffic.direction,
                    Direction::Ingress,
                    "named egress port {name}: the evaluator does not know the peer's ports"
                );
                operator
                    .ports
                    .iter()
                    .flatten()
                    .find(|p| p.name.as_deref() == Some(name.as_str()))
                    .unwrap_or_else(|| panic!("named port {name} is not a container port"))
                    .container_port
            }
        };
        let end = port.end_port.unwrap_or(number);
        protocol == traffic.protocol && (number..=end).contains(&traffic.port)
    };
    let rule_matches = |ports: &Option<Vec<_>>, peers: &Option<Vec<_>>| {
        let ports_ok = match ports {
            None => true,
            Some(ports) if ports.is_empty() => true,
            Some(ports) => ports.iter().any(port_matches),
        };
        let peers_ok = match peers {
            None => true,
            Some(peers) if peers.is_empty() => true,
            Some(peers) => peers
                .iter()
                .any(|p| peer_matches(p, policy_namespace, &traffic.peer)),
        };
        ports_ok && peers_ok
    };
    match traffic.direction {
        Direction::Ingress => spec
            .ingress
            .iter()
            .flatten()
            .any(|rule| rule_matches(&rule.ports, &rule.from)),
        Direction::Egress => spec
            .egress
            .iter()
            .flatten()
            .any(|rule| rule_matches(&rule.ports, &rule.to)),
    }
}

/// Renders the chart with a NetworkPolicy and checks each (traffic, allowed) pair.
fn check_network_policy(values: &str, expectations: &[(&str, Traffic, bool)]) {
    let rendered = render(Some(values));
    let policy: k8s_openapi::api::networking::v1::NetworkPolicy = rendered.one("NetworkPolicy");
    let deployment = rendered.deployment();
    let pod_labels = deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let spec = policy.spec.clone().unwrap();
    assert!(
        selector_matches(&spec.pod_selector.clone().unwrap_or_default(), &pod_labels)
            && !spec
                .pod_selector
                .as_ref()
                .and_then(|s| s.match_labels.as_ref())
                .is_none_or(BTreeMap::is_empty),
        "the NetworkPolicy selects the operator pods, and only them"
    );
    assert_eq!(
        policy.metadata.namespace.as_deref(),
        Some(RELEASE_NAMESPACE)
    );
    let operator = operator_container(&deployment);
    let mut wrong = Vec::new();
    for (what, traffic, allowed) in expectations {
        if network_policy_allows(&policy, &operator, traffic) != *allowed {
            wrong.push(format!(
                "{what}: expected {}",
                if *allowed { "allowed" } else { "denied" }
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "the NetworkPolicy does not implement the documented traffic pattern:\n{}\n{}",
        wrong.join("\n"),
        serde_json::to_string_pretty(&spec).unwrap()
    );
}

#[test]
fn network_policy_allows_exactly_the_documented_traffic() {
    assert!(
        render(None).of_kind("NetworkPolicy").is_empty(),
        "off by default"
    );

    let prometheus = Endpoint::pod(
        "10.244.1.5",
        "monitoring",
        &[("app.kubernetes.io/name", "prometheus")],
    );
    let tenant = Endpoint::pod("10.244.2.7", "team-a", &[("app", "shell")]);
    let coredns = Endpoint::pod("10.244.0.3", "kube-system", &[("k8s-app", "kube-dns")]);
    let public_dns = Endpoint::external("8.8.8.8");
    let api_endpoint = Endpoint::external("172.18.0.2");
    let api_service = Endpoint::external("10.96.0.1");
    let other_node = Endpoint::external("172.18.0.3");
    let koodrive = Endpoint::external("203.0.113.10");
    let elsewhere = Endpoint::external("198.51.100.1");
    let proxy = Endpoint::external("10.1.2.3");

    // Defaults: any source on the metrics port; DNS anywhere; API server and KooDrive
    // anywhere, on their ports only.
    check_network_policy(
        "networkPolicy:\n  enabled: true\n",
        &[
            ("metrics scrape", ingress(&prometheus, "TCP", 8080), true),
            ("metrics from a tenant", ingress(&tenant, "TCP", 8080), true),
            ("another port", ingress(&prometheus, "TCP", 9090), false),
            (
                "UDP to the metrics port",
                ingress(&prometheus, "UDP", 8080),
                false,
            ),
            ("DNS over UDP", egress(&coredns, "UDP", 53), true),
            ("DNS over TCP", egress(&coredns, "TCP", 53), true),
            ("mDNS", egress(&coredns, "UDP", 5353), false),
            (
                "API server endpoint",
                egress(&api_endpoint, "TCP", 6443),
                true,
            ),
            ("API server Service", egress(&api_service, "TCP", 443), true),
            ("KooDrive", egress(&koodrive, "TCP", 443), true),
            (
                "KooDrive over plain HTTP",
                egress(&koodrive, "TCP", 80),
                false,
            ),
            ("QUIC", egress(&koodrive, "UDP", 443), false),
            ("SMTP", egress(&koodrive, "TCP", 25), false),
            ("a tenant pod", egress(&tenant, "TCP", 8080), false),
        ],
    );

    // Narrowed to known peers and addresses, plus a proxy through extraEgress.
    check_network_policy(
        r#"
networkPolicy:
  enabled: true
  metrics:
    from:
      - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: monitoring}}
        podSelector: {matchLabels: {app.kubernetes.io/name: prometheus}}
  dns:
    to:
      - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}
        podSelector:
          matchExpressions:
            - {key: k8s-app, operator: In, values: [kube-dns]}
  apiServer:
    cidrs: [172.18.0.2/32]
    ports: [6443]
  koodrive:
    cidrs: [203.0.113.0/24]
  extraEgress:
    - to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.96.0.0/12]}}]
      ports: [{port: 3128, protocol: TCP}]
"#,
        &[
            ("metrics scrape", ingress(&prometheus, "TCP", 8080), true),
            (
                "metrics from a tenant",
                ingress(&tenant, "TCP", 8080),
                false,
            ),
            ("DNS to kube-dns", egress(&coredns, "UDP", 53), true),
            ("DNS to the internet", egress(&public_dns, "UDP", 53), false),
            (
                "API server endpoint",
                egress(&api_endpoint, "TCP", 6443),
                true,
            ),
            ("another node", egress(&other_node, "TCP", 6443), false),
            (
                "API server Service port",
                egress(&api_service, "TCP", 443),
                false,
            ),
            ("KooDrive", egress(&koodrive, "TCP", 443), true),
            ("HTTPS elsewhere", egress(&elsewhere, "TCP", 443), false),
            ("the proxy", egress(&proxy, "TCP", 3128), true),
            (
                "the proxy port in the Service range",
                egress(&api_service, "TCP", 3128),
                false,
            ),
            ("SMTP", egress(&koodrive, "TCP", 25), false),
        ],
    );

    // The ingress rule follows the metrics port wherever it is moved.
    let moved = "networkPolicy:\n  enabled: true\nmetrics:\n  port: 9090\n";
    check_network_policy(
        moved,
        &[
            (
                "moved metrics port",
                ingress(&prometheus, "TCP", 9090),
                true,
            ),
            ("old metrics port", ingress(&prometheus, "TCP", 8080), false),
        ],
    );
}

#[test]
fn network_policy_evaluator_matches_cidrs_and_selectors() {
    // The evaluator's own corner cases, so a bug there cannot hide a bug in the policy.
    let ip = |s: &str| s.parse().unwrap();
    assert!(cidr_contains("0.0.0.0/0", ip("203.0.113.10")));
    assert!(!cidr_contains("0.0.0.0/0", ip("2001:db8::1")));
    assert!(cidr_contains("::/0", ip("2001:db8::1")));
    assert!(cidr_contains("10.0.0.0/8", ip("10.255.0.1")));
    assert!(!cidr_contains("10.0.0.0/8", ip("11.0.0.1")));
    assert!(cidr_contains("172.18.0.2/32", ip("172.18.0.2")));
    assert!(!cidr_contains("172.18.0.2/32", ip("172.18.0.3")));
    let labels: BTreeMap<String, String> = [("a".to_string(), "1".to_string())].into();
    let selector = |json: Value| -> k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
        serde_json::from_value(json).unwrap()
    };
    assert!(selector_matches(&selector(serde_json::json!({})), &labels));
    assert!(selector_matches(
        &selector(serde_json::json!({"matchLabels": {"a": "1"}})),
        &labels
    ));
    assert!(!selector_matches(
        &selector(serde_json::json!({"matchLabels": {"a": "2"}})),
        &labels
    ));
    assert!(!selector_matches(
        &selector(serde_json::json!({"matchExpressions": [
            {"key": "a", "operator": "NotIn", "values": ["1"]}
        ]})),
        &labels
    ));
    assert!(selector_matches(
        &selector(serde_json::json!({"matchExpressions": [
            {"key": "b", "operator": "DoesNotExist"}
        ]})),
        &labels
    ));
}

/// The metrics the operator exposes: the contract the alerts and the dashboard are written
/// against. Full sample-family names as PromQL sees them (counters with `_total`, histograms
/// as `_bucket`/`_sum`/`_count`). `every_contract_metric_is_exposed_after_an_end_to_end_run`
/// checks each against a real operator's `/metrics`.
const METRIC_CONTRACT: &[&str] = &[
    "koodrive_operator_reconciles_total",
    "koodrive_operator_reconcile_errors_total",
    "koodrive_operator_reconcile_duration_seconds_bucket",
    "koodrive_operator_reconcile_duration_seconds_sum",
    "koodrive_operator_reconcile_duration_seconds_count",
    "koodrive_operator_koodrive_requests_total",
    "koodrive_operator_koodrive_http_requests_total",
    "koodrive_operator_koodrive_request_duration_seconds_bucket",
    "koodrive_operator_koodrive_request_duration_seconds_sum",
    "koodrive_operator_koodrive_request_duration_seconds_count",
    "koodrive_operator_authentication_failures_total",
    "koodrive_operator_credentials_blocked",
    "koodrive_operator_users_total",
    "koodrive_operator_userbatches",
    "koodrive_operator_userbatch_condition",
    "koodrive_operator_build_info",
    "koodrive_operator_leader",
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_open_fds",
    "process_max_fds",
    "process_start_time_seconds",
];

/// Series Prometheus itself records for every target; alerts may use them too.
const SCRAPE_SERIES: &[&str] = &["up"];

/// Words that look like metric names in PromQL but are not: aggregations, operators and
/// modifiers (functions are recognised by the `(` that follows them).
const PROMQL_KEYWORDS: &[&str] = &[
    "sum",
    "avg",
    "min",
    "max",
    "count",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "group",
    "limitk",
    "limit_ratio",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "atan2",
    "inf",
    "nan",
];

/// Every metric name a PromQL expression selects. Skips strings, label matchers, ranges,
/// numbers and durations, Grafana variables (`$__rate_interval`, `${job}`), label lists of
/// `by`/`on`/... and function names.
fn promql_metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    // Skips from an opening bracket to its closing one, stepping over quoted strings.
    let skip_group = |mut i: usize, open: char, close: char| -> usize {
        let mut depth = 0;
        while i < chars.len() {
            match chars[i] {
                '"' | '\'' | '`' => {
                    let quote = chars[i];
                    i += 1;
                    while i < chars.len() && chars[i] != quote {
                        if chars[i] == '\\' {
                            i += 1;
                        }
                        i += 1;
                    }
                }
                c if c == open => depth += 1,
                c if c == close => {
                    depth -= 1;
                    if depth == 0 {
                        return i + 1;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        panic!("unbalanced {open}{close} in PromQL: {expr}");
    };
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            // A string outside braces (e.g. label_replace arguments): skip it whole.
            let quote = c;
            i += 1;
            while i < chars.len() && chars[i] != quote {
                if chars[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
        } else if c == '{' {
            i = skip_group(i, '{', '}');
        } else if c == '[' {
            i = skip_group(i, '[', ']');
        } else if c == '#' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '$' {
            i += 1;
            if chars.get(i) == Some(&'{') {
                i = skip_group(i, '{', '}');
            } else {
                while i < chars.len() && is_ident(chars[i]) {
                    i += 1;
                }
            }
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            // Numbers, durations (5m), hex and exponents.
            while i < chars.len() && (is_ident(chars[i]) || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && is_ident(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let followed_by_paren = chars.get(next) == Some(&'(');
            let grouping = [
                "by",
                "without",
                "on",
                "ignoring",
                "group_left",
                "group_right",
            ];
            if grouping.contains(&word.as_str()) {
                if followed_by_paren {
                    i = skip_group(next, '(', ')');
                }
            } else if followed_by_paren || PROMQL_KEYWORDS.contains(&word.to_lowercase().as_str()) {
                // A function or an aggregation: its arguments are scanned next.
            } else {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn promql_metric_names_finds_selectors_and_nothing_else() {
    let expr = r#"
        histogram_quantile(0.95, sum by (le, call) (rate(a_bucket{job=~"$job", x="{y}"}[$__rate_interval])))
        / on (namespace) group_left (reason)
        max without(pod) (b{c="d"} offset 5m) > bool 1e3
        or absent(up{job="k"} == 1) unless label_replace(c_total, "dst", "$1", "src", "(.*)")
        + sum(d:recorded:rate5m) * time() - 0x1F and e
    "#;
    let expected: BTreeSet<String> = ["a_bucket", "b", "up", "c_total", "d:recorded:rate5m", "e"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(promql_metric_names(expr), expected);
}

/// GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces to `-`.
fn github_anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn readme_anchors() -> BTreeSet<String> {
    readme()
        .lines()
        .filter_map(|line| line.strip_prefix('#'))
        .map(|line| github_anchor(line.trim_start_matches('#')))
        .collect()
}

const ALERTS: [&str; 7] = [
    "KooDriveUserBatchStalled",
    "KooDriveSubmissionInDoubt",
    "KooDriveAuthenticationFailing",
    "KooDriveUnavailable",
    "KooDriveOperatorReconcileErrors",
    "KooDriveOperatorDown",
    "KooDriveOperatorNoLeader",
];

/// The rendered PrometheusRule's alerting rules, by alert name.
fn alert_rules(rendered: &Rendered) -> BTreeMap<String, Value> {
    let rules = rendered.of_kind("PrometheusRule");
    assert_eq!(rules.len(), 1, "one PrometheusRule");
    rules[0].value["spec"]["groups"]
        .as_array()
        .expect("spec.groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .map(|r| {
            (
                r["alert"]
                    .as_str()
                    .expect("alerting rules only")
                    .to_string(),
                r,
            )
        })
        .collect()
}

#[test]
fn prometheus_rule_passes_promtool_and_its_unit_tests() {
    assert!(
        render(None).of_kind("PrometheusRule").is_empty(),
        "off by default"
    );
    let rendered = render_with(None, &["prometheusRule.enabled=true"]);
    let manifest = rendered.of_kind("PrometheusRule")[0];
    let dir = tempfile::tempdir().unwrap();
    let rules_file = dir.path().join("rules.yaml");
    std::fs::write(
        &rules_file,
        serde_saphyr::to_string(&manifest.value["spec"]).unwrap(),
    )
    .unwrap();
    let promtool = tool("promtool");
    run_ok(
        Command::new(&promtool)
            .args(["check", "rules"])
            .arg(&rules_file),
    );
    // The unit tests expect the rules next to them, rendered with the default values.
    let fixture = repo_root().join("tests/fixtures/prometheus/alerts_test.yaml");
    let unit_tests = dir.path().join("alerts_test.yaml");
    std::fs::copy(&fixture, &unit_tests).unwrap();
    run_ok(
        Command::new(&promtool)
            .args(["test", "rules"])
            .arg(&unit_tests),
    );

    let alerts = alert_rules(&rendered);
    assert_eq!(
        alerts.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        BTreeSet::from(ALERTS),
        "the documented alerts, and only them"
    );
    let fixture_text = std::fs::read_to_string(&fixture).unwrap();
    let values = yaml_file(&chart_dir().join("values.yaml"));
    let base = values["prometheusRule"]["runbookBaseUrl"].as_str().unwrap();
    let anchors = readme_anchors();
    let mut used = BTreeSet::new();
    for (name, rule) in &alerts {
        assert!(
            fixture_text.contains(&format!("alertname: {name}\n")),
            "{name} has no promtool unit test in {}",
            fixture.display()
        );
        assert!(
            rule["labels"]["severity"]
                .as_str()
                .is_some_and(|s| !s.is_empty()),
            "{name}: severity label"
        );
        for key in ["summary", "description"] {
            assert!(
                rule["annotations"][key]
                    .as_str()
                    .is_some_and(|s| s.len() > 20),
                "{name}: annotation {key}"
            );
        }
        let anchor = format!("runbook-{}", name.to_lowercase());
        assert_eq!(
            rule["annotations"]["runbook_url"].as_str(),
            Some(format!("{base}#{anchor}").as_str()),
            "{name}: runbook_url"
        );
        assert!(
            anchors.contains(&anchor),
            "{name}: the chart README has no `Runbook: {name}` heading (#{anchor})"
        );
        used.extend(promql_metric_names(rule["expr"].as_str().unwrap()));
    }
    let unknown: Vec<_> = used
        .iter()
        .filter(|m| !METRIC_CONTRACT.contains(&m.as_str()) && !SCRAPE_SERIES.contains(&m.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "alerts use metrics outside the contract: {unknown:?}"
    );
}

#[test]
fn prometheus_rule_tunables_reach_the_alerts() {
    let rendered = render(Some(
        r#"
prometheusRule:
  enabled: true
  labels: {release: prometheus}
  runbookBaseUrl: https://wiki.example/koodrive
  selector: 'job="koodrive",cluster="prod"'
  alerts:
    unavailable: {for: 30m, severity: page, errorRatio: 0.2}
    userBatchStalled: {for: 1h, severity: ticket}
"#,
    ));
    let manifest = rendered.of_kind("PrometheusRule")[0];
    assert_eq!(
        manifest.value["metadata"]["labels"]["release"],
        "prometheus"
    );
    let alerts = alert_rules(&rendered);
    let unavailable = &alerts["KooDriveUnavailable"];
    assert_eq!(unavailable["for"], "30m");
    assert_eq!(unavailable["labels"]["severity"], "page");
    let expr = unavailable["expr"].as_str().unwrap();
    assert!(expr.trim_end().ends_with("> 0.2"), "errorRatio: {expr}");
    assert_eq!(alerts["KooDriveUserBatchStalled"]["for"], "1h");
    for (name, rule) in &alerts {
        let expr = rule["expr"].as_str().unwrap();
        assert!(
            expr.contains(r#"{job="koodrive",cluster="prod""#),
            "{name}: every selector carries prometheusRule.selector: {expr}"
        );
        assert!(
            rule["annotations"]["runbook_url"]
                .as_str()
                .unwrap()
                .starts_with("https://wiki.example/koodrive#runbook-"),
            "{name}: runbookBaseUrl"
        );
    }
}

#[test]
fn pod_monitor_scrapes_the_operator_pods_keeping_their_labels() {
    assert!(
        render(None).of_kind("PodMonitor").is_empty(),
        "off by default"
    );
    let rendered = render(Some(
        "metrics:\n  podMonitor:\n    enabled: true\n    interval: 20s\n    scrapeTimeout: 5s\n    labels: {release: prometheus}\n",
    ));
    assert!(rendered.of_kind("ServiceMonitor").is_empty());
    let monitor = &rendered.of_kind("PodMonitor")[0].value;
    let pod_labels = rendered
        .deployment()
        .spec
        .and_then(|s| s.template.metadata)
        .and_then(|m| m.labels)
        .unwrap_or_default();
    let selector: BTreeMap<String, String> =
        serde_json::from_value(monitor["spec"]["selector"]["matchLabels"].clone()).unwrap();
    assert!(
        !selector.is_empty() && selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)),
        "the PodMonitor selects the operator pods"
    );
    assert_eq!(
        monitor["spec"]["namespaceSelector"]["matchNames"][0],
        RELEASE_NAMESPACE
    );
    let endpoint = &monitor["spec"]["podMetricsEndpoints"][0];
    assert_eq!(endpoint["port"], "http-metrics");
    assert_eq!(endpoint["interval"], "20s");
    assert_eq!(endpoint["scrapeTimeout"], "5s");
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
    // The alerts and the dashboard read the UserBatch's own `namespace` label.
    assert_eq!(endpoint["honorLabels"], true);
    let service_monitor = render(Some(VARIANT_VALUES));
    assert_eq!(
        service_monitor.of_kind("ServiceMonitor")[0].value["spec"]["endpoints"][0]["honorLabels"],
        true
    );
}

fn dashboard_file() -> PathBuf {
    chart_dir().join("files/dashboards/koodrive-operator.json")
}

fn dashboard() -> Value {
    let text = std::fs::read_to_string(dashboard_file()).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("the dashboard is not JSON: {e}"))
}

/// Every panel of a dashboard, including those inside collapsed rows.
fn dashboard_panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        out.push(panel);
        out.extend(panel["panels"].as_array().into_iter().flatten());
    }
    out
}

/// Every metric name the shipped dashboard queries: each target's `expr`, and the metric of
/// each `label_values(...)` variable.
fn dashboard_metric_names() -> BTreeSet<String> {
    let dashboard = dashboard();
    let mut names = BTreeSet::new();
    for panel in dashboard_panels(&dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("panel {}: a target without expr", panel["title"]));
            names.extend(promql_metric_names(expr));
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if variable["type"] != "query" {
            continue;
        }
        let query = variable["query"]["query"]
            .as_str()
            .or(variable["query"].as_str())
            .unwrap_or_default();
        // label_values(<series selector>, <label>): only the selector is PromQL.
        let selector = query
            .strip_prefix("label_values(")
            .and_then(|rest| rest.strip_suffix(')'))
            .and_then(|inner| inner.rsplit_once(','))
            .map(|(selector, _label)| selector)
            .unwrap_or_else(|| panic!("variable {}: unexpected query {query:?}", variable["name"]));
        names.extend(promql_metric_names(selector));
    }
    names
}

#[test]
fn grafana_dashboard_queries_only_contract_metrics() {
    let names = dashboard_metric_names();
    let unknown: Vec<_> = names
        .iter()
        .filter(|m| !METRIC_CONTRACT.contains(&m.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "the dashboard queries metrics outside the contract: {unknown:?}"
    );
    // The panels users asked for, by the metrics behind them.
    for metric in [
        "koodrive_operator_userbatches",
        "koodrive_operator_userbatch_condition",
        "koodrive_operator_koodrive_requests_total",
        "koodrive_operator_koodrive_http_requests_total",
        "koodrive_operator_authentication_failures_total",
        "koodrive_operator_credentials_blocked",
        "koodrive_operator_reconciles_total",
        "koodrive_operator_reconcile_errors_total",
        "koodrive_operator_reconcile_duration_seconds_bucket",
        "koodrive_operator_koodrive_request_duration_seconds_bucket",
        "koodrive_operator_users_total",
        "koodrive_operator_leader",
        "koodrive_operator_build_info",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
    ] {
        assert!(names.contains(metric), "no panel shows {metric}");
    }

    let dashboard = dashboard();
    assert_eq!(dashboard["uid"], "koodrive-operator", "a stable uid");
    let mut ids = BTreeSet::new();
    for panel in dashboard_panels(&dashboard) {
        let title = panel["title"].as_str().unwrap_or_default();
        assert!(
            ids.insert(panel["id"].as_u64().expect("panel id")),
            "duplicate panel id in {title}"
        );
        let grid = &panel["gridPos"];
        assert!(
            grid["x"].as_u64().unwrap() + grid["w"].as_u64().unwrap() <= 24,
            "{title} is wider than the dashboard"
        );
        if panel["type"] == "row" {
            continue;
        }
        assert!(
            panel["description"].as_str().is_some_and(|d| !d.is_empty()),
            "{title}: a description says what it shows"
        );
        let targets = panel["targets"].as_array().cloned().unwrap_or_default();
        assert!(!targets.is_empty(), "{title}: no query");
        for target in std::iter::once(panel).chain(&targets) {
            // Every query goes to the data source the user picks, never a hard-coded one.
            assert_eq!(target["datasource"]["uid"], "${datasource}", "{title}");
        }
        for target in &targets {
            let expr = target["expr"].as_str().unwrap();
            assert!(
                expr.contains(r#"job=~"$job""#),
                "{title}: {expr} ignores the job variable"
            );
        }
    }
}

#[test]
fn grafana_dashboard_queries_are_valid_promql() {
    // promtool parses every query as a recording rule, once Grafana's variables are
    // replaced by what Grafana would put there.
    let dashboard = dashboard();
    let mut rules = Vec::new();
    for panel in dashboard_panels(&dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "2m")
                .replace("$job", ".+")
                .replace("$namespace", ".*");
            rules.push(serde_json::json!({
                "record": format!("dashboard:panel{}:{}", panel["id"], target["refId"].as_str().unwrap()),
                "expr": expr,
            }));
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard-queries.yaml");
    let groups = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
    std::fs::write(&file, serde_saphyr::to_string(&groups).unwrap()).unwrap();
    run_ok(
        Command::new(tool("promtool"))
            .args(["check", "rules"])
            .arg(&file),
    );
}

#[test]
fn grafana_dashboard_config_map_is_labelled_for_the_sidecar() {
    let is_dashboard = |m: &&Manifest| m.kind() == "ConfigMap" && m.name().ends_with("-dashboard");
    assert!(
        !render(None).manifests.iter().any(|m| is_dashboard(&m)),
        "off by default"
    );
    let file = std::fs::read_to_string(dashboard_file()).unwrap();
    for (values, namespace, key, value) in [
        (
            "grafanaDashboard:\n  enabled: true\n",
            RELEASE_NAMESPACE,
            "grafana_dashboard",
            "1",
        ),
        (
            "grafanaDashboard:\n  enabled: true\n  namespace: monitoring\n  labelKey: example.com/dashboard\n  labelValue: koodrive\n  annotations: {grafana_folder: KooDrive}\n",
            "monitoring",
            "example.com/dashboard",
            "koodrive",
        ),
    ] {
        let rendered = render(Some(values));
        let maps: Vec<_> = rendered.manifests.iter().filter(is_dashboard).collect();
        assert_eq!(maps.len(), 1, "{values}: one dashboard ConfigMap");
        let map = &maps[0].value;
        assert_eq!(map["metadata"]["namespace"], namespace);
        assert_eq!(map["metadata"]["labels"][key], value, "the sidecar's label");
        let json = map["data"]["koodrive-operator.json"]
            .as_str()
            .expect("data holds koodrive-operator.json");
        assert_eq!(
            json,
            file.trim_end(),
            "the ConfigMap carries the file verbatim"
        );
        if namespace == "monitoring" {
            assert_eq!(map["metadata"]["annotations"]["grafana_folder"], "KooDrive");
        }
    }
}

/// The contract the alerts and the dashboard are written against is what a real operator
/// exposes: run one through successes, a throttled KooDrive and refused credentials, then
/// find every contract metric among the samples of its `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_contract_metric_is_exposed_after_an_end_to_end_run() {
    use crate::support::*;
    use koodrive_simulator::{Call, Fault, FaultKind};
    let env = Env::start().await;
    env.create_credentials("creds", SECRET_KEY).await;
    env.create_credentials("wrong", "WRONG-secret-key").await;
    // Throttled until the client gives up once: a reconcile error with a reason.
    env.simulator.inject(Fault {
        call: Some(Call::Create),
        times: 3,
        kind: FaultKind::TooManyRequests {
            retry_after_secs: 0,
        },
    });
    env.create_batch("metrics-ok", "creds", users("86240", 2, None))
        .await;
    let operator = env.operator("op", &[]);
    env.wait_for("metrics-ok", "Ready", is_ready).await;
    env.create_batch("metrics-refused", "wrong", users("86241", 1, None))
        .await;
    env.wait_for("metrics-refused", "CredentialsInvalid", |s| {
        ready_reason(s) == Some("CredentialsInvalid")
    })
    .await;
    let url = format!("http://{}/metrics", operator.metrics_addr().await);
    let (_, text) = http_get(&url).await.expect("/metrics answers");
    let samples: BTreeSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let missing: Vec<&&str> = METRIC_CONTRACT
        .iter()
        .filter(|m| !samples.contains(**m))
        .collect();
    assert!(missing.is_empty(), "not exposed: {missing:?}\n{text}");
    // And everything the dashboard queries is among them.
    let unexposed: Vec<String> = dashboard_metric_names()
        .into_iter()
        .filter(|m| !samples.contains(m.as_str()))
        .collect();
    assert!(unexposed.is_empty(), "the dashboard queries {unexposed:?}");
}

// --- Accounts (issue #13) ---------------------------------------------------------------

/// Every permission `subject` (kind, name) gets through the rendered ClusterRoleBindings.
fn cluster_grants_of(rendered: &Rendered, kind: &str, name: &str) -> BTreeSet<Grant> {
    let roles: Vec<ClusterRole> = rendered
        .of_kind("ClusterRole")
        .iter()
        .map(|m| m.typed())
        .collect();
    let mut all = BTreeSet::new();
    for binding in rendered.of_kind("ClusterRoleBinding") {
        let binding: ClusterRoleBinding = binding.typed();
        let bound = binding
            .subjects
            .iter()
            .flatten()
            .any(|s| s.kind == kind && s.name == name);
        if !bound {
            continue;
        }
        let role = roles
            .iter()
            .find(|r| r.metadata.name.as_deref() == Some(binding.role_ref.name.as_str()))
            .unwrap_or_else(|| panic!("ClusterRole {} is not rendered", binding.role_ref.name));
        all.extend(expand("cluster", role.rules.as_deref().unwrap_or_default()));
    }
    all
}

const PLATFORM_TEAM: &str = "\
rbac:
  accountAdmins:
    - {kind: Group, name: platform-team, apiGroup: rbac.authorization.k8s.io}
  clusterAccountReaders:
    - {kind: Group, name: system:authenticated, apiGroup: rbac.authorization.k8s.io}
";

#[test]
fn the_platform_team_writes_accounts_and_tenants_only_read_them() {
    let write: &[&str] = &[
        "get",
        "list",
        "watch",
        "create",
        "update",
        "patch",
        "delete",
        "deletecollection",
    ];
    // Without the values, only cluster admins write accounts: no role is rendered for it.
    let default = render(None);
    assert!(
        default
            .of_kind("ClusterRole")
            .iter()
            .all(|r| !r.name().contains("account")),
        "no account role by default"
    );

    let rendered = render(Some(PLATFORM_TEAM));
    assert_no_wildcards(&rendered, "platform team");
    let platform = cluster_grants_of(&rendered, "Group", "platform-team");
    assert_eq!(
        platform,
        grants(
            "cluster",
            &[
                ("koodrive.io", "koodriveaccounts", write, None),
                ("koodrive.io", "clusterkoodriveaccounts", write, None),
            ]
        ),
        "accounts only: no status, no Secrets, no UserBatches"
    );
    let readers = cluster_grants_of(&rendered, "Group", "system:authenticated");
    assert_eq!(
        readers,
        grants(
            "cluster",
            &[(
                "koodrive.io",
                "clusterkoodriveaccounts",
                &["get", "list", "watch"],
                None
            )]
        )
    );
    // The operator's own permissions do not change with these values.
    let mut expected = workload_grants("cluster");
    expected.extend(cluster_grants());
    expected.extend(lease_grants(RELEASE));
    assert_eq!(effective_grants(&rendered), expected);
    // Tenants: whatever reaches the built-in namespace roles writes no account.
    for (role, _) in aggregated_cluster_roles(&rendered) {
        for (_, _, resource, verb, _) in
            expand("cluster", role.rules.as_deref().unwrap_or_default())
        {
            if resource.contains("koodriveaccount") {
                assert!(
                    ["get", "list", "watch"].contains(&verb.as_str()),
                    "tenants may not {verb} {resource}"
                );
                assert_eq!(
                    resource, "koodriveaccounts",
                    "cluster accounts are not theirs"
                );
            }
        }
    }
}

const CLUSTER_ACCOUNT: &str = "\
clusterAccount:
  create: true
  name: company
  endpoint: https://cn.myhuaweicloud-koodrive.com
  credentialsSecret:
    name: platform-credentials
  limits:
    requestsPerSecond: 2.5
    maxInFlight: 3
  allowedNamespaces:
    names: [team-a, team-b]
    matchLabels:
      koodrive.io/tenant: \"true\"
    matchExpressions:
      - {key: env, operator: NotIn, values: [sandbox]}
koodrive:
  allowedEndpoints: [https://cn.myhuaweicloud-koodrive.com]
";

#[test]
fn a_cluster_account_from_values_is_a_valid_hook_pointing_at_the_release_namespace() {
    use koodrive_operator::crd::CrdKind;
    use koodrive_operator::validation::validate_object;
    let rendered = render(Some(CLUSTER_ACCOUNT));
    let accounts = rendered.of_kind("ClusterKooDriveAccount");
    assert_eq!(accounts.len(), 1);
    let account = &accounts[0].value;
    // Valid against the CRD, as the API server will check it.
    assert_eq!(
        validate_object(CrdKind::Clusterkoodriveaccount, account),
        vec![]
    );
    assert_eq!(account["metadata"]["name"], "company");
    // A hook: Helm maps ordinary templates to kinds before installing the CRDs.
    assert_eq!(
        account["metadata"]["annotations"]["helm.sh/hook"],
        "post-install,post-upgrade"
    );
    let spec = &account["spec"];
    assert_eq!(spec["endpoint"], "https://cn.myhuaweicloud-koodrive.com");
    assert_eq!(
        spec["credentialsRef"],
        serde_json::json!({"name": "platform-credentials", "namespace": RELEASE_NAMESPACE,
                           "accessKeyKey": "accessKey", "secretKeyKey": "secretKey",
                           "userIdKey": "userId"})
    );
    assert_eq!(
        spec["limits"],
        serde_json::json!({"requestsPerSecond": 2.5, "maxInFlight": 3})
    );
    assert_eq!(
        spec["allowedNamespaces"],
        serde_json::json!({
            "names": ["team-a", "team-b"],
            "selector": {
                "matchLabels": {"koodrive.io/tenant": "true"},
                "matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["sandbox"]}]
            }
        })
    );
    // Nothing secret in the chart: the account only names the Secret.
    assert!(!accounts[0].text.to_lowercase().contains("secretkey:"));

    // Every namespace, explicitly; no limits: the operator's defaults.
    let everyone = render_with(
        None,
        &[
            "clusterAccount.create=true",
            "clusterAccount.credentialsSecret.name=platform-credentials",
            "clusterAccount.credentialsSecret.namespace=secrets",
            "clusterAccount.allowedNamespaces.allNamespaces=true",
        ],
    );
    let account = &everyone.of_kind("ClusterKooDriveAccount")[0].value;
    assert_eq!(
        validate_object(CrdKind::Clusterkoodriveaccount, account),
        vec![]
    );
    assert_eq!(
        account["spec"]["allowedNamespaces"],
        serde_json::json!({"selector": {}})
    );
    assert_eq!(account["spec"]["credentialsRef"]["namespace"], "secrets");
    assert!(account["spec"].get("limits").is_none());
    assert!(account["spec"].get("endpoint").is_none());
    // Off by default.
    assert!(render(None).of_kind("ClusterKooDriveAccount").is_empty());
    run_ok(
        Command::new(tool("helm"))
            .args(["lint", "--strict"])
            .arg(chart_dir())
            .arg("--values")
            .arg(values_file(CLUSTER_ACCOUNT).path()),
    );
}

#[test]
fn a_cluster_account_without_a_secret_or_a_namespace_rule_is_refused() {
    let base = [
        "clusterAccount.create=true",
        "clusterAccount.credentialsSecret.name=platform-credentials",
    ];
    let cases: [(Vec<&str>, &str); 4] = [
        (
            vec![
                "clusterAccount.create=true",
                "clusterAccount.allowedNamespaces.allNamespaces=true",
            ],
            "needs clusterAccount.credentialsSecret.name",
        ),
        (base.to_vec(), "needs clusterAccount.allowedNamespaces"),
        (
            [
                &base[..],
                &[
                    "clusterAccount.allowedNamespaces.allNamespaces=true",
                    "watchNamespace=team-a",
                ],
            ]
            .concat(),
            "needs the operator to watch every namespace",
        ),
        (
            [
                &base[..],
                &["clusterAccount.allowedNamespaces.names={Not_A_Namespace}"],
            ]
            .concat(),
            "names",
        ),
    ];
    for (set, expected) in cases {
        let output = helm_template(None, &set);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{set:?} should be refused");
        assert!(
            stderr.contains(expected),
            "refusing {set:?} should mention {expected:?}, got:\n{stderr}"
        );
    }
}

#[test]
fn account_settings_reach_the_operator() {
    let env_of_render = |rendered: &Rendered| -> BTreeMap<String, EnvVar> {
        operator_container(&rendered.deployment())
            .env
            .unwrap_or_default()
            .into_iter()
            .map(|v| (v.name.clone(), v))
            .collect()
    };
    let default = render(None);
    let args = parse_run_args_from_env(&env_of_render(&default), "default values");
    // ClusterKooDriveAccount Secrets live in the release namespace unless told otherwise.
    assert_eq!(args.cluster_account_secret_namespace, RELEASE_NAMESPACE);
    assert_eq!(args.account_check_interval, Duration::from_secs(6 * 3600));
    let tuned = render_with(
        None,
        &[
            "clusterAccounts.secretNamespace=koodrive-secrets",
            "koodrive.accountCheckInterval=30m",
        ],
    );
    let args = parse_run_args_from_env(&env_of_render(&tuned), "tuned");
    assert_eq!(args.cluster_account_secret_namespace, "koodrive-secrets");
    assert_eq!(args.account_check_interval, Duration::from_secs(30 * 60));
}

#[test]
fn argocd_health_check_reads_account_statuses_too() {
    let health_lua = chart_dir().join("argocd/health.lua");
    let account = |generation: i64, status: Value| {
        serde_json::json!({
            "apiVersion": "koodrive.io/v1alpha1",
            "kind": "ClusterKooDriveAccount",
            "metadata": {"name": "company", "generation": generation},
            "spec": {"credentialsRef": {"name": "platform-credentials"},
                     "allowedNamespaces": {"names": ["team-a"]}},
            "status": status,
        })
    };
    let condition = |type_: &str, status: &str, reason: &str, message: &str| {
        serde_json::json!({"type": type_, "status": status, "reason": reason, "message": message,
                           "observedGeneration": 2, "lastTransitionTime": "2026-11-29T10:00:00Z"})
    };
    let ready = account(
        2,
        serde_json::json!({"observedGeneration": 2, "conditions": [
            condition("Ready", "True", "CredentialsVerified", "KooDrive accepted the credentials"),
            condition("Reconciling", "False", "Idle", "No work in progress"),
            condition("Stalled", "False", "NotStalled", ""),
        ]}),
    );
    assert_eq!(
        argo_health(&health_lua, &ready),
        (
            "Healthy".to_string(),
            "KooDrive accepted the credentials".to_string()
        )
    );
    let refused = account(
        2,
        serde_json::json!({"observedGeneration": 2, "conditions": [
            condition("Ready", "False", "CredentialsInvalid", "KooDrive refused the credentials"),
            condition("Reconciling", "False", "Idle", "Waiting for a human"),
            condition("Stalled", "True", "CredentialsInvalid", "KooDrive refused the credentials"),
        ]}),
    );
    assert_eq!(argo_health(&health_lua, &refused).0, "Degraded");
    // Checked for an older generation: the verdict says nothing about the current spec.
    let stale = account(3, ready["status"].clone());
    assert_eq!(argo_health(&health_lua, &stale).0, "Progressing");
}
