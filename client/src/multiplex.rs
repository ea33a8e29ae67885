//! Many virtual clients' sessions over one QUIC connection (`fedssl-client --virtual`).
//!
//! A connection costs the coordinator about 36 KB whether its client is sampled or idle
//! (quinn's connection state, its event channel, its driver task; measured with heaptrack
//! at 1,000 connections), so a slice of 1,000 virtual clients on connections of their own
//! grew the coordinator from 18 MB to 78 MB. Multiplexed, the slice holds one connection:
//! each virtual client opens its own control stream on it and says
//! [`ClientMessage::MultiplexedHello`](fedssl_shared::protocol::ClientMessage::MultiplexedHello);
//! the coordinator then starts every stream it opens for that client (one a round) with
//! [`ServerMessage::For`], and [`Multiplexed`]'s router hands the stream to the session of
//! that client id. A session ends with its control stream (a
//! [`ClientMessage::Leaving`](fedssl_shared::protocol::ClientMessage::Leaving) first
//! saying why, when it fails), not with the connection, which the slice closes once every
//! session is over. A lost connection ends every session on it with a
//! [`Transient`](crate::reconnect::Transient) error; each reconnects as a client on its own
//! connection does, over one new connection ([`Multiplexer::connection`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Result;
use fedssl_shared::protocol::{read_message, ServerMessage};
use tokio::sync::mpsc;
use tracing::warn;

use crate::reconnect::{is_transient, transient};
use crate::shared_endpoint::SharedEndpoint;

/// A stream the coordinator opened for one client (its [`ServerMessage::For`] header read).
pub(crate) type ClientStream = (quinn::SendStream, quinn::RecvStream);

/// Seconds the coordinator has to send a stream's [`ServerMessage::For`] header.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Dials the one connection of a process's virtual clients, and dials it again once it is
/// lost. Cloning shares it.
#[derive(Clone)]
pub struct Multiplexer {
    endpoint: SharedEndpoint,
    addr: SocketAddr,
    server_name: String,
    tls: quinn::ClientConfig,
    /// Virtual clients that may hold a session on the connection at once.
    clients: u32,
    current: Arc<tokio::sync::Mutex<Dialled>>,
}

/// The last dial's outcome: the open connection, or when and why the dial failed.
#[derive(Default)]
struct Dialled {
    open: Option<Arc<Multiplexed>>,
    failed: Option<(Instant, String, bool)>,
}

impl Multiplexer {
    /// A multiplexer for `clients` virtual clients reaching the coordinator at `addr`
    /// (certificate valid for `server_name`) with `tls`, over `endpoint`. Dials nothing yet.
    pub fn new(
        endpoint: SharedEndpoint,
        addr: SocketAddr,
        server_name: String,
        tls: quinn::ClientConfig,
        clients: u32,
    ) -> Self {
        Self {
            endpoint,
            addr,
            server_name,
            tls,
            clients,
            current: Arc::new(tokio::sync::Mutex::new(Dialled::default())),
        }
    }

    /// The shared connection: the open one, or a new one when there is none or it was lost
    /// (one dial however many sessions ask at once: those that waited for a dial that failed
    /// get its error, not a dial each in turn, which with an unreachable coordinator cost
    /// each waiting client a handshake timeout before its first retry). Errors as
    /// [`crate::connect_on`]'s.
    pub async fn connection(&self) -> Result<Arc<Multiplexed>> {
        let asked = Instant::now();
        let mut current = self.current.lock().await;
        if let Some(m) = current.open.as_ref() {
            if m.conn.close_reason().is_none() {
                return Ok(m.clone());
            }
        }
        if let Some((at, why, passing)) = &current.failed {
            if *at >= asked {
                return Err(if *passing {
                    transient(why.clone())
                } else {
                    anyhow::anyhow!("{why}")
                });
            }
        }
        let conn = match self
            .endpoint
            .connect(self.addr, &self.server_name, self.tls.clone())
            .await
        {
            Ok(c) => c,
            Err(e) => {
                current.failed = Some((Instant::now(), format!("{e:#}"), is_transient(&e)));
                return Err(e);
            }
        };
        // The coordinator opens one stream a round for each sampled client of the slice (and
        // a round it dropped a client from may still be closing).
        conn.set_max_concurrent_bi_streams(
            self.clients.saturating_mul(2).saturating_add(16).into(),
        );
        let m = Arc::new(Multiplexed {
            conn,
            routes: Mutex::new(Routes::default()),
        });
        tokio::spawn(route(m.clone()));
        *current = Dialled {
            open: Some(m.clone()),
            failed: None,
        };
        Ok(m)
    }

