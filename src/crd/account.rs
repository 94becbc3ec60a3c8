//! The accounts (`koodrive.io/v1alpha1`): who may use a KooDrive backend, kept apart from what
//! to provision, as cert-manager's Issuer/ClusterIssuer and External Secrets'
//! SecretStore/ClusterSecretStore do.
//!
//! - `KooDriveAccount` (namespaced): an endpoint, a credentials Secret in its own namespace and
//!   request limits; UserBatches in the same namespace name it in `spec.accountRef`.
//! - `ClusterKooDriveAccount` (cluster-scoped): the same, with the Secret in the operator's
//!   namespace (or one named explicitly) and a list or label selector of the namespaces whose
//!   UserBatches may use it.
//!
//! The platform team writes accounts; tenants write UserBatches and never need the AK/SK.
//! Plain data: the behaviour is in `controller::accounts`.

use super::{
    CredentialsRef, ENDPOINT_RULE, ENDPOINT_RULE_MESSAGE, OBJECT_NAME_PATTERN, SECRET_KEY_PATTERN,
    conditions_schema_described,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A namespace name (RFC 1123 label).
pub const NAMESPACE_NAME_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// A label key: an optional DNS-subdomain prefix and `/`, then a name of at most 63
/// characters.
pub const LABEL_KEY_PATTERN: &str = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$";
/// A label value (may be empty).
pub const LABEL_VALUE_PATTERN: &str = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$";
/// Most namespaces an account may list by name.
pub const MAX_ALLOWED_NAMESPACES: usize = 256;
/// Most labels and expressions in a namespace selector, and values per expression.
pub const MAX_SELECTOR_TERMS: usize = 32;
/// Most requests per second an account may allow.
pub const MAX_REQUESTS_PER_SECOND: f64 = 1000.0;
/// Most requests in flight an account may allow.
pub const MAX_IN_FLIGHT: u32 = 64;

/// CEL rule: an account names the namespaces that may use it, by name or by label.
pub const ALLOWED_NAMESPACES_RULE: &str = "has(self.names) || has(self.selector)";
/// What a user reads when [`ALLOWED_NAMESPACES_RULE`] fails.
pub const ALLOWED_NAMESPACES_RULE_MESSAGE: &str = "name the namespaces that may use this account (names) or select them by label (selector; an empty selector {} selects every namespace)";
/// CEL rule: `In`/`NotIn` need values, `Exists`/`DoesNotExist` take none (as metav1's
/// LabelSelector validation requires).
pub const REQUIREMENT_VALUES_RULE: &str = "(self.operator == 'In' || self.operator == 'NotIn') == (has(self.values) && size(self.values) > 0)";
/// What a user reads when [`REQUIREMENT_VALUES_RULE`] fails.
pub const REQUIREMENT_VALUES_RULE_MESSAGE: &str =
    "values must be non-empty for In and NotIn, and empty for Exists and DoesNotExist";

/// A KooDrive backend for the UserBatches of one namespace.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[allow(clippy::duplicated_attributes)]
#[kube(
    group = "koodrive.io",
    version = "v1alpha1",
    kind = "KooDriveAccount",
    plural = "koodriveaccounts",
    shortname = "kda",
    category = "koodrive",
    namespaced,
    status = "AccountStatus",
    doc = "A KooDrive endpoint and the Secret holding its credentials, for the UserBatches of this namespace (spec.accountRef).",
    printcolumn(
        name = "Endpoint",
        type_ = "string",
        json_path = ".status.endpoint",
        description = "Where this account's requests go"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Message",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].message",
        priority = 1
    )
)]
#[serde(rename_all = "camelCase")]
pub struct KooDriveAccountSpec {
    /// KooDrive endpoint, e.g. `https://intl.myhuaweicloud-koodrive.com`. Defaults to the
    /// operator's `--default-endpoint`; any other must be among its `--allowed-endpoints`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new(ENDPOINT_RULE).message(ENDPOINT_RULE_MESSAGE))]
    pub endpoint: Option<String>,
    /// The Secret, in this account's namespace, holding the KooDrive AK/SK and user ID.
    pub credentials_ref: CredentialsRef,
    /// Limits on the requests sent with these credentials (KooDrive throttles per AK).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<AccountLimits>,
}

