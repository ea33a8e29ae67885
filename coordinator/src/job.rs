//! One whole run — data, initial backbone, QUIC server, rounds, central evaluation and the
//! output files of DESIGN.md's contract — shared by `simulate` and `serve`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use candle_core::Device;
use fedssl_shared::data::ImageDataset;
use fedssl_shared::protocol::RunInfo;
use fedssl_shared::scenario::{load_test_set, load_train_set, Scenario};
use fedssl_shared::train::LocalModel;
use fedssl_shared::weights::write_atomic;
use indicatif::MultiProgress;
use serde::Serialize;
use tracing::info;

use crate::eval::knn::KnnMonitor;
use crate::eval::suite::{eval_line, evaluate_run, write_eval_json, EvalSummary};
use crate::server::handshake::{accept_loop, OpenAdmission};
use crate::server::registry::Registry;
use crate::server::rounds::{run_rounds, RoundsContext};
use crate::server::tls;

/// How the clients of a run are provided.
pub enum Mode {
    /// All clients in this process, over loopback QUIC.
    Simulate,
    /// Clients connect from elsewhere.
    Serve {
        /// UDP address to listen on.
        listen: SocketAddr,
        /// `--cert` and `--key` PEM files; `None` writes a self-signed pair into the output folder.
        identity: Option<(PathBuf, PathBuf)>,
        /// Extra DNS names / IP addresses for the self-signed certificate.
        names: Vec<String>,
    },
}

/// A run's inputs.
pub struct Job {
    /// The scenario, overrides applied.
    pub scenario: Scenario,
    /// Output folder.
    pub out: PathBuf,
    /// Simulate or serve.
    pub mode: Mode,
    /// Draw progress bars.
    pub progress: bool,
    /// Continue the run in `out` from its newest usable checkpoint ([`crate::resume`])
    /// instead of starting afresh.
    pub resume: bool,
}

/// `summary.json`.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// Scenario name.
    pub scenario: String,
    /// Scenario seed.
    pub seed: u64,
    /// Rounds completed.
    pub rounds_completed: usize,
    /// Clients in the scenario.
    pub clients: usize,
    /// Distinct clients whose updates were aggregated at least once.
    pub clients_contributed: usize,
    /// Pretext task.
    pub pretext: String,
    /// Backbone family.
    pub backbone: String,
    /// Aggregation strategy.
    pub strategy: String,
    /// Dataset.
    pub dataset: String,
    /// Training images in the run (all shards).
    pub train_images: usize,
    /// Scalar values of the backbone (parameters and BatchNorm statistics).
    pub backbone_values: usize,
    /// Wall seconds of the whole run, data loading and evaluation included.
    pub wall_seconds: f64,
    /// Wall seconds of the federated rounds alone.
    pub train_seconds: f64,
    /// Application bytes the coordinator sent (messages and weights).
    pub bytes_sent: u64,
    /// Application bytes the coordinator received.
    pub bytes_received: u64,
    /// Rounds the run had completed before this process resumed it (`--resume`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resumed_after_round: Option<usize>,
    /// Central evaluation; absent when `eval.enabled = false`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval: Option<EvalSummary>,
}

