//! A process hosting a slice of a simulation's virtual clients (`fedssl-client --virtual
//! A..B/N`), so that a simulation larger than one machine runs as several processes (a
//! Kubernetes Job, a Slurm job array) against one `serve`: virtual client `k` claims shard
//! `k` of `N` in its hello, so it gets client id `k`, the shard, and the seeds that
//! `simulate` gives client `k`, and the run is bit-identical to `simulate` of the same
//! scenario.
//!
//! What an idle virtual client costs: no model (its state between rounds is a file in the
//! state folder, as `simulate`'s `<run>/clients`), no connection of its own (every virtual
//! client of the process runs its session over one QUIC connection, [`crate::multiplex`]:
//! the coordinator holds one connection a process, not one a client), and its shard's images (the dataset is read and
//! partitioned once per process, [`SharedPartition`]). Training is limited to a number of
//! clients at once (`--concurrent-training`) that share the cores.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::data::{DataSource, SharedPartition};
use crate::multiplex::Multiplexer;
use crate::options::{ClientOptions, SessionReport};
use crate::reconnect::run_reconnecting;
use crate::session::Link;
use crate::shared_endpoint::SharedEndpoint;

/// Virtual clients `first..end` of a simulation of `of` clients (0-based, `end` exclusive).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtualSlice {
    /// The first virtual client of the slice.
    pub first: u32,
    /// One past the last virtual client of the slice.
    pub end: u32,
    /// The simulation's number of clients (`federation.clients`).
    pub of: u32,
}

impl std::str::FromStr for VirtualSlice {
    type Err = anyhow::Error;

    /// Parses `A..B/N` (clients `A` to `B − 1` of `N`) or `K/N` (client `K` alone). Errors
    /// quote the text and say what is expected: `0 ≤ A < B ≤ N`.
    fn from_str(s: &str) -> Result<Self> {
        let want = "expected A..B/N (virtual clients A to B-1 of N, 0-based), e.g. 0..100/1000";
        let (range, of) = s
            .split_once('/')
            .with_context(|| format!("--virtual `{s}`: {want}"))?;
        let num = |t: &str, what: &str| -> Result<u32> {
            let t = t.trim();
            match t.parse::<u64>() {
                Ok(v) => u32::try_from(v).map_err(|_| {
                    anyhow::anyhow!(
                        "--virtual `{s}`: {what} `{t}` is too large (at most {})",
                        u32::MAX
                    )
                }),
                Err(_) => bail!("--virtual `{s}`: {what} `{t}` is not a number; {want}"),
            }
        };
        let of = num(of, "N")?;
        let (first, end) = match range.split_once("..") {
            Some((a, b)) => (num(a, "A")?, num(b, "B")?),
            None => {
                let k = num(range, "K")?;
                (k, k.saturating_add(1))
            }
        };
        if first >= end || end > of {
            bail!("--virtual `{s}`: need 0 <= A < B <= N; {want}");
        }
        Ok(Self { first, end, of })
    }
}

impl VirtualSlice {
    /// How many virtual clients the slice holds.
    pub fn len(&self) -> u32 {
        self.end - self.first
    }

    /// Whether the slice holds none (never, once parsed).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where the coordinator is and how to reach it.
pub struct Coordinator {
    /// Its address.
    pub addr: SocketAddr,
    /// The name its certificate must be valid for.
    pub server_name: String,
    /// Trust (and, with a kit, the site's certificate) for every virtual client.
    pub tls: quinn::ClientConfig,
}

/// How one virtual client of the slice ended.
pub struct VirtualOutcome {
    /// Its shard index `k` (its client id when the coordinator admits it).
    pub k: u32,
    /// Its session, or why it failed.
    pub result: Result<SessionReport>,
}

/// Runs the virtual clients of `slice` against `coordinator` until the run finishes: client
/// `k` is named `<base.name>-k`, trains shard `k` of the run's dataset in `dir` (`None`:
/// synthetic) and keeps its state between rounds in `state_dir` (files
/// `<id>.after-round-NNNN.safetensors`). At most `concurrent` of them train at once; each
/// reconnects on its own for `retry_for` as `fedssl-client` does. Every virtual client's
/// session runs on one shared connection ([`crate::multiplex`]). Returns each client's outcome, in shard order; errors only
/// when the endpoint cannot be opened.
pub async fn run_virtual_slice(
    slice: VirtualSlice,
    coordinator: Coordinator,
    dir: Option<PathBuf>,
    base: &ClientOptions,
    state_dir: PathBuf,
    concurrent: usize,
    retry_for: Duration,
) -> Result<Vec<VirtualOutcome>> {
    let endpoint = SharedEndpoint::new(coordinator.addr)?;
    let mux = Multiplexer::new(
        endpoint.clone(),
        coordinator.addr,
        coordinator.server_name.clone(),
        coordinator.tls.clone(),
        slice.len(),
    );
    let partition = Arc::new(SharedPartition::new(dir));
    let slots = Arc::new(tokio::sync::Semaphore::new(concurrent.max(1)));
    let mut tasks = Vec::with_capacity(slice.len() as usize);
    for k in slice.first..slice.end {
        let mut opts = base.clone();
        opts.name = format!("{}-{k}", base.name);
        opts.data = DataSource::Virtual {
            k,
            n: slice.of,
            partition: partition.clone(),
        };
        opts.training_slots = Some(slots.clone());
        opts.state_dir = Some(state_dir.clone());
        let (endpoint, mux) = (endpoint.clone(), mux.clone());
        tasks.push(tokio::spawn(async move {
            let connect = || {
                let (endpoint, mux) = (endpoint.clone(), mux.clone());
                async move {
                    let shared = mux.connection().await?;
                    Ok((endpoint.endpoint().clone(), Link::Shared(shared)))
                }
            };
            let result = run_reconnecting(connect, &opts, retry_for).await;
            if let Err(e) = &result {
                tracing::warn!(virtual_client = k, "{e:#}");
            }
            VirtualOutcome { k, result }
        }));
    }
    let mut outcomes = Vec::with_capacity(tasks.len());
    for (t, k) in tasks.into_iter().zip(slice.first..) {
        outcomes.push(match t.await {
            Ok(o) => o,
            Err(e) => VirtualOutcome {
                k,
                result: Err(anyhow::anyhow!("virtual client {k} panicked: {e}")),
            },
        });
    }
    mux.close().await;
    let _ = tokio::time::timeout(Duration::from_secs(3), endpoint.endpoint().wait_idle()).await;
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_slice_is_parsed_as_a_range_of_n_or_one_client() {
        let s: VirtualSlice = "100..200/1000".parse().unwrap();
        assert_eq!(
            s,
            VirtualSlice {
                first: 100,
                end: 200,
                of: 1000
            }
        );
        assert_eq!(s.len(), 100);
        let one: VirtualSlice = " 7 / 10".parse().unwrap();
        assert_eq!((one.first, one.end, one.of), (7, 8, 10));
        for (bad, says) in [
            ("0..10", "expected A..B/N"),
            ("5..5/10", "need 0 <= A < B <= N"),
            ("0..11/10", "need 0 <= A < B <= N"),
            ("10/10", "need 0 <= A < B <= N"),
            ("a..3/10", "A `a` is not a number"),
            ("0..3/x", "N `x` is not a number"),
            (
                "0..50/100000000000",
                "N `100000000000` is too large (at most 4294967295)",
            ),
        ] {
            let e = format!("{:#}", bad.parse::<VirtualSlice>().unwrap_err());
            assert!(
                e.starts_with(&format!("--virtual `{bad}`")) && e.contains(says),
                "{e}"
            );
        }
    }
}
