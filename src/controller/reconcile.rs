//! One reconcile of one UserBatch, the I/O half: read what the plan needs, perform the
//! plan's steps in the at-most-once order, write a status that tells the truth.
//!
//! Decisions live in [`super::plan`]; this module only sequences calls. The order that
//! matters, per request: wait for the guard and the rate limit → write the intent (with a
//! `resourceVersion` precondition) → send → record the answer on a fresh copy until it
//! sticks (the request is never repeated, only the bookkeeping).

use super::accounts::{AccountId, resolve::as_account_blocker};
use super::guard::{CredentialKey, Verdict as AuthVerdict};
use super::plan::{self, Edit, Failure, PlannedEvent, Transition};
use super::secrets::{SecretProblem, SecretRead, SecretReader};
use super::status::{self, Blocker, Verdict};
use super::{Context, Key, Meta, OVERDUE_POLL_INTERVAL, conditions};
use crate::crd::{
    CONFIRM_DELETIONS_ANNOTATION, CredentialsRef, FINALIZER, MAX_MESSAGE_LEN, User, UserBatch,
    UserBatchStatus, UserState,
};
use crate::metrics::ObjectState;
use crate::vocabulary::{ConditionType, Reason};
use backon::{BackoffBuilder, ExponentialBuilder};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use koodrive_client::{Credentials, ErrorClass};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

/// How soon a pass that made more work possible is followed by the next.
const FOLLOW_UP_DELAY: Duration = Duration::from_secs(1);

/// Why a reconcile did not finish; the error policy turns it into a per-object backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API request failed while {action}")]
    Kube {
        action: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("status changed concurrently while {action}; retrying with a fresh copy")]
    Conflict { action: &'static str },
    /// A problem the status already explains and that resolves by itself (KooDrive
    /// unavailable, a clock difference, RBAC being fixed): retried with backoff.
    #[error("{reason}: {message}")]
    Blocked {
        reason: Reason,
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("UserBatch has no namespace")]
    NoNamespace,
    #[error("the operator is stopping")]
    Stopping,
}

impl Error {
    /// A server-requested minimum delay (`Retry-After`), if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Blocked { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The `reason` label of `koodrive_operator_reconcile_errors_total`.
    pub fn metric_reason(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "KubeApi",
            Error::Conflict { .. } => "Conflict",
            Error::Blocked { reason, .. } => reason.as_str(),
            Error::NoNamespace => "NoNamespace",
            Error::Stopping => "Stopping",
        }
    }
}

fn kube_err(action: &'static str) -> impl FnOnce(kube::Error) -> Error {
    move |source| match &source {
        kube::Error::Api(status) if status.code == 409 => Error::Conflict { action },
        _ => Error::Kube { action, source },
    }
}

/// How a pass ended, for the `reconciles` metric.
enum Outcome {
    Done,
    Stalled,
    InDoubt,
}

pub async fn reconcile(meta: Arc<Meta>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let namespace = meta.namespace().ok_or(Error::NoNamespace)?;
    let key: Key = (namespace.clone(), meta.name_any());
    let span = tracing::info_span!("reconcile", userbatch = %format!("{}/{}", key.0, key.1));
    let reconciler = Reconciler {
        ctx: &ctx,
        api: Api::namespaced(ctx.client.clone(), &namespace),
        status_api: Api::namespaced(ctx.client.clone(), &namespace),
        key: key.clone(),
    };
    let result = reconciler.run().instrument(span).await;
    let label = match &result {
        Ok((_, Outcome::Done)) => "success",
        Ok((_, Outcome::Stalled)) => "stalled",
        Ok((_, Outcome::InDoubt)) => "in_doubt",
        Err(_) => "error",
    };
    ctx.metrics
        .reconciled(label, started.elapsed().as_secs_f64());
    if result.is_ok() {
        ctx.backoff.succeeded(&key);
    }
    result.map(|(action, _)| action)
}

/// Where a UserBatch's requests go, and with what.
struct Target {
    client: koodrive_client::Client,
    credentials: Credentials,
    key: CredentialKey,
    /// The credentials Secret when it is in the UserBatch's namespace, where a
    /// `passwordSecretRef` could name it.
    credentials_ref: Option<CredentialsRef>,
    /// The endpoint (and, with an account, the account and its Secret version), for the
    /// fingerprint of a permanent refusal.
    inputs: String,
}

struct Reconciler<'a> {
    ctx: &'a Context,
    api: Api<UserBatch>,
    /// `/status` reads and writes, which carry no spec (see [`StatusOnly`]).
    status_api: Api<StatusOnly>,
    key: Key,
}

/// A UserBatch as a write to `/status` needs it and a read of `/status` is used: identity,
/// `resourceVersion` (the write's precondition) and status, without the spec.
///
/// The API server takes nothing but the status from a `/status` write (everything else is
/// kept as stored), so sending the whole object, and decoding the whole object it answers
/// with, cost every status write of a 1000-user UserBatch an encoding and a decoding of its
/// ~100 KB spec: most of the operator's CPU and in-flight memory at 100 × 1000
/// (`benches/scale.rs`). The spec in hand is the one stored: any change to it changes the
/// `resourceVersion`, and the write would have failed with a conflict.
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug)]
struct StatusOnly {
    #[serde(rename = "apiVersion")]
    api_version: String,
    kind: String,
    metadata: kube::api::ObjectMeta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status: Option<UserBatchStatus>,
}

