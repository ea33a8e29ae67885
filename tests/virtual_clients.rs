//! A simulation beyond one process: `serve` and two `fedssl-client --virtual` processes of
//! 50 virtual clients each run the federation that `simulate` runs with 100 clients in one
//! process — the same clients sampled in every round, the same bytes of the final backbone.

// A test file: a failed unwrap is a failed test, in helpers as in `#[test]` functions.
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use fedssl_tests::binary;
use fedssl_tests::spawn::{free_udp_port, serve, wait_for_cert, write_tiny, Proc};

/// 100 clients of 8 images each (IID), 10 sampled a round, 2 rounds, no evaluation; the first
/// round waits up to 60 s for all of them (two processes start one after the other).
const HUNDRED: &[&str] = &[
    "data.train_images=800",
    "partition={kind = \"iid\"}",
    "train.batch_size=8",
    "federation.clients=100",
    "federation.participation=0.1",
    "federation.start_grace_seconds=60",
    "federation.join_timeout_seconds=120",
    "eval.enabled=false",
];

/// The clients of each round of the run in `out` (its `rounds.jsonl`).
fn sampled(out: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("rounds.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["clients"].clone())
        .collect()
}

#[test]
fn two_processes_of_fifty_virtual_clients_are_the_simulation_of_a_hundred() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = write_tiny(dir.path());
    let client_bin = binary("fedssl-client");

    // simulate: 100 in-process clients
    let sim = dir.path().join("sim");
    let mut cmd = Command::new(binary("fedssl-coordinator"));
    cmd.arg("simulate")
        .arg(&scenario)
        .arg("--out")
        .arg(&sim)
        .arg("--quiet");
    for s in HUNDRED {
        cmd.args(["--set", s]);
    }
    let mut p = Proc::start(cmd, dir.path().join("sim.log"));
    let status = p.wait_for_exit(Duration::from_secs(600));
    assert!(
        status.is_some_and(|s| s.success()),
        "simulate failed: {}",
        p.stderr_text()
    );

    // serve + clients 0..50 and 50..100 as two processes
    let out = dir.path().join("serve");
    let port = free_udp_port();
    let mut server = serve(&scenario, &out, port, HUNDRED, false);
    let cert = wait_for_cert(&out);
    let slices: Vec<Proc> = ["0..50/100", "50..100/100"]
        .iter()
        .enumerate()
        .map(|(i, slice)| {
            let mut cmd = Command::new(&client_bin);
            cmd.args(["--coordinator", &format!("127.0.0.1:{port}"), "--ca"])
                .arg(&cert)
                .args(["--virtual", slice, "--quiet", "--concurrent-training", "1"])
                .arg("--state-dir")
                .arg(dir.path().join(format!("state-{i}")));
            Proc::start(cmd, dir.path().join(format!("slice-{i}.log")))
        })
        .collect();
    // a slice of another run's size is refused at once, and leaves no temporary state folder
    let tmp = dir.path().join("tmp-refused");
    std::fs::create_dir(&tmp).unwrap();
    let refused = Command::new(&client_bin)
        .args(["--coordinator", &format!("127.0.0.1:{port}"), "--ca"])
        .arg(&cert)
        .args(["--virtual", "0..2/7", "--quiet"])
        .env("TMPDIR", &tmp)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{err}");
    assert!(err.contains("shard 0/7 does not fit this run"), "{err}");
    assert!(!err.contains("state kept"), "{err}");
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().flatten().collect();
    assert!(left.is_empty(), "left behind: {left:?}");

    let status = server.wait_for_exit(Duration::from_secs(600));
    assert!(
        status.is_some_and(|s| s.success()),
        "serve failed: {}",
        server.stderr_text()
    );
    for (i, mut s) in slices.into_iter().enumerate() {
        let st = s.wait_for_exit(Duration::from_secs(60));
        assert!(
            st.is_some_and(|st| st.success()),
            "slice {i} failed: {}",
            s.stderr_text()
        );
        let line = s.stdout_text();
        assert!(
            line.starts_with(&format!(
                "virtual clients {} of 100: 50 finished, 0 failed",
                ["0..50", "50..100"][i]
            )),
            "{line}"
        );
    }

    let (a, b) = (sampled(&sim), sampled(&out));
    assert_eq!(a.len(), 2);
    assert_eq!(a[0].as_array().unwrap().len(), 10, "{a:?}");
    assert_eq!(a, b, "the rounds sampled other clients");
    let wa = std::fs::read(sim.join("final.safetensors")).unwrap();
    let wb = std::fs::read(out.join("final.safetensors")).unwrap();
    assert!(wa == wb, "the final backbones differ");
}

#[test]
fn a_bad_slice_or_a_kit_is_refused_in_one_line() {
    let run = |args: &[&str]| {
        let out = fedssl_tests::client_command().args(args).output().unwrap();
        assert!(!out.status.success(), "fedssl-client {args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let base = ["--coordinator", "127.0.0.1:1", "--ca", "/nonexistent.pem"];
    let e = run(&[&base[..], &["--virtual", "50..10/100"]].concat());
    assert!(
        e.contains("--virtual `50..10/100`: need 0 <= A < B <= N"),
        "{e}"
    );
    let e = run(&[&base[..], &["--virtual", "0..10/100", "--shard", "0/3"]].concat());
    assert!(e.contains("--shard") && e.contains("--virtual"), "{e}");
    let e = run(&["--kit", "/nonexistent", "--virtual", "0..10/100"]);
    assert!(e.contains("--virtual with --kit"), "{e}");
    assert_eq!(e.trim().lines().count(), 1, "{e}");
}
