//! The handshake over real QUIC on loopback: version refusal, garbage, duplicate shards.

// A test file: a failed unwrap is a failed test, in helpers as in `#[test]` functions.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use fedssl_coordinator::server::handshake::{accept_loop, OpenAdmission};
use fedssl_coordinator::server::registry::Registry;
use fedssl_coordinator::server::tls;
use fedssl_shared::protocol::{
    read_message, write_message, ClientMessage, ServerMessage, PROTOCOL_VERSION,
};

async fn server() -> (std::net::SocketAddr, String, std::sync::Arc<Registry>) {
    let run = fedssl_shared::protocol::RunInfo::of(&fedssl_tests::tiny(&[]));
    let id = tls::self_signed(&[]).unwrap();
    let ep = quinn::Endpoint::server(
        tls::server_config(&id, Duration::from_secs(5), None, 1).unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let addr = ep.local_addr().unwrap();
    let reg = Registry::new(run);
    tokio::spawn(accept_loop(
        ep,
        reg.clone(),
        std::sync::Arc::new(OpenAdmission),
    ));
    (addr, id.cert_pem, reg)
}

async fn hello(
    addr: std::net::SocketAddr,
    pem: &str,
    msg: &ClientMessage,
) -> anyhow::Result<ServerMessage> {
    let cfg = fedssl_client::tls::client_config(pem.as_bytes(), Duration::from_secs(5))?;
    let conn = fedssl_client::connect(addr, "localhost", cfg).await?;
    let (mut s, mut r) = conn.open_bi().await?;
    write_message(&mut s, msg).await?;
    let m = tokio::time::timeout(Duration::from_secs(10), read_message(&mut r)).await??;
    std::mem::forget(conn); // keep it open for the rest of the test
    Ok(m)
}

#[tokio::test]
async fn wrong_version_gets_a_clear_refusal() {
    let (addr, pem, reg) = server().await;
    let m = hello(
        addr,
        &pem,
        &ClientMessage::Hello {
            protocol_version: PROTOCOL_VERSION + 98,
            client_name: "old".into(),
            shard: None,
        },
    )
    .await
    .unwrap();
    match m {
        ServerMessage::Refused { reason } => {
            assert!(
                reason.contains(&format!("protocol version {}", PROTOCOL_VERSION + 98)),
                "{reason}"
            );
            assert!(
                reason.contains(&format!("speaks {PROTOCOL_VERSION}")),
                "{reason}"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(reg.ids().is_empty());
}

#[tokio::test]
async fn right_version_is_welcomed_and_a_taken_shard_is_refused() {
    let (addr, pem, reg) = server().await;
    let h = ClientMessage::Hello {
        protocol_version: PROTOCOL_VERSION,
        client_name: "a".into(),
        shard: Some((1, 3)),
    };
    match hello(addr, &pem, &h).await.unwrap() {
        ServerMessage::Welcome { client_id, run } => {
            assert_eq!(client_id, 1);
            assert_eq!(run.num_clients, 3);
        }
        other => panic!("expected Welcome, got {other:?}"),
    }
    assert_eq!(reg.ids(), vec![1]);
    match hello(addr, &pem, &h).await.unwrap() {
        // for now: a retrying client tries again (the holder may be a vanished connection)
        ServerMessage::Busy { reason } => assert!(reason.contains("already held"), "{reason}"),
        other => panic!("expected Busy, got {other:?}"),
    }
    let bad = ClientMessage::Hello {
        protocol_version: PROTOCOL_VERSION,
        client_name: "b".into(),
        shard: Some((0, 5)),
    };
    match hello(addr, &pem, &bad).await.unwrap() {
        ServerMessage::Refused { reason } => assert!(reason.contains("0/5"), "{reason}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn garbled_hello_is_not_admitted() {
    let (addr, pem, reg) = server().await;
    let cfg = fedssl_client::tls::client_config(pem.as_bytes(), Duration::from_secs(5)).unwrap();
    let conn = fedssl_client::connect(addr, "localhost", cfg)
        .await
        .unwrap();
    let (mut s, mut r) = conn.open_bi().await.unwrap();
    s.write_all(&[5, 0, 0, 0, 0xff, 0xfe, 0xfd, 0xfc, 0xfb])
        .await
        .unwrap();
    let m: anyhow::Result<ServerMessage> =
        tokio::time::timeout(Duration::from_secs(10), read_message(&mut r))
            .await
            .unwrap();
    assert!(
        m.is_err(),
        "garbage must not be answered with a welcome: {m:?}"
    );
    assert!(reg.ids().is_empty());
    // An oversized announced length is refused before the body is read.
    let conn2 = fedssl_client::connect(
        addr,
        "localhost",
        fedssl_client::tls::client_config(pem.as_bytes(), Duration::from_secs(5)).unwrap(),
    )
    .await
    .unwrap();
    let (mut s2, mut r2) = conn2.open_bi().await.unwrap();
    s2.write_all(&u32::MAX.to_le_bytes()).await.unwrap();
    let m2: anyhow::Result<ServerMessage> =
        tokio::time::timeout(Duration::from_secs(10), read_message(&mut r2))
            .await
            .unwrap();
    assert!(m2.is_err());
    assert!(reg.ids().is_empty());
}

#[tokio::test]
async fn a_client_with_an_untrusted_certificate_cannot_connect() {
    let (addr, _pem, _reg) = server().await;
    let other = tls::self_signed(&[]).unwrap();
    let cfg = fedssl_client::tls::client_config(other.cert_pem.as_bytes(), Duration::from_secs(5))
        .unwrap();
    assert!(fedssl_client::connect(addr, "localhost", cfg)
        .await
        .is_err());
}

/// A client whose session fails after it was welcomed (here: an empty shard) closes its
/// connection with the reason, so the coordinator frees its shard at once (not after the 5 s
/// idle timeout) and another client can take it.
#[tokio::test]
async fn a_client_that_fails_after_its_welcome_frees_its_shard_at_once() {
    let (addr, pem, reg) = server().await;
    let cfg = fedssl_client::tls::client_config(pem.as_bytes(), Duration::from_secs(5)).unwrap();
    let (endpoint, conn) = fedssl_client::open(addr, "localhost", cfg).await.unwrap();
    let empty = fedssl_shared::data::synthetic::generate(4, 1).subset(&[]);
    let opts = fedssl_client::ClientOptions::new(
        "empty",
        fedssl_client::DataSource::InMemory {
            data: std::sync::Arc::new(empty),
            shard: Some((0, 3)),
        },
    );
    let watch = conn.clone();
    let e = fedssl_client::run_session(conn, opts).await.unwrap_err();
    assert!(e.to_string().contains("no training images"), "{e}");
    match watch.close_reason() {
        Some(quinn::ConnectionError::LocallyClosed) => {}
        other => panic!("the session must close its connection itself, got {other:?}"),
    }
    tokio::time::timeout(Duration::from_secs(3), endpoint.wait_idle())
        .await
        .unwrap();
    let t = std::time::Instant::now();
    while !reg.ids().is_empty() {
        assert!(t.elapsed() < Duration::from_secs(2), "shard still held");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let h = ClientMessage::Hello {
        protocol_version: PROTOCOL_VERSION,
        client_name: "next".into(),
        shard: Some((0, 3)),
    };
    match hello(addr, &pem, &h).await.unwrap() {
        ServerMessage::Welcome { client_id, .. } => assert_eq!(client_id, 0),
        other => panic!("expected Welcome, got {other:?}"),
    }
}