/// Runs the job; returns the summary also written to `<out>/summary.json`.
pub async fn run_job(job: Job) -> Result<Summary> {
    let t0 = Instant::now();
    let sc = job.scenario.clone();
    // The output folder is created only once the run can start (below), so that a run refused
    // early (no data, port in use) leaves no empty folder behind; a file in its place is
    // refused now.
    if job.out.exists() && !job.out.is_dir() {
        anyhow::bail!("output folder {} is a file", job.out.display());
    }
    let create_out = || {
        std::fs::create_dir_all(&job.out)
            .with_context(|| format!("cannot create output folder {}", job.out.display()))
    };

    let (train, test) = {
        let sc = sc.clone();
        tokio::task::spawn_blocking(move || -> Result<(ImageDataset, ImageDataset)> {
            let train = load_train_set(
                sc.data.dataset,
                sc.data.path.as_deref(),
                sc.data.train_images,
                sc.seed,
            )?;
            let test = load_test_set(
                sc.data.dataset,
                sc.data.path.as_deref(),
                sc.data.test_images,
                sc.seed,
            )?;
            Ok((train, test))
        })
        .await??
    };
    info!(train = train.len(), test = test.len(), "data loaded");
    let init_seed = fedssl_shared::seed::derive(sc.seed, "init", 0);
    let head_seed = fedssl_shared::seed::derive(sc.seed, "head-init", 0);
    let initial = LocalModel::new(&sc.model, &sc.pretext, init_seed, head_seed, &Device::Cpu)?
        .federated_weights()?;
    let backbone_values = initial.split_prefix("head.").1.num_values();
    let resumed = if job.resume {
        let p = crate::resume::prepare(&job.out, &sc, &initial)?;
        eprintln!(
            "resuming {} after round {} of {}",
            job.out.display(),
            p.rounds_done,
            sc.federation.rounds
        );
        Some(p)
    } else {
        None
    };
    let run = RunInfo {
        scenario: sc.name.clone(),
        seed: sc.seed,
        dataset: sc.data.dataset,
        train_images: sc.data.train_images,
        partition: sc.partition.clone(),
        num_clients: sc.federation.clients as u32,
        model: sc.model.clone(),
        pretext: sc.pretext.clone(),
    };
    let idle = Duration::from_secs_f64(sc.federation.idle_timeout_seconds);
    let (endpoint, ca_pem) = match &job.mode {
        Mode::Simulate => {
            let id = tls::self_signed(&[])?;
            let ep = quinn::Endpoint::server(
                tls::server_config(&id, idle, None)?,
                "127.0.0.1:0".parse()?,
            )
            .context("cannot open a loopback UDP socket")?;
            (ep, id.cert_pem)
        }
        Mode::Serve {
            listen,
            identity,
            names,
        } => {
            let id = match identity {
                Some((c, k)) => tls::load_identity(c, k)?,
                None => tls::self_signed(names)?,
            };
            let ep = quinn::Endpoint::server(tls::server_config(&id, idle, None)?, *listen)
                .with_context(|| format!("cannot listen on {listen} (UDP)"))?;
            if identity.is_none() {
                create_out()?;
                tls::write_identity(&id, &job.out)?;
            }
            (ep, id.cert_pem)
        }
    };
    let addr = endpoint.local_addr()?;
    // The simulated clients' shards: computed before the previous run is cleared, so that a
    // partition the data cannot satisfy fails with the previous results still in `out`.
    let parts = match &job.mode {
        Mode::Simulate => Some(fedssl_shared::partition::partition(
            &train.labels,
            train.num_classes,
            sc.federation.clients,
            &sc.partition,
            fedssl_shared::seed::derive(sc.seed, "partition", 0),
        )?),
        Mode::Serve { .. } => None,
    };
    // Only now, with the data loaded, the shards drawn and the socket bound, can the run start:
    // a run that fails before this point leaves the previous results in `out` untouched.
    create_out()?;
    if !job.resume {
        clear_previous_run(&job.out)?;
        crate::resume::write_scenario(&job.out, &sc)?;
    }
    if let Some(parts) = &parts {
        write_partition_json(&job.out, &train.labels, train.num_classes, parts)?;
    }
    let registry = Registry::new(run.clone());
    tokio::spawn(accept_loop(
        endpoint.clone(),
        registry.clone(),
        Arc::new(OpenAdmission),
    ));
    let mp = if job.progress {
        Some(MultiProgress::new())
    } else {
        None
    };

    let mut clients = Vec::new();
    match parts {
        // Simulate: one in-process client per shard.
        Some(parts) => {
            let slots_n = if sc.simulation.concurrent_training == 0 {
                (num_cpus::get() / 2).max(1)
            } else {
                sc.simulation.concurrent_training
            };
            let slots = Arc::new(tokio::sync::Semaphore::new(slots_n));
            let n = parts.len() as u32;
            for (k, idx) in parts.iter().enumerate() {
                let shard = Arc::new(train.subset(idx).unlabelled());
                let mut opts = fedssl_client::ClientOptions::new(
                    format!("sim-{k}"),
                    fedssl_client::DataSource::InMemory {
                        data: shard,
                        shard: Some((k as u32, n)),
                    },
                );
                opts.training_slots = Some(slots.clone());
                opts.progress = mp.clone();
                opts.max_weights_bytes = sc.federation.max_weights_bytes;
                opts.fault = sc
                    .simulation
                    .faults
                    .iter()
                    .find(|f| f.client == k as u32)
                    .map(|f| (f.round - 1, f.kind));
                let ccfg = fedssl_client::tls::client_config(ca_pem.as_bytes(), idle)?;
                clients.push(tokio::spawn(async move {
                    let res = async {
                        let conn = fedssl_client::connect(addr, "localhost", ccfg).await?;
                        fedssl_client::run_session(conn, opts).await
                    }
                    .await;
                    if let Err(e) = &res {
                        tracing::info!(client = k, "simulated client stopped: {e:#}");
                    }
                    res
                }));
            }
            info!(clients = parts.len(), %addr, "simulation: clients started over loopback QUIC");
        }
        // Serve: clients join over the network.
        None => {
            let cert_hint = job.out.join("cert.pem");
            eprintln!(
                "fedssl coordinator listening on {addr} (QUIC); waiting for {} client(s) (at least {}).\n  join with: fedssl-client --coordinator <HOST>:{} --ca {} --shard K/{}",
                sc.federation.clients,
                sc.federation.min_clients,
                addr.port(),
                cert_hint.display(),
                sc.federation.clients
            );
        }
    }

    let start_grace = match job.mode {
        Mode::Simulate => Duration::from_secs(60),
        Mode::Serve { .. } => Duration::from_secs(5),
    };
    let t_rounds = Instant::now();
    let outcome = run_rounds(
        RoundsContext {
            scenario: &sc,
            registry: registry.clone(),
            out: &job.out,
            start_grace,
            progress: mp.clone(),
            start_round: resumed.as_ref().map_or(0, |p| p.rounds_done),
            monitor: KnnMonitor::new(&sc, &train, &test).map(Arc::new),
            strategy: crate::strategy::from_scenario(&sc)?,
        },
        resumed
            .as_ref()
            .map_or_else(|| initial.clone(), |p| p.global.clone()),
    )
    .await;
    let train_seconds = t_rounds.elapsed().as_secs_f64();
    let mut outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            registry.finish_all(&format!("run failed: {e:#}")).await;
            endpoint.close(0u32.into(), b"failed");
            return Err(e);
        }
    };
    if let Some(p) = &resumed {
        outcome.bytes_sent += p.bytes_sent;
        outcome.bytes_received += p.bytes_received;
        outcome.clients_seen.extend(p.clients_seen.iter().copied());
    }
    outcome.global.save(&job.out.join("final.safetensors"))?;
    registry
        .finish_all(&format!(
            "run `{}` finished after {}",
            sc.name,
            plural(outcome.rounds_completed, "round", "rounds")
        ))
        .await;
    let wait_clients = tokio::time::Instant::now() + Duration::from_secs(10);
    for c in clients {
        let abort = c.abort_handle();
        match tokio::time::timeout_at(wait_clients, c).await {
            Ok(Ok(Ok(_))) => {}
            Ok(Ok(Err(e))) => tracing::info!("a simulated client ended with: {e:#}"),
            Ok(Err(e)) if e.is_cancelled() => {}
            Ok(Err(e)) => tracing::warn!("a simulated client panicked: {e}"),
            Err(_) => abort.abort(),
        }
    }
    endpoint.close(0u32.into(), b"done");

    let train_images = train.len();
    let eval = if sc.eval.enabled {
        let (sc2, global) = (sc.clone(), outcome.global.clone());
        Some(
            tokio::task::spawn_blocking(move || {
                evaluate_run(&sc2, &global, &initial, &train, &test)
            })
            .await??,
        )
    } else {
        None
    };
    if let Some(e) = &eval {
        write_eval_json(&job.out, &sc, backbone_values, e)?;
    }
    let summary = Summary {
        scenario: sc.name.clone(),
        seed: sc.seed,
        rounds_completed: outcome.rounds_completed,
        clients: sc.federation.clients,
        clients_contributed: outcome.clients_seen.len(),
        pretext: sc.pretext.task.name().to_string(),
        backbone: sc.model.backbone.name().to_string(),
        strategy: sc.federation.strategy.clone(),
        dataset: format!("{:?}", sc.data.dataset).to_lowercase(),
        train_images,
        backbone_values,
        wall_seconds: t0.elapsed().as_secs_f64(),
        train_seconds,
        bytes_sent: outcome.bytes_sent,
        bytes_received: outcome.bytes_received,
        resumed_after_round: resumed.as_ref().map(|p| p.rounds_done),
        eval,
    };
    write_summary(&job.out, &summary)?;
    Ok(summary)
}

