//! The `partition` subcommand as a user runs it: the built binary on a synthetic scenario
//! writes `partition.json` and `partition.png` and prints the figures; an impossible split
//! exits 1 with one line and writes nothing.

// A test file: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::process::Command;

const SCENARIO: &str = "name = \"split-cli\"\nseed = 3\n[data]\ntrain_images = 400\n\
[federation]\nclients = 8\n[partition]\nkind = \"dirichlet\"\nalpha = 0.5\n";

fn coordinator() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fedssl-coordinator"))
}

#[test]
fn partition_writes_the_report_and_the_heat_map() {
    let dir = tempfile::tempdir().unwrap();
    let sc = dir.path().join("split.toml");
    std::fs::write(&sc, SCENARIO).unwrap();
    let out = dir.path().join("out");
    let o = coordinator()
        .arg("partition")
        .arg(&sc)
        .args(["--set", "partition.alpha=0.1", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stdout.starts_with("| clients | images |"), "{stdout}");
    assert!(
        stdout.lines().nth(2).unwrap().starts_with("| 8 | 400 |"),
        "{stdout}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("partition.json")).unwrap())
            .unwrap();
    let clients = v["clients"].as_array().unwrap();
    assert_eq!(clients.len(), 8);
    let images: u64 = clients.iter().map(|c| c["images"].as_u64().unwrap()).sum();
    assert_eq!(images, 400);
    // α = 0.1 (from --set) is far from IID
    assert!(
        v["summary"]["mean_emd"].as_f64().unwrap() > 0.5,
        "{}",
        v["summary"]
    );
    let png = image::open(out.join("partition.png")).unwrap();
    // 8 clients: rows of 480 / 8 = 60 → 24 px, 150 + 8 · 24 = 342
    assert_eq!((png.width(), png.height()), (900, 342));
}

#[test]
fn an_impossible_split_exits_1_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let sc = dir.path().join("split.toml");
    std::fs::write(&sc, SCENARIO).unwrap();
    let out = dir.path().join("out");
    let o = coordinator()
        .arg("partition")
        .arg(&sc)
        .args(["--set", "partition.min_size=60", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: scenario split-cli: cannot split 400 images among 8 clients")
            && stderr
                .contains("partition.min_size = 60 needs 60 x 8 clients = 480 images, only 400"),
        "{stderr}"
    );
    assert!(!out.exists());
}