impl StatusOnly {
    /// `ub`'s identity with `status` (the spec is left out, and `ub`'s own status is not
    /// copied: for a 1000-user UserBatch it is as large as the spec).
    fn with_status(ub: &UserBatch, status: Option<UserBatchStatus>) -> StatusOnly {
        StatusOnly {
            api_version: UserBatch::api_version(&()).into_owned(),
            kind: UserBatch::kind(&()).into_owned(),
            metadata: ub.metadata.clone(),
            status,
        }
    }

    /// `ub`'s identity and status, moved out of `ub` (whose status is `None` until
    /// [`StatusOnly::store_into`] puts the stored one back; on a failed write the pass ends
    /// and `ub` with it).
    fn take_from(ub: &mut UserBatch) -> StatusOnly {
        let status = ub.status.take();
        Self::with_status(ub, status)
    }

    /// Takes what the API server answered into `ub`: metadata and status.
    fn store_into(self, ub: &mut UserBatch) {
        ub.metadata = self.metadata;
        ub.status = self.status;
    }
}

impl Resource for StatusOnly {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(dt: &()) -> std::borrow::Cow<'_, str> {
        UserBatch::kind(dt)
    }

    fn group(dt: &()) -> std::borrow::Cow<'_, str> {
        UserBatch::group(dt)
    }

    fn version(dt: &()) -> std::borrow::Cow<'_, str> {
        UserBatch::version(dt)
    }

    fn plural(dt: &()) -> std::borrow::Cow<'_, str> {
        UserBatch::plural(dt)
    }

    fn meta(&self) -> &kube::api::ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut kube::api::ObjectMeta {
        &mut self.metadata
    }
}

impl<'a> Reconciler<'a> {
    async fn run(&self) -> Result<(Action, Outcome), Error> {
        // The watch carries metadata only, and a cache could lag behind our own last write:
        // decisions about what was sent are made on a fresh read only.
        let Some(mut ub) = self
            .api
            .get_opt(&self.key.1)
            .await
            .map_err(kube_err("reading the UserBatch"))?
        else {
            self.ctx.forget(&self.key);
            return Ok((Action::await_change(), Outcome::Done));
        };
        let being_deleted = ub.meta().deletion_timestamp.is_some();
        if being_deleted
            && plan::finalizer_step(&ub) == plan::FinalizerStep::Keep
            && !plan::lifecycle(&ub).deleting
        {
            // Not ours to hold (no finalizer of ours): Kubernetes removes it.
            return Ok((Action::await_change(), Outcome::Done));
        }
        self.ctx
            .set_references(&self.key, referenced_secrets(&ub, &self.key.0));
        let account = ub
            .spec
            .account_ref
            .as_ref()
            .map(|reference| AccountId::named_by(&self.key.0, reference));
        self.ctx
            .accounts
            .set_userbatch_account(&self.key, account.clone());
        let generation_changed =
            ub.status.as_ref().and_then(|s| s.observed_generation) != ub.meta().generation;
        if generation_changed {
            for event in plan::spec_edit_events(&ub) {
                self.publish(&ub, &event).await;
            }
        }

        // The finalizer goes on before any user is created (deletionPolicy: Delete), and off
        // when it is not needed, or once a deleted UserBatch has let go of its users.
        let mut blocker = None;
        match plan::finalizer_step(&ub) {
            plan::FinalizerStep::Keep => {}
            plan::FinalizerStep::Add => match self.set_finalizer(&ub, true).await {
                Ok(updated) => ub = updated,
                Err(Error::Kube {
                    source: kube::Error::Api(status),
                    ..
                }) if status.code == 403 => {
                    blocker = Some(Blocker::new(
                        Reason::PermissionDenied,
                        format!(
                            "cannot add the finalizer {FINALIZER} that deletionPolicy Delete needs (the operator's RBAC must allow patching userbatches): {}",
                            status.message
                        ),
                    ));
                }
                Err(err) => return Err(err),
            },
            plan::FinalizerStep::Remove(event) => {
                let updated = self.set_finalizer(&ub, false).await?;
                if let Some(event) = &event {
                    self.publish(&ub, event).await;
                }
                if being_deleted {
                    return Ok((Action::await_change(), Outcome::Done));
                }
                ub = updated;
            }
        }

        let now = Timestamp::now();
        let plan = plan::plan(&ub, now, self.ctx.settings.limits());
        if let Some(value) = &plan.confirmed {
            // Consumed before the approval is written: if the operator stops in between,
            // the change waits for a new confirmation (never the reverse).
            tracing::info!(value = %value, "acting on the deletion confirmation");
            ub = self.consume_confirmation(&ub).await?;
        }
        if !plan.prepare.is_empty() {
            self.write_edits(&mut ub, &plan.prepare).await?;
            for event in &plan.events {
                self.publish(&ub, event).await;
            }
        }

        let mut blocker = blocker.or(plan.hold.clone());
        let mut retry = None;
        // Events for tasks that finished in this pass, published after the status write.
        let mut finished = Vec::new();
        let sends = blocker.is_none() && !plan.sends.is_empty();
        let lifecycle_calls = !plan.deletes.is_empty() || !plan.checks.is_empty();
        if sends || !plan.polls.is_empty() || lifecycle_calls {
            let mut secrets = SecretReader::new(
                self.ctx.client.clone(),
                &self.key.0,
                &self.ctx.secrets,
                &self.ctx.secret_versions,
            );
            match self.target(&ub, &mut secrets).await? {
                Err(problem) => blocker = Some(problem),
                Ok(target) => {
                    // What a permanent refusal depends on: the spec, the endpoint and every
                    // referenced Secret's version, as read now.
                    let inputs = if plan.sends.is_empty() {
                        String::new()
                    } else {
                        self.inputs_digest(&ub, &target.inputs, &mut secrets)
                            .await?
                    };
                    if blocker.is_none() && !plan.sends.is_empty() {
                        let status = ub.status.clone().unwrap_or_default();
                        blocker = plan::held_by_refusal(&status, &inputs);
                    }
                    if blocker.is_none() {
                        for send in &plan.sends {
                            let transition = self
                                .send(&mut ub, &target, send, &inputs, &mut secrets)
                                .await?;
                            retry = transition.retry.or(retry);
                            if transition.blocker.is_some() {
                                blocker = transition.blocker;
                            }
                            if transition.stop {
                                break;
                            }
                        }
                    }
                    // Results of recorded tasks are collected whatever blocks sending
                    // (reads change nothing; the guard still holds refused credentials).
                    let polled = self.poll(&mut ub, &target, &mut finished).await;
                    if blocker.is_none() {
                        retry = polled.retry.or(retry);
                        blocker = polled.blocker;
                    }
                    // Deletions, unless a call in this pass already met a KooDrive that
                    // would refuse them too.
                    let halted = blocker
                        .as_ref()
                        .is_some_and(|b| plan::halts_calls(b.reason));
                    if lifecycle_calls && !halted {
                        let deleted = self.delete_users(&mut ub, &target, &plan).await?;
                        if blocker.is_none() {
                            retry = deleted.retry.or(retry);
                            blocker = deleted.blocker;
                        }
                    }
                }
            }
        }

        // With an account, refused credentials are the account's to report (once, for all
        // its UserBatches): the UserBatch waits for it, and the account is checked again
        // (the guard answers that check without a request).
        if let Some(account) = &account
            && let Some(held) = blocker.take()
        {
            if held.reason == Reason::CredentialsInvalid {
                self.ctx.accounts.recheck(account);
            }
            blocker = Some(as_account_blocker(held, &account.describe()));
        }

        let verdict = self
            .write_status(&ub, blocker.as_ref(), now, plan.lifecycle)
            .await?;
        // When the last task's results make the UserBatch Ready, the Ready Event says it
        // all; a task that finished with failures (a Warning) is always announced.
        for event in &finished {
            if verdict != Verdict::Ready || event.severity == plan::Severity::Warning {
                self.publish(&ub, event).await;
            }
        }
        // A deleted UserBatch whose users are all deleted now lets go.
        if being_deleted && let plan::FinalizerStep::Remove(event) = plan::finalizer_step(&ub) {
            self.set_finalizer(&ub, false).await?;
            if let Some(event) = &event {
                self.publish(&ub, event).await;
            }
            return Ok((Action::await_change(), Outcome::Done));
        }
        self.finish(&ub, blocker, retry, verdict, now)
    }