    /// Closes the connection, if one is open (every session on it is over).
    pub async fn close(&self) {
        if let Some(m) = self.current.lock().await.open.take() {
            m.conn.close(0u32.into(), b"done");
        }
    }
}

/// One connection that many virtual clients' sessions share.
pub struct Multiplexed {
    pub(crate) conn: quinn::Connection,
    routes: Mutex<Routes>,
}

/// Where the router sends each client's streams.
#[derive(Default)]
struct Routes {
    /// The welcomed sessions, by client id.
    open: HashMap<u32, mpsc::UnboundedSender<ClientStream>>,
    /// Streams for a client id whose session has not registered yet (the coordinator may
    /// open its first round before the session has read its welcome).
    early: HashMap<u32, Vec<ClientStream>>,
    /// Set once the connection is lost: no session registers any more.
    lost: bool,
}

impl Multiplexed {
    /// The routes. Every critical section is a map operation that cannot panic half-way, so
    /// a lock poisoned elsewhere still guards consistent maps and is taken as it is.
    fn routes(&self) -> MutexGuard<'_, Routes> {
        self.routes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers the session of `client_id` (welcomed on this connection): the streams the
    /// coordinator opens for it, from now on and any that came before, arrive on the
    /// returned [`Route`]. It ends when the connection is lost or the route is dropped.
    pub(crate) fn register(self: &Arc<Self>, client_id: u32) -> Route {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut g = self.routes();
        for s in g.early.remove(&client_id).unwrap_or_default() {
            let _ = tx.send(s);
        }
        if !g.lost {
            g.open.insert(client_id, tx);
        }
        Route {
            rx,
            client_id,
            owner: self.clone(),
        }
    }

    /// Hands `stream` to the session of `client_id`, or keeps it until one registers.
    fn dispatch(&self, client_id: u32, stream: ClientStream) {
        let mut g = self.routes();
        let stream = match g.open.get(&client_id) {
            Some(tx) => match tx.send(stream) {
                Ok(()) => return,
                Err(mpsc::error::SendError(s)) => s,
            },
            None => stream,
        };
        g.early.entry(client_id).or_default().push(stream);
    }
}

/// The streams the coordinator opens for one registered session; dropping it unregisters
/// the session.
pub(crate) struct Route {
    rx: mpsc::UnboundedReceiver<ClientStream>,
    client_id: u32,
    owner: Arc<Multiplexed>,
}

impl Route {
    /// The next stream for this client; `None` once the connection is lost.
    pub(crate) async fn next(&mut self) -> Option<ClientStream> {
        self.rx.recv().await
    }
}

impl Drop for Route {
    fn drop(&mut self) {
        self.owner.routes().open.remove(&self.client_id);
    }
}

/// Accepts the streams the coordinator opens on `m` and hands each to its client's session
/// by its [`ServerMessage::For`] header, until the connection is lost; then every session's
/// route ends.
async fn route(m: Arc<Multiplexed>) {
    while let Ok((send, mut recv)) = m.conn.accept_bi().await {
        let m = m.clone();
        tokio::spawn(async move {
            let header = tokio::time::timeout(HEADER_TIMEOUT, read_message(&mut recv)).await;
            match header {
                Ok(Ok(ServerMessage::For { client_id })) => m.dispatch(client_id, (send, recv)),
                Ok(Ok(other)) => warn!("protocol error: a stream began with {other:?}, not For"),
                Ok(Err(e)) => warn!("a stream of the shared connection failed: {e:#}"),
                Err(_) => warn!("a stream of the shared connection sent no header within 30 s"),
            }
        });
    }
    let mut g = m.routes();
    g.lost = true;
    g.open.clear();
    g.early.clear();
}
