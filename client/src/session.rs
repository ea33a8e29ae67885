//! A client's session with the coordinator: open the QUIC connection ([`connect`], [`open`]),
//! say hello and receive the welcome (or the refusal), load this client's data, then serve
//! rounds until the coordinator says the run is over ([`run_session`]). The coordinator
//! opens one stream per round (see [`crate::round`]); the control stream carries the hello,
//! the welcome and the closing message.
//!
//! A session that ends because the coordinator went away (it cannot be reached, the
//! connection dropped, or it is [`ServerMessage::Busy`]) ends with a
//! [`Transient`](crate::reconnect::Transient) error, which [`crate::reconnect`] retries; every
//! other error (a refusal, a certificate the other side does not trust, a protocol error,
//! data that cannot be loaded, a run that failed) is for good. What a client keeps from one
//! session to the next of the same run — its data, its local state by round — is
//! [`Retained`].

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use fedssl_shared::data::ImageDataset;
use fedssl_shared::protocol::{
    read_message, write_message, ClientMessage, RunInfo, ServerMessage, PROTOCOL_VERSION,
};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::data::resolve_data;
use crate::multiplex::{Multiplexed, Route};
use crate::options::{ClientOptions, SessionReport};
use crate::reconnect::transient;
use crate::round::{handle_round, Learner};
use crate::state::Local;
use crate::tls::tls_refusal;

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
/// A coordinator that cannot be reached is a [`Transient`](crate::reconnect::Transient)
/// error; a TLS refusal or a coordinator certificate this client does not trust is not.
pub async fn open(
    addr: SocketAddr,
    server_name: &str,
    client_cfg: quinn::ClientConfig,
) -> Result<(quinn::Endpoint, quinn::Connection)> {
    let endpoint = client_endpoint(addr)?;
    let conn = connect_on(&endpoint, addr, server_name, client_cfg).await?;
    Ok((endpoint, conn))
}

/// A client endpoint on an ephemeral UDP port (IPv4 or IPv6 as `addr` is). One endpoint
/// carries any number of connections (see [`crate::SharedEndpoint`] for many clients of one
/// process). Errors when no UDP socket can be opened.
pub fn client_endpoint(addr: SocketAddr) -> Result<quinn::Endpoint> {
    let bind: SocketAddr = if addr.is_ipv6() {
        "[::]:0".parse()?
    } else {
        "0.0.0.0:0".parse()?
    };
    fedssl_shared::quic::endpoint(bind, None).context("cannot open a UDP socket")
}

/// Opens a connection to the coordinator at `addr` (whose certificate must be valid for
/// `server_name`) over `endpoint`, with `client_cfg` (this client's trust and, in mutual TLS,
/// its certificate). Errors as [`open`]'s.
pub async fn connect_on(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    server_name: &str,
    client_cfg: quinn::ClientConfig,
) -> Result<quinn::Connection> {
    let conn = match endpoint
        .connect_with(client_cfg, addr, server_name)
        .with_context(|| format!("cannot connect to {addr}"))?
        .await
    {
        Ok(c) => c,
        Err(e) => match tls_refusal(&e) {
            Some(why) => bail!("{why}"),
            None if e.to_string().contains("not valid for name") => bail!(
                "the coordinator's certificate at {addr} is not valid for the name `{server_name}` \
                 this client checks it against: connect by a name `provision --coordinator-name` \
                 gave, or pass one as --server-name ({e})"
            ),
            None if e.to_string().contains("invalid peer certificate")
                && e.to_string().to_lowercase().contains("expired") =>
            {
                bail!("the coordinator's certificate at {addr} has expired (provision anew) ({e})")
            }
            None if e.to_string().contains("invalid peer certificate") => bail!(
                "this client does not trust the coordinator at {addr}: its certificate is not \
                 signed by the CA this client was given (--ca, or the kit's ca.pem: a kit of \
                 another provisioning, or another run's cert.pem?) ({e})"
            ),
            None => return Err(transient(format!("cannot reach the coordinator at {addr} (is it running, and is --ca its certificate?): {e}"))),
        },
    };
    Ok(conn)
}

/// The connection a session runs on: one of the client's own, or one shared by many virtual
/// clients of a process ([`crate::multiplex`]).
pub enum Link {
    /// A connection of this client's own: the session ends with it.
    Own(quinn::Connection),
    /// A connection many sessions share: this session has its own control stream on it and
    /// receives its rounds' streams through the connection's router.
    Shared(Arc<Multiplexed>),
}