    /// Adds or removes the finalizer, on the version this pass read (a concurrent change
    /// to the finalizers fails with a conflict instead of being overwritten).
    async fn set_finalizer(&self, ub: &UserBatch, on: bool) -> Result<UserBatch, Error> {
        let mut finalizers = ub.metadata.finalizers.clone().unwrap_or_default();
        finalizers.retain(|f| f != FINALIZER);
        if on {
            finalizers.push(FINALIZER.to_string());
        }
        let patch = serde_json::json!({
            "metadata": {
                "resourceVersion": ub.metadata.resource_version,
                "finalizers": finalizers,
            }
        });
        self.api
            .patch(&self.key.1, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(kube_err(if on {
                "adding the finalizer"
            } else {
                "removing the finalizer"
            }))
    }

    /// Removes `koodrive.io/confirm-deletions` once it is acted on, if it still holds the
    /// value acted on, so it never confirms a later change.
    async fn consume_confirmation(&self, ub: &UserBatch) -> Result<UserBatch, Error> {
        let patch = serde_json::json!({
            "metadata": {
                "resourceVersion": ub.metadata.resource_version,
                "annotations": { CONFIRM_DELETIONS_ANNOTATION: null },
            }
        });
        self.api
            .patch(&self.key.1, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(kube_err("removing the deletion confirmation it acted on"))
    }

    /// Checks users whose DELETE is in doubt, then deletes the approved ones, each under
    /// the at-most-once protocol: guard → rate-limit reservation → intent → DELETE →
    /// answer recorded on a fresh read. An ambiguous answer is followed by a check, never
    /// by a second DELETE.
    async fn delete_users(
        &self,
        ub: &mut UserBatch,
        target: &Target,
        plan: &plan::Plan,
    ) -> Result<Transition, Error> {
        let mut gone: Vec<(plan::DeleteOp, bool)> = Vec::new();
        let mut outcome = Transition {
            edit: None,
            event: None,
            blocker: None,
            stop: false,
            retry: None,
        };
        for op in &plan.checks {
            let checked = self.check_user(ub, target, op).await?;
            if checked.edit.is_some() {
                gone.push((op.clone(), true));
            }
            if checked.stop {
                outcome = checked;
                break;
            }
        }
        if !outcome.stop {
            for op in &plan.deletes {
                let ticket = match self.ctx.guard.admit(&target.key).await {
                    Ok(ticket) => ticket,
                    Err(held) => {
                        outcome = blocked(guard_blocker(&held));
                        break;
                    }
                };
                let reservation = tokio::select! {
                    reservation = target.client.reserve() => reservation,
                    _ = self.ctx.shutdown.cancelled() => return Err(Error::Stopping),
                };
                let trace_id = koodrive_client::new_trace_id();
                self.write_intent(
                    ub,
                    &Edit::DeleteIntent {
                        phone: op.phone.clone(),
                    },
                )
                .await?;
                tracing::info!(trace_id = %trace_id, user_id = %op.user_id, "deleting a KooDrive user");
                let started = Instant::now();
                let answer = target
                    .client
                    .delete_user_reserved(reservation, &op.user_id, &trace_id)
                    .await;
                let seconds = started.elapsed().as_secs_f64();
                let (verdict, label) = match &answer {
                    Ok(_) => (AuthVerdict::Passed, "success"),
                    Err(err) => {
                        tracing::warn!(trace_id = %trace_id, user_id = %op.user_id, error = %crate::report::chain(err), "KooDrive did not confirm a deletion");
                        (auth_verdict(err), outcome_label(err.class()))
                    }
                };
                self.ctx
                    .metrics
                    .koodrive_call("delete_user", label, seconds);
                self.report_auth(ticket, target, verdict, &answer);
                let found_gone = matches!(answer, Ok(koodrive_client::Deletion::NotFound));
                let answer = answer.map_err(|err| Failure::from(&err));
                let step = plan::after_delete(op, &trace_id, &answer);
                if let Some(edit) = &step.transition.edit {
                    self.record(ub, edit, &trace_id).await?;
                    if matches!(edit, Edit::Deleted { .. }) {
                        self.ctx.metrics.users("deleted", 1);
                        gone.push((op.clone(), found_gone));
                    }
                }
                if let Some(event) = &step.transition.event {
                    self.publish(ub, event).await;
                }
                if step.check {
                    let checked = self.check_user(ub, target, op).await?;
                    if checked.edit.is_some() {
                        gone.push((op.clone(), true));
                    }
                    if checked.stop {
                        outcome = checked;
                        break;
                    }
                }
                if step.transition.stop {
                    outcome = step.transition;
                    break;
                }
            }
        }
        for event in plan::deleted_events(&gone) {
            self.publish(ub, &event).await;
        }
        Ok(outcome)
    }

    /// Asks KooDrive whether a user whose DELETE is in doubt still exists, and records it
    /// as deleted when it does not.
    async fn check_user(
        &self,
        ub: &mut UserBatch,
        target: &Target,
        op: &plan::DeleteOp,
    ) -> Result<Transition, Error> {
        let ticket = match self.ctx.guard.admit(&target.key).await {
            Ok(ticket) => ticket,
            Err(held) => return Ok(blocked(guard_blocker(&held))),
        };
        let started = Instant::now();
        let answer = target.client.get_user(&op.user_id).await;
        let seconds = started.elapsed().as_secs_f64();
        let (verdict, label) = match &answer {
            Ok(_) => (AuthVerdict::Passed, "success"),
            Err(err) => {
                tracing::warn!(user_id = %op.user_id, error = %crate::report::chain(err), "cannot ask KooDrive about a user");
                (auth_verdict(err), outcome_label(err.class()))
            }
        };
        self.ctx.metrics.koodrive_call("get_user", label, seconds);
        self.report_auth(ticket, target, verdict, &answer);
        let answer = answer.map_err(|err| Failure::from(&err));
        let transition = plan::after_check(op, &answer);
        if let Some(edit) = &transition.edit {
            self.record(ub, edit, "check").await?;
            self.ctx.metrics.users("deleted", 1);
        }
        Ok(transition)
    }

    /// Hands the guard its ticket back with what the answer said about the credentials.
    fn report_auth<T>(
        &self,
        ticket: super::guard::Ticket,
        target: &Target,
        verdict: AuthVerdict,
        answer: &Result<T, koodrive_client::Error>,
    ) {
        self.ctx.guard.report(
            ticket,
            verdict,
            &answer
                .as_ref()
                .err()
                .map(|e| e.message())
                .unwrap_or_default(),
        );
        self.ctx
            .metrics
            .credential_verdict(&target.key.access_key, verdict);
    }

    /// The fingerprint of what a permanent refusal depends on: the generation, the endpoint
    /// and the version of every Secret the UserBatch references (read now; cached by
    /// version, so this costs no request when nothing changed).
    async fn inputs_digest(
        &self,
        ub: &UserBatch,
        endpoint: &str,
        secrets: &mut SecretReader<'_>,
    ) -> Result<String, Error> {
        for (_, name) in referenced_secrets(ub, &self.key.0) {
            secrets.touch(&name).await.map_err(|source| Error::Kube {
                action: "reading a referenced Secret",
                source,
            })?;
        }
        Ok(plan::inputs_digest(
            ub.meta().generation,
            endpoint,
            &secrets.versions(),
        ))
    }

    /// Resolves the endpoint and credentials — the UserBatch's own, or its account's — or
    /// says what blocks them. An untrusted endpoint, or an account the UserBatch may not
    /// use, stops everything before any Secret is read.
    async fn target(
        &self,
        ub: &UserBatch,
        secrets: &mut SecretReader<'a>,
    ) -> Result<Result<Target, Blocker>, Error> {
        let namespace = self.key.0.as_str();
        let (endpoint, reference, account) = match &ub.spec.account_ref {
            None => {
                let Some(reference) = ub.spec.credentials_ref.clone() else {
                    return Ok(Err(Blocker::new(
                        Reason::InvalidSpec,
                        "set spec.credentialsRef or spec.accountRef",
                    )));
                };
                let endpoint = self.ctx.endpoints.resolve(ub.spec.endpoint.as_deref());
                (endpoint, reference, None)
            }
            Some(account_ref) => match self.ctx.accounts.resolve(
                namespace,
                account_ref,
                &self.ctx.endpoints,
                self.ctx
                    .settings
                    .cluster_account_secret_namespace
                    .as_deref(),
            ) {
                Ok(account) => (
                    account.endpoint.clone(),
                    account.credentials_ref.clone(),
                    Some(account),
                ),
                Err(blocker) => return Ok(Err(blocker)),
            },
        };
        let endpoint = match endpoint {
            Ok(endpoint) => endpoint,
            Err(message) => return Ok(Err(Blocker::new(Reason::EndpointNotAllowed, message))),
        };
        let secret_namespace = account
            .as_ref()
            .map_or(namespace, |a| a.secret_namespace.as_str())
            .to_string();
        // An account's Secret in another namespace (a cluster account's, in the operator's)
        // is read on its own; one in this namespace counts among the UserBatch's inputs.
        let mut elsewhere = (secret_namespace != namespace).then(|| {
            SecretReader::new(
                self.ctx.client.clone(),
                &secret_namespace,
                &self.ctx.secrets,
                &self.ctx.secret_versions,
            )
        });
        let reader = match elsewhere.as_mut() {
            Some(reader) => reader,
            None => secrets,
        };
        let credentials = match reader.credentials(&reference).await {
            Ok(credentials) => credentials,
            Err(SecretRead::Api(source)) => {
                return Err(Error::Kube {
                    action: "reading the credentials Secret",
                    source,
                });
            }
            Err(SecretRead::Problem(problem)) => {
                return Ok(Err(secret_blocker(&problem, Reason::CredentialsNotFound)));
            }
        };
        let version = reader.version_of(&reference.name);
        let limiter = account.as_ref().map(|a| a.limiter.clone());
        let client = match self.ctx.koodrive_client_limited(
            &endpoint,
            &version,
            credentials.clone(),
            limiter,
        ) {
            Ok(client) => client,
            Err(e) => {
                return Ok(Err(Blocker::new(
                    Reason::InvalidSpec,
                    format!("endpoint {endpoint:?}: {}", e.message()),
                )));
            }
        };
        let secret = format!("{secret_namespace}/{}@{version}", reference.name);
        let inputs = match &account {
            None => endpoint.clone(),
            Some(account) => format!("{endpoint}|{}|{secret}", account.id.describe()),
        };
        let key = CredentialKey {
            endpoint,
            access_key: credentials.access_key.clone(),
            user_id: credentials.user_id.clone(),
            secret_version: secret,
        };
        Ok(Ok(Target {
            client,
            credentials,
            key,
            credentials_ref: (secret_namespace == namespace).then_some(reference),
            inputs,
        }))
    }

    /// Sends one request under the at-most-once protocol and records its answer.
    async fn send(
        &self,
        ub: &mut UserBatch,
        target: &Target,
        send: &plan::Send,
        inputs: &str,
        secrets: &mut SecretReader<'_>,
    ) -> Result<Transition, Error> {
        let users: Vec<&User> = send
            .phones
            .iter()
            .filter_map(|phone| ub.spec.users.iter().find(|u| &u.phone == phone))
            .collect();
        let register = match secrets
            .register_users(
                &users,
                Some((target.credentials_ref.as_ref(), &target.credentials)),
            )
            .await
        {
            Ok(register) => register,
            Err(SecretRead::Api(source)) => {
                return Err(Error::Kube {
                    action: "reading password Secrets",
                    source,
                });
            }
            Err(SecretRead::Problem(problem)) => {
                return Ok(blocked(secret_blocker(&problem, Reason::PasswordNotFound)));
            }
        };
        let ticket = match self.ctx.guard.admit(&target.key).await {
            Ok(ticket) => ticket,
            Err(held) => return Ok(blocked(guard_blocker(&held))),
        };
        // Room under the rate limit first: the intent is recorded only when the request is
        // really about to leave, so a restart while waiting leaves no false intent.
        let reservation = tokio::select! {
            reservation = target.client.reserve() => reservation,
            _ = self.ctx.shutdown.cancelled() => return Err(Error::Stopping),
        };
        let trace_id = koodrive_client::new_trace_id();
        let intent = Edit::Intent(plan::intent(send, &trace_id, Timestamp::now()));
        self.write_intent(ub, &intent).await?;

        let started = Instant::now();
        let answer = target
            .client
            .create_batch_reserved(reservation, &register, &trace_id)
            .await;
        let seconds = started.elapsed().as_secs_f64();
        let (verdict, outcome) = match &answer {
            Ok(created) => {
                tracing::info!(trace_id = %trace_id, task_id = %created.task_id, users = register.len(), "submitted users to KooDrive");
                self.ctx.metrics.users("submitted", register.len() as u64);
                (AuthVerdict::Passed, "success")
            }
            Err(err) => {
                tracing::warn!(trace_id = %trace_id, error = %crate::report::chain(err), "KooDrive did not accept the request");
                (auth_verdict(err), outcome_label(err.class()))
            }
        };
        self.ctx.metrics.koodrive_call("create", outcome, seconds);
        self.report_auth(ticket, target, verdict, &answer);
        let outcome = answer.map_err(|err| Failure::from(&err));
        let digest = plan::users_digest(&ub.spec.users, &send.phones);
        let transition = plan::after_create(send, &trace_id, &outcome, &digest, inputs);
        if let Some(edit) = &transition.edit {
            self.record(ub, edit, &trace_id).await?;
        }
        if let Some(event) = &transition.event {
            self.publish(ub, event).await;
        }
        Ok(transition)
    }

    /// Polls every unfinished task; results are applied to `ub` and written with the final
    /// status (a lost write only means polling again: reads are safe to repeat).
    async fn poll(
        &self,
        ub: &mut UserBatch,
        target: &Target,
        finished: &mut Vec<PlannedEvent>,
    ) -> Transition {
        let tasks: Vec<_> = ub
            .status
            .as_ref()
            .map(|s| status::unfinished(&s.tasks).cloned().collect())
            .unwrap_or_default();
        let mut last = Transition {
            edit: None,
            event: None,
            blocker: None,
            stop: false,
            retry: None,
        };
        for task in tasks {
            let Some(task_id) = task.task_id.as_deref() else {
                continue;
            };
            let ticket = match self.ctx.guard.admit(&target.key).await {
                Ok(ticket) => ticket,
                Err(held) => return blocked(guard_blocker(&held)),
            };
            let started = Instant::now();
            let answer = target.client.get_task(task_id).await;
            let seconds = started.elapsed().as_secs_f64();
            let (verdict, outcome) = match &answer {
                Ok(_) => (AuthVerdict::Passed, "success"),
                Err(err) => {
                    tracing::warn!(task_id, error = %crate::report::chain(err), "cannot read a KooDrive task");
                    (auth_verdict(err), outcome_label(err.class()))
                }
            };
            self.ctx.metrics.koodrive_call("get", outcome, seconds);
            self.ctx.guard.report(
                ticket,
                verdict,
                &answer
                    .as_ref()
                    .err()
                    .map(|e| e.message())
                    .unwrap_or_default(),
            );
            self.ctx
                .metrics
                .credential_verdict(&target.key.access_key, verdict);
            let outcome = answer.map_err(|err| Failure::from(&err));
            if let Ok(report) = &outcome
                && report.is_finished()
            {
                for (what, n) in [
                    ("succeeded", report.succeeded),
                    ("failed", report.failed),
                    ("skipped", report.skipped),
                ] {
                    self.ctx.metrics.users(what, n.max(0) as u64);
                }
            }
            let transition = plan::after_poll(&task, &outcome);
            if let Some(edit) = &transition.edit {
                plan::apply(edit, ub.status.get_or_insert_with(UserBatchStatus::default));
            }
            if let Some(event) = &transition.event {
                finished.push(event.clone());
            }
            if transition.stop {
                return transition;
            }
            last = transition;
        }
        last.event = None;
        last
    }

    /// Writes `status` (conditional on `status`'s `resourceVersion`); returns what the API
    /// server stored.
    async fn put_status(&self, status: &StatusOnly) -> Result<StatusOnly, kube::Error> {
        self.status_api
            .replace_status(&self.key.1, &PostParams::default(), status)
            .await
    }

    /// Writes edits made before anything is sent (a human's release of in-doubt requests).
    async fn write_edits(&self, ub: &mut UserBatch, edits: &[Edit]) -> Result<(), Error> {
        let mut updated = StatusOnly::take_from(ub);
        let status = updated.status.get_or_insert_with(UserBatchStatus::default);
        for edit in edits {
            plan::apply(edit, status);
        }
        self.put_status(&updated)
            .await
            .map_err(kube_err("releasing in-doubt submissions"))?
            .store_into(ub);
        Ok(())
    }

    /// Rule 1: the intent is on record before anything is sent. The write carries the
    /// `resourceVersion` this pass read, so a stale view (or a second replica) fails with a
    /// conflict instead of sending the same users again.
    async fn write_intent(&self, ub: &mut UserBatch, intent: &Edit) -> Result<(), Error> {
        let mut updated = StatusOnly::take_from(ub);
        plan::apply(
            intent,
            updated.status.get_or_insert_with(UserBatchStatus::default),
        );
        self.put_status(&updated)
            .await
            .map_err(kube_err("recording the intent to submit"))?
            .store_into(ub);
        Ok(())
    }

    /// Rule 2: applies an answer's edit to a fresh copy of the status until the write
    /// succeeds. The request is never repeated; only the bookkeeping is. Gives up only when
    /// the process is stopping (the intent then shows the request as in doubt, which is
    /// safe).
    async fn record(&self, ub: &mut UserBatch, edit: &Edit, trace_id: &str) -> Result<(), Error> {
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(10))
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build();
        loop {
            let attempt = async {
                let mut fresh = self.status_api.get_status(&self.key.1).await?;
                plan::apply(
                    edit,
                    fresh.status.get_or_insert_with(UserBatchStatus::default),
                );
                self.put_status(&fresh).await
            };
            let err = match attempt.await {
                Ok(updated) => {
                    let spec_changed = updated.metadata.generation != ub.metadata.generation;
                    updated.store_into(ub);
                    if spec_changed {
                        // The spec was edited since this pass read it: carry on with the
                        // object as stored now, as a whole read would have.
                        *ub =
                            self.api.get(&self.key.1).await.map_err(kube_err(
                                "reading the UserBatch after its spec changed",
                            ))?;
                    }
                    return Ok(());
                }
                Err(err) => err,
            };
            if let kube::Error::Api(status) = &err
                && status.code == 404
            {
                return Err(Error::Kube {
                    action: "recording a KooDrive answer (the UserBatch was deleted)",
                    source: err,
                });
            }
            let delay = delays.next().unwrap_or(Duration::from_secs(10));
            tracing::warn!(
                trace_id,
                error = %crate::report::chain(&err),
                retry_in = ?delay,
                "cannot record KooDrive's answer yet; retrying the status write (not the request)"
            );
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.ctx.shutdown.cancelled() => {
                    tracing::error!(
                        trace_id,
                        answer = ?edit,
                        "stopping before KooDrive's answer could be recorded; the request will show as in doubt"
                    );
                    return Err(Error::Stopping);
                }
            }
        }
    }

