//! Across hosts: the coordinator and three enrolled sites on separate network namespaces
//! ([`fedssl_tests::netns`]: a bridge LAN of our own private test range, `10.211.0.0/24`),
//! as the README's walkthrough does it by hand. `provision` writes the kits for
//! `10.211.0.1`; site-a and site-b train on shards 0/3 and 1/3, site-c on its own folder of
//! PNG files, and site-b's path crosses the impairment relay (`fedssl-relay`: 50 ± 10 ms each
//! way, 2 % loss) running in the coordinator's namespace. A fourth host without a kit is
//! refused in the TLS handshake with a line saying so; the coordinator is killed (SIGKILL)
//! once round 1 is recorded and started again with `--resume`, and the never-restarted
//! clients come back by themselves and finish the run, named by their sites in
//! `rounds.jsonl`.
//!
//! Needs root and `ip` (iproute2): where either is missing the test prints why and skips
//! (`.ci/run` installs iproute2; CI runs as root).

// A test file: a failed unwrap is a failed test, in helpers as in `#[test]` functions.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use fedssl_tests::binary;
use fedssl_tests::netns::Lan;
use fedssl_tests::spawn::{serve_as, wait_for_file, write_tiny, Proc};
use rand::{Rng, SeedableRng};

/// The run: 300 synthetic images in IID shards (site-c brings its own), all three sites
/// needed in every round, 3 rounds of 4 local epochs, a 3 s idle timeout, no evaluation.
const RUN: &[&str] = &[
    "name=\"netns\"",
    "data.train_images=300",
    "data.test_images=60",
    "partition={kind = \"iid\"}",
    "train.batch_size=8",
    "train.local_epochs=4",
    "federation.rounds=3",
    "federation.min_clients=3",
    "federation.sites=[\"site-a\", \"site-b\", \"site-c\"]",
    "federation.round_deadline_seconds=300",
    "federation.idle_timeout_seconds=3",
    "federation.join_timeout_seconds=120",
    "eval.enabled=false",
];

/// Writes `n` PNG files of seeded noise, of a few odd sizes, under `dir` (a site's images).
fn write_pngs(dir: &Path, n: usize) {
    std::fs::create_dir_all(dir.join("scans")).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(21);
    for i in 0..n {
        let (w, h) = [(40, 36), (33, 64), (32, 32)][i % 3];
        let img = image::RgbImage::from_fn(w, h, |_, _| image::Rgb(rng.random::<[u8; 3]>()));
        img.save(dir.join("scans").join(format!("img-{i:03}.png")))
            .unwrap();
    }
}

/// `fedssl-coordinator serve --kit kit` in host 0's namespace, listening on every address there.
fn serve(lan: &Lan, scenario: &Path, out: &Path, kit: &Path, resume: bool) -> Proc {
    let cmd = lan.command(0, &binary("fedssl-coordinator"));
    let kit = ["--kit", kit.to_str().unwrap()];
    serve_as(cmd, scenario, out, "0.0.0.0:4433", &kit, RUN, resume)
}

