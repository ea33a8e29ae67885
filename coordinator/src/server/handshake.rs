//! Admission of a client, from the QUIC connection to the welcome: the TLS handshake, the
//! client's `Hello` on its control stream (protocol version), the [`Authenticator`], then a
//! slot in the [`Registry`]. A peer is refused — with a `Refused` message saying why (`Busy`
//! for a slot held for now), before any model byte is sent — at the first of these it fails.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use fedssl_shared::protocol::{
    read_message, write_message, ClientMessage, ServerMessage, PROTOCOL_VERSION,
};
use tracing::{info, warn};

use crate::server::registry::{NoSlot, Registry, SessionKey};

/// What an [`Authenticator`] knows of a peer: it completed the TLS handshake and sent a
/// `Hello` of this protocol version.
pub struct Peer<'a> {
    /// The peer's connection: its address (`remote_address`), and its certificates
    /// (`peer_identity`) where the server asks for client certificates
    /// ([`crate::server::tls::server_config`]).
    pub connection: &'a quinn::Connection,
    /// The name in its hello (for logs; not an identity).
    pub client_name: &'a str,
    /// The shard it asks for: `(k, n)`, shard `k` of `n`.
    pub shard: Option<(u32, u32)>,
}

/// What an [`Authenticator`] says of a peer it admits.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Admitted {
    /// The peer's verified identity (an enrolled site's name), shown in logs, `rounds.jsonl`
    /// and `summary.json`; a site that reconnects gets its client id back. `None`: anonymous.
    pub site: Option<String>,
    /// The client id the peer must have (a site's place in `federation.sites`).
    pub bound_id: Option<u32>,
}

/// Decides whether a peer may join the run, after its hello and before the registry gives it
/// a slot and any model byte is sent.
pub trait Authenticator: Send + Sync {
    /// `Ok` admits the peer (with its identity, if any); `Err(reason)` refuses it, and the
    /// reason is sent to it.
    fn admit(&self, peer: &Peer<'_>) -> Result<Admitted, String>;
}

/// Admits every peer that completed the TLS handshake (the server's certificate is what
/// clients verify) and spoke the protocol, anonymously; the registry still refuses a peer for
/// which the run has no slot. `serve` without `--kit` (local experiments); enrolled sites
/// are admitted by [`crate::server::sites::SiteAdmission`].
pub struct OpenAdmission;

impl Authenticator for OpenAdmission {
    fn admit(&self, _peer: &Peer<'_>) -> Result<Admitted, String> {
        Ok(Admitted::default())
    }
}

/// Seconds a peer has to open its control stream, and then to send its hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);

/// Accepts connections until the endpoint closes; each gets a handshake task, and a peer
/// that is not admitted is logged with the reason.
pub async fn accept_loop(
    endpoint: quinn::Endpoint,
    registry: Arc<Registry>,
    authenticator: Arc<dyn Authenticator>,
) {
    while let Some(incoming) = endpoint.accept().await {
        let (registry, authenticator) = (registry.clone(), authenticator.clone());
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            if let Err(e) = handshake(incoming, registry, authenticator).await {
                warn!(%remote, "client not admitted: {e:#}");
            }
        });
    }
}

/// One peer from its incoming connection to its welcome (or refusal). When its first hello
/// is a multiplexed one, the connection's further control streams are sessions of more
/// virtual clients, each admitted on its own. A welcomed client is removed from the
/// registry when its session ends: its connection closes, or (multiplexed) its control
/// stream ends.
async fn handshake(
    incoming: quinn::Incoming,
    registry: Arc<Registry>,
    authenticator: Arc<dyn Authenticator>,
) -> Result<()> {
    let conn = incoming.await.context("TLS/QUIC handshake failed")?;
    let (send, recv) = tokio::time::timeout(HELLO_TIMEOUT, conn.accept_bi())
        .await
        .context("no hello within 30 s")??;
    let remote = conn.remote_address();
    let (multiplexed, admitted) =
        admit(&conn, send, recv, &registry, authenticator.as_ref(), false).await;
    if !multiplexed {
        return admitted;
    }
    if let Err(e) = admitted {
        warn!(%remote, "client not admitted: {e:#}");
    }
    // Each virtual client holds a control stream for its whole session: the connection may
    // open as many as the run has clients (quinn keeps an entry per stream a peer may open,
    // so only a multiplexed connection gets more than the four of the server's transport).
    let streams = registry.run().num_clients.saturating_add(4);
    conn.set_max_concurrent_bi_streams(streams.into());
    {
        while let Ok((send, recv)) = conn.accept_bi().await {
            let (conn, registry, authenticator) =
                (conn.clone(), registry.clone(), authenticator.clone());
            tokio::spawn(async move {
                if let (_, Err(e)) =
                    admit(&conn, send, recv, &registry, authenticator.as_ref(), true).await
                {
                    warn!(%remote, "client not admitted: {e:#}");
                }
            });
        }
    }
    Ok(())
}