    /// Computes phase, summary and conditions, and writes them only if something changed.
    async fn write_status(
        &self,
        ub: &UserBatch,
        blocker: Option<&Blocker>,
        now: Timestamp,
        lifecycle: status::Lifecycle,
    ) -> Result<Verdict, Error> {
        // Borrowed, not copied: for a 1000-user UserBatch the status is as large as the spec.
        let no_status = UserBatchStatus::default();
        let previous = ub.status.as_ref().unwrap_or(&no_status);
        let mut next = previous.clone();
        let limits = self.ctx.settings.limits();
        let policy = ub.spec.in_doubt_policy.unwrap_or_default();
        let resubmit_at = (policy == crate::crd::InDoubtPolicy::Resubmit)
            .then(|| {
                status::in_doubt(&next.tasks)
                    .iter()
                    .filter(|t| t.resubmit_of.is_none())
                    .map(|t| plan::resubmit_time(t, limits.resubmit_delay))
                    .min()
            })
            .flatten()
            .map(|at| at.to_string());
        let overdue = status::unfinished(&next.tasks)
            .filter(|t| {
                t.submitted_at
                    .0
                    .saturating_add(limits.results_timeout)
                    .is_ok_and(|due| due < now)
            })
            .count();
        let assessment = status::assess(
            &ub.spec.users,
            &next.tasks,
            &next.failures,
            status::Observed {
                blocker,
                resubmit_at: resubmit_at.as_deref(),
                overdue_tasks: overdue,
                records: &next.users,
                lifecycle,
            },
        );
        next.deletions_to_confirm = lifecycle.guard.map(|g| g.count as i64);
        // Operator-side problems are the latest message too.
        if let Some(blocker) = blocker
            && matches!(
                blocker.reason,
                Reason::CredentialsNotFound
                    | Reason::PasswordNotFound
                    | Reason::InvalidSpec
                    | Reason::EndpointNotAllowed
                    | Reason::PermissionDenied
                    | Reason::AccountNotFound
                    | Reason::AccountNotAllowed
            )
        {
            next.message = Some(blocker.message.clone());
        }
        next.phase = Some(assessment.phase);
        next.summary = Some(assessment.summary.clone());
        next.observed_generation = ub.meta().generation;
        next.conditions = conditions::merge(
            &previous.conditions,
            &assessment.conditions,
            ub.meta().generation,
            &Time(now),
        );
        if let Some(message) = next.message.as_mut() {
            *message = plan::bounded(message, MAX_MESSAGE_LEN);
        }
        let state = ObjectState::of(&next);
        if next != *previous {
            let before = conditions::find(&previous.conditions, ConditionType::Ready)
                .map(|c| (c.status.clone(), c.reason.clone()));
            let reconciling_before =
                conditions::find(&previous.conditions, ConditionType::Reconciling)
                    .map(|c| c.reason.clone());
            let ready = assessment
                .conditions
                .iter()
                .find(|c| c.type_ == ConditionType::Ready);
            let updated = StatusOnly::with_status(ub, Some(next));
            let updated = self
                .put_status(&updated)
                .await
                .map_err(kube_err("writing status"))?;
            if let Some(ready) = ready
                && let Some(event) = plan::ready_transition(
                    before.as_ref().map(|(s, r)| (s.as_str(), r.as_str())),
                    (ready.status, ready.reason, &ready.message),
                )
            {
                self.publish(&updated, &event).await;
            }
            if let Some(event) =
                plan::suspend_transition(reconciling_before.as_deref(), lifecycle.suspended)
            {
                self.publish(&updated, &event).await;
            }
        }
        self.ctx.observe(&self.key, state);
        Ok(assessment.verdict)
    }