impl Link {
    /// The QUIC connection.
    pub fn conn(&self) -> &quinn::Connection {
        match self {
            Link::Own(c) => c,
            Link::Shared(m) => &m.conn,
        }
    }
}

impl From<quinn::Connection> for Link {
    fn from(conn: quinn::Connection) -> Self {
        Link::Own(conn)
    }
}

/// What a client keeps from one session to the next of the same run (see
/// [`crate::reconnect`]): its id, the run, its images and its local state by round. A welcome
/// with another id or another run starts afresh.
#[derive(Default)]
pub struct Retained {
    /// The previous session's learner (its data and state are shared, not copied).
    learner: Option<Learner>,
    /// The rounds (0-based) trained and returned over all sessions: a round trained again
    /// after a coordinator restart counts once.
    rounds_trained: std::collections::BTreeSet<u32>,
    /// Welcomes received over all sessions.
    pub(crate) welcomes: usize,
    /// Reconnection attempts since this client last joined (set by
    /// [`crate::reconnect::run_reconnecting`]); a welcome after any says so at `warn` level,
    /// so that `--quiet` shows the client is back.
    pub(crate) attempts: u32,
}

/// Runs one client session on an open connection until the coordinator says the run is over;
/// a run that the coordinator says failed (`run failed: …`) is an error, so that the client
/// exits non-zero.
/// A session that fails closes the connection with its error as the reason (at most 1,000
/// bytes), so the coordinator logs why the client left and frees its shard at once; a
/// connection the coordinator's TLS closed (a refused certificate) is an error saying why.
pub async fn run_session(conn: quinn::Connection, opts: ClientOptions) -> Result<SessionReport> {
    run_session_keeping(conn.into(), &opts, &mut Retained::default()).await
}

/// [`run_session`] on `link`, continuing from what an earlier session of this client `kept`
/// (and updating it): a client that reconnects to its run keeps its data and local state.
/// A session on a shared connection that fails says why in a
/// [`ClientMessage::Leaving`] and ends its control stream instead of closing the connection.
pub async fn run_session_keeping(
    link: Link,
    opts: &ClientOptions,
    kept: &mut Retained,
) -> Result<SessionReport> {
    let conn = link.conn().clone();
    let res = session(&link, opts, kept).await;
    if let (Err(e), Some(ended)) = (&res, run_ended(&conn)) {
        // The coordinator closed the connection at the end of the run: this client joined
        // too late to read its `Finished` (e.g. a virtual client that took a freed slot
        // after the last round), or was waiting to join.
        return match (ended, kept.learner.as_ref()) {
            (RunEnd::Finished, Some(l)) => Ok(SessionReport {
                client_id: l.client_id,
                rounds_trained: kept.rounds_trained.len(),
                message: "the run finished (the coordinator closed the connection)".into(),
            }),
            (RunEnd::Finished, None) => {
                bail!("the run finished before this client could join ({e:#})")
            }
            (RunEnd::Failed, _) => bail!("the coordinator ended the run as failed ({e:#})"),
        };
    }
    if res.is_err() {
        // A certificate the coordinator's TLS refused shows only once the handshake is over.
        if let Some(why) = conn.close_reason().as_ref().and_then(tls_refusal) {
            bail!("{why}");
        }
    }
    if let (Err(_), Link::Shared(_)) = (&res, &link) {
        return res;
    }
    if let Err(e) = &res {
        if conn.close_reason().is_none() {
            conn.close(2u32.into(), leaving_reason(e).as_bytes());
        }
    }
    res
}

/// Why a failed session leaves, as the coordinator is told (its connection's close reason,
/// or a multiplexed session's [`ClientMessage::Leaving`]): the error's chain, at most 1,000
/// bytes, cut at a character boundary.
fn leaving_reason(e: &anyhow::Error) -> String {
    let mut reason = format!("{e:#}");
    let mut end = reason.len().min(1000);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason.truncate(end);
    reason
}

/// How the coordinator said a run ended when it closed a connection at its end.
enum RunEnd {
    Finished,
    Failed,
}

/// How the run ended, when the coordinator closed `conn` because it did (its close reasons
/// `run finished` and `run failed`, [`ServerMessage::Finished`]'s fallback).
fn run_ended(conn: &quinn::Connection) -> Option<RunEnd> {
    match conn.close_reason() {
        Some(quinn::ConnectionError::ApplicationClosed(c)) => match c.reason.as_ref() {
            b"run finished" => Some(RunEnd::Finished),
            b"run failed" => Some(RunEnd::Failed),
            _ => None,
        },
        _ => None,
    }
}

