//! fedssl client: joins a coordinator over QUIC, receives the global backbone each round,
//! trains it locally with the pretext task on its own unlabelled shard, and returns it.
//!
//! Training runs on tokio's blocking pool (never on the workers that drive QUIC), inside
//! candle's CPU thread pool. The local pretext head stays on the client across rounds; only
//! the backbone travels.

pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use candle_core::Device;
use fedssl_shared::config::FaultKind;
use fedssl_shared::data::ImageDataset;
use fedssl_shared::protocol::{
    read_message, read_weights, write_message, write_weights_bytes, ClientMessage, RoundConfig,
    RunInfo, ServerMessage, PROTOCOL_VERSION,
};
use fedssl_shared::train::{train_local, LocalModel};
use fedssl_shared::weights::WeightSet;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use tracing::{info, warn};

/// Where a client's training images come from.
#[derive(Clone)]
pub enum DataSource {
    /// Images already in memory (simulation hands each client its shard `shard = (k, n)`,
    /// which also fixes the client's id, so a simulation is reproducible).
    InMemory {
        /// The shard's images.
        data: Arc<ImageDataset>,
        /// Which shard of how many, if any.
        shard: Option<(u32, u32)>,
    },
    /// Load the run's dataset (synthetic needs no `dir`; CIFAR-10 needs it) and keep shard `k`
    /// (0-based) of the coordinator's partition into `n` shards.
    Shard {
        /// CIFAR-10 folder; ignored for the synthetic dataset.
        dir: Option<PathBuf>,
        /// This client's shard, 0-based.
        k: u32,
        /// Number of shards.
        n: u32,
    },
    /// Every training image of the dataset in `dir` is this site's data (a real deployment).
    Whole {
        /// CIFAR-10 folder (for the synthetic dataset, `None`).
        dir: Option<PathBuf>,
    },
}

/// How a client runs.
#[derive(Clone)]
pub struct ClientOptions {
    /// Name sent in the hello (for the coordinator's logs).
    pub name: String,
    /// Training data.
    pub data: DataSource,
    /// Device to train on.
    pub device: Device,
    /// In simulation, a semaphore shared by all in-process clients so that they split the
    /// cores instead of oversubscribing them.
    pub training_slots: Option<Arc<tokio::sync::Semaphore>>,
    /// Progress bars (local epochs) are drawn here when set.
    pub progress: Option<MultiProgress>,
    /// Largest accepted weights payload (bytes).
    pub max_weights_bytes: u64,
    /// Simulated failure (dropout studies and tests): at the start of this 0-based round the
    /// client disconnects or stalls.
    pub fault: Option<(u32, fedssl_shared::config::FaultKind)>,
}

impl ClientOptions {
    /// Options with defaults: CPU, no shared slots, no progress bars, 1 GiB payload limit.
    pub fn new(name: impl Into<String>, data: DataSource) -> Self {
        Self {
            name: name.into(),
            data,
            device: Device::Cpu,
            training_slots: None,
            progress: None,
            max_weights_bytes: 1 << 30,
            fault: None,
        }
    }
}

/// What a finished session did.
#[derive(Clone, Debug)]
pub struct SessionReport {
    /// Id the coordinator gave this client.
    pub client_id: u32,
    /// Rounds this client trained and returned.
    pub rounds_trained: usize,
    /// The coordinator's closing message.
    pub message: String,
}

/// Connects to the coordinator at `addr` whose certificate must be valid for `server_name`
/// and signed by (or equal to) a certificate of `client_cfg`.
pub async fn connect(
    addr: SocketAddr,
    server_name: &str,
    client_cfg: quinn::ClientConfig,
) -> Result<quinn::Connection> {
    Ok(open(addr, server_name, client_cfg).await?.1)
}

/// [`connect`], also returning the client's endpoint. A process that exits after its session
/// awaits [`quinn::Endpoint::wait_idle`] first: otherwise its close frame (the reason it
/// leaves) may never be sent, and the coordinator holds its shard until the idle timeout.
pub async fn open(
    addr: SocketAddr,
    server_name: &str,
    client_cfg: quinn::ClientConfig,
) -> Result<(quinn::Endpoint, quinn::Connection)> {
    let bind: SocketAddr = if addr.is_ipv6() {
        "[::]:0".parse()?
    } else {
        "0.0.0.0:0".parse()?
    };
    let mut endpoint = quinn::Endpoint::client(bind).context("cannot open a UDP socket")?;
    endpoint.set_default_client_config(client_cfg);
    let conn = endpoint
        .connect(addr, server_name)
        .with_context(|| format!("cannot connect to {addr}"))?
        .await
        .with_context(|| format!("cannot reach the coordinator at {addr} (is it running, and is --ca its certificate?)"))?;
    Ok((endpoint, conn))
}

