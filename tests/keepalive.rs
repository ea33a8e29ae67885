//! Keep-alives: local training much longer than the QUIC idle timeout (2 s on both sides:
//! `federation.idle_timeout_seconds`, `fedssl-client --idle-timeout`) drops no client. The
//! clients are processes; quinn's own task sends a keep-alive every quarter of the idle
//! timeout while training runs on the blocking pool.

// A test file: a failed unwrap is a failed test, in helpers as in `#[test]` functions.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use fedssl_tests::spawn::{client, free_udp_port, serve, wait_for_cert, write_tiny};

#[test]
fn local_training_longer_than_the_idle_timeout_drops_no_client() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = write_tiny(dir.path());
    let out = dir.path().join("run");
    let port = free_udp_port();
    let idle_s = 2.0;
    let mut server = serve(
        &scenario,
        &out,
        port,
        &[
            "data.train_images=300",
            "partition={kind = \"iid\"}",
            "train.batch_size=8",
            "train.local_epochs=20",
            "federation.rounds=1",
            "federation.min_clients=3",
            "federation.round_deadline_seconds=300",
            "federation.idle_timeout_seconds=2",
            "eval.enabled=false",
        ],
        false,
    );
    let cert = wait_for_cert(&out);
    let extra = ["--retry-for", "0", "--idle-timeout", "2s"];
    let mut clients: Vec<_> = (0..3)
        .map(|k| client(port, &cert, k, 3, &extra, dir.path()))
        .collect();
    let status = server.wait_for_exit(Duration::from_secs(300));
    assert!(
        status.is_some_and(|s| s.success()),
        "{}",
        server.stderr_text()
    );
    for (k, c) in clients.iter_mut().enumerate() {
        let status = c.wait_for_exit(Duration::from_secs(60));
        assert!(
            status.is_some_and(|s| s.success()),
            "client {k}: {}",
            c.stderr_text()
        );
    }
    let line = std::fs::read_to_string(out.join("rounds.jsonl")).unwrap();
    let rec: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(rec["clients"], serde_json::json!([0, 1, 2]), "{rec}");
    assert_eq!(rec["dropped"], serde_json::json!([]), "{rec}");
    // what the test is about: the round outlasted the idle timeout three times over
    let seconds = rec["seconds"].as_f64().unwrap();
    assert!(
        seconds >= 3.0 * idle_s,
        "the round took only {seconds:.1} s: raise train.local_epochs so that it outlasts the idle timeout"
    );
}
