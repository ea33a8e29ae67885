//! A run through a bad network: each of three client processes reaches the coordinator
//! through its own UDP impairment relay ([`fedssl_tests::relay`]: 50 ± 10 ms each way, 2 %
//! loss), and client 1's path goes dark for 5 s in round 2 — longer than the 3 s idle
//! timeout, so its connection dies. The client reconnects by itself (`--retry-for`), and the
//! run completes with every client ending with status 0.

// A test file: a failed unwrap is a failed test, in helpers as in `#[test]` functions.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use fedssl_tests::relay::{Impairment, Relay};
use fedssl_tests::spawn::{client, free_udp_port, serve, wait_for_cert, wait_for_file, write_tiny};

#[test]
fn a_run_completes_through_delay_loss_and_a_five_second_outage() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let scenario = write_tiny(dir.path());
    let out = dir.path().join("run");
    let port = free_udp_port();
    let mut server = serve(
        &scenario,
        &out,
        port,
        &[
            "data.train_images=300",
            "partition={kind = \"iid\"}",
            "train.batch_size=8",
            "train.local_epochs=6",
            "federation.rounds=4",
            "federation.min_clients=2",
            "federation.round_deadline_seconds=300",
            "federation.idle_timeout_seconds=3",
            "federation.join_timeout_seconds=120",
            "eval.enabled=false",
        ],
        false,
    );
    let upstream = format!("127.0.0.1:{port}").parse().unwrap();
    let relays: Vec<Relay> = (0..3)
        .map(|k| {
            let imp = Impairment {
                delay: Duration::from_millis(50),
                jitter: Duration::from_millis(10),
                loss: 0.02,
                seed: 100 + k,
            };
            rt.block_on(Relay::start(upstream, imp)).unwrap()
        })
        .collect();
    let cert = wait_for_cert(&out);
    let retrying = ["--retry-for", "2m", "--idle-timeout", "3s"];
    let mut clients: Vec<_> = relays
        .iter()
        .enumerate()
        .map(|(k, r)| client(r.addr().port(), &cert, k as u32, 3, &retrying, dir.path()))
        .collect();

    // Round 1 is recorded: round 2 is under way; client 1's path goes dark.
    assert!(
        wait_for_file(
            &out.join("rounds.jsonl"),
            |s| s.lines().count() >= 1,
            Duration::from_secs(240)
        ),
        "round 1 never finished: {}",
        server.stderr_text()
    );
    relays[1].outage(Duration::from_secs(5));

    let status = server.wait_for_exit(Duration::from_secs(400));
    assert!(
        status.is_some_and(|s| s.success()),
        "{}",
        server.stderr_text()
    );
    for (k, c) in clients.iter_mut().enumerate() {
        let status = c.wait_for_exit(Duration::from_secs(60));
        assert!(
            status.is_some_and(|s| s.success()),
            "client {k}: {status:?}\n{}",
            c.stderr_text()
        );
    }
    let log = clients[1].stderr_text();
    assert!(log.contains("reconnecting (attempt 1)"), "{log}");
    let rounds: Vec<serde_json::Value> = std::fs::read_to_string(out.join("rounds.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rounds.len(), 4, "{rounds:?}");
    assert_eq!(rounds[0]["clients"], serde_json::json!([0, 1, 2]));
    // Whether client 1 is back in time for a later round depends on the machine's speed (on
    // a quiet machine the four rounds end ~12 s after the outage began, before its backoff
    // brings it back), so it is not asserted: that it reconnected and ended with status 0 is.
    assert!(out.join("final.safetensors").exists());
    // every path carried the run, and the relays really dropped datagrams (2 % of a few
    // hundred per path: counted over the three paths, since one path's share can be 0)
    let counts: Vec<(u64, u64)> = relays
        .iter()
        .map(|r| (r.forwarded(), r.dropped()))
        .collect();
    assert!(
        counts.iter().all(|&(f, _)| f > 0),
        "forwarded, dropped: {counts:?}"
    );
    assert!(
        counts.iter().map(|&(_, d)| d).sum::<u64>() > 0,
        "forwarded, dropped: {counts:?}"
    );
}
