//! The custom resources (`koodrive.io/v1alpha1`): plain data, no behaviour. `UserBatch` is
//! here; the accounts a UserBatch may use instead of its own credentials Secret,
//! `KooDriveAccount` and `ClusterKooDriveAccount`, are in [`account`].
//!
//! These types are the single source of the CRDs: `koodrive-operator crd` renders them, and
//! the committed `crds/*.yaml` are checked against that output by a test. Schema annotations
//! here are what the API server enforces at `kubectl apply` time.

pub mod account;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of every resource this operator owns.
pub const GROUP: &str = "koodrive.io";
/// Annotation whose new value re-sends users whose submission is in doubt (and DELETEs whose
/// outcome is in doubt).
pub const RESUBMIT_IN_DOUBT_ANNOTATION: &str = "koodrive.io/resubmit-in-doubt";
/// Annotation whose new value re-sends the users KooDrive reported as failed, once.
pub const RETRY_FAILED_ANNOTATION: &str = "koodrive.io/retry-failed";
/// Annotation confirming a change that would delete more users than `--max-deletions`: its
/// value must be the number of users that change deletes. The operator removes it once it
/// has acted on it, so a confirmation is never reused for a later change.
pub const CONFIRM_DELETIONS_ANNOTATION: &str = "koodrive.io/confirm-deletions";
/// Annotation (`"true"`) releasing a deleted UserBatch's finalizer without deleting its users
/// in KooDrive: the way out when KooDrive cannot be reached, or nobody wants them deleted.
pub const ORPHAN_ON_DELETE_ANNOTATION: &str = "koodrive.io/orphan-on-delete";
/// The finalizer a UserBatch with `deletionPolicy: Delete` carries, so its users are deleted
/// in KooDrive before the UserBatch goes.
pub const FINALIZER: &str = "koodrive.io/delete-users";
/// Default key names inside the credentials Secret.
pub const DEFAULT_ACCESS_KEY_KEY: &str = "accessKey";
pub const DEFAULT_SECRET_KEY_KEY: &str = "secretKey";
pub const DEFAULT_USER_ID_KEY: &str = "userId";

// Bounds the schema enforces. Public so the controller can truncate what it writes to status
// instead of having the API server reject the whole status update.
//
// They are chosen so that every UserBatch the API server accepts still fits in etcd (an
// object may be at most 1.5 MiB) with its largest possible status, and so that a UserBatch
// of MAX_USERS ordinary users can be applied with client-side `kubectl apply`, whose
// `last-applied-configuration` annotation must stay under the 256 KiB annotation limit.
// `tests/it/size_limits.rs` builds the largest object these bounds allow and checks it.

/// Most users one UserBatch may list: KooDrive's per-request limit. More users go into
/// several UserBatches.
pub const MAX_USERS: usize = 1000;
/// Most characters the users' free-text fields (names, e-mail, inline password and the
/// `passwordSecretRef` name and key) may hold together, on average 100 per user at
/// [`MAX_USERS`]. An ordinary user needs 40 to 80. The per-field limits alone would let a
/// UserBatch outgrow etcd's object limit; this total keeps the largest spec within budget.
pub const MAX_USER_TEXT_CHARS: usize = 100_000;
/// Most entries in `status.tasks`: one per request sent. At the default batch size a full
/// UserBatch needs one; a full UserBatch sent 16 users at a time still fits.
pub const MAX_TASKS: usize = 64;
/// Most phones one task record carries (KooDrive's per-request limit).
pub const MAX_PHONES_PER_TASK: usize = 1000;
/// Most phones all task records carry together: every user once, and once more after a
/// resubmission.
pub const MAX_TASK_PHONES: usize = 2 * MAX_USERS;
/// Most entries in `status.failures`.
pub const MAX_FAILURES: usize = 100;
/// Most entries in `status.conditions`.
pub const MAX_CONDITIONS: usize = 10;
/// Longest `status.message` and task message, and the longest condition message the
/// controller writes today. KooDrive's own messages are a few words.
pub const MAX_MESSAGE_LEN: usize = 256;
/// Longest condition message the schema accepts (room for a list of in-doubt trace IDs).
pub const MAX_CONDITION_MESSAGE_LEN: usize = 1024;
/// Longest failure reason kept per user.
pub const MAX_REASON_LEN: usize = 128;
/// Longest KooDrive code, task ID or trace ID.
pub const MAX_ID_LEN: usize = 64;
/// Longest phone in a failure record (KooDrive's formatting, e.g. with a country prefix).
pub const MAX_FAILURE_PHONE_LEN: usize = 32;
/// Hex characters of one user's fingerprint in `TaskRecord::users_digest`.
pub const USER_DIGEST_HEX_LEN: usize = 8;
/// Budget kept free in status for one record per spec user (issue #12): the phone, the
/// KooDrive user ID (at most this long, digits or other ASCII) and a state word.
pub const MAX_USER_ID_LEN: usize = 64;
/// Longest per-user state word (`Created`, `DeletePending`, …) the status budget allows for.
pub const MAX_USER_STATE_LEN: usize = 16;
/// Longest phone as the spec allows it (a `+` and 20 digits).
pub const MAX_PHONE_LEN: usize = 21;

