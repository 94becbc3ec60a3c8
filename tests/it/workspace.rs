//! The workspace's shape (issue #10): the crates it is made of, and a production build that
//! links neither test double.

use std::process::Command;

fn cargo(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo runs");
    assert!(
        output.status.success(),
        "cargo {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn the_workspace_is_the_operator_and_its_three_crates() {
    let metadata: serde_json::Value = serde_json::from_str(&cargo(&[
        "metadata",
        "--format-version",
        "1",
        "--no-deps",
        "--offline",
        "--locked",
    ]))
    .unwrap();
    let mut members: Vec<String> = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    members.sort();
    assert_eq!(
        members,
        [
            "koodrive-client",
            "koodrive-operator",
            "koodrive-simulator",
            "kube-emulator"
        ]
    );
}

#[test]
fn the_production_build_links_no_test_double() {
    let production = cargo(&[
        "tree",
        "-e",
        "normal",
        "--no-default-features",
        "-p",
        "koodrive-operator",
        "--prefix",
        "none",
        "--offline",
        "--locked",
    ]);
    assert!(production.contains("koodrive-client"), "{production}");
    for double in ["kube-emulator", "koodrive-simulator"] {
        assert!(
            !production.contains(double),
            "the production build links {double}"
        );
    }
    // The default build (what `cargo run -- demo` uses) does link them.
    let default = cargo(&[
        "tree",
        "-e",
        "normal",
        "-p",
        "koodrive-operator",
        "--prefix",
        "none",
        "--offline",
        "--locked",
    ]);
    assert!(default.contains("kube-emulator") && default.contains("koodrive-simulator"));
}
