//! The test doubles wired to this operator (the `dev-tools` feature): a Kubernetes API
//! emulator that serves the UserBatch CRD and admits UserBatches exactly as the CRD's schema
//! and CEL rules would on a real cluster.

use crate::crd::{self, GROUP};
use crate::validation;
use kube_emulator::{Admission, EmulatorConfig, Violation};

/// An emulator configuration with every CRD this operator owns installed and the same
/// admission a real API server derives from them.
pub fn emulator_config() -> EmulatorConfig {
    EmulatorConfig {
        crds: vec![crd_json()],
        admission: vec![userbatch_admission()],
        ..EmulatorConfig::default()
    }
}

/// The UserBatch CRD as the JSON object the emulator stores.
pub fn crd_json() -> serde_json::Value {
    // Serialising our own generated CRD cannot fail short of a serializer bug, which the
    // CRD drift test would catch first.
    serde_json::to_value(crd::crd()).expect("the CRD serializes to JSON")
}

/// Admission of UserBatches against the CRD's schema and CEL rules.
pub fn userbatch_admission() -> Admission {
    Admission::new(GROUP, "UserBatch", |object| {
        validation::validate_userbatch(object)
            .into_iter()
            .map(|v| Violation {
                path: v.path,
                problem: v.problem,
            })
            .collect()
    })
}
