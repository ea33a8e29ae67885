//! The clients connected to a run, by id: admission to a slot (shard `k` of the run, an
//! enrolled site's own id, or the next free id), the wait for enough clients before a round,
//! and the goodbye at the end. A certified site keeps its id for the whole run: when it
//! reconnects it gets the same id back, and its new connection replaces an old one the
//! coordinator has not yet noticed is gone.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use fedssl_shared::protocol::{write_message, RunInfo, ServerMessage};
use tokio::task::JoinSet;
use tracing::info;

use crate::server::handshake::Admitted;

/// Why [`Registry::slot`] gives a peer no slot.
#[derive(Clone, Debug, PartialEq)]
pub enum NoSlot {
    /// For now: the run is full, or the peer's shard is held by a connection that may be a
    /// vanished one (freed within `federation.idle_timeout_seconds`); sent as
    /// [`ServerMessage::Busy`], and a retrying client tries again.
    Busy(String),
    /// For good: the shard does not fit the run, or a site asks for another id than its own;
    /// sent as [`ServerMessage::Refused`].
    Refused(String),
}

impl NoSlot {
    /// The reason, in one line.
    pub fn reason(&self) -> &str {
        match self {
            NoSlot::Busy(r) | NoSlot::Refused(r) => r,
        }
    }

    /// The message that tells the peer.
    pub fn message(&self) -> ServerMessage {
        match self {
            NoSlot::Busy(r) => ServerMessage::Busy { reason: r.clone() },
            NoSlot::Refused(r) => ServerMessage::Refused { reason: r.clone() },
        }
    }
}

/// A connected client's control stream (the one its hello came on), shared by the messages
/// sent on it.
pub type ControlStream = Arc<tokio::sync::Mutex<quinn::SendStream>>;

/// How the coordinator reaches a connected client: its connection, and whether the
/// connection is shared by many virtual clients (a multiplexed session,
/// [`ClientMessage::MultiplexedHello`](fedssl_shared::protocol::ClientMessage::MultiplexedHello)),
/// whose streams then start with [`ServerMessage::For`].
#[derive(Clone)]
pub struct ClientLink {
    /// The client id.
    pub id: u32,
    /// Its connection.
    pub conn: quinn::Connection,
    /// Whether the connection carries other clients' sessions too.
    pub multiplexed: bool,
}

impl ClientLink {
    /// Opens a stream to this client (for a round), with the [`ServerMessage::For`] header a
    /// multiplexed connection needs already written; returns the stream and the header's
    /// bytes (0 on a connection of its own). Errors when the connection is lost.
    pub async fn open(&self) -> Result<(quinn::SendStream, quinn::RecvStream, u64)> {
        let (mut send, recv) = self
            .conn
            .open_bi()
            .await
            .map_err(|e| anyhow::anyhow!("connection lost: {e}"))?;
        let mut header = 0;
        if self.multiplexed {
            let msg = ServerMessage::For { client_id: self.id };
            header = fedssl_shared::protocol::encode_frame(&msg)?.len() as u64;
            write_message(&mut send, &msg).await?;
        }
        Ok((send, recv, header))
    }
}

/// Which session of a client an entry is: its connection and its control stream (a
/// multiplexed connection carries many).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionKey {
    conn: usize,
    ctrl: quinn::StreamId,
}

impl SessionKey {
    /// The session whose control stream `ctrl` is on `conn`.
    pub fn of(conn: &quinn::Connection, ctrl: &quinn::SendStream) -> Self {
        Self {
            conn: conn.stable_id(),
            ctrl: ctrl.id(),
        }
    }
}

/// A connected client.
struct Registered {
    conn: quinn::Connection,
    ctrl: ControlStream,
    key: SessionKey,
    multiplexed: bool,
    name: String,
    site: Option<String>,
    joined: Instant,
}