    /// What the controller does next.
    fn finish(
        &self,
        ub: &UserBatch,
        blocker: Option<Blocker>,
        retry: Option<Option<Duration>>,
        verdict: Verdict,
        now: Timestamp,
    ) -> Result<(Action, Outcome), Error> {
        let outcome = match &verdict {
            Verdict::Stalled {
                reason: Reason::SubmissionInDoubt | Reason::DeletionInDoubt,
                ..
            } => Outcome::InDoubt,
            Verdict::Stalled { .. } => Outcome::Stalled,
            _ => Outcome::Done,
        };
        if let Some(blocker) = &blocker {
            let retries = retry.is_some() || blocker.reason == Reason::PermissionDenied;
            if retries {
                return Err(Error::Blocked {
                    reason: blocker.reason,
                    message: blocker.message.clone(),
                    retry_after: retry.flatten(),
                });
            }
        }
        if blocker
            .as_ref()
            .is_some_and(|b| b.reason == Reason::CredentialsInvalid)
        {
            // Nothing is sent with refused credentials: a Secret change wakes the
            // UserBatch; otherwise one look after the guard's pause.
            return Ok((
                Action::requeue(self.ctx.settings.auth_retry_interval),
                outcome,
            ));
        }
        if ub.spec.suspend == Some(true) {
            // Paused: only a change to the UserBatch (or its Secrets) wakes it.
            return Ok((Action::await_change(), outcome));
        }
        let limits = self.ctx.settings.limits();
        // (The only blocker that more work can lift is waiting for room in the status.)
        let clear = blocker
            .as_ref()
            .is_none_or(|b| b.reason == Reason::Deleting);
        if clear && plan::follow_up(ub, now, limits) {
            // This pass made more work possible (results in for removed users, room for
            // new ones): go on without waiting for a change.
            return Ok((Action::requeue(FOLLOW_UP_DELAY), outcome));
        }
        let status = ub.status.clone().unwrap_or_default();
        if status.users.iter().any(|r| r.state == UserState::Deleting) {
            // A DELETE in doubt is checked again (a read) until KooDrive confirms the user
            // gone or a human steps in.
            return Ok((Action::requeue(self.ctx.settings.poll_interval), outcome));
        }
        if let Verdict::Working {
            reason: Reason::SubmissionInDoubt,
            ..
        } = verdict
        {
            // inDoubtPolicy: Resubmit — come back when the resend is due.
            let due = status::in_doubt(&status.tasks)
                .iter()
                .filter(|t| t.resubmit_of.is_none())
                .map(|t| plan::resubmit_time(t, limits.resubmit_delay))
                .min()
                .map(|at| Duration::try_from(at.duration_since(now)).unwrap_or_default())
                .unwrap_or(self.ctx.settings.poll_interval);
            return Ok((Action::requeue(due.max(Duration::from_secs(1))), outcome));
        }
        if status::unfinished(&status.tasks).next().is_some() {
            let interval = if matches!(
                verdict,
                Verdict::Stalled {
                    reason: Reason::ResultsOverdue,
                    ..
                }
            ) {
                OVERDUE_POLL_INTERVAL
            } else {
                self.ctx.settings.poll_interval
            };
            return Ok((Action::requeue(interval), outcome));
        }
        Ok((Action::await_change(), outcome))
    }

