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

use crate::server::registry::{NoSlot, Registry};

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
            if let Err(e) = handshake(incoming, registry, authenticator.as_ref()).await {
                warn!(%remote, "client not admitted: {e:#}");
            }
        });
    }
}

/// One peer from its incoming connection to its welcome (or refusal); a welcomed client is
/// removed from the registry when its connection closes.
async fn handshake(
    incoming: quinn::Incoming,
    registry: Arc<Registry>,
    authenticator: &dyn Authenticator,
) -> Result<()> {
    let conn = incoming.await.context("TLS/QUIC handshake failed")?;
    let (send, mut recv) = tokio::time::timeout(HELLO_TIMEOUT, conn.accept_bi())
        .await
        .context("no hello within 30 s")??;
    let hello: ClientMessage = tokio::time::timeout(HELLO_TIMEOUT, read_message(&mut recv))
        .await
        .context("no hello within 30 s")??;
    let (name, shard) = match check_hello(hello) {
        Ok(h) => h,
        Err(reason) => return Err(refuse(send, &conn, &NoSlot::Refused(reason)).await),
    };
    let peer = Peer {
        connection: &conn,
        client_name: &name,
        shard,
    };
    let (id, admitted) = match authenticator.admit(&peer) {
        Err(reason) => {
            let no = NoSlot::Refused(reason);
            return Err(refuse(send, &conn, &no).await).with_context(|| format!("`{name}`"));
        }
        Ok(a) => match registry.slot(shard, &a) {
            Ok(id) => (id, a),
            Err(no) => {
                let who = a.site.unwrap_or_else(|| name.clone());
                return Err(refuse(send, &conn, &no).await).with_context(|| format!("`{who}`"));
            }
        },
    };
    let site = admitted.site.clone();
    let ctrl = registry.insert(id, conn.clone(), send, name.clone(), site.clone());
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
    tokio::spawn(watch_close(registry, id, conn));
    Ok(())
}

/// The name and shard of a hello of this protocol version, or why it is refused.
fn check_hello(hello: ClientMessage) -> Result<(String, Option<(u32, u32)>), String> {
    match hello {
        ClientMessage::Hello {
            protocol_version,
            client_name,
            shard,
        } => {
            if protocol_version != PROTOCOL_VERSION {
                return Err(format!(
                    "client `{client_name}` speaks protocol version {protocol_version}, this coordinator speaks {PROTOCOL_VERSION}"
                ));
            }
            Ok((client_name, shard))
        }
        other => Err(format!(
            "expected Hello as the first message, got {other:?}"
        )),
    }
}

/// Waits for client `id`'s connection to close, logs a reason the client gave, and removes
/// it from the registry.
async fn watch_close(registry: Arc<Registry>, id: u32, conn: quinn::Connection) {
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
    registry.remove(id, &conn);
}

/// Sends a refusal (`Refused`, or `Busy` for one that passes), lets the client read it,
/// closes the connection; returns the reason as an error.
async fn refuse(
    mut send: quinn::SendStream,
    conn: &quinn::Connection,
    no: &NoSlot,
) -> anyhow::Error {
    let _ = write_message(&mut send, &no.message()).await;
    let _ = send.finish();
    let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
    conn.close(1u32.into(), b"refused");
    anyhow::anyhow!("{}", no.reason())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::tls::{self_signed, server_config};
    use fedssl_shared::config::Scenario;
    use fedssl_shared::protocol::RunInfo;
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

    #[tokio::test]
    async fn an_authenticator_refuses_after_the_hello_and_before_any_welcome() {
        let sc = Scenario::default();
        let run = RunInfo {
            scenario: sc.name.clone(),
            seed: sc.seed,
            dataset: sc.data.dataset,
            train_images: Some(100),
            partition: sc.partition.clone(),
            num_clients: 2,
            model: sc.model.clone(),
            pretext: sc.pretext.clone(),
            batch_norm: sc.federation.batch_norm,
            local_update: sc.federation.local_update.clone(),
            feature_skew: sc.feature_skew.clone(),
            compression: sc.federation.compression.clone(),
            image_size: 32,
            cifar100_labels: sc.data.cifar100_labels,
            stl10_split: sc.data.stl10_split,
        };
        let id = self_signed(&[]).unwrap();
        let cfg = server_config(&id, Duration::from_secs(5), None).unwrap();
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

    #[test]
    fn hellos_of_another_version_or_kind_are_refused_with_the_reason() {
        let hello = |v| ClientMessage::Hello {
            protocol_version: v,
            client_name: "c".into(),
            shard: None,
        };
        assert_eq!(
            check_hello(hello(PROTOCOL_VERSION)),
            Ok(("c".to_string(), None))
        );
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
