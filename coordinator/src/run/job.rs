//! One whole run of `simulate` or `serve`, step by step: the data, the initial backbone, the
//! resume point, the strategy, the server endpoint, the simulated clients' shards, the run
//! folder, the clients, the rounds, the end of the federation, the central evaluation and
//! `summary.json`. Each step lives in the room its name says; this is the order they run in.
//! The live run page ([`crate::server::status`]), when asked for, follows every step.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use candle_core::Device;
use fedssl_shared::config::Scenario;
use fedssl_shared::data::ImageDataset;
use fedssl_shared::protocol::RunInfo;
use fedssl_shared::train::LocalModel;
use fedssl_shared::weights::WeightSet;
use indicatif::MultiProgress;
use tracing::info;

use crate::eval::knn::KnnMonitor;
use crate::eval::suite::{evaluate_run, write_eval_json, EvalSummary};
use crate::run::outputs::{self, plural, Summary};
use crate::run::resume::{self, ResumePoint};
use crate::run::simulate::{self, SimulatedClients};
use crate::run::{data, serve};
use crate::server::handshake::accept_loop;
use crate::server::registry::Registry;
use crate::server::rounds::{run_rounds, RoundsContext, RoundsOutcome};
use crate::server::status::board::{Phase, StatusBoard};
use crate::server::status::http::serve_status;
use crate::server::tensorboard::EventWriter;

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
        /// `--kit DIR`: a provisioned coordinator kit (mutual TLS with the enrolled sites,
        /// [`serve::ServeTls`]).
        kit: Option<PathBuf>,
        /// `--revoked FILE`: revoked site names or certificate serials, re-read on change.
        revoked: Option<PathBuf>,
    },
}

impl Mode {
    /// How long the first round waits for more than `federation.min_clients` to connect
    /// when `federation.start_grace_seconds` does not say.
    fn start_grace(&self) -> Duration {
        match self {
            Mode::Simulate => Duration::from_secs(60),
            Mode::Serve { .. } => Duration::from_secs(5),
        }
    }
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
    /// Continue the run in `out` from its newest usable checkpoint ([`crate::run::resume`])
    /// instead of starting afresh.
    pub resume: bool,
}

/// Runs the job; returns the summary also written to `<out>/summary.json`. With
/// `[logging] status_addr` the live run page is served from the start (a bad address fails
/// the run before anything is loaded) until the run ended and `status_linger_seconds` passed.
pub async fn run_job(job: Job) -> Result<Summary> {
    run_job_in(job, None).await
}

/// [`run_job`], its progress bars (with `job.progress`) drawn in `bars` when given, instead
/// of in a [`MultiProgress`] of its own: an experiment running several jobs one after the
/// other keeps its own bar above theirs.
pub async fn run_job_in(job: Job, bars: Option<MultiProgress>) -> Result<Summary> {
    run_job_reporting(job, bars, |_| {}).await
}

/// [`run_job_in`], calling `report` with the run's summary as soon as it is written — before
/// the live page lingers (`status_linger_seconds`), so that `simulate` and `serve` print their
/// result line when the run ends, not when the page goes away.
pub async fn run_job_reporting(
    job: Job,
    bars: Option<MultiProgress>,
    report: impl FnOnce(&Summary),
) -> Result<Summary> {
    let status = StatusBoard::new(&job.scenario);
    let page = match &job.scenario.logging.status_addr {
        Some(spec) => Some(serve_status(spec, status.clone()).await?),
        None => None,
    };
    let linger = job.scenario.logging.status_linger_seconds;
    let result = run_job_with(job, bars, &status).await;
    match &result {
        Ok(s) => status.finished(s.eval.as_ref().and_then(|e| serde_json::to_value(e).ok())),
        Err(e) => status.failed(format!("{e:#}")),
    }
    if let Ok(summary) = &result {
        report(summary);
    }
    if let Some(page) = page {
        page.linger(linger).await;
    }
    result
}

