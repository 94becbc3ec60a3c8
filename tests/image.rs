//! Shipping: the binary away from the checkout.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_koodrive-operator");

// --- demo away from the checkout -------------------------------------------------------

#[test]
fn demo_runs_from_any_directory_with_the_built_in_examples() {
    let elsewhere = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["demo", "--timeout", "60s"])
        .current_dir(elsewhere.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed outside the checkout:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("applied UserBatch default/onboarding-2026-11 (3 users)")
            && stdout.contains("applied UserBatch default/contractors-2026-11 (2 users)"),
        "{stdout}"
    );
    assert!(
        stdout.trim_end().ends_with("all UserBatches Ready"),
        "{stdout}"
    );
    // The examples' placeholder secrets and passwords stay out of the output.
    assert!(!stdout.contains("Change-Me-2026"), "{stdout}");
    assert!(!stdout.contains("REPLACE-WITH-SECRET-KEY"), "{stdout}");
}
