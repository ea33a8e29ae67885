//! The `serve` run mode's side of a run: the endpoint on the network with the run's TLS
//! identity and its admission rule, and the line that tells clients how to join.
//!
//! Identity and admission, by flag:
//! - `--kit DIR` (a `provision`ed coordinator kit): `DIR/cert.pem` + `DIR/key.pem`, and every
//!   client must present a certificate of `DIR/ca.pem`'s CA (mutual TLS); the certificate's
//!   site name is the client's identity, checked against `federation.sites` and `--revoked`
//!   ([`SiteAdmission`]);
//! - `--cert`/`--key`, or neither: a self-signed certificate written to the output folder as
//!   `cert.pem`/`key.pem` for the clients' `--ca` — kept and reused by `--resume`, so that
//!   the clients' copy stays valid — and any client that can reach the port may join
//!   ([`OpenAdmission`], said loudly once).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use fedssl_shared::config::Scenario;

use crate::run::outputs::create_out_dir;
use crate::server::handshake::{Authenticator, OpenAdmission};
use crate::server::revocation::RevocationList;
use crate::server::sites::SiteAdmission;
use crate::server::tls::{self, ServerIdentity};

/// How `serve` proves who it is and whom it admits.
#[derive(Clone, Debug, Default)]
pub struct ServeTls {
    /// `--cert` and `--key` PEM files.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// `--kit DIR`: a provisioned coordinator kit (`ca.pem`, `cert.pem`, `key.pem`).
    pub kit: Option<PathBuf>,
    /// `--revoked FILE` (with `--kit`).
    pub revoked: Option<PathBuf>,
    /// Extra DNS names / IP addresses for the self-signed certificate.
    pub names: Vec<String>,
}

/// A bound server endpoint and what goes with it.
pub(crate) struct Bound {
    /// The endpoint.
    pub endpoint: quinn::Endpoint,
    /// The admission rule.
    pub authenticator: Arc<dyn Authenticator>,
}

/// A server endpoint on `listen` as `how` says (see the module docs); `idle` is the QUIC idle
/// timeout; a self-signed certificate is written into (or, `resuming`, read back from) `out`.
/// Errors name the files, the keys or the address.
pub(crate) fn bind(
    listen: SocketAddr,
    how: &ServeTls,
    sc: &Scenario,
    idle: Duration,
    out: &Path,
    resuming: bool,
) -> Result<Bound> {
    let (id, verifier, authenticator) = match &how.kit {
        Some(kit) => kit_identity(kit, how, sc)?,
        None => {
            if how.revoked.is_some() {
                bail!(
                    "--revoked needs --kit: without client certificates there is nobody to revoke"
                );
            }
            if !sc.federation.sites.is_empty() {
                bail!("federation.sites needs `serve --kit`: without client certificates no site can be told from another");
            }
            let id = match &how.identity {
                Some((c, k)) => tls::load_identity(c, k)?,
                None => self_signed_identity(&how.names, out, resuming)?,
            };
            let open: Arc<dyn Authenticator> = Arc::new(OpenAdmission);
            (id, None, open)
        }
    };
    let cfg = tls::server_config(&id, idle, verifier, sc.federation.clients)?;
    let endpoint = fedssl_shared::quic::endpoint(listen, Some(cfg))
        .with_context(|| format!("cannot listen on {listen} (UDP)"))?;
    if how.kit.is_none() {
        eprintln!(
            "WARNING: serving without --kit: there is no client authentication, ANY client that can reach {listen} and holds the public cert.pem may join and weigh in on the model. Enrol sites with `fedssl-coordinator provision` and serve with --kit for anything but local experiments."
        );
    }
    Ok(Bound {
        endpoint,
        authenticator,
    })
}

/// The identity, client verifier and [`SiteAdmission`] of coordinator kit `kit`.
#[allow(clippy::type_complexity)]
fn kit_identity(
    kit: &Path,
    how: &ServeTls,
    sc: &Scenario,
) -> Result<(
    ServerIdentity,
    Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
    Arc<dyn Authenticator>,
)> {
    if how.identity.is_some() {
        bail!("--kit and --cert/--key both give the coordinator's certificate: pass one");
    }
    let id = tls::load_identity(&kit.join("cert.pem"), &kit.join("key.pem"))
        .with_context(|| format!("--kit {}", kit.display()))?;
    let ca_path = kit.join("ca.pem");
    let ca = std::fs::read(&ca_path)
        .with_context(|| format!("--kit: cannot read {}", ca_path.display()))?;
    tls::check_coordinator_certificate(&id, &ca, &ca_path, kit)?;
    let verifier = tls::client_verifier(&ca, &ca_path)?;
    let revoked = match &how.revoked {
        Some(p) => Some(RevocationList::open(p)?),
        None => None,
    };
    let admission: Arc<dyn Authenticator> = Arc::new(SiteAdmission {
        allow: sc.federation.sites.clone(),
        revoked,
    });
    Ok((id, Some(verifier), admission))
}

/// The self-signed identity of `out`: the one a previous run wrote there when `resuming`
/// (so the clients' `cert.pem` still verifies), else a fresh one valid for `names`, written
/// as `out/cert.pem` and `out/key.pem`.
fn self_signed_identity(names: &[String], out: &Path, resuming: bool) -> Result<ServerIdentity> {
    let (cert, key) = (out.join("cert.pem"), out.join("key.pem"));
    if resuming && cert.is_file() && key.is_file() {
        eprintln!(
            "resuming with the certificate the run wrote: {}",
            cert.display()
        );
        return tls::load_identity(&cert, &key);
    }
    let id = tls::self_signed(names)?;
    create_out_dir(out)?;
    tls::write_identity(&id, out)?;
    Ok(id)
}

/// Says on stderr where the coordinator listens and how a client joins.
pub(crate) fn announce(addr: SocketAddr, sc: &Scenario, out: &Path, kit: bool) {
    let join = if kit {
        "fedssl-client --kit <the site's kit folder>".to_string()
    } else {
        let common = format!(
            "fedssl-client --coordinator <HOST>:{} --ca {}",
            addr.port(),
            out.join("cert.pem").display(),
        );
        let n = sc.federation.clients;
        format!(
            "{common} --shard K/{n}\n  or, virtual clients A..B-1 in one process: {common} --virtual A..B/{n}"
        )
    };
    eprintln!(
        "fedssl coordinator listening on {addr} (QUIC); waiting for {} client(s) (at least {}).\n  join with: {join}",
        sc.federation.clients, sc.federation.min_clients,
    );
}