/// Phone numbers: digits with an optional leading `+`, 5 to 20 digits.
pub const PHONE_PATTERN: &str = r"^\+?[0-9]{5,20}$";
/// Deliberately loose: one `@`, no whitespace, a dot in the domain. KooDrive decides the rest.
pub const EMAIL_PATTERN: &str = r"^[^@\s]+@[^@\s]+\.[^@\s]+$";
/// An object name in the UserBatch's namespace (RFC 1123 subdomain).
pub const OBJECT_NAME_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// The operator's own trace IDs: letters and digits.
pub const TRACE_ID_PATTERN: &str = "^[0-9A-Za-z]+$";
/// KooDrive user IDs the operator records (and may delete): what `DELETE users/{userId}`
/// can carry in a path segment as it is.
pub const USER_ID_PATTERN: &str = "^[0-9A-Za-z_-]+$";
/// User fingerprints: lower-case hex.
pub const USERS_DIGEST_PATTERN: &str = "^[0-9a-f]*$";
/// A key in a Secret's `data`.
pub const SECRET_KEY_PATTERN: &str = r"^[-._a-zA-Z0-9]+$";

/// The desired state of a UserBatch: whose credentials to use and which people to provision.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
// Clippy reads the repeated `type_ = …` of separate `printcolumn(…)` entries as duplicates.
#[allow(clippy::duplicated_attributes)]
#[kube(
    group = "koodrive.io",
    version = "v1alpha1",
    kind = "UserBatch",
    plural = "userbatches",
    shortname = "ub",
    category = "koodrive",
    namespaced,
    status = "UserBatchStatus",
    doc = "A list of people to provision into Huawei Cloud KooDrive, and what happened when the operator did.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    // The API server's JSONPath has no length(); the operator records the count in the summary.
    printcolumn(
        name = "Users",
        type_ = "integer",
        json_path = ".status.summary.requested",
        description = "Users listed in spec.users"
    ),
    printcolumn(name = "Submitted", type_ = "integer", json_path = ".status.summary.submitted"),
    printcolumn(name = "Succeeded", type_ = "integer", json_path = ".status.summary.succeeded"),
    printcolumn(name = "Failed", type_ = "integer", json_path = ".status.summary.failed"),
    printcolumn(
        name = "Task",
        type_ = "string",
        json_path = ".status.taskId",
        description = "The latest KooDrive task ID"
    ),
    printcolumn(
        name = "Code",
        type_ = "string",
        json_path = ".status.code",
        description = "The latest KooDrive response code"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    printcolumn(
        name = "Message",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].message",
        priority = 1
    )
)]
#[x_kube(validation = Rule::new(CREDENTIALS_REQUIRED_RULE).message(CREDENTIALS_REQUIRED_RULE_MESSAGE).field_path(".credentialsRef").reason(Reason::FieldValueRequired))]
#[x_kube(validation = Rule::new(CREDENTIALS_EXCLUSIVE_RULE).message(CREDENTIALS_EXCLUSIVE_RULE_MESSAGE).field_path(".accountRef").reason(Reason::FieldValueForbidden))]
#[x_kube(validation = Rule::new(ENDPOINT_WITH_ACCOUNT_RULE).message(ENDPOINT_WITH_ACCOUNT_RULE_MESSAGE).field_path(".endpoint").reason(Reason::FieldValueForbidden))]
#[serde(rename_all = "camelCase")]
pub struct UserBatchSpec {
    /// The Secret, in this UserBatch's namespace, holding the KooDrive AK/SK and user ID.
    /// Exactly one of `credentialsRef` and `accountRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_ref: Option<CredentialsRef>,
    /// The account whose endpoint and credentials to use: a `KooDriveAccount` in this
    /// UserBatch's namespace, or a `ClusterKooDriveAccount` that allows this namespace. The
    /// platform team manages accounts; whoever writes UserBatches never sees the AK/SK.
    /// Exactly one of `credentialsRef` and `accountRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_ref: Option<AccountRef>,
    /// KooDrive endpoint, e.g. `https://intl.myhuaweicloud-koodrive.com`. Defaults to the
    /// operator's `--default-endpoint`. Must be `https://`; `http://` is accepted only for
    /// loopback hosts (`localhost`, `127.0.0.1`, `[::1]`), and the operator additionally
    /// refuses it unless started with `--allow-insecure-endpoints`. Only with
    /// `credentialsRef`: with `accountRef` the account's endpoint is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new(ENDPOINT_RULE).message(ENDPOINT_RULE_MESSAGE))]
    pub endpoint: Option<String>,
    /// The users to provision, unique by phone (1 to 1000; provision more with several
    /// UserBatches). Names, e-mails and password fields hold at most 100000 characters in
    /// all.
    #[schemars(length(min = 1, max = MAX_USERS))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["phone".into()]))]
    #[x_kube(validation = Rule::new(USERS_TEXT_RULE).message(USERS_TEXT_RULE_MESSAGE))]
    pub users: Vec<User>,
    /// What the operator does when KooDrive's answer to a create request is ambiguous (a
    /// timeout, a 5xx, a dropped connection — KooDrive may or may not have created the
    /// task). `Stall` (default): nothing is resent until a human annotates
    /// `koodrive.io/resubmit-in-doubt`. `Resubmit`: the operator resends those users once,
    /// after a delay, relying on KooDrive skipping phones that are already registered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_doubt_policy: Option<InDoubtPolicy>,
    /// `true` pauses this UserBatch: the operator makes no KooDrive call for it (nothing is
    /// sent, polled or deleted) until it is `false` again; nothing is lost meanwhile. The
    /// Reconciling condition's reason is then `Suspended`, and so is Ready's while anything
    /// is left to do (Ready stays `True` for a UserBatch that was done). Default `false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspend: Option<bool>,
    /// `Orphan` (default) or `Delete`: see [`DeletionPolicy`] (the schema shows its text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_policy: Option<DeletionPolicy>,
}