/// A KooDrive backend for the UserBatches of the namespaces it allows.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[allow(clippy::duplicated_attributes)]
#[kube(
    group = "koodrive.io",
    version = "v1alpha1",
    kind = "ClusterKooDriveAccount",
    plural = "clusterkoodriveaccounts",
    shortname = "ckda",
    category = "koodrive",
    status = "AccountStatus",
    doc = "A KooDrive endpoint and the Secret holding its credentials, for the UserBatches of the namespaces it allows (spec.accountRef).",
    printcolumn(
        name = "Endpoint",
        type_ = "string",
        json_path = ".status.endpoint",
        description = "Where this account's requests go"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Message",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].message",
        priority = 1
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterKooDriveAccountSpec {
    /// KooDrive endpoint, e.g. `https://intl.myhuaweicloud-koodrive.com`. Defaults to the
    /// operator's `--default-endpoint`; any other must be among its `--allowed-endpoints`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new(ENDPOINT_RULE).message(ENDPOINT_RULE_MESSAGE))]
    pub endpoint: Option<String>,
    /// The Secret holding the KooDrive AK/SK and user ID: in the operator's own namespace
    /// unless `namespace` names another.
    pub credentials_ref: ClusterCredentialsRef,
    /// Limits on the requests sent with these credentials (KooDrive throttles per AK).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<AccountLimits>,
    /// The namespaces whose UserBatches may use this account: those listed in `names` and
    /// those whose labels match `selector`. A UserBatch in any other namespace is Stalled
    /// with reason AccountNotAllowed, and nothing is sent for it.
    pub allowed_namespaces: AllowedNamespaces,
}

/// The credentials Secret of a `ClusterKooDriveAccount`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterCredentialsRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253), pattern(OBJECT_NAME_PATTERN))]
    pub name: String,
    /// Namespace of the Secret. Default: the operator's own namespace
    /// (`--cluster-account-secret-namespace`; the Helm release's namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), pattern(NAMESPACE_NAME_PATTERN))]
    pub namespace: Option<String>,
    /// Key holding the access key (AK / AppId). Default `accessKey`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), pattern(SECRET_KEY_PATTERN))]
    pub access_key_key: Option<String>,
    /// Key holding the secret key (SK / AppSecret). Default `secretKey`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), pattern(SECRET_KEY_PATTERN))]
    pub secret_key_key: Option<String>,
    /// Key holding the KooDrive user ID the credentials belong to. Default `userId`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), pattern(SECRET_KEY_PATTERN))]
    pub user_id_key: Option<String>,
}

impl ClusterCredentialsRef {
    /// The name and key names, as a same-namespace reference.
    pub fn credentials_ref(&self) -> CredentialsRef {
        CredentialsRef {
            name: self.name.clone(),
            access_key_key: self.access_key_key.clone(),
            secret_key_key: self.secret_key_key.clone(),
            user_id_key: self.user_id_key.clone(),
        }
    }
}

/// Limits on the KooDrive requests sent with one account's credentials. Unset values take
/// the operator's `--requests-per-second` and `--max-in-flight`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccountLimits {
    /// Most requests started per second (0.01 to 1000; below 1, one request every
    /// 1/requestsPerSecond seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.01, max = MAX_REQUESTS_PER_SECOND))]
    pub requests_per_second: Option<f64>,
    /// Most requests in flight at once (1 to 64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = MAX_IN_FLIGHT))]
    pub max_in_flight: Option<u32>,
}

/// Which namespaces may use a `ClusterKooDriveAccount`: listed by name, or selected by label,
/// or both (a namespace allowed by either may use it).
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[x_kube(validation = Rule::new(ALLOWED_NAMESPACES_RULE).message(ALLOWED_NAMESPACES_RULE_MESSAGE))]
#[serde(rename_all = "camelCase")]
pub struct AllowedNamespaces {
    /// Namespaces allowed by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = MAX_ALLOWED_NAMESPACES),
        inner(length(min = 1, max = 63), pattern(NAMESPACE_NAME_PATTERN))
    )]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub names: Option<Vec<String>>,
    /// Namespaces allowed by their labels, as a Kubernetes label selector (`matchLabels`,
    /// `matchExpressions`). `{}` selects every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<NamespaceSelector>,
}

/// A label selector (metav1.LabelSelector, with bounds).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceSelector {
    /// Labels a namespace must carry, with these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "match_labels_schema")]
    pub match_labels: BTreeMap<String, String>,
    /// Requirements on a namespace's labels; all must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_SELECTOR_TERMS))]
    pub match_expressions: Vec<SelectorRequirement>,
}

/// One requirement of a namespace selector.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[x_kube(validation = Rule::new(REQUIREMENT_VALUES_RULE).message(REQUIREMENT_VALUES_RULE_MESSAGE))]
#[serde(rename_all = "camelCase")]
pub struct SelectorRequirement {
    /// The label key.
    #[schemars(length(min = 1, max = 317), pattern(LABEL_KEY_PATTERN))]
    pub key: String,
    pub operator: SelectorOperator,
    /// The values for `In` and `NotIn`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = MAX_SELECTOR_TERMS),
        inner(length(max = 63), pattern(LABEL_VALUE_PATTERN))
    )]
    pub values: Vec<String>,
}

/// How a selector requirement compares a label.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SelectorOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

fn match_labels_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "description": "Labels a namespace must carry, with these values.",
        "maxProperties": MAX_SELECTOR_TERMS,
        "additionalProperties": {
            "type": "string",
            "maxLength": 63,
            "pattern": LABEL_VALUE_PATTERN
        }
    })
}

/// What the operator observed about an account. Written only by the operator.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccountStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub observed_generation: Option<i64>,
    /// Where this account's requests go: `spec.endpoint` or the operator's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub endpoint: Option<String>,
    /// `Ready` (the credentials were accepted by KooDrive), `Reconciling` and `Stalled`,
    /// following Kubernetes API conventions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "account_conditions_schema")]
    pub conditions: Vec<Condition>,
}

fn account_conditions_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    conditions_schema_described(
        "Ready (KooDrive accepted the credentials), Reconciling and Stalled, following Kubernetes API conventions.",
    )
}
