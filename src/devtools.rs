//! The test doubles wired to this operator (the `dev-tools` feature): a Kubernetes API
//! emulator that serves the operator's CRDs (UserBatch, KooDriveAccount,
//! ClusterKooDriveAccount) and admits their objects exactly as the CRDs' schemas and CEL rules
//! would on a real cluster.

use crate::crd::{CrdKind, GROUP};
use crate::validation;
use kube_emulator::{Admission, EmulatorConfig, Violation};

/// An emulator configuration with every CRD this operator owns installed and the same
/// admission a real API server derives from them.
pub fn emulator_config() -> EmulatorConfig {
    EmulatorConfig {
        crds: CrdKind::ALL.into_iter().map(crd_json_of).collect(),
        admission: CrdKind::ALL.into_iter().map(admission_of).collect(),
        ..EmulatorConfig::default()
    }
}

/// One of the operator's CRDs as the JSON object the emulator stores.
pub fn crd_json_of(kind: CrdKind) -> serde_json::Value {
    // Serialising our own generated CRD cannot fail short of a serializer bug, which the
    // CRD drift test would catch first.
    serde_json::to_value(kind.crd()).expect("the CRD serializes to JSON")
}

/// Admission of one kind's objects against its CRD's schema and CEL rules; updates are
/// checked where they change the object, as the API server's validation ratcheting does.
pub fn admission_of(kind: CrdKind) -> Admission {
    fn violations(found: Vec<validation::Violation>) -> Vec<Violation> {
        found
            .into_iter()
            .map(|v| Violation {
                path: v.path,
                problem: v.problem,
            })
            .collect()
    }
    Admission::new(GROUP, kind.kind(), move |object| {
        violations(validation::validate_object(kind, object))
    })
    .with_update_check(move |object, old| {
        violations(validation::validate_update(kind, object, old))
    })
}

/// The UserBatch CRD as the JSON object the emulator stores.
pub fn crd_json() -> serde_json::Value {
    crd_json_of(CrdKind::Userbatch)
}

/// Admission of UserBatches against the CRD's schema and CEL rules.
pub fn userbatch_admission() -> Admission {
    admission_of(CrdKind::Userbatch)
}