    /// Publishes `event` about the UserBatch (`ub`, or what a status write answered).
    async fn publish(&self, ub: &impl Resource<DynamicType = ()>, event: &PlannedEvent) {
        self.ctx.events.publish(&ub.object_ref(&()), event).await;
    }
}

/// A transition that only stops the pass with a blocker.
fn blocked(blocker: Blocker) -> Transition {
    let retry = match blocker.reason {
        Reason::ClockSkew | Reason::PermissionDenied | Reason::KooDriveUnavailable => Some(None),
        _ => None,
    };
    Transition {
        edit: None,
        event: None,
        blocker: Some(blocker),
        stop: true,
        retry,
    }
}

/// The blocker for a credential the guard holds back.
pub(super) fn guard_blocker(held: &super::guard::Blocked) -> Blocker {
    if held.clock {
        Blocker::new(
            Reason::ClockSkew,
            format!(
                "{}; to protect the AK/SK from Huawei's lockout, requests with these credentials pause for a while (at least 5 minutes)",
                held.message
            ),
        )
    } else {
        Blocker::new(
            Reason::CredentialsInvalid,
            format!(
                "{}; nothing is sent with these credentials until their Secret changes (to protect the AK/SK from Huawei's lockout)",
                held.message
            ),
        )
    }
}

