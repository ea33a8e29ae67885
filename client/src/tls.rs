//! TLS for the QUIC client: trust exactly the coordinator's certificate (or CA) given by
//! `--ca` (or a kit's `ca.pem`), TLS 1.3 with ring, ALPN `fedssl/1`; with a site's
//! certificate and key ([`SiteCredentials`], from its kit) the client authenticates itself
//! (mutual TLS).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// A site's certificate chain and private key, as PEM text (a kit's `cert.pem` and `key.pem`).
#[derive(Clone)]
pub struct SiteCredentials {
    /// PEM certificate chain, leaf first.
    pub cert_pem: Vec<u8>,
    /// PEM private key.
    pub key_pem: Vec<u8>,
}

/// Builds a quinn client configuration that trusts the certificates in `ca_pem` and presents
/// no client certificate.
pub fn client_config(ca_pem: &[u8], idle_timeout: Duration) -> Result<quinn::ClientConfig> {
    client_config_as(ca_pem, None, idle_timeout)
}

/// Builds a quinn client configuration that trusts the certificates in `ca_pem` and, with
/// `site`, presents the site's certificate. Keep-alives go out at a quarter of
/// `idle_timeout` from quinn's own task, whatever the training threads are doing.
pub fn client_config_as(
    ca_pem: &[u8],
    site: Option<&SiteCredentials>,
    idle_timeout: Duration,
) -> Result<quinn::ClientConfig> {
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
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots);
    let mut tls = match site {
        None => builder.with_no_client_auth(),
        Some(site) => {
            let chain = rustls_pemfile::certs(&mut &site.cert_pem[..])
                .collect::<std::result::Result<Vec<_>, _>>()
                .context("the site certificate is not PEM")?;
            if chain.is_empty() {
                bail!("no site certificate found");
            }
            let key = rustls_pemfile::private_key(&mut &site.key_pem[..])
                .context("the site key is not PEM")?
                .context("no site private key found")?;
            builder
                .with_client_auth_cert(chain, key)
                .context("the site certificate and key do not match")?
        }
    };
    tls.alpn_protocols = vec![fedssl_shared::protocol::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(idle_timeout.try_into()?));
    transport.keep_alive_interval(Some(idle_timeout / 4));
    // The coordinator opens one stream a round (a round it dropped this client from may
    // still be closing) and no unidirectional one; quinn keeps an entry for each stream a
    // peer may open, in every connection (1,000 virtual clients: 1,000 connections).
    transport.max_concurrent_bidi_streams(16u32.into());
    transport.max_concurrent_uni_streams(0u32.into());
    // The client reads what the coordinator sends at once (the global weights into memory).
    fedssl_shared::quic::tune(&mut transport, fedssl_shared::quic::MAX_STREAM_WINDOW);
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}

/// Reads `--ca` and builds the client configuration; errors name the file.
pub fn client_config_from_file(ca: &Path, idle_timeout: Duration) -> Result<quinn::ClientConfig> {
    let pem = std::fs::read(ca)
        .with_context(|| format!("cannot read CA certificate {}", ca.display()))?;
    client_config(&pem, idle_timeout).with_context(|| format!("in {}", ca.display()))
}

/// Why the coordinator closed `conn` during or right after the TLS handshake, in words, when
/// it did so with a TLS alert (QUIC crypto error `0x100 + alert`): no certificate, a
/// certificate of another CA, an expired or revoked one. `None` for any other close.
pub fn tls_refusal(why: &quinn::ConnectionError) -> Option<String> {
    let quinn::ConnectionError::ConnectionClosed(c) = why else {
        return None;
    };
    let code = u64::from(c.error_code);
    if !(0x100..0x200).contains(&code) {
        return None;
    }
    let what = match code - 0x100 {
        116 => "this client presented no certificate (join with the site's kit: --kit DIR)",
        48 | 51 => "the coordinator does not trust the CA of this client's certificate (a kit of another provisioning?)",
        45 => "this client's certificate has expired (ask for a new kit)",
        44 => "this client's certificate is revoked",
        42 | 43 | 46 => "the coordinator rejected this client's certificate",
        _ => "the TLS handshake failed",
    };
    let detail = String::from_utf8_lossy(&c.reason);
    Some(format!(
        "the coordinator refused this client in the TLS handshake: {what} ({detail})"
    ))
}