/// Loads the training images this client owns, given the run described by the coordinator.
pub fn resolve_data(source: &DataSource, run: &RunInfo) -> Result<Arc<ImageDataset>> {
    match source {
        DataSource::InMemory { data, .. } => Ok(data.clone()),
        DataSource::Whole { dir } => Ok(Arc::new(
            fedssl_shared::data::load_train_set(
                run.dataset,
                dir.as_deref(),
                run.train_images,
                run.seed,
            )?
            .unlabelled(),
        )),
        DataSource::Shard { dir, k, n } => {
            if *n != run.num_clients {
                bail!(
                    "--shard {k}/{n}: the coordinator's scenario has {} clients",
                    run.num_clients
                );
            }
            if k >= n {
                bail!("--shard {k}/{n}: K must be below N (shards are 0-based)");
            }
            let full = fedssl_shared::data::load_train_set(
                run.dataset,
                dir.as_deref(),
                run.train_images,
                run.seed,
            )?;
            let parts = fedssl_shared::partition::partition(
                &full.labels,
                full.num_classes,
                *n as usize,
                &run.partition,
                fedssl_shared::seed::derive(run.seed, "partition", 0),
            )?;
            Ok(Arc::new(full.subset(&parts[*k as usize]).unlabelled()))
        }
    }
}

/// Runs one client session on an open connection until the coordinator says the run is over.
/// A session that fails closes the connection with its error as the reason (at most 1,000
/// bytes), so the coordinator logs why the client left and frees its shard at once.
pub async fn run_session(conn: quinn::Connection, opts: ClientOptions) -> Result<SessionReport> {
    let res = session(&conn, opts).await;
    if let Err(e) = &res {
        if conn.close_reason().is_none() {
            let mut bytes = format!("{e:#}").into_bytes();
            bytes.truncate(1000);
            conn.close(2u32.into(), &bytes);
        }
    }
    res
}