/// What the live run page shows of a connected client ([`Registry::connected`]).
#[derive(Clone, Debug)]
pub struct Connected {
    /// Its client id.
    pub id: u32,
    /// The name its hello gave.
    pub name: String,
    /// Its certified site name, when it has one.
    pub site: Option<String>,
    /// The address its connection comes from.
    pub remote: std::net::SocketAddr,
    /// When it (last) joined.
    pub joined: Instant,
}

/// Connected clients by id.
pub struct Registry {
    clients: Mutex<BTreeMap<u32, Registered>>,
    changed: tokio::sync::Notify,
    next_id: AtomicU32,
    capacity: usize,
    run: RunInfo,
    /// Every certified site that was given an id in this run, and its id.
    site_ids: Mutex<BTreeMap<String, u32>>,
    /// The ids last given to a client that asked for their shard (`--shard K/N`, a
    /// simulated client), and the size of each shard when the coordinator knows them
    /// ([`Self::expected_samples`]).
    shard_claims: Mutex<(std::collections::BTreeSet<u32>, Option<Vec<u64>>)>,
}

impl Registry {
    /// An empty registry for a run of `run.num_clients` clients.
    pub fn new(run: RunInfo) -> Arc<Self> {
        Arc::new(Self {
            clients: Mutex::new(BTreeMap::new()),
            changed: tokio::sync::Notify::new(),
            next_id: AtomicU32::new(run.num_clients),
            capacity: run.num_clients as usize,
            run,
            site_ids: Mutex::new(BTreeMap::new()),
            shard_claims: Mutex::new(Default::default()),
        })
    }

    /// The size of every shard of the run's partition (`sizes[k]`: images of shard `k`),
    /// for the coordinator that knows them: a client holding shard `k` must then report
    /// `sizes[k]` samples.
    pub fn set_shard_sizes(&self, sizes: Vec<u64>) {
        self.shard_claims
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .1 = Some(sizes);
    }

    /// The samples client `id` must report: its shard's size when it asked for its shard
    /// and the shard sizes are known; `None` otherwise.
    pub fn expected_samples(&self, id: u32) -> Option<u64> {
        let g = self
            .shard_claims
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !g.0.contains(&id) {
            return None;
        }
        g.1.as_ref()?.get(id as usize).copied()
    }

    /// The map of clients. Every critical section is one map operation that cannot panic
    /// half-way, so a lock poisoned by a panic elsewhere still guards consistent data and is
    /// taken as it is.
    fn clients(&self) -> MutexGuard<'_, BTreeMap<u32, Registered>> {
        self.clients.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The run the clients join (sent in the welcome).
    pub fn run(&self) -> &RunInfo {
        &self.run
    }

    /// Ids of the connected clients, sorted.
    pub fn ids(&self) -> Vec<u32> {
        self.clients().keys().copied().collect()
    }

    /// How to reach client `id`, if it is connected.
    pub fn link(&self, id: u32) -> Option<ClientLink> {
        self.clients().get(&id).map(|r| ClientLink {
            id,
            conn: r.conn.clone(),
            multiplexed: r.multiplexed,
        })
    }

    /// The connected clients, by id.
    pub fn connected(&self) -> Vec<Connected> {
        self.clients()
            .iter()
            .map(|(id, r)| Connected {
                id: *id,
                name: r.name.clone(),
                site: r.site.clone(),
                remote: r.conn.remote_address(),
                joined: r.joined,
            })
            .collect()
    }

    /// The sites certified so far, `id → name` (connected or not).
    pub fn sites(&self) -> BTreeMap<u32, String> {
        let g = self.site_ids.lock().unwrap_or_else(PoisonError::into_inner);
        g.iter().map(|(s, id)| (*id, s.clone())).collect()
    }

