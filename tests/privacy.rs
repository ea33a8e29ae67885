//! End-to-end: DP-FedAvg (`[federation.dp]`) over loopback QUIC on tiny synthetic data — the
//! accountant's (ε, δ) in every round's line and in `summary.json`, and a resumed DP run
//! bit-identical to an uninterrupted one (noise seeded per round, S checkpointed).

// A test file: a failed unwrap is a failed test, in helpers as in `#[test]` functions.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use fedssl_coordinator::privacy::accountant::Accountant;
use fedssl_coordinator::run::job::{run_job, Job, Mode};
use fedssl_coordinator::run::outputs::Summary;
use fedssl_shared::config::Scenario;
use fedssl_shared::weights::WeightSet;
use fedssl_tests::tiny;
use serde_json::Value;

async fn run(sc: Scenario, out: &Path, resume: bool) -> anyhow::Result<Summary> {
    run_job(Job {
        scenario: sc,
        out: out.to_path_buf(),
        mode: Mode::Simulate,
        progress: false,
        resume,
    })
    .await
}

const DP: [&str; 4] = [
    "pretext.share_heads=true",
    "eval.enabled=false",
    "federation.dp={clip_norm=0.5,noise_multiplier=1.0,delta=1e-3,adaptive={target_quantile=0.5,lr=0.2,count_stddev=1.0}}",
    "federation.rounds=2",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dp_rounds_report_epsilon_and_resume_bit_identically() {
    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("whole");
    let sc = tiny(&DP);
    let (clients, sampled) = (sc.federation.clients, sc.federation.max_sampled());
    let s = run(sc, &whole, false).await.unwrap();
    assert_eq!(s.rounds_completed, 2);
    let acc = Accountant::new(1.0, sampled as f64 / clients as f64).unwrap();
    let lines: Vec<Value> = std::fs::read_to_string(whole.join("rounds.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for (i, line) in lines.iter().enumerate() {
        let p = &line["privacy"];
        let want = acc.spent(i as u64 + 1, 1e-3).unwrap();
        assert!((p["epsilon_rdp"].as_f64().unwrap() - want.epsilon_rdp).abs() < 1e-9);
        assert!((p["epsilon_zcdp"].as_f64().unwrap() - want.epsilon_zcdp).abs() < 1e-9);
        // the noise std is z_Δ·S with z_Δ > z under adaptive clipping's split
        assert!(p["noise_stddev"].as_f64().unwrap() > p["clip_norm"].as_f64().unwrap());
        assert_eq!(p["updates"].as_u64().unwrap(), sampled as u64);
    }
    assert_eq!(lines[0]["privacy"]["clip_norm"].as_f64().unwrap(), 0.5);
    // adaptive clipping moved S after round 1
    assert_ne!(
        lines[1]["privacy"]["clip_norm"],
        lines[0]["privacy"]["clip_norm"]
    );
    let spent = s.privacy.unwrap();
    assert_eq!(spent.rounds, 2);
    assert_eq!(spent.epsilon_rdp, acc.spent(2, 1e-3).unwrap().epsilon_rdp);

    // one round, then --resume to two: the same bytes
    let part = dir.path().join("part");
    let mut first = DP.to_vec();
    first[3] = "federation.rounds=1";
    run(tiny(&first), &part, false).await.unwrap();
    let s = run(tiny(&DP), &part, true).await.unwrap();
    assert_eq!(s.resumed_after_round, Some(1));
    let w = |d: &Path| WeightSet::load(&d.join("final.safetensors")).unwrap();
    assert!(w(&part) == w(&whole), "resumed DP run differs");

    // without DP the weights differ (the noise and clipping did something)
    let plain = dir.path().join("plain");
    run(tiny(&DP[..2]), &plain, false).await.unwrap();
    assert!(w(&plain) != w(&whole));
}

#[test]
fn dp_with_a_strategy_other_than_fedavg_is_refused_naming_both() {
    let e = Scenario::from_toml_str(
        "[federation]\nstrategy = \"median\"\n[federation.dp]\nclip_norm = 1.0\nnoise_multiplier = 1.0\n",
        &[],
    )
    .unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("federation.dp") && msg.contains("median"),
        "{msg}"
    );
    let e = Scenario::from_toml_str(
        "[federation.dp]\nclip_norm = -1.0\nnoise_multiplier = 1.0\n",
        &[],
    )
    .unwrap_err();
    assert!(
        format!("{e:#}").contains("federation.dp.clip_norm"),
        "{e:#}"
    );
    // adaptive clipping whose default count noise (3 clients / 20) leaves no noise for the
    // update is refused when the scenario loads, with the bound
    let e = Scenario::from_toml_str(
        "[federation]\nclients = 3\n[federation.dp]\nclip_norm = 1.0\nnoise_multiplier = 1.0\nadaptive = {}\n",
        &[],
    )
    .unwrap_err();
    assert!(
        format!("{e:#}").contains("too small for adaptive clipping"),
        "{e:#}"
    );
}

#[test]
fn the_privacy_scenario_reads() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let sc = Scenario::load(&root.join("scenarios/privacy/dp-fedavg.toml"), &[]).unwrap();
    let dp = sc.federation.dp.unwrap();
    assert_eq!((dp.clip_norm, dp.noise_multiplier), (5.0, 1.0));
    assert!(dp.adaptive.is_some());
}
