//! One local round on its own QUIC stream: read the round's configuration and the global
//! backbone, ask the client's [`Behaviour`](crate::Behaviour), train on tokio's blocking pool
//! (never on the workers that drive QUIC), and reply with the update (or why training failed).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use fedssl_shared::data::ImageDataset;
use fedssl_shared::encoding::encode_update;
use fedssl_shared::protocol::{
    read_message, read_weights, write_message, write_weights_bytes, ClientMessage, RoundConfig,
    RunInfo, ServerMessage,
};
use fedssl_shared::seed;
use fedssl_shared::train::{
    begin_round, divergence, keeps_backbone, train_local, ClientState, LocalModel, TrainStats,
};
use fedssl_shared::weights::WeightSet;
use indicatif::ProgressBar;
use tracing::warn;

use crate::options::ClientOptions;
use crate::progress::{round_bar, show_step};
use crate::state::{Local, StateFiles};

/// What every round of one session shares: the client's id and run, its images, its device,
/// and its state between rounds: its local model (backbone and pretext heads) and its
/// [`ClientState`] (local heads, BatchNorm tensors for FedBN, FedEMA/FedU scalars, BYOL's
/// target), kept by round ([`crate::state`]) in memory, or, with `state_dir` (`simulate`),
/// in files (the model is rebuilt and its heads read back each round, so an idle client
/// holds no model in memory). Cloning shares the data and the state.
#[derive(Clone)]
pub(crate) struct Learner {
    /// Id the coordinator gave this client.
    pub client_id: u32,
    /// The run, as the coordinator described it in its welcome.
    pub run: RunInfo,
    /// This client's training images.
    pub data: Arc<ImageDataset>,
    /// Device to train on.
    pub device: Device,
    /// The state kept in memory: the local model and its state (`None` until the first
    /// round; with `state_dir`, the model is never kept).
    pub local: Arc<Mutex<Local>>,
    /// Where the state is kept between rounds, if in files ([`StateFiles`]).
    pub state_dir: Option<PathBuf>,
}

/// Runs the round that the coordinator opened as the stream (`send`, `recv`) on `conn`.
/// Returns the round (0-based) when this client trained it and sent its update, `None` when
/// local training failed and the client said so (`Failed`).
/// An error means this round's stream failed (or, if `conn` is closed, the session is over).
pub(crate) async fn handle_round(
    conn: &quinn::Connection,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    learner: &Learner,
    opts: &ClientOptions,
) -> Result<Option<u32>> {
    let msg: ServerMessage = read_message(&mut recv).await?;
    let (round, config, secagg) = match msg {
        ServerMessage::Round {
            round,
            config,
            secagg,
        } => (round, config, secagg),
        other => bail!("protocol error: expected Round, got {other:?}"),
    };
    let (global, _) = read_weights(&mut recv, opts.max_weights_bytes)
        .await
        .context("bad global weights")?;
    if let Some(params) = secagg {
        let streams = (send, recv);
        return crate::secagg::secure_round(
            conn, streams, learner, opts, round, config, global, params,
        )
        .await;
    }
    let compressed = !learner.run.compression.is_none();
    let kept_global = compressed.then(|| global.clone());
    let trained = match train_round(conn, learner, opts, round, config, global).await? {
        Ok((stats, bytes)) => {
            let bytes = match (&kept_global, compressed) {
                (Some(g), true) => learner.encode(g, &bytes)?,
                _ => bytes,
            };
            write_message(
                &mut send,
                &ClientMessage::Update {
                    round,
                    num_samples: stats.samples as u64,
                    loss: stats.loss,
                    accuracy: stats.accuracy,
                    train_seconds: stats.seconds,
                },
            )
            .await?;
            write_weights_bytes(&mut send, &bytes).await?;
            Some(round)
        }
        Err(e) => {
            write_message(
                &mut send,
                &ClientMessage::Failed {
                    round,
                    reason: format!("{e:#}"),
                },
            )
            .await?;
            None
        }
    };
    send.finish().ok();
    Ok(trained)
}

/// Round `round` (0-based) of `learner` from the `global` weights with `config`: asks the
/// behaviour before training (a simulated fault ends here), trains on the blocking pool
/// (holding a training slot when the options share them) and hands the trained backbone to
/// the behaviour (a byzantine client corrupts it). The outer error ends the round's stream;
/// the inner one is a failed local training, which the client reports.
pub(crate) async fn train_round(
    conn: &quinn::Connection,
    learner: &Learner,
    opts: &ClientOptions,
    round: u32,
    config: RoundConfig,
    global: WeightSet,
) -> Result<Result<(TrainStats, Vec<u8>)>> {
    let client_id = learner.client_id;
    // `round` is 0-based on the wire; logs and progress count from 1, as the coordinator does.
    let shown = round + 1;
    opts.behaviour
        .before_training(conn, client_id, round)
        .await?;
    let _permit = match &opts.training_slots {
        Some(s) => Some(s.clone().acquire_owned().await?),
        None => None,
    };
    let bar = opts
        .progress
        .as_ref()
        .map(|mp| round_bar(mp, client_id, shown));
    let kept_global = opts.behaviour.needs_global().then(|| global.clone());
    let job = {
        let learner = learner.clone();
        let bar = bar.clone();
        tokio::task::spawn_blocking(move || learner.train(round, &config, global, bar.as_ref()))
    };
    let outcome = job.await.context("training thread panicked")?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    match outcome {
        Ok((stats, bytes)) => {
            let bytes = opts.behaviour.after_training(
                kept_global.as_ref(),
                bytes,
                learner.run.seed,
                client_id,
                round,
            )?;
            Ok(Ok((stats, bytes)))
        }
        Err(e) => {
            warn!(client_id, round = shown, "local training failed: {e:#}");
            Ok(Err(e))
        }
    }
}