async fn session(conn: &quinn::Connection, opts: ClientOptions) -> Result<SessionReport> {
    let (mut ctrl_send, mut ctrl_recv) = conn
        .open_bi()
        .await
        .context("cannot open the control stream")?;
    let shard_spec = match &opts.data {
        DataSource::Shard { k, n, .. } => Some((*k, *n)),
        DataSource::InMemory { shard, .. } => *shard,
        DataSource::Whole { .. } => None,
    };
    write_message(
        &mut ctrl_send,
        &ClientMessage::Hello {
            protocol_version: PROTOCOL_VERSION,
            client_name: opts.name.clone(),
            shard: shard_spec,
        },
    )
    .await?;
    let first: ServerMessage =
        tokio::time::timeout(Duration::from_secs(60), read_message(&mut ctrl_recv))
            .await
            .context("the coordinator did not answer the hello within 60 s")??;
    let (client_id, run) = match first {
        ServerMessage::Welcome { client_id, run } => (client_id, run),
        ServerMessage::Refused { reason } => bail!("the coordinator refused this client: {reason}"),
        other => bail!("protocol error: expected Welcome, got {other:?}"),
    };
    info!(client_id, scenario = %run.scenario, "joined");

    let data = {
        let source = opts.data.clone();
        let run = run.clone();
        match tokio::task::spawn_blocking(move || resolve_data(&source, &run)).await? {
            Ok(d) => d,
            Err(e) => bail!("client {client_id} cannot load its data: {e:#}"),
        }
    };
    if data.is_empty() {
        bail!("client {client_id} has no training images");
    }

    // The control stream is read by its own task so that no read is ever cancelled halfway.
    let (ctrl_tx, mut ctrl_rx) = tokio::sync::mpsc::channel::<Result<ServerMessage>>(4);
    tokio::spawn(async move {
        loop {
            let m = read_message::<_, ServerMessage>(&mut ctrl_recv).await;
            let stop = m.is_err();
            if ctrl_tx.send(m).await.is_err() || stop {
                break;
            }
        }
    });

    let model: Arc<Mutex<Option<LocalModel>>> = Arc::new(Mutex::new(None));
    let mut rounds_trained = 0usize;
    loop {
        tokio::select! {
            msg = ctrl_rx.recv() => {
                match msg {
                    Some(Ok(ServerMessage::Finished { message })) => {
                        info!(client_id, %message, "run finished");
                        conn.close(0u32.into(), b"done");
                        return Ok(SessionReport { client_id, rounds_trained, message });
                    }
                    Some(Ok(other)) => bail!("protocol error: unexpected {other:?} on the control stream"),
                    Some(Err(e)) => bail!("lost the coordinator: {e:#}"),
                    None => bail!("lost the coordinator"),
                }
            }
            stream = conn.accept_bi() => {
                let (send, recv) = match stream {
                    Ok(s) => s,
                    Err(e) => bail!("lost the coordinator: {e}"),
                };
                match handle_round(conn, send, recv, client_id, &run, &data, &opts, &model).await {
                    Ok(()) => rounds_trained += 1,
                    // The connection is gone: the session is over.
                    Err(e) if conn.close_reason().is_some() => bail!("lost the coordinator: {e:#}"),
                    // Only this round's stream failed (e.g. the coordinator dropped this client
                    // from a round it was too slow for): stay for the next round.
                    Err(e) => warn!(client_id, "round abandoned: {e:#}"),
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn handle_round(
    conn: &quinn::Connection,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    client_id: u32,
    run: &RunInfo,
    data: &Arc<ImageDataset>,
    opts: &ClientOptions,
    model: &Arc<Mutex<Option<LocalModel>>>,
) -> Result<()> {
    let msg: ServerMessage = read_message(&mut recv).await?;
    let (round, config) = match msg {
        ServerMessage::Round { round, config } => (round, config),
        other => bail!("protocol error: expected Round, got {other:?}"),
    };
    // `round` is 0-based on the wire; logs and progress count from 1, as the coordinator does.
    let shown = round + 1;
    let (global, _) = read_weights(&mut recv, opts.max_weights_bytes)
        .await
        .context("bad global weights")?;
    match opts.fault {
        Some((r, FaultKind::Disconnect)) if r == round => {
            warn!(
                client_id,
                round = shown,
                "simulated fault: disconnecting mid-round"
            );
            conn.close(0u32.into(), b"simulated failure");
            bail!("simulated disconnect in round {shown}");
        }
        Some((r, FaultKind::Stall)) if r == round => {
            warn!(client_id, round = shown, "simulated fault: stalling");
            std::future::pending::<()>().await;
        }
        _ => {}
    }
    let _permit = match &opts.training_slots {
        Some(s) => Some(s.clone().acquire_owned().await?),
        None => None,
    };
    let bar = opts.progress.as_ref().map(|mp| {
        let b = mp.add(ProgressBar::new(0));
        b.set_style(
            ProgressStyle::with_template("  client {prefix:>3} round {msg} [{bar:25}] {pos}/{len} steps {per_sec} loss {wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        b.set_prefix(client_id.to_string());
        b.set_message(format!("{shown}"));
        b
    });
    let job = {
        let model = model.clone();
        let data = data.clone();
        let device = opts.device.clone();
        let run = run.clone();
        let bar = bar.clone();
        tokio::task::spawn_blocking(move || {
            train_round(
                &model, &data, &device, &run, client_id, &config, global, bar,
            )
        })
    };
    let outcome = job.await.context("training thread panicked")?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    match outcome {
        Ok((stats, bytes)) => {
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
        }
        Err(e) => {
            warn!(client_id, round = shown, "local training failed: {e:#}");
            write_message(
                &mut send,
                &ClientMessage::Failed {
                    round,
                    reason: format!("{e:#}"),
                },
            )
            .await?;
        }
    }
    send.finish().ok();
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn train_round(
    model: &Mutex<Option<LocalModel>>,
    data: &ImageDataset,
    device: &Device,
    run: &RunInfo,
    client_id: u32,
    config: &RoundConfig,
    global: WeightSet,
    bar: Option<ProgressBar>,
) -> Result<(fedssl_shared::train::TrainStats, Vec<u8>)> {
    let mut guard = model
        .lock()
        .map_err(|_| anyhow::anyhow!("model lock poisoned"))?;
    if guard.is_none() {
        let head_seed = fedssl_shared::seed::derive(run.seed, "client-head", client_id as u64);
        let init_seed = fedssl_shared::seed::derive(run.seed, "init", 0);
        *guard = Some(LocalModel::new(
            &run.model,
            &run.pretext,
            init_seed,
            head_seed,
            device,
        )?);
    }
    let m = guard.as_mut().unwrap();
    m.load_federated(&global)
        .context("global weights do not fit this client's model")?;
    let started = Instant::now();
    let mut progress = |step: usize, total: usize, loss: f64| {
        if let Some(b) = &bar {
            b.set_length(total as u64);
            b.set_position(step as u64);
            b.set_message(format!("{loss:.3}"));
        }
    };
    let mut stats = train_local(m, data, &config.train, config.seed, &mut progress)?;
    stats.seconds = started.elapsed().as_secs_f64();
    let trained = m.federated_weights()?;
    trained.check_finite().context("local training diverged")?;
    Ok((stats, trained.to_safetensors()?))
}