/// One session on `conn`, from the hello on its control stream (`send`, `recv`) to its
/// welcome (`Ok`) or refusal (`Err`, the reason), and whether its hello was a multiplexed
/// one. On a connection already known to be multiplexed (`on_multiplexed`) only a
/// multiplexed hello is taken.
async fn admit(
    conn: &quinn::Connection,
    send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    registry: &Arc<Registry>,
    authenticator: &dyn Authenticator,
    on_multiplexed: bool,
) -> (bool, Result<()>) {
    match read_hello(conn, send, &mut recv, on_multiplexed).await {
        Ok((hello, send)) => (
            hello.multiplexed,
            welcome(conn, send, recv, hello, registry, authenticator).await,
        ),
        Err(e) => (false, Err(e)),
    }
}

/// The session's hello, read from `recv` and checked (protocol version; a multiplexed one
/// on a multiplexed connection), with `send` handed back; a hello that fails is refused on
/// `send`, and the reason is the error.
async fn read_hello(
    conn: &quinn::Connection,
    send: quinn::SendStream,
    recv: &mut quinn::RecvStream,
    on_multiplexed: bool,
) -> Result<(Hello, quinn::SendStream)> {
    let hello: ClientMessage = tokio::time::timeout(HELLO_TIMEOUT, read_message(recv))
        .await
        .context("no hello within 30 s")??;
    let mut hello = check_hello(hello);
    if on_multiplexed && matches!(hello, Ok(ref h) if !h.multiplexed) {
        hello = Err("a plain Hello on a multiplexed connection (every session on it must send MultiplexedHello)".into());
    }
    match hello {
        Ok(h) => Ok((h, send)),
        Err(reason) => {
            let no = NoSlot::Refused(reason);
            Err(refuse(send, conn, on_multiplexed, &no).await)
        }
    }
}

/// A session whose `hello` passed: the [`Authenticator`], a slot in the registry and the
/// welcome on `send` (or a refusal, whose reason is the error); then a task that removes
/// the client when its session ends (its control stream `recv`, if multiplexed).
async fn welcome(
    conn: &quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    hello: Hello,
    registry: &Arc<Registry>,
    authenticator: &dyn Authenticator,
) -> Result<()> {
    let Hello {
        name,
        shard,
        multiplexed,
    } = hello;
    let peer = Peer {
        connection: conn,
        client_name: &name,
        shard,
    };
    let (id, admitted) = match authenticator.admit(&peer) {
        Err(reason) => {
            let no = NoSlot::Refused(reason);
            return Err(refuse(send, conn, multiplexed, &no).await)
                .with_context(|| format!("`{name}`"));
        }
        Ok(a) => match registry.slot(shard, &a) {
            Ok(id) => (id, a),
            Err(no) => {
                let who = a.site.unwrap_or_else(|| name.clone());
                return Err(refuse(send, conn, multiplexed, &no).await)
                    .with_context(|| format!("`{who}`"));
            }
        },
    };
    let site = admitted.site.clone();
    let (ctrl, key) = registry.insert(
        id,
        conn.clone(),
        send,
        multiplexed,
        name.clone(),
        site.clone(),
    );
    {
        let mut s = ctrl.lock().await;
        write_message(
            &mut *s,
            &ServerMessage::Welcome {
                client_id: id,
                run: registry.run().clone(),
            },
        )
        .await?;
    }
    match &site {
        Some(site) => info!(client = id, %site, remote = %conn.remote_address(), "site joined"),
        None => info!(client = id, %name, remote = %conn.remote_address(), "client joined"),
    }
    registry.notify_joined();
    let registry = registry.clone();
    if multiplexed {
        tokio::spawn(watch_stream(registry, id, key, conn.clone(), recv));
    } else {
        tokio::spawn(watch_close(registry, id, key, conn.clone()));
    }
    Ok(())
}

