//! Models past the sizes that broke other frameworks' transports (gRPC's 2 GB message limit,
//! 32-bit lengths): a 2.5 GB weight set travels from the coordinator's one shared payload
//! ([`GlobalPayload`]) over a loopback QUIC connection with the run's TLS and transport
//! settings, and arrives tensor by tensor ([`read_weights`]) equal to what was sent; one
//! byte over `federation.max_weights_bytes` is refused before anything is read.

// A test file: a failed unwrap is a failed test, in helpers as in `#[test]` functions.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use fedssl_coordinator::server::GlobalPayload;
use fedssl_shared::protocol::read_weights;
use fedssl_shared::weights::{TensorData, WeightSet};

/// `count` tensors of `per` values each, every value distinct from its neighbours.
fn big_weights(count: usize, per: usize) -> WeightSet {
    let mut w = WeightSet::default();
    for t in 0..count {
        let data = (0..per)
            .map(|i| ((i % 65_521) as f32) * 0.5 - t as f32)
            .collect();
        w.tensors.insert(
            format!("layer{t}.weight"),
            TensorData {
                shape: vec![per / 1000, 1000],
                data,
            },
        );
    }
    w
}

/// A loopback QUIC connection with the run's TLS and transport settings: the coordinator's
/// side and the client's.
async fn loopback(idle: Duration) -> (quinn::Connection, quinn::Connection) {
    let id = fedssl_coordinator::server::tls::self_signed(&[]).unwrap();
    let server = fedssl_shared::quic::endpoint(
        "127.0.0.1:0".parse().unwrap(),
        Some(fedssl_coordinator::server::tls::server_config(&id, idle, None, 1).unwrap()),
    )
    .unwrap();
    let addr = server.local_addr().unwrap();
    let cfg = fedssl_client::tls::client_config(id.cert_pem.as_bytes(), idle).unwrap();
    let accept = tokio::spawn(async move { server.accept().await.unwrap().await.unwrap() });
    let client = fedssl_client::connect(addr, "localhost", cfg)
        .await
        .unwrap();
    (accept.await.unwrap(), client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weight_set_of_2_5_gb_crosses_quic_and_arrives_whole() {
    // 10 tensors × 62.5 M values × 4 bytes = 2.5 GB of values
    let w = big_weights(10, 62_500_000);
    let payload = GlobalPayload::of(&w).unwrap();
    let len = payload.len();
    assert!(len > 2_500_000_000 && len < 2_500_010_000, "{len}");
    let (conn, client) = loopback(Duration::from_secs(60)).await;
    let send = tokio::spawn(async move {
        let (mut s, _r) = conn.open_bi().await.unwrap();
        let n = payload.send(&mut s).await.unwrap();
        s.finish().unwrap();
        let _ = s.stopped().await;
        n
    });
    let (_s, mut r) = client.accept_bi().await.unwrap();
    let (got, n) = read_weights(&mut r, 3_000_000_000).await.unwrap();
    assert_eq!(n, send.await.unwrap());
    assert_eq!(n, 12 + len as u64);
    assert!(got == w, "the 2.5 GB weight set arrived different");
}

#[tokio::test]
async fn a_payload_one_byte_over_the_limit_is_refused_before_it_is_read() {
    let w = big_weights(1, 1000);
    let payload = GlobalPayload::of(&w).unwrap();
    let (conn, client) = loopback(Duration::from_secs(10)).await;
    let len = payload.len() as u64;
    tokio::spawn(async move {
        let (mut s, _r) = conn.open_bi().await.unwrap();
        let _ = payload.send(&mut s).await;
        let _ = s.finish();
        tokio::time::sleep(Duration::from_secs(5)).await;
    });
    let (_s, mut r) = client.accept_bi().await.unwrap();
    let e = read_weights(&mut r, len - 1).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "peer announced {len} bytes of weights; the limit is {}",
            len - 1
        )
    );
}
