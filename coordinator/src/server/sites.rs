//! Admission of enrolled sites ([`SiteAdmission`], the [`Authenticator`] of `serve --kit`
//! and of `simulate`): the TLS layer has already verified the client's certificate against
//! the kit's CA ([`crate::server::tls::client_verifier`]: chain, validity, key possession);
//! here the certificate's site name (its DNS subject-alternative name, as `provision` writes
//! it) becomes the client's identity, and a revoked site, a site outside the
//! `federation.sites` allow-list, or a site asking for another shard than its own is refused
//! with the reason — all before any model byte is sent.

use rustls::pki_types::CertificateDer;

use crate::server::handshake::{Admitted, Authenticator, Peer};
use crate::server::revocation::{serial_hex, RevocationList};

/// A verified client certificate's identity.
#[derive(Clone, Debug, PartialEq)]
pub struct CertifiedSite {
    /// The site name (first DNS subject-alternative name).
    pub name: String,
    /// The certificate's serial number, big-endian bytes.
    pub serial: Vec<u8>,
}

/// The site named by a client's end-entity certificate `der`, or why it names none.
pub fn site_of_certificate(der: &CertificateDer<'_>) -> Result<CertifiedSite, String> {
    let cert = webpki::EndEntityCert::try_from(der)
        .map_err(|e| format!("the client certificate cannot be parsed: {e}"))?;
    let name = cert
        .valid_dns_names()
        .next()
        .ok_or("the client certificate names no site (no DNS subject-alternative name)")?
        .to_string();
    Ok(CertifiedSite {
        name,
        serial: cert.serial().to_vec(),
    })
}

/// The verified certificate chain a peer presented in the TLS handshake (leaf first), if any.
pub fn peer_certificates(conn: &quinn::Connection) -> Option<Vec<CertificateDer<'static>>> {
    conn.peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()
        .map(|b| *b)
}

/// Admits clients whose CA-verified certificate names a site that is not revoked and, when
/// `allow` is not empty, is one of `allow`; such a site's client id is its place in `allow`
/// (and a `--shard` it asks for must be that place).
pub struct SiteAdmission {
    /// `federation.sites`: the enrolled sites of the run, in shard order (empty: every site
    /// the CA certified).
    pub allow: Vec<String>,
    /// `--revoked FILE`.
    pub revoked: Option<RevocationList>,
}

impl Authenticator for SiteAdmission {
    fn admit(&self, peer: &Peer<'_>) -> Result<Admitted, String> {
        let chain = peer_certificates(peer.connection).ok_or(
            "no client certificate (this coordinator admits enrolled sites only: pass --kit)",
        )?;
        let leaf = chain.first().ok_or("an empty client certificate chain")?;
        let site = site_of_certificate(leaf)?;
        if let Some(r) = &self.revoked {
            r.check(&site.name, &site.serial)?;
        }
        let bound_id = if self.allow.is_empty() {
            None
        } else {
            let place = self
                .allow
                .iter()
                .position(|s| *s == site.name)
                .ok_or_else(|| {
                    format!(
                        "site `{}` is not enrolled in this run (federation.sites)",
                        site.name
                    )
                })?;
            Some(place as u32)
        };
        if let (Some(place), Some((k, n))) = (bound_id, peer.shard) {
            if k != place {
                return Err(format!(
                    "site `{}` holds shard {place} (its place in federation.sites), not the shard {k}/{n} it asked for",
                    site.name
                ));
            }
        }
        tracing::debug!(site = %site.name, serial = %serial_hex(&site.serial), "certificate accepted");
        Ok(Admitted {
            site: Some(site.name),
            bound_id,
        })
    }
}
