//! TLS for the QUIC server: a self-signed certificate written next to the run (or a
//! user-supplied certificate and key, or a provisioned kit's), the verifier of the sites'
//! client certificates ([`client_verifier`], mutual TLS), and the quinn server configuration.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::danger::ClientCertVerifier;

/// A certificate chain and its private key, DER-encoded, with the PEM of the leaf (what a
/// client passes as `--ca`).
pub struct ServerIdentity {
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key.
    pub key: PrivateKeyDer<'static>,
    /// PEM text of the leaf certificate.
    pub cert_pem: String,
}

/// Generates a self-signed certificate valid for `names` (DNS names or IP addresses;
/// `localhost` and `127.0.0.1` are always included).
pub fn self_signed(names: &[String]) -> Result<ServerIdentity> {
    let mut sans: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    for n in names {
        if !sans.contains(n) {
            sans.push(n.clone());
        }
    }
    let ck = rcgen::generate_simple_self_signed(sans).context("cannot generate a certificate")?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der()));
    Ok(ServerIdentity {
        chain: vec![ck.cert.der().clone()],
        key,
        cert_pem: ck.cert.pem(),
    })
}

/// Writes the identity as `cert.pem` and `key.pem` into `dir`; the key file is readable only
/// by its owner on Unix.
pub fn write_identity(id: &ServerIdentity, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let cert = dir.join("cert.pem");
    std::fs::write(&cert, &id.cert_pem)
        .with_context(|| format!("cannot write {}", cert.display()))?;
    let key_pem = match &id.key {
        PrivateKeyDer::Pkcs8(k) => pem_encode("PRIVATE KEY", k.secret_pkcs8_der()),
        _ => bail!("only PKCS#8 keys are written"),
    };
    let key = dir.join("key.pem");
    std::fs::write(&key, key_pem).with_context(|| format!("cannot write {}", key.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

/// `der` as PEM text under `label` (`-----BEGIN {label}-----`, base64 in lines of 64).
fn pem_encode(label: &str, der: &[u8]) -> String {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let n = chunk.len();
        let v = (chunk[0] as u32) << 16
            | (*chunk.get(1).unwrap_or(&0) as u32) << 8
            | *chunk.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= n {
                b64.push(B64[((v >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        // base64 is ASCII: one char per byte
        out.extend(line.iter().map(|&b| b as char));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The identity of a PEM certificate chain and PEM private key held in memory.
pub fn load_identity_pem(cert_pem: &str, key_pem: &str) -> Result<ServerIdentity> {
    let what = Path::new("in-memory certificate");
    let chain = pem_certs(cert_pem.as_bytes(), what)?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .context("not a PEM private key")?
        .context("no private key found")?;
    Ok(ServerIdentity {
        chain,
        key,
        cert_pem: cert_pem.to_string(),
    })
}

/// Loads a PEM certificate chain and PEM private key; errors name the file.
pub fn load_identity(cert: &Path, key: &Path) -> Result<ServerIdentity> {
    let cert_pem = std::fs::read_to_string(cert)
        .with_context(|| format!("cannot read certificate {}", cert.display()))?;
    let chain = pem_certs(cert_pem.as_bytes(), cert)?;
    let key_pem =
        std::fs::read(key).with_context(|| format!("cannot read key {}", key.display()))?;
    let key_der = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .with_context(|| format!("{}: not a PEM private key", key.display()))?
        .with_context(|| format!("{}: no private key found", key.display()))?;
    Ok(ServerIdentity {
        chain,
        key: key_der,
        cert_pem,
    })
}

/// PEM certificates of `pem` (at least one); `what` names the file in errors.
pub fn pem_certs(pem: &[u8], what: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = rustls_pemfile::certs(&mut &pem[..])
        .collect::<std::result::Result<Vec<_>, _>>()
        .with_context(|| format!("{}: not a PEM certificate", what.display()))?;
    if certs.is_empty() {
        bail!("{}: no certificate found", what.display());
    }
    Ok(certs)
}

/// A client-certificate verifier that requires every client to present a certificate chain
/// to one of the CA certificates in `ca_pem` (read from `what`), valid now, for client
/// authentication, and to prove it holds its key (rustls' `WebPkiClientVerifier`). A client
/// without one, with one of another CA, or with an expired one fails the TLS handshake.
pub fn client_verifier(ca_pem: &[u8], what: &Path) -> Result<Arc<dyn ClientCertVerifier>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in pem_certs(ca_pem, what)? {
        roots
            .add(c)
            .with_context(|| format!("{}: unusable CA certificate", what.display()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .with_context(|| format!("{}: cannot verify clients with this CA", what.display()))
}

/// Checks, when `serve --kit` starts, that the kit's certificate `id` is a coordinator's: it
/// chains to the kit's CA `ca_pem` (read from `what`), is valid now, and is issued for
/// server authentication (`provision` gives the coordinator `serverAuth` and each site
/// `clientAuth`). Without this check a site's kit passed as the coordinator's would start and
/// every client would fail the handshake with a misleading reason.
///
/// Errors: one line naming `kit` and what is wrong (another CA, expired, a site's
/// certificate).
pub fn check_coordinator_certificate(
    id: &ServerIdentity,
    ca_pem: &[u8],
    what: &Path,
    kit: &Path,
) -> Result<()> {
    let cas = pem_certs(ca_pem, what)?;
    let anchors = cas
        .iter()
        .map(|c| {
            webpki::anchor_from_trusted_cert(c)
                .map(|a| a.to_owned())
                .with_context(|| format!("{}: unusable CA certificate", what.display()))
        })
        .collect::<Result<Vec<_>>>()?;
    let leaf = id
        .chain
        .first()
        .with_context(|| format!("--kit {}: no certificate", kit.display()))?;
    let cert = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| anyhow::anyhow!("--kit {}: cert.pem cannot be parsed: {e}", kit.display()))?;
    let algs = rustls::crypto::ring::default_provider()
        .signature_verification_algorithms
        .all;
    let verify = |usage| {
        cert.verify_for_usage(
            algs,
            &anchors,
            &id.chain[1..],
            rustls::pki_types::UnixTime::now(),
            usage,
            None,
            None,
        )
        .map(|_| ())
    };
    match verify(webpki::KeyUsage::server_auth()) {
        Ok(()) => Ok(()),
        Err(_) if verify(webpki::KeyUsage::client_auth()).is_ok() => bail!(
            "--kit {}: this is a site's kit (its certificate is for client authentication, not for a server); serve needs the coordinator's kit, `provision` writes it as <kits>/coordinator",
            kit.display()
        ),
        Err(webpki::Error::UnknownIssuer) => bail!(
            "--kit {}: cert.pem is not signed by the kit's ca.pem (files from two provisionings?)",
            kit.display()
        ),
        Err(e) => bail!(
            "--kit {}: cert.pem cannot serve as the coordinator's certificate: {e}",
            kit.display()
        ),
    }
}

/// The quinn server configuration: TLS 1.3 (ring), ALPN `fedssl/1`, keep-alives so that a
/// vanished client is noticed within `idle_timeout`. `client_auth` verifies client
/// certificates (mutual TLS; e.g. `rustls::server::WebPkiClientVerifier` over the CA of the
/// clients' certificates), which an [`crate::server::handshake::Authenticator`] can then read
/// from the connection; `None` (`serve` without `--kit`) asks clients for none. `peers`, the
/// clients the run may hear from at once, shares the memory for what they send ahead of the
/// coordinator's reading ([`fedssl_shared::quic::receive_window`]); datagram size and the
/// other windows as [`fedssl_shared::quic::tune`] sets them.
pub fn server_config(
    id: &ServerIdentity,
    idle_timeout: Duration,
    client_auth: Option<Arc<dyn ClientCertVerifier>>,
    peers: usize,
) -> Result<quinn::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let builder = match client_auth {
        None => builder.with_no_client_auth(),
        Some(verifier) => builder.with_client_cert_verifier(verifier),
    };
    let mut tls = builder
        .with_single_cert(id.chain.clone(), id.key.clone_key())
        .context("certificate and key do not match")?;
    tls.alpn_protocols = vec![fedssl_shared::protocol::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(idle_timeout.try_into()?));
    transport.keep_alive_interval(Some(idle_timeout / 4));
    // A client opens one stream, its control stream (a reconnection is a new connection),
    // and no unidirectional one: quinn keeps an entry for every stream a peer may open, in
    // every connection, so the limits are what the protocol uses.
    transport.max_concurrent_bidi_streams(4u32.into());
    transport.max_concurrent_uni_streams(0u32.into());
    fedssl_shared::quic::tune(&mut transport, fedssl_shared::quic::receive_window(peers));
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_identity_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let id = self_signed(&["node1.example".into()]).unwrap();
        write_identity(&id, dir.path()).unwrap();
        let back =
            load_identity(&dir.path().join("cert.pem"), &dir.path().join("key.pem")).unwrap();
        assert_eq!(back.chain, id.chain);
        assert_eq!(back.key.secret_der(), id.key.secret_der());
        assert!(server_config(&back, Duration::from_secs(5), None, 1).is_ok());
    }

    #[test]
    fn serve_takes_the_coordinators_kit_and_refuses_a_sites_or_another_cas() {
        let dir = tempfile::tempdir().unwrap();
        let req = crate::provision::ProvisionRequest {
            sites: vec!["site-a".into()],
            coordinator_names: vec!["10.211.0.1".into()],
            port: 4433,
            days: 30,
        };
        let kits = dir.path().join("kits");
        crate::provision::provision(&req, &kits).unwrap();
        let other = dir.path().join("other");
        crate::provision::provision(&req, &other).unwrap();
        let check = |kit: &Path, ca: &Path| {
            let id = load_identity(&kit.join("cert.pem"), &kit.join("key.pem")).unwrap();
            let pem = std::fs::read(ca).unwrap();
            check_coordinator_certificate(&id, &pem, ca, kit).map_err(|e| format!("{e:#}"))
        };
        let coordinator = kits.join("coordinator");
        check(&coordinator, &coordinator.join("ca.pem")).unwrap();
        let site = kits.join("site-a");
        let e = check(&site, &site.join("ca.pem")).unwrap_err();
        assert!(
            e.contains("this is a site's kit") && e.contains("site-a"),
            "{e}"
        );
        let e = check(&coordinator, &other.join("coordinator").join("ca.pem")).unwrap_err();
        assert!(e.contains("not signed by the kit's ca.pem"), "{e}");
    }

    #[test]
    fn missing_or_bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let bogus = dir.path().join("bogus.pem");
        std::fs::write(&bogus, "not pem").unwrap();
        let e = load_identity(&bogus, &bogus).err().unwrap();
        assert!(e.to_string().contains("bogus.pem"), "{e}");
        let e = load_identity(&dir.path().join("nope.pem"), &bogus)
            .err()
            .unwrap();
        assert!(e.to_string().contains("nope.pem"), "{e}");
    }
}
