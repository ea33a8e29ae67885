//! TLS for the QUIC client: trust exactly the coordinator's certificate (or CA) given by
//! `--ca`, TLS 1.3 with ring, ALPN `fedssl/1`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// Builds a quinn client configuration that trusts the certificates in `ca_pem`.
pub fn client_config(ca_pem: &[u8], idle_timeout: Duration) -> Result<quinn::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let mut n = 0;
    for c in rustls_pemfile::certs(&mut &ca_pem[..]) {
        roots
            .add(c.context("not a PEM certificate")?)
            .context("unusable certificate")?;
        n += 1;
    }
    if n == 0 {
        bail!("no PEM certificate found");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![fedssl_shared::protocol::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(idle_timeout.try_into()?));
    transport.keep_alive_interval(Some(idle_timeout / 4));
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}

/// Reads `--ca` and builds the client configuration; errors name the file.
pub fn client_config_from_file(ca: &Path, idle_timeout: Duration) -> Result<quinn::ClientConfig> {
    let pem = std::fs::read(ca)
        .with_context(|| format!("cannot read CA certificate {}", ca.display()))?;
    client_config(&pem, idle_timeout).with_context(|| format!("in {}", ca.display()))
}