/// What happens in KooDrive to the users this UserBatch created when they are removed from
/// `users`, or when the UserBatch is deleted (Crossplane's vocabulary). `Orphan` (default):
/// they stay in KooDrive. `Delete`: they are deleted in KooDrive (with their files:
/// irreversible), each at most once, and the UserBatch carries the finalizer
/// `koodrive.io/delete-users` until they are. Only users this UserBatch created are ever
/// deleted (it holds their KooDrive user ID in `status.users`), never ones KooDrive reported as
/// already registered. A change deleting more than the operator's `--max-deletions` users
/// (default 10) deletes nothing until annotated `koodrive.io/confirm-deletions=<count>`;
/// `koodrive.io/orphan-on-delete=true` lets a deleted UserBatch go without deleting anyone.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum DeletionPolicy {
    /// Users removed from the spec, and all users when the UserBatch is deleted, stay in
    /// KooDrive.
    #[default]
    Orphan,
    /// Users this UserBatch created are deleted in KooDrive when removed from the spec, and
    /// all of them when the UserBatch is deleted.
    Delete,
}

/// What the operator does when KooDrive's answer to a create request is ambiguous (a
/// timeout, a 5xx, a dropped connection — KooDrive may or may not have created the task).
/// `Stall` (default): nothing is resent until a human annotates
/// `koodrive.io/resubmit-in-doubt`. `Resubmit`: the operator resends those users once, after
/// a delay, relying on KooDrive skipping phones that are already registered.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum InDoubtPolicy {
    /// Keep the in-doubt users unsent until a human checks with KooDrive.
    #[default]
    Stall,
    /// Resend the in-doubt users once, after a delay; KooDrive skips already-registered
    /// phones, so a user created by the first request is reported as skipped.
    Resubmit,
}

