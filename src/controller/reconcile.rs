//! One reconcile of one UserBatch: observe, submit pending users (each at most once), poll
//! results, and write a status that tells the truth.
//!
//! At-most-once rests on three rules (Crossplane's "create pending" guard):
//! 1. Before a request is sent, its intent (trace ID and phones) is written to status with a
//!    `resourceVersion` precondition, so a stale view or a second replica fails with 409
//!    instead of sending the same users again.
//! 2. After the answer, the task is recorded; if that write fails it is retried — never the
//!    request.
//! 3. An intent found without a task means a process died mid-request: the users are not
//!    resent until a human sets a new `koodrive.io/resubmit-in-doubt` value.

use super::Context;
use super::conditions;
use super::progress::{self, Blocker};
use super::secrets::{SecretProblem, SecretReader};
use crate::crd::{
    Phase, RESUBMIT_IN_DOUBT_ANNOTATION, TaskRecord, TaskResult, User, UserBatch, UserBatchStatus,
    UserFailure,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use koodrive_client::ErrorClass;
use kube::api::PostParams;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

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
    #[error("KooDrive is unavailable: {message}")]
    KooDriveUnavailable {
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("UserBatch has no namespace")]
    NoNamespace,
}

impl Error {
    /// A server-requested minimum delay (`Retry-After`), if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::KooDriveUnavailable { retry_after, .. } => *retry_after,
            // A conflict only needs a fresh read; don't wait long.
            Error::Conflict { .. } => Some(Duration::ZERO),
            _ => None,
        }
    }
}

fn kube_err(action: &'static str) -> impl FnOnce(kube::Error) -> Error {
    move |source| match &source {
        kube::Error::Api(status) if status.code == 409 => Error::Conflict { action },
        _ => Error::Kube { action, source },
    }
}

fn now() -> Time {
    Time(jiff::Timestamp::now())
}

pub async fn reconcile(ub: Arc<UserBatch>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let key = ObjectRef::from_obj(ub.as_ref());
    let span = tracing::info_span!("reconcile", userbatch = %key);
    let result = async { Reconciler::new(&ub, &ctx)?.run().await }
        .instrument(span)
        .await;
    ctx.metrics
        .reconciled(result.is_ok(), started.elapsed().as_secs_f64());
    if result.is_ok() {
        ctx.record_success(&key);
    }
    result
}

struct Reconciler<'a> {
    ctx: &'a Context,
    api: Api<UserBatch>,
    namespace: String,
    name: String,
}

/// What one pass observed, beyond the object itself.
#[derive(Default)]
struct Observed {
    blocker: Option<Blocker>,
    /// Some task is still running in KooDrive.
    awaiting_results: bool,
    failures: Option<Vec<UserFailure>>,
}

impl<'a> Reconciler<'a> {
    fn new(ub: &UserBatch, ctx: &'a Context) -> Result<Self, Error> {
        let namespace = ub.namespace().ok_or(Error::NoNamespace)?;
        Ok(Self {
            ctx,
            api: Api::namespaced(ctx.client.clone(), &namespace),
            namespace,
            name: ub.name_any(),
        })
    }