/// Removes the files a previous run left in `out` (summary, rounds, checkpoints, final
/// weights), so a folder never mixes two runs; says so on stderr.
pub fn clear_previous_run(out: &Path) -> Result<()> {
    let mut removed = false;
    for f in [
        "summary.json",
        "rounds.jsonl",
        "final.safetensors",
        PARTITION_FILE,
        crate::resume::SCENARIO_FILE,
        "eval.json",
    ] {
        let p = out.join(f);
        if p.exists() {
            std::fs::remove_file(&p).with_context(|| format!("cannot remove {}", p.display()))?;
            removed = true;
        }
    }
    let ck = out.join("checkpoints");
    if ck.is_dir() {
        std::fs::remove_dir_all(&ck).with_context(|| format!("cannot remove {}", ck.display()))?;
        removed = true;
    }
    if removed {
        eprintln!(
            "note: {} held a previous run; its results were replaced",
            out.display()
        );
    }
    Ok(())
}

/// The file of a simulated run's shards, per client: images and images per class.
pub const PARTITION_FILE: &str = "partition.json";

/// Writes `<out>/partition.json` atomically: for every simulated client `k` (the shards of
/// `parts`, indices into `labels`), its number of images and its images per class (a
/// `num_classes`-long list), so a non-IID split (Dirichlet α, ...) can be inspected.
pub fn write_partition_json(
    out: &Path,
    labels: &[u32],
    num_classes: usize,
    parts: &[Vec<usize>],
) -> Result<()> {
    let clients: Vec<serde_json::Value> = parts
        .iter()
        .enumerate()
        .map(|(k, idx)| {
            let mut per_class = vec![0usize; num_classes];
            for &i in idx {
                per_class[labels[i] as usize] += 1;
            }
            serde_json::json!({ "client": k, "images": idx.len(), "class_counts": per_class })
        })
        .collect();
    let text = serde_json::to_string_pretty(&serde_json::json!({ "clients": clients }))?;
    write_atomic(&out.join(PARTITION_FILE), text.as_bytes())
}

