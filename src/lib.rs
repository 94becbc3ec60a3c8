//! koodrive-operator: provisions users into Huawei Cloud KooDrive from `UserBatch` resources.
//!
//! Module map (find a behaviour by its name):
//! - [`crd`] — the `UserBatch` API types (plain data).
//! - [`validation`] — offline checks of UserBatch manifests against the CRD schema and CEL rules.
//! - [`koodrive`] — KooDrive's HTTP API: request signing and the client. Knows nothing of Kubernetes.
//! - [`simulator`] — a local KooDrive that verifies signatures, for tests and experiments.
//! - [`emulator`] — an in-process Kubernetes API server subset, for tests and `demo`.
//! - [`controller`] — the reconciler that turns UserBatches into KooDrive tasks.
//! - [`commands`] — one module per CLI subcommand; [`cli`] wires them to clap.

pub mod cli;
pub mod commands;
pub mod controller;
pub mod crd;
pub mod emulator;
pub mod health;
pub mod koodrive;
pub mod leader;
pub mod manifests;
pub mod metrics;
pub mod simulator;
pub mod telemetry;
pub mod validation;
