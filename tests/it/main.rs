//! The operator's integration and end-to-end tests, in one binary so a change links once.
//!
//! - [`chart`] — the Helm chart and the Argo CD health check, with the real `helm`, `lua5.1`.
//! - [`crd_schema`], [`crd_validate`] — the generated CRD and offline validation.
//! - [`emulator`] — the Kubernetes API emulator serving the UserBatch CRD, with `kubectl`.
//! - [`koodrive_cli`] — `submit`, `task` and `simulator` as processes.
//! - [`operator_e2e`], [`operator_ha`] — the real `koodrive-operator run` binary against the
//!   emulator and the KooDrive simulator.

mod chart;
mod crd_schema;
mod crd_validate;
mod emulator;
mod emulator_limits;
mod koodrive_cli;
mod operator_e2e;
mod operator_ha;
mod operator_rbac;
mod size_limits;
mod support;