#[test]
fn three_sites_on_their_own_namespaces_finish_a_run_through_a_kill_and_resume() {
    if let Some(why) = Lan::unavailable() {
        println!(
            "skipped: network namespaces cannot be made here ({why}); needs root and iproute2"
        );
        return;
    }
    let lan = Lan::create("ns", 5).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let scenario = write_tiny(dir.path());
    let kits = dir.path().join("kits");
    let out = dir.path().join("run");
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let coordinator = binary("fedssl-coordinator");
    let st = Command::new(&coordinator)
        .args(["provision", "--sites", "site-a,site-b,site-c"])
        .args([
            "--coordinator-name",
            "10.211.0.1",
            "--port",
            "4433",
            "--out",
        ])
        .arg(&kits)
        .status()
        .unwrap();
    assert!(st.success(), "provision failed");
    let images = dir.path().join("site-c-images");
    write_pngs(&images, 90);

    let mut first = serve(&lan, &scenario, &out, &kits.join("coordinator"), false);
    // site-b's path: the relay in the coordinator's namespace.
    let mut relay_cmd = lan.command(0, Path::new(env!("CARGO_BIN_EXE_fedssl-relay")));
    relay_cmd.args([
        "--listen",
        "10.211.0.1:4434",
        "--upstream",
        "127.0.0.1:4433",
        "--delay-ms",
        "50",
        "--jitter-ms",
        "10",
        "--loss",
        "0.02",
        "--seed",
        "5",
    ]);
    let relay = Proc::start(relay_cmd, logs.join("relay.log"));
    let retrying = ["--retry-for", "2m", "--idle-timeout", "3s", "--quiet"];
    let site = |host: usize, name: &str, extra: &[&str]| {
        let mut c = lan.command(host, &binary("fedssl-client"));
        c.arg("--kit")
            .arg(kits.join(name))
            .args(retrying)
            .args(extra);
        Proc::start(c, logs.join(format!("{name}.log")))
    };
    let images_arg = images.to_str().unwrap();
    let mut sites = [
        site(1, "site-a", &["--shard", "0/3"]),
        site(
            2,
            "site-b",
            &["--shard", "1/3", "--coordinator", "10.211.0.1:4434"],
        ),
        site(3, "site-c", &["--dataset", "folder", "--data", images_arg]),
    ];

    // A fourth host, not enrolled: only the CA's certificate, no kit.
    let mut intruder = lan.command(4, &binary("fedssl-client"));
    intruder
        .args(["--coordinator", "10.211.0.1:4433", "--ca"])
        .arg(kits.join("site-a/ca.pem"))
        .args(["--retry-for", "0", "--quiet"]);
    let mut intruder = Proc::start(intruder, logs.join("intruder.log"));
    let status = intruder.wait_for_exit(Duration::from_secs(120));
    assert!(
        status.is_some_and(|s| !s.success()),
        "the unenrolled client was not refused: {status:?}\n{}",
        intruder.stderr_text()
    );
    assert!(
        intruder
            .stderr_text()
            .contains("refused this client in the TLS handshake"),
        "{}",
        intruder.stderr_text()
    );

    // Round 1 recorded: kill the coordinator, start it again with --resume.
    assert!(
        wait_for_file(
            &out.join("rounds.jsonl"),
            |s| s.lines().count() >= 1,
            Duration::from_secs(300)
        ),
        "round 1 never finished: {}\n{}",
        first.stderr_text(),
        sites
            .iter()
            .map(Proc::stderr_text)
            .collect::<Vec<_>>()
            .join("\n")
    );
    first.child.kill().unwrap(); // SIGKILL
    first.child.wait().unwrap();
    let mut second = serve(&lan, &scenario, &out, &kits.join("coordinator"), true);
    let status = second.wait_for_exit(Duration::from_secs(400));
    assert!(
        status.is_some_and(|s| s.success()),
        "{}",
        second.stderr_text()
    );
    for (k, c) in sites.iter_mut().enumerate() {
        let status = c.wait_for_exit(Duration::from_secs(120));
        assert!(
            status.is_some_and(|s| s.success()),
            "site {k}: {status:?}\n{}",
            c.stderr_text()
        );
        assert!(
            c.stderr_text().contains("reconnecting (attempt 1)"),
            "site {k} did not reconnect by itself:\n{}",
            c.stderr_text()
        );
        // under --quiet a client still says it is back, and counts the round it trained again
        // after the restart once
        assert!(
            c.stderr_text().contains("back with the coordinator after"),
            "site {k}:\n{}",
            c.stderr_text()
        );
        let said = c.stdout_text();
        assert!(
            said.contains("trained 3 round(s); run `netns` finished after 3 rounds"),
            "site {k}: {said}"
        );
    }

    let rounds: Vec<serde_json::Value> = std::fs::read_to_string(out.join("rounds.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rounds.len(), 3, "{rounds:?}");
    let last = rounds.last().unwrap();
    assert_eq!(
        last["sites"],
        serde_json::json!({"0": "site-a", "1": "site-b", "2": "site-c"}),
        "{last}"
    );
    assert!(out.join("final.safetensors").is_file());
    // site-b's traffic went through the relay, which dropped some of it.
    let said = relay.stderr_text();
    let (fwd, dropped) = said
        .lines()
        .rev()
        .find_map(|l| {
            let rest = l.strip_prefix("relay: forwarded ")?;
            let (f, d) = rest.split_once(", dropped ")?;
            Some((f.parse::<u64>().ok()?, d.parse::<u64>().ok()?))
        })
        .unwrap_or_else(|| panic!("the relay reported no traffic:\n{said}"));
    assert!(
        fwd > 100 && dropped > 0,
        "forwarded {fwd}, dropped {dropped}"
    );
}
