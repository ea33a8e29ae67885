//! Clients that stay connected, as processes on loopback: a coordinator killed (SIGKILL)
//! mid-run and started again with `serve --resume` takes back its three clients — never
//! restarted, they reconnect by themselves — and finishes the run bit-identical to an
//! uninterrupted one (local pretext heads, kept by the clients); a client refused for who it
//! is does not retry; a client gives up after `--retry-for`.

// A test file: a failed unwrap is a failed test, in helpers as in `#[test]` functions.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use fedssl_tests::spawn::{
    client, free_udp_port, serve, wait_for_cert, wait_for_file, write_tiny, Proc,
};

/// The tiny scenario for these runs: 300 images in IID shards over 3 clients, all 3 needed
/// (so that every round samples the same clients however they come back), 3 rounds of 4
/// local epochs (a round lasts long enough to kill the coordinator inside the next one),
/// FedBN (the clients keep their BatchNorm tensors as well as their pretext heads, which are
/// local by default), a 3 s idle timeout, no evaluation.
const RUN: &[&str] = &[
    "name=\"reconnect\"",
    "seed=11",
    "data.train_images=300",
    "data.test_images=60",
    "partition={kind = \"iid\"}",
    "train.batch_size=8",
    "train.local_epochs=4",
    "federation.rounds=3",
    "federation.min_clients=3",
    "federation.batch_norm=\"local\"",
    "federation.round_deadline_seconds=300",
    "federation.idle_timeout_seconds=3",
    "federation.join_timeout_seconds=120",
    "eval.enabled=false",
];

/// What the clients of these runs pass besides their shard.
const RETRYING: &[&str] = &["--retry-for", "2m", "--idle-timeout", "3s"];

fn start_clients(port: u16, out: &Path, logs: &Path) -> Vec<Proc> {
    let cert = wait_for_cert(out);
    (0..3)
        .map(|k| client(port, &cert, k, 3, RETRYING, logs))
        .collect()
}

/// Waits for every client to exit with success, showing their logs if one does not.
fn clients_succeed(clients: &mut [Proc]) {
    for (k, c) in clients.iter_mut().enumerate() {
        let status = c.wait_for_exit(Duration::from_secs(300));
        assert!(
            status.is_some_and(|s| s.success()),
            "client {k}: {status:?}\n{}",
            c.stderr_text()
        );
    }
}

fn rounds_of(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("rounds.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn a_killed_and_resumed_coordinator_takes_its_clients_back_and_ends_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = write_tiny(dir.path());

    // The uninterrupted run.
    let whole = dir.path().join("whole");
    let port = free_udp_port();
    let mut server = serve(&scenario, &whole, port, RUN, false);
    let mut clients = start_clients(port, &whole, &dir.path().join("whole-logs"));
    let status = server.wait_for_exit(Duration::from_secs(300));
    assert!(
        status.is_some_and(|s| s.success()),
        "{}",
        server.stderr_text()
    );
    clients_succeed(&mut clients);

    // The same run, its coordinator killed once round 1 is checkpointed and recorded.
    let cut = dir.path().join("cut");
    let port = free_udp_port();
    let mut first = serve(&scenario, &cut, port, RUN, false);
    let logs = dir.path().join("cut-logs");
    let mut clients = start_clients(port, &cut, &logs);
    assert!(
        wait_for_file(
            &cut.join("rounds.jsonl"),
            |s| s.lines().count() >= 1,
            Duration::from_secs(240)
        ),
        "round 1 never finished: {}",
        first.stderr_text()
    );
    first.child.kill().unwrap(); // SIGKILL
    first.child.wait().unwrap();
    assert!(cut.join("checkpoints/round-0001.safetensors").exists());
    assert!(
        !cut.join("checkpoints/round-0002.safetensors").exists(),
        "the coordinator was killed too late: round 2 was already checkpointed"
    );
    let mut second = serve(&scenario, &cut, port, RUN, true);
    let status = second.wait_for_exit(Duration::from_secs(300));
    assert!(
        status.is_some_and(|s| s.success()),
        "{}",
        second.stderr_text()
    );
    assert!(
        second
            .stderr_text()
            .contains("resuming with the certificate the run wrote"),
        "{}",
        second.stderr_text()
    );
    clients_succeed(&mut clients);
    for (k, c) in clients.iter().enumerate() {
        let log = c.stderr_text();
        assert!(
            log.contains("reconnecting (attempt 1)"),
            "client {k} did not reconnect:\n{log}"
        );
    }

    // Rounds 2 and 3 ran again with the three clients, and the result is the same, bit for bit.
    let rounds = rounds_of(&cut);
    assert_eq!(rounds.len(), 3, "{rounds:?}");
    for r in &rounds {
        assert_eq!(r["clients"], serde_json::json!([0, 1, 2]), "{r}");
    }
    for file in ["checkpoints/round-0002.safetensors", "final.safetensors"] {
        let a = std::fs::read(whole.join(file)).unwrap();
        let b = std::fs::read(cut.join(file)).unwrap();
        assert!(a == b, "{file} differs from the uninterrupted run's");
    }
}

#[test]
fn a_client_gives_up_after_its_retry_window_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    // any certificate will do: nobody listens on the port
    std::fs::write(
        &cert,
        fedssl_coordinator::server::tls::self_signed(&[])
            .unwrap()
            .cert_pem,
    )
    .unwrap();
    let port = free_udp_port();
    let mut c = client(
        port,
        &cert,
        0,
        3,
        &["--retry-for", "3s", "--idle-timeout", "1s"],
        dir.path(),
    );
    let status = c.wait_for_exit(Duration::from_secs(60));
    let log = c.stderr_text();
    assert!(status.is_some_and(|s| !s.success()), "{status:?}\n{log}");
    assert!(log.contains("reconnecting (attempt 1)"), "{log}");
    let last = log.trim().lines().last().unwrap_or_default();
    assert!(
        last.contains("gave up reconnecting to the coordinator after 3s (--retry-for)")
            && last.contains("cannot reach the coordinator at 127.0.0.1:"),
        "{log}"
    );
}