/// CEL rule for `spec.endpoint`: `https://` and a host, or plain `http://` to a loopback host
/// only (followed by the end, a port or a path, so `http://localhost.example` does not pass).
/// A CEL rule rather than a `pattern` so a violation reads as a sentence; string functions
/// rather than `matches()` because a regex is recompiled on every evaluation.
pub const ENDPOINT_RULE: &str = concat!(
    "!self.contains(' ') && (",
    "(self.startsWith('https://') && size(self) > 8 && !(self.charAt(8) in ['/', ':', '?', '#', '@']))",
    " || self == 'http://localhost' || self.startsWith('http://localhost:') || self.startsWith('http://localhost/')",
    " || self == 'http://127.0.0.1' || self.startsWith('http://127.0.0.1:') || self.startsWith('http://127.0.0.1/')",
    " || self == 'http://[::1]' || self.startsWith('http://[::1]:') || self.startsWith('http://[::1]/')",
    ")"
);
/// What a user reads when [`ENDPOINT_RULE`] fails.
pub const ENDPOINT_RULE_MESSAGE: &str =
    "endpoint must be an https:// URL (http:// is accepted only for localhost, 127.0.0.1 or [::1])";
/// CEL rule bounding the users' free text to [`MAX_USER_TEXT_CHARS`] characters in all, so
/// the largest spec leaves room in etcd for the largest status.
pub const USERS_TEXT_RULE: &str = concat!(
    "self.map(u, size(u.firstname)",
    " + (has(u.surname) ? size(u.surname) : 0)",
    " + (has(u.email) ? size(u.email) : 0)",
    " + (has(u.password) ? size(u.password) : 0)",
    " + (has(u.passwordSecretRef) ? size(u.passwordSecretRef.name) + size(u.passwordSecretRef.key) : 0)",
    ").sum() <= 100000"
);
/// What a user reads when [`USERS_TEXT_RULE`] fails.
pub const USERS_TEXT_RULE_MESSAGE: &str = "the users' names, e-mails and password fields may hold at most 100000 characters in all (100 per user on average at 1000 users): split the users over several UserBatches";
// A UserBatch names its credentials exactly one way, its own Secret or an account: two rules,
// so each failure is reported on the field to fix, as the API server reports a required or a
// forbidden field.
/// CEL rule: credentials are named (`spec.credentialsRef` is required unless
/// `spec.accountRef` is set).
pub const CREDENTIALS_REQUIRED_RULE: &str = "has(self.credentialsRef) || has(self.accountRef)";
/// What a user reads when [`CREDENTIALS_REQUIRED_RULE`] fails.
pub const CREDENTIALS_REQUIRED_RULE_MESSAGE: &str = "set credentialsRef (a Secret in this namespace) or accountRef (a KooDriveAccount or ClusterKooDriveAccount)";
/// CEL rule: credentials are named once.
pub const CREDENTIALS_EXCLUSIVE_RULE: &str = "!has(self.credentialsRef) || !has(self.accountRef)";
/// What a user reads when [`CREDENTIALS_EXCLUSIVE_RULE`] fails.
pub const CREDENTIALS_EXCLUSIVE_RULE_MESSAGE: &str =
    "credentialsRef and accountRef are mutually exclusive: set exactly one";