/// Writes `summary.json` atomically.
pub fn write_summary(out: &Path, summary: &Summary) -> Result<()> {
    let text = serde_json::to_string_pretty(summary)?;
    write_atomic(&out.join("summary.json"), text.as_bytes())
}

/// `n` with the singular or plural noun: `1 round`, `3 rounds`.
pub(crate) fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The one-line result printed at the end of a run.
pub fn result_line(s: &Summary, out: &Path) -> String {
    let mut line = format!(
        "{}: {}, {}, {:.1} s",
        s.scenario,
        plural(s.rounds_completed, "round", "rounds"),
        plural(s.clients_contributed, "client", "clients"),
        s.wall_seconds
    );
    if let Some(e) = &s.eval {
        line += &format!(" | {}", eval_line(e));
    }
    line + &format!(" | {}", out.join("summary.json").display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_previous_run_is_cleared_and_other_files_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path();
        for f in [
            "summary.json",
            "rounds.jsonl",
            "final.safetensors",
            PARTITION_FILE,
            "notes.txt",
        ] {
            std::fs::write(out.join(f), "x").unwrap();
        }
        std::fs::create_dir_all(out.join("checkpoints")).unwrap();
        std::fs::write(out.join("checkpoints/round-0001.safetensors"), "x").unwrap();
        clear_previous_run(out).unwrap();
        for f in [
            "summary.json",
            "rounds.jsonl",
            "final.safetensors",
            PARTITION_FILE,
            "checkpoints",
        ] {
            assert!(!out.join(f).exists(), "{f} survived");
        }
        assert!(
            out.join("notes.txt").exists(),
            "a file that is not a run output was removed"
        );
    }

    #[test]
    fn partition_json_counts_each_clients_images_per_class() {
        let dir = tempfile::tempdir().unwrap();
        let labels = [0u32, 2, 2, 1, 0, 2];
        write_partition_json(
            dir.path(),
            &labels,
            3,
            &[vec![0, 1, 2], vec![3, 4, 5], vec![]],
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join(PARTITION_FILE)).unwrap(),
        )
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({ "clients": [
                { "client": 0, "images": 3, "class_counts": [1, 0, 2] },
                { "client": 1, "images": 3, "class_counts": [1, 1, 1] },
                { "client": 2, "images": 0, "class_counts": [0, 0, 0] },
            ]})
        );
    }

    #[test]
    fn plural_agrees_with_the_count() {
        assert_eq!(plural(1, "round", "rounds"), "1 round");
        assert_eq!(plural(0, "round", "rounds"), "0 rounds");
        assert_eq!(plural(3, "client", "clients"), "3 clients");
    }
}
