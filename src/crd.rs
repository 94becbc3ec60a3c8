//! The `UserBatch` custom resource (`koodrive.io/v1alpha1`): plain data, no behaviour.
//!
//! These types are the single source of the CRD: `koodrive-operator crd` renders them, and the
//! committed `crds/userbatch.yaml` is checked against that output by a test. Schema
//! annotations here are what the API server enforces at `kubectl apply` time.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of every resource this operator owns.
pub const GROUP: &str = "koodrive.io";
/// Annotation whose new value re-sends users whose submission is in doubt.
pub const RESUBMIT_IN_DOUBT_ANNOTATION: &str = "koodrive.io/resubmit-in-doubt";
/// Annotation whose new value re-sends users whose registration failed.
pub const RETRY_FAILED_ANNOTATION: &str = "koodrive.io/retry-failed";
/// Default key names inside the credentials Secret.
pub const DEFAULT_ACCESS_KEY_KEY: &str = "accessKey";
pub const DEFAULT_SECRET_KEY_KEY: &str = "secretKey";
pub const DEFAULT_USER_ID_KEY: &str = "userId";

/// A list of people to provision into KooDrive, and what happened when the operator did.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "koodrive.io",
    version = "v1alpha1",
    kind = "UserBatch",
    plural = "userbatches",
    shortname = "ub",
    category = "koodrive",
    namespaced,
    status = "UserBatchStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct UserBatchSpec {
    /// The Secret, in this UserBatch's namespace, holding the KooDrive AK/SK and user ID.
    pub credentials_ref: CredentialsRef,
    /// KooDrive endpoint, e.g. `https://intl.myhuaweicloud-koodrive.com`. Defaults to the
    /// operator's `--default-endpoint`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The users to provision, unique by phone.
    pub users: Vec<User>,
}

/// Reference to the credentials Secret. Key names can be overridden for Secrets managed by
/// other tools (External Secrets, Sealed Secrets, …).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsRef {
    /// Name of the Secret.
    pub name: String,
    /// Key holding the access key (AK / AppId). Default `accessKey`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_key: Option<String>,
    /// Key holding the secret key (SK / AppSecret). Default `secretKey`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_key: Option<String>,
    /// Key holding the KooDrive user ID the credentials belong to. Default `userId`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id_key: Option<String>,
}

/// One person to provision. `phone` is the user's identity within the batch.
#[derive(Deserialize, Serialize, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub firstname: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub surname: Option<String>,
    pub phone: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Initial password, inline. Discouraged: prefer `passwordSecretRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Initial password read from a Secret in this UserBatch's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,
}

// Hand-written so a password can never reach a log line through `{:?}`.
impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("firstname", &self.firstname)
            .field("surname", &self.surname)
            .field("phone", &self.phone)
            .field("email", &self.email)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("password_secret_ref", &self.password_secret_ref)
            .finish()
    }
}

/// A key in a Secret of the same namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct SecretKeyRef {
    pub name: String,
    pub key: String,
}

/// Where a UserBatch is in its life.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum Phase {
    /// Nothing sent yet.
    #[default]
    Pending,
    /// Some users are being, or still have to be, sent.
    Submitting,
    /// Every user was sent; results are not all in.
    Submitted,
    /// Every task finished and no user failed.
    Completed,
    /// The operator cannot progress without a human (rejection, failed users, in doubt).
    Failed,
}

/// What the operator observed and did. Written only by the operator.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserBatchStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// The latest KooDrive task ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    /// The latest KooDrive response code, as a string (`"0"` is success).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// The latest KooDrive message, or the operator's own error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// One entry per request sent to KooDrive, oldest first. An entry without `taskId` is a
    /// request whose outcome is not recorded yet: the at-most-once intent record.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<TaskRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<Summary>,
    /// Users whose registration failed, at most 100.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<UserFailure>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The `koodrive.io/resubmit-in-doubt` value last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resubmitted_in_doubt: Option<String>,
    /// The `koodrive.io/retry-failed` value last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retried_failed: Option<String>,
    /// `<reason>/<digest>`: the condition reason of the last permanent refusal and a digest of
    /// the inputs it was seen with (generation, endpoint, referenced Secrets' versions).
    /// Nothing is resent until those inputs change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stalled_inputs: Option<String>,
}

/// One request sent to KooDrive.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskRecord {
    /// KooDrive's task ID; absent while the request's outcome is unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The `X-Traceid` sent with the request (58 characters).
    pub trace_id: String,
    pub submitted_at: Time,
    /// Phones of the users this request carried.
    pub phones: Vec<String>,
    /// Digest of the non-secret fields of the users as sent, to notice later edits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users_digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<TaskResult>,
}

/// Per-task counts reported by `batchRegister/get`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskResult {
    pub total: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub skipped: i64,
    pub finished: bool,
}

/// Counts over the whole UserBatch.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub requested: i64,
    pub submitted: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub skipped: i64,
}

/// A user whose registration failed, as KooDrive reported it.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserFailure {
    pub phone: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}