/// CEL rule: with an account, the account decides the endpoint.
pub const ENDPOINT_WITH_ACCOUNT_RULE: &str = "!has(self.endpoint) || !has(self.accountRef)";
/// What a user reads when [`ENDPOINT_WITH_ACCOUNT_RULE`] fails.
pub const ENDPOINT_WITH_ACCOUNT_RULE_MESSAGE: &str = "endpoint cannot be set together with accountRef: the account's spec.endpoint decides where requests go";
/// CEL rule making a user's two password sources mutually exclusive.
pub const PASSWORD_EXCLUSIVE_RULE: &str = "!(has(self.password) && has(self.passwordSecretRef))";
/// What a user reads when [`PASSWORD_EXCLUSIVE_RULE`] fails.
pub const PASSWORD_EXCLUSIVE_MESSAGE: &str = "password and passwordSecretRef are mutually exclusive: set at most one (passwordSecretRef is preferred)";

/// Reference to the credentials Secret. Key names can be overridden for Secrets managed by
/// other tools (External Secrets, Sealed Secrets, …).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253), pattern(OBJECT_NAME_PATTERN))]
    pub name: String,
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

/// The account a UserBatch uses (`spec.accountRef`).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct AccountRef {
    /// `KooDriveAccount` (in the UserBatch's namespace) or `ClusterKooDriveAccount`.
    pub kind: AccountKind,
    /// Name of the account.
    #[schemars(length(min = 1, max = 253), pattern(OBJECT_NAME_PATTERN))]
    pub name: String,
}

/// The two kinds of account.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum AccountKind {
    /// Namespaced: usable by UserBatches in its own namespace.
    KooDriveAccount,
    /// Cluster-scoped: usable by UserBatches in the namespaces it allows.
    ClusterKooDriveAccount,
}

impl AccountKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            AccountKind::KooDriveAccount => "KooDriveAccount",
            AccountKind::ClusterKooDriveAccount => "ClusterKooDriveAccount",
        }
    }
}

impl std::fmt::Display for AccountKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One person to provision. `phone` is the user's identity within the batch.
#[derive(KubeSchema, Deserialize, Serialize, Clone, PartialEq)]
#[x_kube(validation = Rule::new(PASSWORD_EXCLUSIVE_RULE).message(PASSWORD_EXCLUSIVE_MESSAGE))]
#[serde(rename_all = "camelCase")]
pub struct User {
    /// Given name (required).
    #[schemars(length(min = 1, max = 128))]
    pub firstname: String,
    /// Family name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub surname: Option<String>,
    /// Mobile number, the user's identity within the batch: digits with an optional leading
    /// `+`, 5 to 20 digits, e.g. `"8613800000001"` (quote it in YAML).
    #[schemars(length(min = 5, max = 21), pattern(PHONE_PATTERN))]
    pub phone: String,
    /// E-mail address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 3, max = 254), pattern(EMAIL_PATTERN))]
    pub email: Option<String>,
    /// Initial password, inline. Discouraged: prefer `passwordSecretRef`. Mutually exclusive
    /// with `passwordSecretRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub password: Option<String>,
    /// Initial password read from a Secret in this UserBatch's namespace. Mutually exclusive
    /// with `password`.
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
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253), pattern(OBJECT_NAME_PATTERN))]
    pub name: String,
    /// Key within the Secret.
    #[schemars(length(min = 1, max = 253), pattern(SECRET_KEY_PATTERN))]
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
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserBatchStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// The latest KooDrive task ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_ID_LEN))]
    pub task_id: Option<String>,
    /// The latest KooDrive response code, as a string (`"0"` is success).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_ID_LEN))]
    pub code: Option<String>,
    /// The latest KooDrive message, or the operator's own error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_MESSAGE_LEN))]
    pub message: Option<String>,
    /// One entry per request sent to KooDrive, oldest first. An entry without `taskId` is a
    /// request whose outcome is not recorded yet: the at-most-once intent record.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_TASKS))]
    #[x_kube(validation = Rule::new(TASK_PHONES_RULE).message(TASK_PHONES_RULE_MESSAGE))]
    pub tasks: Vec<TaskRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<Summary>,
    /// Users whose registration failed, at most 100.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_FAILURES))]
    pub failures: Vec<UserFailure>,
    /// `Ready`, `Submitted`, `Reconciling`, `Stalled`, following Kubernetes API conventions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The `koodrive.io/resubmit-in-doubt` value last acted on (values longer than 1024
    /// characters are remembered as `sha256:<hex>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_ANNOTATION_VALUE_LEN))]
    pub resubmitted_in_doubt: Option<String>,
    /// The last permanent refusal and the inputs it was seen with: nothing is resent until
    /// those inputs change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stalled_inputs: Option<StalledInputs>,
    /// What KooDrive reported for each user once their task finished, by phone: the
    /// KooDrive user ID of each user this UserBatch created, and whether KooDrive created,
    /// skipped (already registered) or failed them. Users removed from the spec keep their
    /// record only while they are being deleted (`deletionPolicy: Delete`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_USERS))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["phone".into()]))]
    pub users: Vec<UserRecord>,
    /// The `koodrive.io/retry-failed` value last acted on (values longer than 1024 characters
    /// are remembered as `sha256:<hex>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_ANNOTATION_VALUE_LEN))]
    pub retried_failed: Option<String>,
    /// How many users a change would delete, when that is more than the operator's
    /// `--max-deletions`: nothing is deleted until `koodrive.io/confirm-deletions` is set to
    /// this number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub deletions_to_confirm: Option<i64>,
}