    async fn run(&self) -> Result<Action, Error> {
        // The watch cache may lag behind our own last write; decisions about what was sent
        // are made on a fresh read only.
        let Some(mut ub) = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(kube_err("reading the UserBatch"))?
        else {
            return Ok(Action::await_change());
        };
        if ub.meta().deletion_timestamp.is_some() {
            return Ok(Action::await_change());
        }
        let generation_changed =
            ub.status.as_ref().and_then(|s| s.observed_generation) != ub.meta().generation;
        if generation_changed {
            self.report_spec_edits(&ub).await;
        }

        let mut observed = Observed::default();
        ub = self.release_in_doubt_if_asked(ub).await?;
        let status = ub.status.clone().unwrap_or_default();
        let mut secrets = SecretReader::new(self.ctx.client.clone(), &self.namespace);

        // Nothing is sent while a request's fate is unknown (the condition explains why), but
        // the results of recorded tasks are still collected.
        let pending: Vec<User> = if progress::in_doubt(&status.tasks).is_empty() {
            progress::pending_users(&ub.spec.users, &status.tasks)
                .into_iter()
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        let unfinished = status
            .tasks
            .iter()
            .any(|t| t.task_id.is_some() && !t.result.as_ref().is_some_and(|r| r.finished));
        if !pending.is_empty() || unfinished {
            match self.koodrive_client(&ub, &mut secrets).await? {
                Err(blocker) => observed.blocker = Some(blocker),
                Ok(client) => {
                    if !pending.is_empty() {
                        ub = self
                            .submit(ub, &client, &pending, &mut secrets, &mut observed)
                            .await?;
                    }
                    if observed.blocker.is_none() {
                        ub = self.poll_results(ub, &client, &mut observed).await?;
                    }
                }
            }
        }

        let phase = self.write_status(&ub, &observed).await?;
        self.ctx.observe_phase(ObjectRef::from_obj(&ub), phase);
        match observed.blocker {
            Some(Blocker::Unavailable(message)) => Err(Error::KooDriveUnavailable {
                message,
                retry_after: None,
            }),
            _ if observed.awaiting_results => Ok(Action::requeue(self.ctx.settings.poll_interval)),
            _ => Ok(Action::await_change()),
        }
    }

    /// Emits Events for users removed or edited after submission: KooDrive cannot undo or
    /// update them, so the operator says so instead of acting.
    async fn report_spec_edits(&self, ub: &UserBatch) {
        if ub.spec.users.iter().any(|u| u.password.is_some()) {
            self.event(
                ub,
                EventType::Warning,
                "InlinePassword",
                "Reconcile",
                "spec.users[].password holds passwords in plain text in the UserBatch; use passwordSecretRef instead".into(),
            )
            .await;
        }
        let Some(status) = ub.status.as_ref() else {
            return;
        };
        let removed = progress::removed_phones(&ub.spec.users, &status.tasks);
        if !removed.is_empty() {
            let note = format!(
                "{} user(s) were removed from spec.users after submission ({}); KooDrive has no deprovisioning call, so they stay provisioned",
                removed.len(),
                abbreviate(&removed, 10)
            );
            self.event(ub, EventType::Normal, "UsersRemoved", "Reconcile", note)
                .await;
        }
        let changed = changed_after_submission(ub, status);
        if !changed.is_empty() {
            let note = format!(
                "{} submitted user(s) were edited ({}); changes are not sent to KooDrive, users are never resent",
                changed.len(),
                abbreviate(&changed, 10)
            );
            self.event(
                ub,
                EventType::Normal,
                "UsersChangedAfterSubmission",
                "Reconcile",
                note,
            )
            .await;
        }
    }

    /// Drops in-doubt intents once a human sets a new `koodrive.io/resubmit-in-doubt` value.
    async fn release_in_doubt_if_asked(&self, mut ub: UserBatch) -> Result<UserBatch, Error> {
        let Some(value) = ub.annotations().get(RESUBMIT_IN_DOUBT_ANNOTATION).cloned() else {
            return Ok(ub);
        };
        let status = ub.status.get_or_insert_with(UserBatchStatus::default);
        if value.is_empty() || status.resubmitted_in_doubt.as_deref() == Some(value.as_str()) {
            return Ok(ub);
        }
        let released: Vec<String> = status
            .tasks
            .iter()
            .filter(|t| t.task_id.is_none())
            .map(|t| t.trace_id.clone())
            .collect();
        status.tasks.retain(|t| t.task_id.is_some());
        status.resubmitted_in_doubt = Some(value);
        let ub = self
            .api
            .replace_status(&self.name, &PostParams::default(), &ub)
            .await
            .map_err(kube_err("releasing in-doubt submissions"))?;
        if !released.is_empty() {
            let note = format!(
                "{RESUBMIT_IN_DOUBT_ANNOTATION} changed: the users of request(s) {} will be sent again",
                released.join(", ")
            );
            self.event(
                &ub,
                EventType::Normal,
                "ResubmittingInDoubt",
                "Resubmit",
                note,
            )
            .await;
        }
        Ok(ub)
    }

    /// Resolves the endpoint and credentials, or says what blocks them.
    async fn koodrive_client(
        &self,
        ub: &UserBatch,
        secrets: &mut SecretReader,
    ) -> Result<Result<koodrive_client::Client, Blocker>, Error> {
        let endpoint = ub
            .spec
            .endpoint
            .clone()
            .unwrap_or_else(|| self.ctx.settings.default_endpoint.clone());
        let credentials = match secrets
            .credentials(&ub.spec.credentials_ref)
            .await
            .map_err(kube_err("reading the credentials Secret"))?
        {
            Ok(c) => c,
            Err(problem) => return Ok(Err(Blocker::CredentialsNotFound(problem.to_string()))),
        };
        match self
            .ctx
            .koodrive_client(&endpoint, &secrets.versions(), credentials)
        {
            Ok(client) => Ok(Ok(client)),
            Err(e) => Ok(Err(Blocker::InvalidSpec(format!(
                "endpoint {endpoint:?}: {}",
                e.message()
            )))),
        }
    }

    /// Sends pending users in requests of at most `max_batch_size`, recording each.
    async fn submit(
        &self,
        mut ub: UserBatch,
        client: &koodrive_client::Client,
        pending: &[User],
        secrets: &mut SecretReader,
        observed: &mut Observed,
    ) -> Result<UserBatch, Error> {
        let pending_refs: Vec<&User> = pending.iter().collect();
        let users = match secrets
            .register_users(&pending_refs)
            .await
            .map_err(kube_err("reading password Secrets"))?
        {
            Ok(users) => users,
            Err(problem) => {
                observed.blocker = Some(Blocker::PasswordNotFound(password_problem(&problem)));
                return Ok(ub);
            }
        };

        // A permanent failure stays put until something it depended on changes.
        let inputs = inputs_digest(
            &ub,
            &self.ctx.settings.default_endpoint,
            &secrets.versions(),
        );
        if let Some(status) = &ub.status
            && let Some((reason, digest)) = status
                .stalled_inputs
                .as_deref()
                .and_then(|s| s.split_once('/'))
            && digest == inputs
            && let Some(blocker) = Blocker::from_stalled_reason(
                reason,
                status
                    .message
                    .as_deref()
                    .unwrap_or("KooDrive refused the request"),
            )
        {
            observed.blocker = Some(blocker);
            return Ok(ub);
        }

        let batch_size = self
            .ctx
            .settings
            .max_batch_size
            .clamp(1, koodrive_client::MAX_USERS_PER_REQUEST);
        for chunk in users.chunks(batch_size) {
            let trace_id = koodrive_client::new_trace_id();
            let phones: Vec<String> = chunk.iter().map(|u| u.phone.clone()).collect();
            // Rule 1: the intent is on record before anything is sent.
            let status = ub.status.get_or_insert_with(UserBatchStatus::default);
            status.tasks.push(TaskRecord {
                task_id: None,
                code: None,
                message: None,
                trace_id: trace_id.clone(),
                submitted_at: now(),
                phones: phones.clone(),
                result: None,
                users_digest: None,
            });
            // Its result is not kept: the answer is recorded on a fresh read (rule 2).
            self.api
                .replace_status(&self.name, &PostParams::default(), &ub)
                .await
                .map_err(kube_err("recording the intent to submit"))?;

            let started = Instant::now();
            let answer = {
                let _permit = self.ctx.throttle.acquire().await;
                client.create_batch(chunk, &trace_id).await
            };
            let seconds = started.elapsed().as_secs_f64();
            match answer {
                Ok(created) => {
                    self.ctx.metrics.koodrive_call("create", "success", seconds);
                    self.ctx.metrics.users("submitted", chunk.len() as u64);
                    tracing::info!(trace_id = %trace_id, task_id = %created.task_id, users = chunk.len(), "submitted users to KooDrive");
                    let (task_id, code, message) = (
                        bounded(&created.task_id, crate::crd::MAX_ID_LEN),
                        bounded(&created.code, crate::crd::MAX_ID_LEN),
                        bounded(&created.message, crate::crd::MAX_MESSAGE_LEN),
                    );
                    let digest = users_digest(chunk_users(pending, &phones).into_iter());
                    ub = self
                        .record(&trace_id, |status| {
                            if let Some(task) =
                                status.tasks.iter_mut().find(|t| t.trace_id == trace_id)
                            {
                                task.task_id = Some(task_id.clone());
                                task.code = Some(code.clone());
                                task.message = Some(message.clone());
                                task.users_digest = Some(digest.clone());
                            }
                            status.task_id = Some(task_id.clone());
                            status.code = Some(code.clone());
                            status.message = Some(message.clone());
                            status.stalled_inputs = None;
                        })
                        .await?;
                    let note = format!(
                        "Submitted {} user(s) to KooDrive: task {} (X-Traceid {trace_id})",
                        chunk.len(),
                        created.task_id
                    );
                    self.event(&ub, EventType::Normal, "Submitted", "Submit", note)
                        .await;
                }
                Err(err) => {
                    let class = err.class();
                    self.ctx
                        .metrics
                        .koodrive_call("create", outcome_label(&class), seconds);
                    let message = err.message();
                    let code = err.code().map(str::to_string);
                    tracing::warn!(trace_id = %trace_id, error = %message, "KooDrive did not accept the request");
                    let in_doubt = matches!(class, ErrorClass::InDoubt);
                    let permanent = matches!(
                        class,
                        ErrorClass::Authentication | ErrorClass::Rejected | ErrorClass::Invalid
                    );
                    let (reason, blocker) = match &class {
                        ErrorClass::InDoubt => (conditions::reasons::SUBMISSION_IN_DOUBT, None),
                        ErrorClass::Authentication => (
                            conditions::reasons::CREDENTIALS_INVALID,
                            Some(Blocker::CredentialsInvalid(message.clone())),
                        ),
                        ErrorClass::Rejected | ErrorClass::Invalid => (
                            conditions::reasons::KOODRIVE_REJECTED,
                            Some(Blocker::Rejected(message.clone())),
                        ),
                        ErrorClass::Transient { .. } => (
                            conditions::reasons::KOODRIVE_UNAVAILABLE,
                            Some(Blocker::Unavailable(message.clone())),
                        ),
                    };
                    let stalled_inputs = permanent.then(|| format!("{reason}/{inputs}"));
                    let record_message = bounded(&message, crate::crd::MAX_MESSAGE_LEN);
                    let record_code = code.as_deref().map(|c| bounded(c, crate::crd::MAX_ID_LEN));
                    ub = self
                        .record(&trace_id, |status| {
                            if in_doubt {
                                // Rule 3: keep the intent; only a human may release it.
                                if let Some(task) =
                                    status.tasks.iter_mut().find(|t| t.trace_id == trace_id)
                                {
                                    task.message = Some(record_message.clone());
                                }
                            } else {
                                // KooDrive provably did not create a task: the users are pending again.
                                status.tasks.retain(|t| t.trace_id != trace_id);
                            }
                            status.code = record_code.clone();
                            status.message = Some(record_message.clone());
                            status.stalled_inputs = stalled_inputs.clone();
                        })
                        .await?;
                    self.event(&ub, EventType::Warning, reason, "Submit", message.clone())
                        .await;
                    observed.blocker = blocker;
                    if let ErrorClass::Transient { retry_after } = class {
                        // Status first, so the reason is visible during the backoff.
                        self.write_status(&ub, observed).await?;
                        return Err(Error::KooDriveUnavailable {
                            message,
                            retry_after,
                        });
                    }
                    break;
                }
            }
        }
        Ok(ub)
    }

    /// Rule 2: applies `change` to a fresh copy of the status until the write succeeds. The
    /// request is never repeated; only the bookkeeping is.
    async fn record(
        &self,
        trace_id: &str,
        change: impl Fn(&mut UserBatchStatus),
    ) -> Result<UserBatch, Error> {
        let mut delay = Duration::from_millis(100);
        loop {
            let attempt = async {
                let mut fresh = self.api.get_status(&self.name).await?;
                change(fresh.status.get_or_insert_with(UserBatchStatus::default));
                self.api
                    .replace_status(&self.name, &PostParams::default(), &fresh)
                    .await
            };
            match attempt.await {
                Ok(ub) => return Ok(ub),
                Err(kube::Error::Api(status)) if status.code == 409 => continue,
                Err(kube::Error::Api(status)) if status.code == 404 => {
                    return Err(Error::Kube {
                        action: "recording a KooDrive answer (the UserBatch was deleted)",
                        source: kube::Error::Api(status),
                    });
                }
                Err(err) => {
                    tracing::warn!(
                        trace_id,
                        error = %crate::report::chain(&err),
                        retry_in = ?delay,
                        "cannot record KooDrive's answer yet; retrying the status write (not the request)"
                    );
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    /// Polls `batchRegister/get` for unfinished tasks and records their results.
    async fn poll_results(
        &self,
        mut ub: UserBatch,
        client: &koodrive_client::Client,
        observed: &mut Observed,
    ) -> Result<UserBatch, Error> {
        let unfinished: Vec<String> = ub
            .status
            .as_ref()
            .map(|s| {
                s.tasks
                    .iter()
                    .filter(|t| !t.result.as_ref().is_some_and(|r| r.finished))
                    .filter_map(|t| t.task_id.clone())
                    .collect()
            })
            .unwrap_or_default();
        let mut failures: Vec<UserFailure> = ub
            .status
            .as_ref()
            .map(|s| s.failures.clone())
            .unwrap_or_default();
        for task_id in unfinished {
            let started = Instant::now();
            let report = {
                let _permit = self.ctx.throttle.acquire().await;
                client.get_task(&task_id).await
            };
            let seconds = started.elapsed().as_secs_f64();
            let report = match report {
                Ok(report) => {
                    self.ctx.metrics.koodrive_call("get", "success", seconds);
                    report
                }
                Err(err) => {
                    let class = err.class();
                    self.ctx
                        .metrics
                        .koodrive_call("get", outcome_label(&class), seconds);
                    observed.blocker = Some(match class {
                        ErrorClass::Authentication => Blocker::CredentialsInvalid(err.message()),
                        // A failed read changes nothing in KooDrive: retry it later.
                        _ => Blocker::Unavailable(err.message()),
                    });
                    break;
                }
            };
            let finished = report.is_finished();
            if finished {
                self.ctx
                    .metrics
                    .users("succeeded", report.succeeded.max(0) as u64);
                self.ctx
                    .metrics
                    .users("failed", report.failed.max(0) as u64);
                self.ctx
                    .metrics
                    .users("skipped", report.skipped.max(0) as u64);
                // Skipped users may carry a code too; only a task that counts failures has any.
                let carried: std::collections::HashSet<&str> = ub
                    .status
                    .as_ref()
                    .and_then(|s| {
                        s.tasks
                            .iter()
                            .find(|t| t.task_id.as_deref() == Some(task_id.as_str()))
                    })
                    .map(|t| t.phones.iter().map(String::as_str).collect())
                    .unwrap_or_default();
                // Only phones this task carried: whatever else KooDrive reports is not ours.
                let failed_users = report.users.iter().filter(|u| {
                    report.failed > 0 && is_failure(u) && carried.contains(u.phone.as_str())
                });
                for user in failed_users {
                    if failures.len() < progress::MAX_FAILURES
                        && !failures.iter().any(|f| f.phone == user.phone)
                    {
                        failures.push(UserFailure {
                            phone: user.phone.clone(),
                            code: user
                                .code
                                .as_deref()
                                .map(|c| bounded(c, crate::crd::MAX_ID_LEN)),
                            reason: user
                                .reason
                                .as_deref()
                                .map(|r| bounded(r, crate::crd::MAX_REASON_LEN)),
                        });
                    }
                }
                let note = format!(
                    "KooDrive task {task_id} finished: {} succeeded, {} failed, {} skipped",
                    report.succeeded, report.failed, report.skipped
                );
                let type_ = if report.failed > 0 {
                    EventType::Warning
                } else {
                    EventType::Normal
                };
                self.event(&ub, type_, "TaskFinished", "PollResults", note)
                    .await;
            } else {
                observed.awaiting_results = true;
            }
            let status = ub.status.get_or_insert_with(UserBatchStatus::default);
            if let Some(task) = status
                .tasks
                .iter_mut()
                .find(|t| t.task_id.as_deref() == Some(task_id.as_str()))
            {
                task.result = Some(TaskResult {
                    total: report.total,
                    succeeded: report.succeeded,
                    failed: report.failed,
                    skipped: report.skipped,
                    finished,
                });
            }
        }
        observed.failures = Some(failures);
        Ok(ub)
    }

    /// Computes phase, summary and conditions, and writes them only if something changed.
    async fn write_status(&self, ub: &UserBatch, observed: &Observed) -> Result<Phase, Error> {
        let previous = ub.status.clone().unwrap_or_default();
        let mut next = previous.clone();
        if let Some(failures) = &observed.failures {
            next.failures = failures.clone();
        }
        let progress::Assessment {
            phase,
            conditions: desired,
            summary,
        } = progress::assess(
            &ub.spec.users,
            &next.tasks,
            &next.failures,
            observed.blocker.as_ref(),
        );
        // Operator-side problems (no Secret, bad endpoint) are the latest message too.
        if let Some(blocker) = &observed.blocker
            && matches!(
                blocker,
                Blocker::CredentialsNotFound(_)
                    | Blocker::PasswordNotFound(_)
                    | Blocker::InvalidSpec(_)
            )
            && let Some(ready) = desired.iter().find(|d| d.type_ == conditions::types::READY)
        {
            next.message = Some(ready.message.clone());
        }
        next.phase = Some(phase);
        next.summary = Some(summary);
        next.observed_generation = ub.meta().generation;
        next.conditions =
            conditions::merge(&previous.conditions, &desired, ub.meta().generation, &now());
        if let Some(message) = next.message.as_mut() {
            truncate_in_place(message, crate::crd::MAX_MESSAGE_LEN);
        }
        if next == previous {
            return Ok(phase);
        }
        let transition = ready_transition(&previous.conditions, &next.conditions);
        let mut updated = ub.clone();
        updated.status = Some(next);
        let updated = self
            .api
            .replace_status(&self.name, &PostParams::default(), &updated)
            .await
            .map_err(kube_err("writing status"))?;
        if let Some((type_, reason, message)) = transition {
            self.event(&updated, type_, &reason, "Reconcile", message)
                .await;
        }
        Ok(phase)
    }

    async fn event(
        &self,
        ub: &UserBatch,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(truncate(note, 1000)),
            action: action.into(),
            secondary: None,
        };
        if let Err(err) = self.ctx.recorder.publish(&event, &ub.object_ref(&())).await {
            // Events are best effort: a lost Event must not stop provisioning.
            tracing::warn!(error = %crate::report::chain(&err), reason, "cannot publish Event");
        }
    }
}

impl Context {
    /// Keeps the per-phase gauge in step with this process's latest view of each object.
    fn observe_phase(&self, key: ObjectRef<UserBatch>, phase: Phase) {
        let Ok(mut phases) = self.phases.lock() else {
            return;
        };
        if let Some(old) = phases.insert(key, phase) {
            self.metrics
                .userbatches_by_phase
                .get_or_create(&crate::metrics::PhaseLabels {
                    phase: format!("{old:?}"),
                })
                .dec();
        }
        self.metrics
            .userbatches_by_phase
            .get_or_create(&crate::metrics::PhaseLabels {
                phase: format!("{phase:?}"),
            })
            .inc();
    }
}

/// The Event announcing a new Ready state, for the states not announced where they arise:
/// completion, and problems only a human or another system can fix.
fn ready_transition(
    previous: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    next: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
) -> Option<(EventType, String, String)> {
    use conditions::reasons;
    let ready = conditions::find(next, conditions::types::READY)?;
    let before = conditions::find(previous, conditions::types::READY);
    if before.is_some_and(|b| b.status == ready.status && b.reason == ready.reason) {
        return None;
    }
    if ready.status == "True" {
        return Some((
            EventType::Normal,
            reasons::READY.into(),
            ready.message.clone(),
        ));
    }
    let announced_here = [
        reasons::CREDENTIALS_NOT_FOUND,
        reasons::PASSWORD_NOT_FOUND,
        reasons::INVALID_SPEC,
        reasons::USERS_FAILED,
    ];
    announced_here.contains(&ready.reason.as_str()).then(|| {
        (
            EventType::Warning,
            ready.reason.clone(),
            ready.message.clone(),
        )
    })
}

fn is_failure(user: &koodrive_client::UserResult) -> bool {
    user.code
        .as_deref()
        .is_some_and(|c| !c.is_empty() && c != "0")
}

fn outcome_label(class: &ErrorClass) -> &'static str {
    match class {
        ErrorClass::Transient { .. } => "transient",
        ErrorClass::Authentication => "authentication",
        ErrorClass::Rejected => "rejected",
        ErrorClass::Invalid => "invalid",
        ErrorClass::InDoubt => "in_doubt",
    }
}

fn password_problem(problem: &SecretProblem) -> String {
    format!("cannot read a user's password: {problem}")
}

/// Fingerprint of what a permanent failure depended on: the spec, the endpoint and the
/// versions of the Secrets read.
fn inputs_digest(ub: &UserBatch, default_endpoint: &str, secret_versions: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(ub.meta().generation.unwrap_or_default().to_le_bytes());
    hasher.update(
        ub.spec
            .endpoint
            .as_deref()
            .unwrap_or(default_endpoint)
            .as_bytes(),
    );
    hasher.update([0]);
    hasher.update(secret_versions.as_bytes());
    hex::encode(&hasher.finalize()[..16])
}

/// The spec users of one request, in request order.
fn chunk_users<'u>(users: &'u [User], phones: &[String]) -> Vec<&'u User> {
    let by_phone: std::collections::HashMap<&str, &User> =
        users.iter().map(|u| (u.phone.as_str(), u)).collect();
    phones
        .iter()
        .filter_map(|p| by_phone.get(p.as_str()).copied())
        .collect()
}

/// Hex characters of one user's fingerprint in `TaskRecord::users_digest`.
const USER_DIGEST_LEN: usize = 8;

/// One user's fingerprint: a short hash of the non-secret fields as sent. Passwords are
/// represented only by where they come from, so it reveals nothing about them; 32 bits are
/// plenty to notice an edit.
fn user_digest(user: &User) -> String {
    let mut hasher = Sha256::new();
    let password_source = match (&user.password, &user.password_secret_ref) {
        (Some(_), _) => "inline".to_string(),
        (None, Some(r)) => format!("secret:{}/{}", r.name, r.key),
        (None, None) => String::new(),
    };
    for field in [
        user.phone.as_str(),
        user.firstname.as_str(),
        user.surname.as_deref().unwrap_or(""),
        user.email.as_deref().unwrap_or(""),
        password_source.as_str(),
    ] {
        hasher.update(field.as_bytes());
        hasher.update([0]);
    }
    hex::encode(&hasher.finalize()[..USER_DIGEST_LEN / 2])
}

/// The fingerprints of a request's users, concatenated in `phones` order.
fn users_digest<'u>(users: impl Iterator<Item = &'u User>) -> String {
    users.map(user_digest).collect()
}