/// `fedssl-client --kit kit --coordinator 127.0.0.1:port --server-name localhost --quiet
/// --retry-for 10m`, stderr to `logs/<name>.log`.
fn kit_client(kit: &Path, port: u16, logs: &Path, name: &str) -> Proc {
    let mut cmd = std::process::Command::new(fedssl_tests::binary("fedssl-client"));
    cmd.arg("--kit")
        .arg(kit)
        .args(["--coordinator", &format!("127.0.0.1:{port}")])
        .args([
            "--server-name",
            "localhost",
            "--quiet",
            "--retry-for",
            "10m",
        ]);
    Proc::start(cmd, logs.join(format!("{name}.log")))
}

#[test]
fn a_client_refused_for_who_it_is_exits_at_once_without_retrying() {
    use fedssl_coordinator::provision::{provision, ProvisionRequest};
    let dir = tempfile::tempdir().unwrap();
    let req = |sites: &[&str]| ProvisionRequest {
        sites: sites.iter().map(|s| s.to_string()).collect(),
        coordinator_names: vec!["localhost".into()],
        port: 4433,
        days: 3,
    };
    let kits = dir.path().join("kits");
    provision(&req(&["site-a", "site-b", "site-c", "site-d"]), &kits).unwrap();
    let other = dir.path().join("other");
    provision(&req(&["site-a"]), &other).unwrap();
    let revoked = dir.path().join("revoked.txt");
    std::fs::write(&revoked, "site-c\n").unwrap();

    let scenario = write_tiny(dir.path());
    let out = dir.path().join("run");
    let port = free_udp_port();
    let mut cmd = std::process::Command::new(fedssl_tests::binary("fedssl-coordinator"));
    cmd.arg("serve")
        .arg(&scenario)
        .arg("--out")
        .arg(&out)
        .args(["--listen", &format!("127.0.0.1:{port}"), "--quiet", "--kit"])
        .arg(kits.join("coordinator"))
        .arg("--revoked")
        .arg(&revoked)
        .args([
            "--set",
            "federation.sites=[\"site-a\", \"site-b\", \"site-c\"]",
        ]);
    let server = Proc::start(cmd, dir.path().join("serve.log"));
    assert!(
        wait_for_file(
            &server.stderr,
            |s| s.contains("listening on"),
            Duration::from_secs(60)
        ),
        "serve did not start: {}",
        server.stderr_text()
    );
    // a site certificate of another CA, with this run's ca.pem (so the client trusts the
    // coordinator, and the coordinator's TLS refuses the client)
    let forged = dir.path().join("forged");
    std::fs::create_dir_all(&forged).unwrap();
    for f in ["cert.pem", "key.pem", "client.toml"] {
        std::fs::copy(other.join("site-a").join(f), forged.join(f)).unwrap();
    }
    std::fs::copy(kits.join("site-a").join("ca.pem"), forged.join("ca.pem")).unwrap();
    let logs = dir.path();
    for (kit, why) in [
        (kits.join("site-d"), "not enrolled in this run"),
        (kits.join("site-c"), "is revoked"),
        (forged, "does not trust the CA of this client's certificate"),
        (other.join("site-a"), "does not trust the coordinator"),
    ] {
        let mut c = kit_client(&kit, port, logs, "refused");
        // a client that retried would still be running after a minute (--retry-for 10m)
        let status = c.wait_for_exit(Duration::from_secs(60));
        let log = c.stderr_text();
        assert!(status.is_some_and(|s| !s.success()), "{status:?}\n{log}");
        assert!(log.contains(why), "{kit:?}: {log}");
        assert!(!log.contains("reconnecting"), "{kit:?} retried: {log}");
    }
}