/// [`run_job_in`], its steps reported on the live page's `status`.
async fn run_job_with(
    job: Job,
    bars: Option<MultiProgress>,
    status: &Arc<StatusBoard>,
) -> Result<Summary> {
    let t0 = Instant::now();
    let sc = job.scenario.clone();
    outputs::refuse_a_file_in_place(&job.out)?;
    // The TensorBoard folder is made before anything in `out` is touched: a bad path must not
    // cost a previous run its results.
    if let Some(dir) = sc.logging.tensorboard_dir(&job.out) {
        std::fs::create_dir_all(&dir).with_context(|| {
            format!(
                "--tensorboard / logging.tensorboard_dir: cannot create the folder {}",
                dir.display()
            )
        })?;
    }
    let (train, test) = load_data(&sc).await?;
    let initial = initial_weights(&sc)?;
    let backbone_values = initial.split_prefix("head.").1.num_values();
    let mut resumed = resume_point(&job, &initial)?;
    let mut strategy = crate::strategy::from_scenario(&sc)?;
    crate::strategy::check_buffer_bound(strategy.as_ref(), &sc, &initial)?;
    strategy.load_state(resumed.as_mut().and_then(|p| p.strategy_state.take()))?;
    let strategy_name = strategy.name();
    let federated = match job.mode {
        Mode::Simulate => load_federated(&sc).await?,
        Mode::Serve { .. } => None,
    };
    let federation = Federation::start(&job, bars, federated.as_ref().unwrap_or(&train))?;
    let train_images = federated.as_ref().unwrap_or(&train).len();
    drop(federated);
    status.attach(federation.registry.clone());
    // the rounds start from the resumed weights, moved (not copied) out of the resume point,
    // or from the initial ones: one copy of the model, not two
    let start = match resumed.as_mut() {
        Some(p) => {
            drop(initial);
            std::mem::take(&mut p.global)
        }
        None => initial,
    };
    let t_rounds = Instant::now();
    let outcome = run_rounds(
        RoundsContext {
            scenario: &sc,
            registry: federation.registry.clone(),
            out: &job.out,
            start_grace: sc
                .federation
                .start_grace_seconds
                .map_or_else(|| job.mode.start_grace(), Duration::from_secs_f64),
            progress: federation.progress.clone(),
            start_round: resumed.as_ref().map_or(0, |p| p.rounds_done),
            monitor: KnnMonitor::new(&sc, &train, &test).map(Arc::new),
            strategy,
            status: status.clone(),
        },
        start,
    )
    .await;
    let train_seconds = t_rounds.elapsed().as_secs_f64();
    status.set_phase(Phase::Evaluating);
    let outcome = federation
        .end(outcome, resumed.as_ref(), &sc, &job.out)
        .await?;
    let eval = evaluate(&sc, &outcome.global, train, test).await?;
    if let Some(e) = &eval {
        write_eval_json(&job.out, &sc, backbone_values, e)?;
        if let Some(dir) = sc.logging.tensorboard_dir(&job.out) {
            EventWriter::create(&dir, "eval")?.eval(outcome.rounds_completed, e)?;
        }
    }
    let summary = Summary {
        scenario: sc.name.clone(),
        seed: sc.seed,
        rounds_completed: outcome.rounds_completed,
        clients: sc.federation.clients,
        clients_contributed: outcome.clients_seen.len(),
        pretext: sc.pretext.task.name().to_string(),
        backbone: sc.model.backbone.name().to_string(),
        strategy: strategy_name.to_string(),
        dataset: format!("{:?}", sc.data.dataset).to_lowercase(),
        train_images,
        backbone_values,
        wall_seconds: t0.elapsed().as_secs_f64(),
        train_seconds,
        bytes_sent: outcome.bytes_sent,
        bytes_received: outcome.bytes_received,
        resumed_after_round: resumed.as_ref().map(|p| p.rounds_done),
        eval,
        privacy: crate::privacy::accountant::run_spent(&sc, outcome.rounds_completed)?,
        sites: outcome.sites.clone(),
        secure_aggregation: sc.federation.secure_aggregation.enabled,
    };
    outputs::write_summary(&job.out, &summary)?;
    Ok(summary)
}