    /// The id a client asking for `shard` (`(k, n)`: shard `k` of `n`; `None`: any) and
    /// `admitted` as it is gets, or why it is refused: the run already has its clients, the
    /// shard does not fit the run, or another connected client holds it. A certified site
    /// gets the id it had before (or its bound id, or its shard's), and may replace its own
    /// earlier connection; a client without a shard gets the next id above the shards'.
    /// A full run and a held shard or id are [`NoSlot::Busy`] (a vanished connection frees
    /// them), the rest [`NoSlot::Refused`].
    pub fn slot(&self, shard: Option<(u32, u32)>, admitted: &Admitted) -> Result<u32, NoSlot> {
        let g = self.clients();
        let mut sites = self.site_ids.lock().unwrap_or_else(PoisonError::into_inner);
        let known = admitted
            .site
            .as_ref()
            .and_then(|s| sites.get(s).copied())
            .or(admitted.bound_id);
        let returning = known.filter(|id| {
            g.get(id)
                .is_some_and(|r| r.site.is_some() && r.site == admitted.site)
        });
        // A client asking for a place a connected client holds (its own earlier connection,
        // not yet timed out, when it restarted) is told about that place, not the full run.
        let held = known
            .or(shard.map(|(k, _)| k))
            .is_some_and(|id| g.contains_key(&id));
        if returning.is_none() && g.len() >= self.capacity && !held {
            return Err(NoSlot::Busy(format!(
                "the run already has its {} clients (federation.clients; a client that just vanished frees its place within federation.idle_timeout_seconds)",
                self.capacity
            )));
        }
        let id = match (known, shard) {
            (Some(id), Some((k, _))) if k != id => Err(NoSlot::Refused(format!(
                "site `{}` holds client id {id} in this run, not shard {k}",
                admitted.site.as_deref().unwrap_or("?")
            ))),
            (Some(id), _) if returning.is_none() && g.contains_key(&id) => Err(NoSlot::Busy(
                format!("client id {id} is already held by a connected client"),
            )),
            (Some(id), _) => Ok(id),
            (None, shard) => self.free_slot(&g, shard, admitted.site.as_deref()),
        }?;
        if let Some(site) = &admitted.site {
            sites.insert(site.clone(), id);
        }
        let mut claims = self
            .shard_claims
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if shard.is_some() {
            claims.0.insert(id);
        } else {
            claims.0.remove(&id);
        }
        Ok(id)
    }

    /// The id for `shard` (or the next free one) among the connected clients `g`, for a
    /// client certified as `site` (if any). A shard held by another certified site is refused
    /// naming that site (it will not free up: each site keeps its own shard); one held by an
    /// uncertified client is busy (it may be this client's own vanished connection).
    fn free_slot(
        &self,
        g: &BTreeMap<u32, Registered>,
        shard: Option<(u32, u32)>,
        site: Option<&str>,
    ) -> Result<u32, NoSlot> {
        match shard {
            Some((k, n)) if n != self.run.num_clients || k >= n => Err(NoSlot::Refused(format!(
                "shard {k}/{n} does not fit this run: it has {} shards, numbered 0..{}",
                self.run.num_clients,
                self.run.num_clients.saturating_sub(1)
            ))),
            Some((k, _)) if g.contains_key(&k) => {
                match g.get(&k).and_then(|r| r.site.as_deref()) {
                    Some(holder) if Some(holder) != site => Err(NoSlot::Refused(format!(
                        "shard {k} is held by site `{holder}` in this run (each site trains on its own shard: check --shard)"
                    ))),
                    _ => Err(NoSlot::Busy(format!(
                        "shard {k} is already held by a connected client (a client that just vanished frees it within federation.idle_timeout_seconds; retry shortly)"
                    ))),
                }
            }
            Some((k, _)) => Ok(k),
            None => Ok(self.next_id.fetch_add(1, Ordering::SeqCst)),
        }
    }

