//! The `simulate` run mode's side of a run: a loopback endpoint, the clients' shards, and one
//! in-process client per shard speaking the real protocol over loopback QUIC. The only room
//! of the coordinator that uses `fedssl-client`.
//!
//! The simulated path is the authenticated one: an in-memory CA ([`crate::provision`])
//! certifies the coordinator (`localhost`) and one site per client (`sim-K`, client `K`,
//! shard `K`), and the endpoint admits exactly those sites with mutual TLS
//! ([`SiteAdmission`]), as `serve --kit` does. Nothing of it touches the training: a
//! simulation's weights are the same bytes as without authentication.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use fedssl_shared::config::Scenario;
use fedssl_shared::data::ImageDataset;
use indicatif::MultiProgress;
use tokio::task::JoinHandle;
use tracing::info;

use crate::provision::Authority;
use crate::run::serve::Bound;
use crate::server::sites::SiteAdmission;
use crate::server::tls;

/// The in-memory kits of a simulation's clients: the CA they trust and each site's
/// credentials (client `K` is site `sim-K`).
pub(crate) struct SimKits {
    ca_pem: String,
    sites: Vec<fedssl_client::tls::SiteCredentials>,
}

/// Days the in-memory certificates are valid.
const SIM_DAYS: i64 = 7;

/// A server endpoint on `127.0.0.1` (any free port) that admits only the simulation's sites
/// `sim-0 … sim-{N-1}` (`N = federation.clients`) by their certificates of a fresh in-memory
/// CA, and those sites' kits; `idle` is the QUIC idle timeout.
pub(crate) fn loopback_endpoint(sc: &Scenario, idle: Duration) -> Result<(Bound, SimKits)> {
    let ca = Authority::new("simulation", SIM_DAYS)?;
    let coord = ca.issue_coordinator(&["localhost".into(), "127.0.0.1".into()], SIM_DAYS)?;
    let id = tls::load_identity_pem(&coord.cert_pem, &coord.key_pem)?;
    let ca_pem = ca.cert_pem();
    let verifier = tls::client_verifier(ca_pem.as_bytes(), std::path::Path::new("simulation CA"))?;
    let names: Vec<String> = (0..sc.federation.clients)
        .map(|k| format!("sim-{k}"))
        .collect();
    let mut sites = Vec::with_capacity(names.len());
    for n in &names {
        let issued = ca.issue_site(n, SIM_DAYS)?;
        sites.push(fedssl_client::tls::SiteCredentials {
            cert_pem: issued.cert_pem.into_bytes(),
            key_pem: issued.key_pem.into_bytes(),
        });
    }
    let cfg = tls::server_config(&id, idle, Some(verifier), sc.federation.clients)?;
    let ep = fedssl_shared::quic::endpoint("127.0.0.1:0".parse()?, Some(cfg))
        .context("cannot open a loopback UDP socket")?;
    let bound = Bound {
        endpoint: ep,
        authenticator: Arc::new(SiteAdmission {
            allow: names,
            revoked: None,
        }),
    };
    Ok((bound, SimKits { ca_pem, sites }))
}

/// The simulated clients' shards of `train`: `federation.clients` disjoint index lists drawn
/// by `[partition]` (by label, or by domain for `kind = "domain"`) with the scenario's
/// `partition` seed stream. Errors when the data cannot satisfy the partition.
pub(crate) fn shards(sc: &Scenario, train: &ImageDataset) -> Result<Vec<Vec<usize>>> {
    fedssl_shared::partition::partition_dataset(
        train,
        sc.federation.clients,
        &sc.partition,
        fedssl_shared::seed::derive(sc.seed, fedssl_shared::seed::PARTITION, 0),
    )
}

/// The folder of a run where simulated clients keep their state between rounds.
pub(crate) const CLIENT_STATE_DIR: &str = "clients";

/// The in-process clients of a simulation, running.
pub(crate) struct SimulatedClients {
    handles: Vec<JoinHandle<Result<fedssl_client::SessionReport>>>,
    /// The one client endpoint all of them connect over.
    endpoint: fedssl_client::SharedEndpoint,
}