/// The scenario's training and test sets, loaded off the async workers.
async fn load_data(sc: &Scenario) -> Result<(ImageDataset, ImageDataset)> {
    let sc = sc.clone();
    let (train, test) = tokio::task::spawn_blocking(move || data::load_sets(&sc)).await??;
    info!(train = train.len(), test = test.len(), "data loaded");
    Ok((train, test))
}

/// The training set of the simulated clients when it is not the probes' (`[eval] dataset`
/// is another, or STL-10's clients train on its unlabelled images:
/// [`data::load_federated`]), loaded off the async workers.
async fn load_federated(sc: &Scenario) -> Result<Option<ImageDataset>> {
    let sc = sc.clone();
    tokio::task::spawn_blocking(move || data::load_federated(&sc)).await?
}

/// The federated weights of round 0: the backbone (and, with `pretext.share_heads`, the
/// heads) initialised from the scenario's `init` and `head-init` seed streams.
fn initial_weights(sc: &Scenario) -> Result<WeightSet> {
    let init_seed = fedssl_shared::seed::derive(sc.seed, fedssl_shared::seed::INIT, 0);
    let head_seed = fedssl_shared::seed::derive(sc.seed, fedssl_shared::seed::HEAD_INIT, 0);
    LocalModel::new(&sc.model, &sc.pretext, init_seed, head_seed, &Device::Cpu)?.federated_weights()
}

/// With `--resume`, the point the run in `job.out` continues from (said on stderr);
/// `initial` gives the layout its checkpoint must have.
fn resume_point(job: &Job, initial: &WeightSet) -> Result<Option<ResumePoint>> {
    if !job.resume {
        return Ok(None);
    }
    let p = resume::prepare(&job.out, &job.scenario, initial)?;
    eprintln!(
        "resuming {} after round {} of {}",
        job.out.display(),
        p.rounds_done,
        job.scenario.federation.rounds
    );
    Ok(Some(p))
}

/// The central evaluation after the last round, off the async workers (`None` when
/// `eval.enabled = false`). The random-init baseline is built afresh from the scenario's
/// seeds (the same bytes as round 0's), so that the rounds do not carry a copy of it: with a
/// 1 GB backbone that copy was 1 GB of the coordinator's peak.
async fn evaluate(
    sc: &Scenario,
    global: &WeightSet,
    train: ImageDataset,
    test: ImageDataset,
) -> Result<Option<EvalSummary>> {
    if !sc.eval.enabled {
        return Ok(None);
    }
    let (sc, global) = (sc.clone(), global.clone());
    let e = tokio::task::spawn_blocking(move || {
        let initial = initial_weights(&sc)?;
        evaluate_run(&sc, &global, &initial, &train, &test)
    })
    .await??;
    Ok(Some(e))
}

/// The server side of a run while its rounds go: the endpoint, its registry, the simulated
/// clients (none when serving) and the progress bars.
struct Federation {
    endpoint: quinn::Endpoint,
    registry: Arc<Registry>,
    clients: Option<SimulatedClients>,
    progress: Option<MultiProgress>,
}

/// The size of every shard a `--shard K/N` client (or a simulated one) holds, where the
/// coordinator knows them: the simulation's `shards`, or, serving, the scenario's partition
/// of the run's dataset when `train` is the clients' training set (not `[eval] dataset`'s,
/// not STL-10's labelled split while the clients train on its unlabelled images, not a
/// folder: the sites' folders are their own). `None` when unknown.
fn known_shard_sizes(
    sc: &Scenario,
    shards: Option<&[Vec<usize>]>,
    train: &ImageDataset,
) -> Option<Vec<u64>> {
    let sizes = |parts: &[Vec<usize>]| parts.iter().map(|p| p.len() as u64).collect();
    match shards {
        Some(parts) => Some(sizes(parts)),
        None if !data::federated_is_separate(sc)
            && sc.data.dataset != fedssl_shared::data::DatasetKind::Folder =>
        {
            simulate::shards(sc, train).ok().map(|p| sizes(&p))
        }
        None => None,
    }
}