/// A hello that passed: the client's name, its shard, and whether its session is one of
/// many on its connection.
#[derive(Debug, PartialEq)]
struct Hello {
    name: String,
    shard: Option<(u32, u32)>,
    multiplexed: bool,
}

/// The hello of this protocol version, or why it is refused.
fn check_hello(hello: ClientMessage) -> Result<Hello, String> {
    let (protocol_version, name, shard, multiplexed) = match hello {
        ClientMessage::Hello {
            protocol_version,
            client_name,
            shard,
        } => (protocol_version, client_name, shard, false),
        ClientMessage::MultiplexedHello {
            protocol_version,
            client_name,
            shard,
        } => (protocol_version, client_name, shard, true),
        other => {
            return Err(format!(
                "expected Hello as the first message, got {other:?}"
            ))
        }
    };
    if protocol_version != PROTOCOL_VERSION {
        return Err(format!(
            "client `{name}` speaks protocol version {protocol_version}, this coordinator speaks {PROTOCOL_VERSION}"
        ));
    }
    Ok(Hello {
        name,
        shard,
        multiplexed,
    })
}

/// Waits for client `id`'s connection to close, logs a reason the client gave, and removes
/// its session `key` from the registry.
async fn watch_close(registry: Arc<Registry>, id: u32, key: SessionKey, conn: quinn::Connection) {
    let why = conn.closed().await;
    if let quinn::ConnectionError::ApplicationClosed(c) = &why {
        if !c.reason.is_empty() && c.reason.as_ref() != b"done" {
            warn!(
                client = id,
                "client left: {}",
                String::from_utf8_lossy(&c.reason)
            );
        }
    }
    registry.remove(id, key);
}

/// Waits for the end of multiplexed client `id`'s session — its control stream `recv` ends
/// or its connection closes — logs the reason a [`ClientMessage::Leaving`] gave, and
/// removes its session `key` from the registry.
async fn watch_stream(
    registry: Arc<Registry>,
    id: u32,
    key: SessionKey,
    conn: quinn::Connection,
    mut recv: quinn::RecvStream,
) {
    let read = async {
        while let Ok(m) = read_message::<_, ClientMessage>(&mut recv).await {
            if let ClientMessage::Leaving { reason } = m {
                warn!(client = id, "client left: {reason}");
            }
        }
    };
    tokio::select! {
        _ = read => {}
        _ = conn.closed() => {}
    }
    registry.remove(id, key);
}