/// The error of a session that lost `conn` with `what`: [`Transient`](crate::reconnect::Transient)
/// unless this client closed it itself (a simulated disconnect).
fn lost(conn: &quinn::Connection, what: String) -> anyhow::Error {
    match conn.close_reason() {
        Some(quinn::ConnectionError::LocallyClosed) => anyhow::anyhow!("{what}"),
        _ => transient(what),
    }
}

/// The learner of a session welcomed as `client_id` into `run`: the one `kept` from an
/// earlier session of the same id and run, or a new one with this client's data loaded.
async fn learner_for(
    opts: &ClientOptions,
    kept: &mut Retained,
    client_id: u32,
    run: RunInfo,
) -> Result<Learner> {
    if let Some(l) = kept.learner.take() {
        if l.client_id == client_id && l.run == run {
            info!(
                client_id,
                "rejoined the run with this client's data and local state"
            );
            return Ok(l);
        }
        warn!(
            client_id,
            "welcomed into another run or as another client: starting afresh"
        );
    }
    let data = load_data(opts, &run, client_id).await?;
    Ok(Learner {
        client_id,
        run,
        data,
        device: opts.device.clone(),
        local: Arc::new(Mutex::new(Local::default())),
        state_dir: opts.state_dir.clone(),
    })
}

/// The session on `link`'s control stream: [`session_on`], and on a shared connection the
/// stream's end (after a [`ClientMessage::Leaving`] saying why, if it failed).
async fn session(link: &Link, opts: &ClientOptions, kept: &mut Retained) -> Result<SessionReport> {
    let conn = link.conn();
    // `ctrl_send` lives as long as the session: dropping it would end the control stream.
    let (mut ctrl_send, ctrl_recv) = conn
        .open_bi()
        .await
        .map_err(|e| lost(conn, format!("cannot open the control stream: {e}")))?;
    let res = session_on(link, &mut ctrl_send, ctrl_recv, opts, kept).await;
    if let Link::Shared(_) = link {
        if let Err(e) = &res {
            if conn.close_reason().is_none() {
                let leaving = ClientMessage::Leaving {
                    reason: leaving_reason(e),
                };
                let _ = tokio::time::timeout(
                    Duration::from_secs(5),
                    write_message(&mut ctrl_send, &leaving),
                )
                .await;
            }
        }
        let _ = ctrl_send.finish();
    }
    res
}

/// A session on its control stream (`ctrl_send`, `ctrl_recv`) of `link`: the hello and the
/// welcome, then the rounds until the coordinator says the run is over.
async fn session_on(
    link: &Link,
    ctrl_send: &mut quinn::SendStream,
    mut ctrl_recv: quinn::RecvStream,
    opts: &ClientOptions,
    kept: &mut Retained,
) -> Result<SessionReport> {
    let conn = link.conn();
    let multiplexed = matches!(link, Link::Shared(_));
    let (client_id, run) = join(conn, ctrl_send, &mut ctrl_recv, opts, multiplexed).await?;
    // On a shared connection the router hands this client its streams from now on.
    let mut route = match link {
        Link::Own(_) => None,
        Link::Shared(m) => Some(m.register(client_id)),
    };
    kept.welcomes += 1;
    if kept.attempts > 0 {
        warn!(
            client_id,
            "back with the coordinator after {} reconnection attempt(s)", kept.attempts
        );
    }
    info!(client_id, scenario = %run.scenario, "joined");
    let learner = learner_for(opts, kept, client_id, run).await?;
    kept.learner = Some(learner.clone());
    let mut ctrl_rx = read_control(ctrl_recv);
    loop {
        tokio::select! {
            msg = ctrl_rx.recv() => {
                match msg {
                    Some(Ok(ServerMessage::Finished { message })) if message.starts_with("run failed") => {
                        if !multiplexed {
                            conn.close(0u32.into(), b"done");
                        }
                        bail!("the coordinator says: {message}");
                    }
                    Some(Ok(ServerMessage::Finished { message })) => {
                        info!(client_id, %message, "run finished");
                        if !multiplexed {
                            conn.close(0u32.into(), b"done");
                        }
                        let rounds_trained = kept.rounds_trained.len();
                        return Ok(SessionReport { client_id, rounds_trained, message });
                    }
                    Some(Ok(other)) => bail!("protocol error: unexpected {other:?} on the control stream"),
                    Some(Err(e)) => return Err(lost(conn, format!("lost the coordinator: {e:#}"))),
                    None => return Err(lost(conn, "lost the coordinator".into())),
                }
            }
            stream = next_stream(conn, route.as_mut()) => {
                let (send, recv) = match stream {
                    Ok(s) => s,
                    Err(e) => return Err(lost(conn, format!("lost the coordinator: {e}"))),
                };
                match handle_round(conn, send, recv, &learner, opts).await {
                    Ok(Some(round)) => {
                        kept.rounds_trained.insert(round);
                    }
                    Ok(None) => {}
                    // The connection is gone: the session is over.
                    Err(e) if conn.close_reason().is_some() => {
                        return Err(lost(conn, format!("lost the coordinator: {e:#}")))
                    }
                    // Only this round's stream failed (e.g. the coordinator dropped this client
                    // from a round it was too slow for): stay for the next round.
                    Err(e) => warn!(client_id, "round abandoned: {e:#}"),
                }
            }
        }
    }
}

