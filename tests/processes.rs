//! Real processes: `serve` on loopback and three `fedssl-client` processes, as a user would
//! run them by hand; one client is killed (SIGKILL) mid-round and the run still completes.

// A test file: a failed unwrap is a failed test, in helpers as in `#[test]` functions.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fedssl_coordinator::run::job::{run_job, Job, Mode};
use fedssl_tests::spawn::{free_udp_port, wait_for_file};

/// The tiny scenario as this test needs it: 300 images in IID shards over 3 clients (at least
/// 2), 3 rounds, batches of 8, a 4 s idle timeout, no evaluation.
const PROCS: &[&str] = &[
    "name=\"procs\"",
    "seed=5",
    "data.train_images=300",
    "data.test_images=100",
    "partition={kind = \"iid\"}",
    "train.batch_size=8",
    "federation.rounds=3",
    "federation.round_deadline_seconds=300",
    "federation.idle_timeout_seconds=4",
    "federation.join_timeout_seconds=120",
    "eval.enabled=false",
    "eval.epochs=100",
];

fn spawn_client(bin: &Path, port: u16, cert: &Path, k: u32) -> Child {
    Command::new(bin)
        .args(["--coordinator", &format!("127.0.0.1:{port}"), "--ca"])
        .arg(cert)
        .args([
            "--shard",
            &format!("{k}/3"),
            "--quiet",
            "--name",
            &format!("proc-{k}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot start fedssl-client")
}

#[test]
fn serve_with_three_client_processes_survives_a_killed_client() {
    // The client binary is found (built if need be) before the coordinator's clocks start.
    let client = fedssl_tests::binary("fedssl-client");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("serve");
    let port = free_udp_port();
    let sc = fedssl_tests::tiny(PROCS);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let job = Job {
        scenario: sc,
        out: out.clone(),
        mode: Mode::Serve {
            listen: format!("127.0.0.1:{port}").parse().unwrap(),
            identity: None,
            names: vec![],
            kit: None,
            revoked: None,
        },
        progress: false,
        resume: false,
    };
    let server = rt.spawn(run_job(job));
    let cert = out.join("cert.pem");
    assert!(
        wait_for_file(
            &cert,
            |s| s.contains("END CERTIFICATE"),
            Duration::from_secs(30)
        ),
        "serve wrote no cert.pem"
    );
    let mut clients: Vec<Child> = (0..3)
        .map(|k| spawn_client(&client, port, &cert, k))
        .collect();

    // Kill client 1 as soon as round 1 is aggregated: it is then inside round 2.
    let rounds = out.join("rounds.jsonl");
    assert!(
        wait_for_file(
            &rounds,
            |s| s.lines().count() >= 1,
            Duration::from_secs(240)
        ),
        "round 1 never finished"
    );
    clients[1].kill().unwrap();
    clients[1].wait().unwrap();

    let summary =
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(300), server).await });
    let summary = summary
        .expect("the run hung after a client was killed")
        .unwrap()
        .unwrap();
    assert_eq!(summary.rounds_completed, 3);
    for (k, c) in clients.iter_mut().enumerate() {
        if k != 1 {
            let status = c.wait().unwrap();
            assert!(status.success(), "client {k} exited with {status}");
        }
    }
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&rounds)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["clients"], serde_json::json!([0, 1, 2]));
    // Killed during round 2 (or, if its update had already left, from round 3 on).
    let dropped_r2 = lines[1]["dropped"] == serde_json::json!([1]);
    let absent_r3 = lines[2]["clients"] == serde_json::json!([0, 2]);
    assert!(dropped_r2 || absent_r3, "{lines:?}");
    assert_eq!(lines[2]["clients"], serde_json::json!([0, 2]));
    assert!(out.join("final.safetensors").exists());
    assert!(out.join("summary.json").exists());
}

/// Runs `fedssl-client` with `args`, asserts that it fails, and returns its stderr.
fn failing_client(args: &[&str]) -> String {
    let out = fedssl_tests::client_command().args(args).output().unwrap();
    assert!(!out.status.success(), "fedssl-client {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn client_with_bad_arguments_fails_with_one_clear_line() {
    let base = [
        "--coordinator",
        "127.0.0.1:1",
        "--ca",
        "/nonexistent/cert.pem",
    ];
    let err = failing_client(&[&base[..], &["--shard", "3/3"]].concat());
    assert!(err.contains("--shard `3/3`"), "{err}");
    let err = failing_client(&base);
    assert!(err.contains("/nonexistent/cert.pem"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}