    /// Registers client `id` (its connection, control stream, whether the connection is
    /// multiplexed, hello name and certified site); returns the control stream, shared, and
    /// the session's key for [`Registry::remove`]. An earlier session of the same id (a site
    /// that reconnected before its old connection timed out) is ended: its connection
    /// closed, or on a multiplexed connection its control stream reset.
    pub fn insert(
        &self,
        id: u32,
        conn: quinn::Connection,
        ctrl: quinn::SendStream,
        multiplexed: bool,
        name: String,
        site: Option<String>,
    ) -> (ControlStream, SessionKey) {
        let key = SessionKey::of(&conn, &ctrl);
        let ctrl = Arc::new(tokio::sync::Mutex::new(ctrl));
        let old = self.clients().insert(
            id,
            Registered {
                conn,
                ctrl: ctrl.clone(),
                key,
                multiplexed,
                name,
                site,
                joined: Instant::now(),
            },
        );
        if let Some(old) = old {
            info!(
                client = id,
                "a new connection of this site replaces its old one"
            );
            if old.multiplexed {
                tokio::spawn(async move {
                    let _ = old.ctrl.lock().await.reset(3u32.into());
                });
            } else {
                old.conn.close(
                    3u32.into(),
                    b"replaced by a new connection of the same site",
                );
            }
        }
        (ctrl, key)
    }

    /// Wakes [`Registry::wait_for`]: a client joined.
    pub fn notify_joined(&self) {
        self.changed.notify_waiters();
    }

    /// Forgets client `id` if `session` is still its session (a client that reconnected
    /// under the same id keeps its new entry).
    pub fn remove(&self, id: u32, session: SessionKey) {
        let mut g = self.clients();
        if g.get(&id).is_some_and(|r| r.key == session) {
            if let Some(r) = g.remove(&id) {
                info!(client = id, name = %r.name, "client left");
            }
        }
        drop(g);
        self.changed.notify_waiters();
    }

    /// Waits until `want` clients are connected, or `min` are and `grace` has passed since;
    /// errors after `timeout`. `connected` is told the number connected each time it changes
    /// while this waits (from the first number below `want`; nothing when none is missing).
    pub async fn wait_for(
        &self,
        min: usize,
        want: usize,
        grace: Duration,
        timeout: Duration,
        mut connected: impl FnMut(usize),
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut min_since: Option<Instant> = None;
        let mut told = None;
        loop {
            let notified = self.changed.notified();
            let n = self.ids().len();
            if told != Some(n) && (told.is_some() || n < want) {
                connected(n);
                told = Some(n);
            }
            if n >= want {
                return Ok(());
            }
            if n >= min {
                let since = *min_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= grace {
                    return Ok(());
                }
            } else {
                min_since = None;
            }
            if Instant::now() >= deadline {
                bail!("only {n} of the {min} clients needed (federation.min_clients) joined within {:.0} s", timeout.as_secs_f64());
            }
            let _ = tokio::time::timeout(Duration::from_millis(250), notified).await;
        }
    }

    /// Tells every connected client that the run is over and closes the connections.
    pub async fn finish_all(&self, message: &str) {
        let clients: Vec<(quinn::Connection, ControlStream)> = self
            .clients()
            .values()
            .map(|r| (r.conn.clone(), r.ctrl.clone()))
            .collect();
        let mut goodbyes = JoinSet::new();
        for (conn, ctrl) in &clients {
            let (conn, ctrl, message) = (conn.clone(), ctrl.clone(), message.to_string());
            goodbyes.spawn(async move {
                let mut s = ctrl.lock().await;
                if write_message(&mut *s, &ServerMessage::Finished { message })
                    .await
                    .is_ok()
                {
                    let _ = s.finish();
                }
                // Give the client a moment to read it and close first.
                let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
            });
        }
        while goodbyes.join_next().await.is_some() {}
        // The reason tells a client that joined too late to read `Finished` how the run ended.
        let reason: &[u8] = if message.starts_with("run failed") {
            b"run failed"
        } else {
            b"run finished"
        };
        for (conn, _) in clients {
            conn.close(0u32.into(), reason);
        }
    }
}