/// The blocker for a Secret that cannot be used.
pub(super) fn secret_blocker(problem: &SecretProblem, missing: Reason) -> Blocker {
    let reason = match problem {
        SecretProblem::Forbidden { .. } => Reason::PermissionDenied,
        SecretProblem::CredentialAsPassword { .. } => Reason::InvalidSpec,
        _ => missing,
    };
    let message = match reason {
        Reason::PasswordNotFound => format!("cannot read a user's password: {problem}"),
        _ => problem.to_string(),
    };
    Blocker::new(reason, message)
}

/// What an answer says about the credentials. Only an answer from KooDrive itself (its own
/// envelope, past the gateway's authentication) proves they were accepted.
pub(super) fn auth_verdict(err: &koodrive_client::Error) -> AuthVerdict {
    match err.class() {
        ErrorClass::Authentication => AuthVerdict::Refused,
        ErrorClass::ClockSkew => AuthVerdict::ClockRefused,
        _ => {
            let from_koodrive = err.code().is_some_and(|code| !code.starts_with("APIG"))
                && err.status().is_some_and(|s| s < 500);
            if from_koodrive {
                AuthVerdict::Passed
            } else {
                AuthVerdict::Unknown
            }
        }
    }
}

pub(super) fn outcome_label(class: ErrorClass) -> &'static str {
    match class {
        ErrorClass::Transient { .. } => "transient",
        ErrorClass::Authentication => "authentication",
        ErrorClass::ClockSkew => "clock_skew",
        ErrorClass::Rejected => "rejected",
        ErrorClass::Invalid => "invalid",
        ErrorClass::InDoubt => "in_doubt",
    }
}

/// The Secrets a UserBatch reads in its namespace (its own credentials and every password),
/// as keys. An account's Secret is the account's: a change to it re-checks the account,
/// whose new status re-triggers the UserBatch.
fn referenced_secrets(ub: &UserBatch, namespace: &str) -> Vec<Key> {
    let mut names: Vec<Key> = ub
        .spec
        .credentials_ref
        .iter()
        .map(|reference| (namespace.to_string(), reference.name.clone()))
        .collect();
    for user in &ub.spec.users {
        if let Some(reference) = &user.password_secret_ref
            && !names.iter().any(|(_, n)| n == &reference.name)
        {
            names.push((namespace.to_string(), reference.name.clone()));
        }
    }
    names
}