/// One user's outcome in KooDrive, as far as this UserBatch knows it.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserRecord {
    /// The user's phone, as in `spec.users`.
    #[schemars(length(min = 1, max = MAX_PHONE_LEN))]
    pub phone: String,
    /// The KooDrive user ID from the task's results (absent when KooDrive reported none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = MAX_USER_ID_LEN), pattern(USER_ID_PATTERN))]
    pub user_id: Option<String>,
    pub state: UserState,
}

/// Where one user stands in KooDrive. `Created`: KooDrive created it for this UserBatch (the
/// only state from which a user is ever deleted). `Skipped`: already registered, not created
/// by this UserBatch, never deleted by it. `Failed`: not registered (see `failures`;
/// `koodrive.io/retry-failed` sends it again). `Unknown`: KooDrive's results did not say;
/// never resent, never deleted. `DeletePending`: to be deleted, DELETE not sent yet.
/// `Deleting`: a DELETE was sent and its answer is not recorded; checked with `GET
/// users/{userId}` before anything is resent.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum UserState {
    /// KooDrive created the user for this UserBatch: the only state from which a user is
    /// ever deleted (`deletionPolicy: Delete`).
    Created,
    /// KooDrive reported the user as already registered: not created by this UserBatch, so
    /// never deleted by it.
    Skipped,
    /// KooDrive could not register the user (see `status.failures`);
    /// `koodrive.io/retry-failed` sends it again.
    Failed,
    /// KooDrive's results did not say what happened to this user (it was not listed, or
    /// could not be told apart from skipped users): never resent, never deleted.
    Unknown,
    /// To be deleted in KooDrive; the DELETE has not been sent.
    DeletePending,
    /// A DELETE was sent (or was about to be) and its answer is not recorded. Found in this
    /// state, the user is checked with `GET users/{userId}` before anything is resent.
    Deleting,
}

/// A permanent refusal (rejected request, refused credentials) and a fingerprint of what it
/// depended on.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StalledInputs {
    /// The Ready condition's reason when it happened (`KooDriveRejected`, `CredentialsInvalid`).
    #[schemars(length(min = 1, max = MAX_ID_LEN))]
    pub reason: String,
    /// A digest of the generation, the endpoint and the referenced Secrets' versions.
    #[schemars(length(min = 1, max = MAX_ID_LEN))]
    pub digest: String,
}

/// Longest annotation value the operator remembers having acted on.
pub const MAX_ANNOTATION_VALUE_LEN: usize = 1024;

/// CEL rule bounding the phones of all task records together to [`MAX_TASK_PHONES`].
pub const TASK_PHONES_RULE: &str = "self.map(t, size(t.phones)).sum() <= 2000";
/// What the controller's status write reads when [`TASK_PHONES_RULE`] fails.
pub const TASK_PHONES_RULE_MESSAGE: &str = "the task records may carry at most 2000 phones in all";
/// CEL rule tying a task's user fingerprints to its phones (8 hex characters each).
pub const USERS_DIGEST_RULE: &str =
    "!has(self.usersDigest) || size(self.usersDigest) <= 8 * size(self.phones)";