/// Phones of submitted users whose fields changed since they were sent.
fn changed_after_submission(ub: &UserBatch, status: &UserBatchStatus) -> Vec<String> {
    let by_phone: std::collections::HashMap<&str, &User> = ub
        .spec
        .users
        .iter()
        .map(|u| (u.phone.as_str(), u))
        .collect();
    let mut changed = Vec::new();
    for task in status.tasks.iter().filter(|t| t.task_id.is_some()) {
        let Some(recorded) = &task.users_digest else {
            continue;
        };
        for (i, phone) in task.phones.iter().enumerate() {
            let sent = recorded.get(i * USER_DIGEST_LEN..(i + 1) * USER_DIGEST_LEN);
            if let (Some(sent), Some(user)) = (sent, by_phone.get(phone.as_str()))
                && user_digest(user) != sent
            {
                changed.push(phone.clone());
            }
        }
    }
    changed
}

fn abbreviate(items: &[String], max: usize) -> String {
    if items.len() <= max {
        items.join(", ")
    } else {
        format!(
            "{}, … and {} more",
            items[..max].join(", "),
            items.len() - max
        )
    }
}

fn truncate(mut text: String, max: usize) -> String {
    truncate_in_place(&mut text, max);
    text
}

/// A copy of `text` that fits a schema bound of `max` bytes.
fn bounded(text: &str, max: usize) -> String {
    truncate(text.to_string(), max)
}

