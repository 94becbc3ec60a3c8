//! koodrive-operator: provisions users into Huawei Cloud KooDrive from `UserBatch` resources.
//!
//! Module map (find a behaviour by its name):
//! - [`crd`] — the `UserBatch`, `KooDriveAccount` and `ClusterKooDriveAccount` API types
//!   (plain data).
//! - [`validation`] — offline checks of their manifests against the CRD schemas and CEL rules.
//! - [`controller`] — the reconciler that turns UserBatches into KooDrive tasks, and the
//!   account controller that checks accounts' credentials.
//! - [`leader`] — leader election on a Lease, so only one replica reconciles.
//! - [`health`] and [`metrics`] — `/healthz`, `/readyz` and Prometheus `/metrics`.
//! - [`vocabulary`] — condition types and reasons, Event reasons and actions.
//! - [`telemetry`] — logging set-up; [`report`] — how errors are printed.
//! - [`commands`] — one module per CLI subcommand; [`cli`] wires them to clap.
//! - [`devtools`] (feature `dev-tools`) — the test doubles configured for this operator.
//!
//! KooDrive's API (signing, the client) is the `koodrive-client` crate; the Kubernetes API
//! emulator and the KooDrive simulator are the `kube-emulator` and `koodrive-simulator`
//! crates, linked only with the `dev-tools` feature.

pub mod cli;
pub mod commands;
pub mod controller;
pub mod crd;
#[cfg(feature = "dev-tools")]
pub mod devtools;
pub mod health;
pub mod leader;
pub mod manifests;
pub mod metrics;
pub mod report;
pub mod telemetry;
pub mod validation;
pub mod vocabulary;