/// What the controller's status write reads when [`USERS_DIGEST_RULE`] fails.
pub const USERS_DIGEST_RULE_MESSAGE: &str = "usersDigest holds at most 8 characters per phone";

/// `metav1.Condition`'s schema with the bounds its kubebuilder markers give it upstream
/// (k8s-openapi's generated schema has none, which would leave the CRD unbounded), as a
/// list-map keyed by `type`.
fn conditions_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    conditions_schema_described(
        "Ready, Submitted, Reconciling and Stalled, following Kubernetes API conventions.",
    )
}

/// [`conditions_schema`] with its own description (the accounts carry other conditions).
pub(crate) fn conditions_schema_described(description: &str) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "description": description,
        "maxItems": MAX_CONDITIONS,
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
        "items": {
            "type": "object",
            "required": ["type", "status", "lastTransitionTime", "reason", "message"],
            "properties": {
                "type": {
                    "type": "string",
                    "description": "Type of condition in CamelCase.",
                    "maxLength": 316,
                    "pattern": r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
                },
                "status": {
                    "type": "string",
                    "description": "True, False or Unknown.",
                    "enum": ["True", "False", "Unknown"]
                },
                "observedGeneration": {
                    "type": "integer",
                    "format": "int64",
                    "minimum": 0,
                    "description": "The metadata.generation this condition was set for."
                },
                "lastTransitionTime": {
                    "type": "string",
                    "format": "date-time",
                    "maxLength": 64,
                    "description": "When the condition last changed status."
                },
                "reason": {
                    "type": "string",
                    "description": "Programmatic identifier for the condition's last transition, in CamelCase.",
                    "minLength": 1,
                    "maxLength": 1024,
                    "pattern": "^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
                },
                "message": {
                    "type": "string",
                    "description": "Human-readable details about the last transition.",
                    "maxLength": MAX_CONDITION_MESSAGE_LEN
                }
            }
        }
    })
}

/// One request sent to KooDrive.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new(USERS_DIGEST_RULE).message(USERS_DIGEST_RULE_MESSAGE))]
#[serde(rename_all = "camelCase")]
pub struct TaskRecord {
    /// KooDrive's task ID; absent while the request's outcome is unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_ID_LEN))]
    pub task_id: Option<String>,
    /// KooDrive's response code, as a string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_ID_LEN))]
    pub code: Option<String>,
    /// KooDrive's response message, or the operator's own error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_MESSAGE_LEN))]
    pub message: Option<String>,
    /// The `X-Traceid` sent with the request (58 characters).
    #[schemars(length(min = 1, max = MAX_ID_LEN), pattern(TRACE_ID_PATTERN))]
    pub trace_id: String,
    /// When the request was sent.
    #[schemars(length(max = 64))]
    pub submitted_at: Time,
    /// Phones of the users this request carried. A user sent again later (after
    /// `koodrive.io/retry-failed`, or after being deleted and added back) leaves this list:
    /// a phone listed here is never sent again.
    #[schemars(length(max = MAX_PHONES_PER_TASK), inner(length(max = 21)))]
    pub phones: Vec<String>,
    /// The `traceId` of the in-doubt request whose users this request resends
    /// (`inDoubtPolicy: Resubmit`); such a request is not resent again automatically.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_ID_LEN))]
    pub resubmit_of: Option<String>,
    /// Short fingerprints of the users' non-secret fields as sent (8 hex characters per
    /// phone, in `phones` order), to notice later edits. Holds nothing about passwords.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 8000), pattern(USERS_DIGEST_PATTERN))]
    pub users_digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<TaskResult>,
    /// The task's per-user results are recorded in `status.users`. (Tasks finished before
    /// the operator recorded users lack it; their users are counted from `result`.)
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub users_recorded: bool,
}

/// Per-task counts reported by `batchRegister/get`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskResult {
    #[schemars(range(min = 0))]
    pub total: i64,
    #[schemars(range(min = 0))]
    pub succeeded: i64,
    #[schemars(range(min = 0))]
    pub failed: i64,
    #[schemars(range(min = 0))]
    pub skipped: i64,
    /// Whether every user of the task has a result.
    pub finished: bool,
}