/// Cuts `text` to at most `max` bytes on a character boundary.
fn truncate_in_place(text: &mut String, max: usize) {
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{CredentialsRef, UserBatchSpec};

    fn user(phone: &str, email: &str) -> User {
        User {
            firstname: "Ada".into(),
            surname: None,
            phone: phone.into(),
            email: Some(email.into()),
            password: Some("secret-password".into()),
            password_secret_ref: None,
        }
    }

    fn batch(users: Vec<User>, tasks: Vec<TaskRecord>) -> (UserBatch, UserBatchStatus) {
        let ub = UserBatch::new(
            "b",
            UserBatchSpec {
                credentials_ref: CredentialsRef {
                    name: "c".into(),
                    access_key_key: None,
                    secret_key_key: None,
                    user_id_key: None,
                },
                endpoint: None,
                users,
            },
        );
        let status = UserBatchStatus {
            tasks,
            ..UserBatchStatus::default()
        };
        (ub, status)
    }

    fn task(users: &[User]) -> TaskRecord {
        TaskRecord {
            task_id: Some("1".into()),
            code: Some("0".into()),
            message: None,
            trace_id: "t".into(),
            submitted_at: Time(jiff::Timestamp::UNIX_EPOCH),
            phones: users.iter().map(|u| u.phone.clone()).collect(),
            users_digest: Some(users_digest(users.iter())),
            result: None,
        }
    }

    #[test]
    fn edits_are_named_per_user_even_when_others_were_removed() {
        let sent = [
            user("1", "a@x.io"),
            user("2", "b@x.io"),
            user("3", "c@x.io"),
        ];
        let now = vec![user("2", "changed@x.io"), user("3", "c@x.io")];
        let (ub, status) = batch(now, vec![task(&sent)]);
        assert_eq!(changed_after_submission(&ub, &status), ["2"]);
    }

    #[test]
    fn unchanged_users_are_not_reported() {
        let sent = [user("1", "a@x.io"), user("2", "b@x.io")];
        let (ub, status) = batch(sent.to_vec(), vec![task(&sent)]);
        assert!(changed_after_submission(&ub, &status).is_empty());
    }

    #[test]
    fn the_digest_does_not_depend_on_the_password_value() {
        let mut other = user("1", "a@x.io");
        other.password = Some("another-password".into());
        assert_eq!(user_digest(&user("1", "a@x.io")), user_digest(&other));
        assert_eq!(user_digest(&other).len(), USER_DIGEST_LEN);
    }

    #[test]
    fn inputs_digest_changes_with_generation_and_secret_versions() {
        let (mut ub, _) = batch(vec![user("1", "a@x.io")], vec![]);
        ub.metadata.generation = Some(1);
        let a = inputs_digest(&ub, "https://e", "creds=1");
        assert_eq!(a, inputs_digest(&ub, "https://e", "creds=1"));
        assert_ne!(a, inputs_digest(&ub, "https://e", "creds=2"));
        ub.metadata.generation = Some(2);
        assert_ne!(a, inputs_digest(&ub, "https://e", "creds=1"));
    }
}
