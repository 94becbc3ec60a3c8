//! Leader election on a `coordination.k8s.io/v1` Lease (via `kube-lease-manager`): with
//! several replicas only the holder reconciles, so two processes never race to submit.
//! [`run_while_leading`] is the whole orchestration: wait for the Lease, run the work until
//! shutdown or until the Lease is lost, release it.

use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use std::future::Future;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("cannot set up leader election on Lease {namespace}/{name}")]
    Setup {
        namespace: String,
        name: String,
        #[source]
        source: LeaseManagerError,
    },
}

/// The holder identity: the pod name when the chart provides it, else host name plus a
/// random suffix so two processes on one host never share an identity.
pub fn identity() -> String {
    if let Ok(pod) = std::env::var("POD_NAME")
        && !pod.is_empty()
    {
        return pod;
    }
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_else(|| "koodrive-operator".to_string());
    let suffix: String = koodrive_client::new_trace_id().chars().take(8).collect();
    format!("{host}-{suffix}")
}

/// A running election: `is_leader` flips as the Lease is won or lost. Dropping it releases
/// the Lease so a standby can take over without waiting for expiry.
pub struct Election {
    pub is_leader: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<Result<kube_lease_manager::LeaseManager, LeaseManagerError>>,
}

impl Election {
    pub async fn start(
        client: kube::Client,
        namespace: &str,
        name: &str,
        identity: &str,
        lease_duration: Duration,
    ) -> Result<Election, LeaderError> {
        let duration = lease_duration.as_secs().max(2);
        // Renew well before expiry: a third of the duration, at least one second.
        let grace = (duration / 3).max(1);
        let manager = LeaseManagerBuilder::new(client, name)
            .with_namespace(namespace)
            .with_identity(identity)
            .with_duration(duration)
            .with_grace(grace)
            .build()
            .await
            .map_err(|source| LeaderError::Setup {
                namespace: namespace.to_string(),
                name: name.to_string(),
                source,
            })?;
        let (is_leader, task) = manager.watch().await;
        Ok(Election { is_leader, task })
    }

    /// Resolves once this process holds the Lease.
    pub async fn acquired(&mut self) -> bool {
        self.is_leader.wait_for(|leader| *leader).await.is_ok()
    }

    /// Resolves when leadership is lost after having been acquired.
    pub async fn lost(mut rx: watch::Receiver<bool>) {
        let _ = rx.wait_for(|leader| !*leader).await;
    }

    /// Releases the Lease (closing the channel makes the manager release it) and waits.
    pub async fn release(self) {
        drop(self.is_leader);
        match self.task.await {
            Ok(Ok(_)) => tracing::info!("released the leader Lease"),
            Ok(Err(err)) => {
                tracing::warn!(error = %crate::report::chain(&err), "could not release the leader Lease")
            }
            Err(err) => tracing::warn!(error = %err, "leader election task failed"),
        }
    }
}

/// The Lease a replica competes for.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    /// How long a Lease stays valid without renewal.
    pub duration: Duration,
}

/// How leading ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leadership {
    /// Shutdown was requested (before or after becoming leader); the Lease was released.
    Stopped,
    /// The Lease was lost while leading: another replica may already act, so the work was
    /// stopped at once.
    Lost,
}

/// Why leading could not start.
#[derive(Debug, thiserror::Error)]
pub enum LeadError {
    #[error(transparent)]
    Setup(#[from] LeaderError),
    #[error("leader election stopped before this process became leader")]
    ElectionEnded,
}

/// Waits for the Lease (calling `on_standby` meanwhile), then runs `work` with a token
/// cancelled on `shutdown` or when the Lease is lost, and releases the Lease at the end.
pub async fn run_while_leading<W, F>(
    client: kube::Client,
    lease: &LeaseSettings,
    shutdown: &CancellationToken,
    on_standby: impl FnOnce(),
    on_leading: impl FnOnce(),
    work: W,
) -> Result<Leadership, LeadError>
where
    W: FnOnce(CancellationToken) -> F,
    F: Future<Output = ()>,
{
    let mut election = Election::start(
        client,
        &lease.namespace,
        &lease.name,
        &lease.identity,
        lease.duration,
    )
    .await?;
    on_standby();
    tracing::info!(identity = %lease.identity, lease = %lease.name, "waiting to become leader");
    tokio::select! {
        _ = shutdown.cancelled() => {
            election.release().await;
            return Ok(Leadership::Stopped);
        }
        acquired = election.acquired() => if !acquired {
            return Err(LeadError::ElectionEnded);
        }
    }
    on_leading();
    tracing::info!(identity = %lease.identity, "became leader; starting the controller");

    // One token for the work: cancelled by shutdown, or the moment leadership is lost.
    let stop = shutdown.child_token();
    let lost = CancellationToken::new();
    let watcher = {
        let (stop, lost) = (stop.clone(), lost.clone());
        let leader_rx = election.is_leader.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = Election::lost(leader_rx) => {
                    lost.cancel();
                    stop.cancel();
                }
                _ = stop.cancelled() => {}
            }
        })
    };
    work(stop.clone()).await;
    stop.cancel();
    let _ = watcher.await;
    if lost.is_cancelled() && !shutdown.is_cancelled() {
        return Ok(Leadership::Lost);
    }
    election.release().await;
    Ok(Leadership::Stopped)
}