impl Learner {
    /// The update payload of the trained weights `trained` (safetensors bytes) under the
    /// run's `federation.compression`, against the round's `global` weights; with error
    /// feedback the residual is read from and written back to the client's state (memory,
    /// or `<state_dir>/<id>.residual.safetensors`).
    fn encode(&self, global: &WeightSet, trained: &[u8]) -> Result<Vec<u8>> {
        let cfg = &self.run.compression;
        let trained = WeightSet::from_safetensors(trained)?;
        if !cfg.error_feedback() {
            return encode_update(cfg, global, &trained, None);
        }
        let path = self
            .state_dir
            .as_ref()
            .map(|d| d.join(format!("{}.residual.safetensors", self.client_id)));
        let mut guard = self
            .local
            .lock()
            .map_err(|_| anyhow::anyhow!("model lock poisoned"))?;
        let mut residual = match &path {
            Some(p) if p.exists() => WeightSet::load(p)?,
            Some(_) => WeightSet::default(),
            None => guard.residual.take().unwrap_or_default(),
        };
        let payload = encode_update(cfg, global, &trained, Some(&mut residual))?;
        match &path {
            Some(p) => residual.save(p)?,
            None => guard.residual = Some(residual),
        }
        Ok(payload)
    }

    /// Trains the local model from the `global` backbone with the round's `config` (on the
    /// calling thread: the caller puts it on the blocking pool) and returns the statistics
    /// and the trained backbone as safetensors bytes. Errors: the weights do not fit the
    /// model, training fails, or it diverged (non-finite weights).
    fn train(
        &self,
        round: u32,
        config: &RoundConfig,
        global: WeightSet,
        bar: Option<&ProgressBar>,
    ) -> Result<(TrainStats, Vec<u8>)> {
        let run = &self.run;
        let mut guard = self
            .local
            .lock()
            .map_err(|_| anyhow::anyhow!("model lock poisoned"))?;
        let files = self
            .state_dir
            .as_ref()
            .map(|d| StateFiles::new(d, self.client_id));
        let (mut model, state) = match &files {
            None => guard.start(round),
            Some(f) => (None, f.start(round)?),
        };
        let m = match model.take() {
            Some(m) => m,
            None => {
                let head_seed = seed::derive(run.seed, seed::CLIENT_HEAD, self.client_id as u64);
                let init_seed = seed::derive(run.seed, seed::INIT, 0);
                let m =
                    LocalModel::new(&run.model, &run.pretext, init_seed, head_seed, &self.device)?;
                // rebuilt from the state: a file's, or a repeated round's (memory mode)
                if let Some(st) = &state {
                    st.restore_heads(&m)?;
                }
                m
            }
        };
        let mut m = m;
        let outcome = self.train_model(&mut m, config, global, state.as_ref(), bar);
        let new_state = outcome.as_ref().ok().map(|(_, _, st)| st.clone());
        match &files {
            None => guard.end(round, m, new_state),
            Some(f) => {
                if let Some(st) = &new_state {
                    f.save(round, st).with_context(|| {
                        format!("client {}: cannot save its state", self.client_id)
                    })?;
                }
            }
        }
        let (stats, bytes, _) = outcome?;
        Ok((stats, bytes))
    }

    /// One round on `m`: merge the `global` weights with the client's `state`
    /// ([`begin_round`]), train, and return the statistics, the trained federated weights as
    /// safetensors bytes and the client's new state.
    fn train_model(
        &self,
        m: &mut LocalModel,
        config: &RoundConfig,
        global: WeightSet,
        state: Option<&ClientState>,
        bar: Option<&ProgressBar>,
    ) -> Result<(TrainStats, Vec<u8>, ClientState)> {
        let run = &self.run;
        let (merge, lambda) = begin_round(m, &global, state, run.batch_norm, &run.local_update)?;
        tracing::debug!(
            client_id = self.client_id,
            ?merge,
            "merged the global weights"
        );
        let measure = !matches!(
            run.local_update,
            fedssl_shared::config::LocalUpdateConfig::Plain(_)
        );
        let start = if measure {
            Some(WeightSet::from_varmap(&m.backbone_vars)?)
        } else {
            None
        };
        let started = Instant::now();
        let mut progress = |step: usize, total: usize, loss: f64| {
            if let Some(b) = bar {
                show_step(b, step, total, loss);
            }
        };
        let mut stats = train_local(
            m,
            &self.data,
            &config.train,
            config.proximal_mu,
            config.seed,
            &mut progress,
        )?;
        stats.seconds = started.elapsed().as_secs_f64();
        let trained = m.federated_weights()?;
        trained.check_finite().context("local training diverged")?;
        let d = match start {
            Some(s) => Some(divergence(&s, &WeightSet::from_varmap(&m.backbone_vars)?)?),
            None => None,
        };
        let lambda = lambda.or_else(|| state.and_then(|s| s.lambda()));
        let keep = keeps_backbone(run.batch_norm, &run.local_update);
        let new_state = ClientState::capture(m, keep, d, lambda)?;
        Ok((stats, trained.to_safetensors()?, new_state))
    }
}