impl Federation {
    /// Binds the endpoint of `job`'s mode, readies the run folder and lets the clients in:
    /// the simulated ones are started on their shards of `train`; for `serve`, how to join
    /// is said on stderr. With `job.progress`, the bars are drawn in `bars` (a new
    /// [`MultiProgress`] without).
    fn start(job: &Job, bars: Option<MultiProgress>, train: &ImageDataset) -> Result<Self> {
        let sc = &job.scenario;
        let idle = Duration::from_secs_f64(sc.federation.idle_timeout_seconds);
        let (bound, kits) = match &job.mode {
            Mode::Simulate => {
                let (bound, kits) = simulate::loopback_endpoint(sc, idle)?;
                (bound, Some(kits))
            }
            Mode::Serve {
                listen,
                identity,
                names,
                kit,
                revoked,
            } => {
                let how = serve::ServeTls {
                    identity: identity.clone(),
                    kit: kit.clone(),
                    revoked: revoked.clone(),
                    names: names.clone(),
                };
                let bound = serve::bind(*listen, &how, sc, idle, &job.out, job.resume)?;
                (bound, None)
            }
        };
        let endpoint = bound.endpoint;
        let addr = endpoint.local_addr()?;
        // The simulated clients' shards: computed before the previous run is cleared, so that
        // a partition the data cannot satisfy fails with the previous results still in `out`.
        let shards = match job.mode {
            Mode::Simulate => Some(simulate::shards(sc, train)?),
            Mode::Serve { .. } => None,
        };
        // Only now, with the data loaded, the shards drawn and the socket bound, can the run
        // start: a run that fails before this point leaves the previous results untouched.
        outputs::start_run(&job.out, sc, job.resume, shards.as_deref(), train)?;
        let registry = Registry::new(RunInfo::of(sc));
        if let Some(sizes) = known_shard_sizes(sc, shards.as_deref(), train) {
            registry.set_shard_sizes(sizes);
        }
        tokio::spawn(accept_loop(
            endpoint.clone(),
            registry.clone(),
            bound.authenticator,
        ));
        let progress = job.progress.then(|| bars.unwrap_or_default());
        let clients = match (&shards, kits) {
            (Some(shards), Some(kits)) => Some(simulate::spawn_clients(
                sc,
                train,
                shards,
                addr,
                &kits,
                idle,
                progress.clone(),
                &job.out,
                job.resume,
            )?),
            _ => {
                if let Mode::Serve { kit, .. } = &job.mode {
                    serve::announce(addr, sc, &job.out, kit.is_some());
                }
                None
            }
        };
        Ok(Self {
            endpoint,
            registry,
            clients,
            progress,
        })
    }

    /// Ends the federation after the rounds. On failure every client is told why and the
    /// error is returned; on success the totals of a `resumed` run's earlier rounds are
    /// added, `final.safetensors` is written into `out`, every client is told the run is
    /// over, the simulated clients end, and the endpoint closes.
    async fn end(
        self,
        outcome: Result<RoundsOutcome>,
        resumed: Option<&ResumePoint>,
        sc: &Scenario,
        out: &Path,
    ) -> Result<RoundsOutcome> {
        let mut outcome = match outcome {
            Ok(o) => o,
            Err(e) => {
                self.registry
                    .finish_all(&format!("run failed: {e:#}"))
                    .await;
                self.endpoint.close(0u32.into(), b"failed");
                return Err(e);
            }
        };
        if let Some(p) = resumed {
            outcome.bytes_sent += p.bytes_sent;
            outcome.bytes_received += p.bytes_received;
            outcome.clients_seen.extend(p.clients_seen.iter().copied());
        }
        outcome.global.save(&out.join("final.safetensors"))?;
        self.registry
            .finish_all(&format!(
                "run `{}` finished after {}",
                sc.name,
                plural(outcome.rounds_completed, "round", "rounds")
            ))
            .await;
        if let Some(clients) = self.clients {
            clients.wait().await;
        }
        self.endpoint.close(0u32.into(), b"done");
        Ok(outcome)
    }
}