/// Counts over the whole UserBatch.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// Users listed in `spec.users`.
    #[schemars(range(min = 0))]
    pub requested: i64,
    /// Users sent to KooDrive.
    #[schemars(range(min = 0))]
    pub submitted: i64,
    #[schemars(range(min = 0))]
    pub succeeded: i64,
    #[schemars(range(min = 0))]
    pub failed: i64,
    /// Users KooDrive skipped (most likely because they already existed).
    #[schemars(range(min = 0))]
    pub skipped: i64,
}

/// A user whose registration failed, as KooDrive reported it.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserFailure {
    /// The phone as KooDrive reported it; KooDrive's formatting is not ours to bound tightly.
    #[schemars(length(max = MAX_FAILURE_PHONE_LEN))]
    pub phone: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_ID_LEN))]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_REASON_LEN))]
    pub reason: Option<String>,
}

/// The `UserBatch` CustomResourceDefinition, as generated from these types.
pub fn crd() -> CustomResourceDefinition {
    UserBatch::crd()
}

/// The shell command that regenerates the committed copies of the CRDs.
pub const REGENERATE_CRD_COMMAND: &str = "for kind in userbatch koodriveaccount clusterkoodriveaccount; do cargo run -- crd --kind $kind > crds/$kind.yaml && cp crds/$kind.yaml charts/koodrive-operator/files/crds/$kind.yaml; done";

/// One of the operator's CRDs, by the name of its committed file (`crds/<name>.yaml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrdKind {
    Userbatch,
    Koodriveaccount,
    Clusterkoodriveaccount,
}

impl CrdKind {
    pub const ALL: [CrdKind; 3] = [
        CrdKind::Userbatch,
        CrdKind::Koodriveaccount,
        CrdKind::Clusterkoodriveaccount,
    ];

    /// The kind whose committed file is `crds/<stem>.yaml`.
    pub fn parse(stem: &str) -> Option<CrdKind> {
        CrdKind::ALL
            .into_iter()
            .find(|kind| kind.file_stem() == stem)
    }

    /// The committed file's name without `.yaml`.
    pub const fn file_stem(self) -> &'static str {
        match self {
            CrdKind::Userbatch => "userbatch",
            CrdKind::Koodriveaccount => "koodriveaccount",
            CrdKind::Clusterkoodriveaccount => "clusterkoodriveaccount",
        }
    }

    /// The custom resource's kind.
    pub const fn kind(self) -> &'static str {
        match self {
            CrdKind::Userbatch => "UserBatch",
            CrdKind::Koodriveaccount => "KooDriveAccount",
            CrdKind::Clusterkoodriveaccount => "ClusterKooDriveAccount",
        }
    }

    pub fn crd(self) -> CustomResourceDefinition {
        match self {
            CrdKind::Userbatch => UserBatch::crd(),
            CrdKind::Koodriveaccount => account::KooDriveAccount::crd(),
            CrdKind::Clusterkoodriveaccount => account::ClusterKooDriveAccount::crd(),
        }
    }

    /// The CRD as the YAML document committed in `crds/<name>.yaml` and the Helm chart.
    pub fn yaml(self) -> String {
        // Serialising a value built from our own types cannot fail at runtime short of a bug
        // in the serializer; a panic here is caught by the drift test long before a release.
        let body = serde_saphyr::to_string(&self.crd()).expect("the CRD serializes to YAML");
        let source = match self {
            CrdKind::Userbatch => "src/crd.rs",
            _ => "src/crd/account.rs",
        };
        format!(
            "# Generated from {source} by `koodrive-operator crd`: do not edit.\n\
             # Regenerate with: {REGENERATE_CRD_COMMAND}\n{body}"
        )
    }
}

/// The UserBatch CRD as the YAML document committed in `crds/userbatch.yaml` and the Helm
/// chart.
pub fn crd_yaml() -> String {
    CrdKind::Userbatch.yaml()
}

/// Every CRD, as one multi-document YAML stream (what `koodrive-operator crd` prints).
pub fn all_crds_yaml() -> String {
    CrdKind::ALL
        .iter()
        .map(|kind| kind.yaml())
        .collect::<Vec<_>>()
        .join("---\n")
}