/// Sends a refusal (`Refused`, or `Busy` for one that passes) and lets the client read it;
/// then closes the connection, unless it is `multiplexed` (other virtual clients' sessions
/// go on over it: only the refused session's control stream ends). Returns the reason as an
/// error.
async fn refuse(
    mut send: quinn::SendStream,
    conn: &quinn::Connection,
    multiplexed: bool,
    no: &NoSlot,
) -> anyhow::Error {
    let _ = write_message(&mut send, &no.message()).await;
    let _ = send.finish();
    if !multiplexed {
        let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
        conn.close(1u32.into(), b"refused");
    }
    anyhow::anyhow!("{}", no.reason())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::tls::{self_signed, server_config};
    use fedssl_shared::config::Scenario;
    use fedssl_shared::protocol::{encode_frame, RunInfo};
    use rustls::pki_types::CertificateDer;

    /// Refuses every peer, naming it.
    struct NoTicket;

    impl Authenticator for NoTicket {
        fn admit(&self, peer: &Peer<'_>) -> Result<Admitted, String> {
            assert_eq!(peer.shard, Some((0, 2)));
            assert!(peer.connection.remote_address().ip().is_loopback());
            Err(format!("`{}` has no ticket", peer.client_name))
        }
    }

    /// A QUIC client trusting `cert` only.
    fn client_endpoint(cert: CertificateDer<'static>) -> quinn::Endpoint {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![fedssl_shared::protocol::ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
        ep
    }

    /// The run of these tests: the default scenario with `clients` clients.
    fn run_info(clients: u32) -> RunInfo {
        let sc = Scenario::default();
        RunInfo {
            scenario: sc.name.clone(),
            seed: sc.seed,
            dataset: sc.data.dataset,
            train_images: Some(100),
            partition: sc.partition.clone(),
            num_clients: clients,
            model: sc.model.clone(),
            pretext: sc.pretext.clone(),
            batch_norm: sc.federation.batch_norm,
            local_update: sc.federation.local_update.clone(),
            feature_skew: sc.feature_skew.clone(),
            compression: sc.federation.compression.clone(),
            image_size: 32,
            cifar100_labels: sc.data.cifar100_labels,
            stl10_split: sc.data.stl10_split,
        }
    }

    #[tokio::test]
    async fn an_authenticator_refuses_after_the_hello_and_before_any_welcome() {
        let run = run_info(2);
        let id = self_signed(&[]).unwrap();
        let cfg = server_config(&id, Duration::from_secs(5), None, 1).unwrap();
        let ep = quinn::Endpoint::server(cfg, "127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = ep.local_addr().unwrap();
        let registry = Registry::new(run);
        tokio::spawn(accept_loop(ep, registry.clone(), Arc::new(NoTicket)));
        let client = client_endpoint(id.chain[0].clone());
        let conn = client.connect(addr, "localhost").unwrap().await.unwrap();
        let (mut s, mut r) = conn.open_bi().await.unwrap();
        let hello = ClientMessage::Hello {
            protocol_version: PROTOCOL_VERSION,
            client_name: "eve".into(),
            shard: Some((0, 2)),
        };
        write_message(&mut s, &hello).await.unwrap();
        let m: ServerMessage = tokio::time::timeout(Duration::from_secs(10), read_message(&mut r))
            .await
            .unwrap()
            .unwrap();
        match m {
            ServerMessage::Refused { reason } => assert_eq!(reason, "`eve` has no ticket"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert!(registry.ids().is_empty());
    }

    /// Sends `hello` on a new control stream of `conn` and reads the answer.
    async fn say(
        conn: &quinn::Connection,
        hello: ClientMessage,
    ) -> (quinn::SendStream, quinn::RecvStream, ServerMessage) {
        let (mut s, mut r) = conn.open_bi().await.unwrap();
        write_message(&mut s, &hello).await.unwrap();
        let m = tokio::time::timeout(Duration::from_secs(10), read_message(&mut r))
            .await
            .unwrap()
            .unwrap();
        (s, r, m)
    }

    /// What [`Registry::wait_for`] `min` of `want` clients (no grace) tells of the connected.
    async fn told_while_waiting(registry: &Registry, min: usize, want: usize) -> Vec<usize> {
        let mut told = Vec::new();
        let wait = registry.wait_for(min, want, Duration::ZERO, Duration::from_secs(5), |n| {
            told.push(n)
        });
        wait.await.unwrap();
        told
    }

    /// A multiplexed hello for shard `k` of 3.
    fn mux_hello(k: u32) -> ClientMessage {
        ClientMessage::MultiplexedHello {
            protocol_version: PROTOCOL_VERSION,
            client_name: format!("v-{k}"),
            shard: Some((k, 3)),
        }
    }

    #[tokio::test]
    async fn one_connection_carries_many_sessions_each_ending_with_its_control_stream() {
        let id = self_signed(&[]).unwrap();
        let cfg = server_config(&id, Duration::from_secs(5), None, 1).unwrap();
        let ep = quinn::Endpoint::server(cfg, "127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = ep.local_addr().unwrap();
        let registry = Registry::new(run_info(3));
        tokio::spawn(accept_loop(ep, registry.clone(), Arc::new(OpenAdmission)));
        let client = client_endpoint(id.chain[0].clone());
        let conn = client.connect(addr, "localhost").unwrap().await.unwrap();
        let welcomed = |m: &ServerMessage| match m {
            ServerMessage::Welcome { client_id, .. } => *client_id,
            other => panic!("expected a welcome, got {other:?}"),
        };
        let (mut s0, _r0, m) = say(&conn, mux_hello(0)).await;
        assert_eq!(welcomed(&m), 0);
        let (_s2, _r2, m) = say(&conn, mux_hello(2)).await;
        assert_eq!(welcomed(&m), 2);
        // waiting for 3 with 2 enough and no grace: told 2 connected, then it returns
        assert_eq!(told_while_waiting(&registry, 2, 3).await, vec![2]);
        let (_s1, _r1, m) = say(&conn, mux_hello(1)).await;
        assert_eq!(welcomed(&m), 1);
        // none missing: nothing to tell
        assert!(told_while_waiting(&registry, 3, 3).await.is_empty());
        // the run is full. A shard already held (a restarted client's earlier session, not
        // yet timed out): busy for that shard, and the connection (and its sessions) stays
        let busy = |m: ServerMessage| match m {
            ServerMessage::Busy { reason } => reason,
            other => panic!("expected busy, got {other:?}"),
        };
        let (_s, _r, m) = say(&conn, mux_hello(2)).await;
        let why = busy(m);
        assert!(why.starts_with("shard 2 is already held"), "{why}");
        // a client without a shard: the run is full
        let any = ClientMessage::MultiplexedHello {
            protocol_version: PROTOCOL_VERSION,
            client_name: "any".into(),
            shard: None,
        };
        let (_s, _r, m) = say(&conn, any).await;
        let why = busy(m);
        assert!(
            why.starts_with("the run already has its 3 clients"),
            "{why}"
        );
        // a plain hello on a multiplexed connection is refused, the connection stays
        let plain = ClientMessage::Hello {
            protocol_version: PROTOCOL_VERSION,
            client_name: "p".into(),
            shard: Some((1, 3)),
        };
        let (_s, _r, m) = say(&conn, plain).await;
        match m {
            ServerMessage::Refused { reason } => {
                assert!(
                    reason.starts_with("a plain Hello on a multiplexed"),
                    "{reason}"
                )
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert!(conn.close_reason().is_none());
        assert_eq!(registry.ids(), vec![0, 1, 2]);
        // streams the coordinator opens name the client they are for
        let link = registry.link(2).unwrap();
        assert!(link.multiplexed);
        let (mut send, _recv, header) = link.open().await.unwrap();
        send.write_all(b"x").await.unwrap();
        let (_, mut recv) = conn.accept_bi().await.unwrap();
        let m: ServerMessage = read_message(&mut recv).await.unwrap();
        assert_eq!(m, ServerMessage::For { client_id: 2 });
        assert_eq!(header, encode_frame(&m).unwrap().len() as u64);
        // client 0 leaves (saying why) and ends its control stream: only it is forgotten
        let leaving = ClientMessage::Leaving {
            reason: "bye".into(),
        };
        write_message(&mut s0, &leaving).await.unwrap();
        s0.finish().unwrap();
        let t0 = std::time::Instant::now();
        while registry.ids() != vec![1, 2] {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "{:?}",
                registry.ids()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // the connection's loss ends the rest
        conn.close(0u32.into(), b"done");
        while !registry.ids().is_empty() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "{:?}",
                registry.ids()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[test]
    fn hellos_of_another_version_or_kind_are_refused_with_the_reason() {
        let hello = |v| ClientMessage::Hello {
            protocol_version: v,
            client_name: "c".into(),
            shard: None,
        };
        assert_eq!(
            check_hello(hello(PROTOCOL_VERSION)),
            Ok(Hello {
                name: "c".into(),
                shard: None,
                multiplexed: false
            })
        );
        let mux = ClientMessage::MultiplexedHello {
            protocol_version: PROTOCOL_VERSION,
            client_name: "v-3".into(),
            shard: Some((3, 10)),
        };
        assert_eq!(
            check_hello(mux),
            Ok(Hello {
                name: "v-3".into(),
                shard: Some((3, 10)),
                multiplexed: true
            })
        );
        let old_mux = ClientMessage::MultiplexedHello {
            protocol_version: PROTOCOL_VERSION - 1,
            client_name: "v".into(),
            shard: None,
        };
        let e = check_hello(old_mux).unwrap_err();
        assert!(e.contains(&format!("speaks {PROTOCOL_VERSION}")), "{e}");
        let e = check_hello(hello(PROTOCOL_VERSION + 1)).unwrap_err();
        assert!(e.contains(&format!("speaks {PROTOCOL_VERSION}")), "{e}");
        let e = check_hello(ClientMessage::Failed {
            round: 0,
            reason: "x".into(),
        })
        .unwrap_err();
        assert!(e.starts_with("expected Hello as the first message"), "{e}");
    }
}
