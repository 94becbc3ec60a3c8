//! The operator's integration and end-to-end tests, in one binary so a change links once.
//!
//! - [`accounts`] — KooDriveAccount and ClusterKooDriveAccount (issue #13): who may use a
//!   cluster account, a wrong SK reported once on the account, per-account limits,
//!   `check-credentials`, and the accounts' validation.
//! - [`chart`] — the Helm chart and the Argo CD health check, with the real `helm`, `lua5.1`.
//! - [`crd_schema`], [`crd_validate`] — the generated CRD and offline validation.
//! - [`hostile`] — the at-most-once and no-leak promises under hostile gateways, tenants,
//!   clocks and CI logs (issue #9).
//! - [`emulator`], [`emulator_limits`] — the Kubernetes API emulator serving the UserBatch
//!   CRD, with `kubectl`; the API server's limits and status codes.
//! - [`size_limits`] — the largest UserBatch a real cluster holds, applied with `kubectl`.
//! - [`operator_rbac`] — the operator under the chart's RBAC; a missing rule surfaces.
//! - [`image`] — the binary away from the checkout, KooDrive behind a private CA, and the
//!   container image started with runc.
//! - [`koodrive_cli`] — `submit`, `task` and `simulator` as processes.
//! - [`lifecycle`] — the user lifecycle (issue #12): retries, removals, `deletionPolicy`,
//!   the deletion guard and `suspend`, end to end.
//! - [`operator_e2e`], [`operator_ha`] — the real `koodrive-operator run` binary against the
//!   emulator and the KooDrive simulator.
//! - [`workspace`] — the crates, and a production build without the test doubles.
//! - [`protocol`] — the at-most-once call order, request by request, against a mock API
//!   server.

mod accounts;
mod chart;
mod crd_schema;
mod crd_validate;
mod emulator;
mod emulator_limits;
mod hostile;
mod image;
mod koodrive_cli;
mod lifecycle;
mod operator_e2e;
mod operator_ha;
mod operator_rbac;
mod protocol;
mod size_limits;
mod support;
mod workspace;