/// Starts one client per shard of `train` (`sim-K`, holding shard `K`, with site `sim-K`'s
/// credentials of `kits`), connecting to `addr`; they share `simulation.concurrent_training` training slots
/// (0: half the cores) and draw their bars in `progress`. A client's `simulation.faults`
/// entry is injected in its round. Each keeps its state between rounds in
/// `<out>/clients/<client id>.after-round-NNNN.safetensors` ([`CLIENT_STATE_DIR`]), by round,
/// not in memory. A fresh run empties the folder first; a `resuming` run keeps it, so that
/// each client continues from its state after the newest round before the one it is asked
/// (the run is the uninterrupted one). Errors when that folder cannot be emptied.
#[allow(clippy::too_many_arguments)]
pub(crate) fn spawn_clients(
    sc: &Scenario,
    train: &ImageDataset,
    shards: &[Vec<usize>],
    addr: SocketAddr,
    kits: &SimKits,
    idle: Duration,
    progress: Option<MultiProgress>,
    out: &std::path::Path,
    resuming: bool,
) -> Result<SimulatedClients> {
    let state_dir = out.join(CLIENT_STATE_DIR);
    if state_dir.exists() && !resuming {
        std::fs::remove_dir_all(&state_dir)
            .with_context(|| format!("cannot empty {}", state_dir.display()))?;
    }
    let slots_n = if sc.simulation.concurrent_training == 0 {
        fedssl_client::default_training_slots()
    } else {
        sc.simulation.concurrent_training
    };
    let slots = Arc::new(tokio::sync::Semaphore::new(slots_n));
    let n = shards.len() as u32;
    // One endpoint for every virtual client, a few handshakes at a time (see
    // `fedssl_client::SharedEndpoint`).
    let endpoint = fedssl_client::SharedEndpoint::new(addr)?;
    let mut handles = Vec::new();
    for (k, idx) in shards.iter().enumerate() {
        let shard = Arc::new(train.subset(idx).unlabelled());
        let mut opts = fedssl_client::ClientOptions::new(
            format!("sim-{k}"),
            fedssl_client::DataSource::InMemory {
                data: shard,
                shard: Some((k as u32, n)),
            },
        );
        opts.training_slots = Some(slots.clone());
        opts.progress = progress.clone();
        opts.max_weights_bytes = sc.federation.max_weights_bytes;
        opts.behaviour = fedssl_client::Behaviour::simulated_with(
            &sc.simulation.faults,
            sc.simulation.byzantine.as_ref(),
            k as u32,
        );
        opts.state_dir = Some(state_dir.clone());
        let ccfg = fedssl_client::tls::client_config_as(
            kits.ca_pem.as_bytes(),
            Some(&kits.sites[k]),
            idle,
        )?;
        let endpoint = endpoint.clone();
        handles.push(tokio::spawn(async move {
            let res = async {
                let conn = endpoint.connect(addr, "localhost", ccfg).await?;
                fedssl_client::run_session(conn, opts).await
            }
            .await;
            if let Err(e) = &res {
                tracing::info!(client = k, "simulated client stopped: {e:#}");
            }
            res
        }));
    }
    info!(clients = shards.len(), %addr, "simulation: clients started over loopback QUIC");
    Ok(SimulatedClients { handles, endpoint })
}

impl SimulatedClients {
    /// Waits up to 10 s for the clients to end (after the coordinator said goodbye), logging
    /// how each ended; a client still running then is aborted.
    pub(crate) async fn wait(self) {
        let wait_clients = tokio::time::Instant::now() + Duration::from_secs(10);
        for c in self.handles {
            let abort = c.abort_handle();
            match tokio::time::timeout_at(wait_clients, c).await {
                Ok(Ok(Ok(_))) => {}
                Ok(Ok(Err(e))) => tracing::info!("a simulated client ended with: {e:#}"),
                Ok(Err(e)) if e.is_cancelled() => {}
                Ok(Err(e)) => tracing::warn!("a simulated client panicked: {e}"),
                Err(_) => abort.abort(),
            }
        }
        // Let the clients' close frames go out before the endpoint is dropped.
        let _ = tokio::time::timeout_at(wait_clients, self.endpoint.endpoint().wait_idle()).await;
    }
}