/// The next stream the coordinator opens for this client: on its own connection, or from
/// the shared connection's router (`route`).
async fn next_stream(
    conn: &quinn::Connection,
    route: Option<&mut Route>,
) -> Result<(quinn::SendStream, quinn::RecvStream), String> {
    match route {
        None => conn.accept_bi().await.map_err(|e| e.to_string()),
        Some(r) => r
            .next()
            .await
            .ok_or_else(|| "the shared connection was lost".to_string()),
    }
}

/// Sends the hello (a [`ClientMessage::MultiplexedHello`] on a shared connection) on the
/// control stream and waits (60 s at most) for the welcome: the client's id and the run. A
/// refusal or any other answer is an error; `Busy`, a lost connection or no answer are
/// [`Transient`](crate::reconnect::Transient).
async fn join(
    conn: &quinn::Connection,
    ctrl_send: &mut quinn::SendStream,
    ctrl_recv: &mut quinn::RecvStream,
    opts: &ClientOptions,
    multiplexed: bool,
) -> Result<(u32, RunInfo)> {
    let (protocol_version, client_name, shard) =
        (PROTOCOL_VERSION, opts.name.clone(), opts.data.shard());
    let hello = if multiplexed {
        ClientMessage::MultiplexedHello {
            protocol_version,
            client_name,
            shard,
        }
    } else {
        ClientMessage::Hello {
            protocol_version,
            client_name,
            shard,
        }
    };
    write_message(ctrl_send, &hello)
        .await
        .map_err(|e| lost(conn, format!("cannot send the hello: {e:#}")))?;
    let first: ServerMessage =
        tokio::time::timeout(Duration::from_secs(60), read_message(ctrl_recv))
            .await
            .map_err(|_| transient("the coordinator did not answer the hello within 60 s"))?
            .map_err(|e| lost(conn, format!("no answer to the hello: {e:#}")))?;
    match first {
        ServerMessage::Welcome { client_id, run } => Ok((client_id, run)),
        ServerMessage::Refused { reason } => bail!("the coordinator refused this client: {reason}"),
        ServerMessage::Busy { reason } => Err(transient(format!(
            "the coordinator cannot take this client now: {reason}"
        ))),
        other => bail!("protocol error: expected Welcome, got {other:?}"),
    }
}

/// Loads this client's training images on the blocking pool; none is an error.
async fn load_data(
    opts: &ClientOptions,
    run: &RunInfo,
    client_id: u32,
) -> Result<Arc<ImageDataset>> {
    let data = {
        let source = opts.data.clone();
        let run = run.clone();
        match tokio::task::spawn_blocking(move || resolve_data(&source, &run, client_id)).await? {
            Ok(d) => d,
            Err(e) => bail!("client {client_id} cannot load its data: {e:#}"),
        }
    };
    if data.is_empty() {
        bail!("client {client_id} has no training images");
    }
    Ok(data)
}

/// Reads the control stream on its own task, so that no read is ever cancelled halfway; the
/// channel ends after the first error.
fn read_control(mut ctrl_recv: quinn::RecvStream) -> mpsc::Receiver<Result<ServerMessage>> {
    let (ctrl_tx, ctrl_rx) = mpsc::channel::<Result<ServerMessage>>(4);
    tokio::spawn(async move {
        loop {
            let m = read_message::<_, ServerMessage>(&mut ctrl_recv).await;
            let stop = m.is_err();
            if ctrl_tx.send(m).await.is_err() || stop {
                break;
            }
        }
    });
    ctrl_rx
}
