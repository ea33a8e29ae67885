//! The `serve` run mode's side of a run: the endpoint on the network with the run's TLS
//! identity (`--cert`/`--key`, or a self-signed certificate written to the output folder for
//! the clients' `--ca`), and the line that tells clients how to join.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use fedssl_shared::config::Scenario;

use crate::run::outputs::create_out_dir;
use crate::server::tls;

/// A server endpoint on `listen` with `identity` (`(cert, key)` PEM files) or, without one,
/// a self-signed certificate valid for `names` that is written as `cert.pem`/`key.pem` into
/// `out` (created for it); returns the endpoint and the certificate's PEM. `idle` is the QUIC
/// idle timeout. Errors name the files or the address.
pub(crate) fn bind(
    listen: SocketAddr,
    identity: Option<&(PathBuf, PathBuf)>,
    names: &[String],
    idle: Duration,
    out: &Path,
) -> Result<(quinn::Endpoint, String)> {
    let id = match identity {
        Some((c, k)) => tls::load_identity(c, k)?,
        None => tls::self_signed(names)?,
    };
    let ep = quinn::Endpoint::server(tls::server_config(&id, idle, None)?, listen)
        .with_context(|| format!("cannot listen on {listen} (UDP)"))?;
    if identity.is_none() {
        create_out_dir(out)?;
        tls::write_identity(&id, out)?;
    }
    Ok((ep, id.cert_pem))
}

/// Says on stderr where the coordinator listens and how a client joins.
pub(crate) fn announce(addr: SocketAddr, sc: &Scenario, out: &Path) {
    let cert_hint = out.join("cert.pem");
    eprintln!(
        "fedssl coordinator listening on {addr} (QUIC); waiting for {} client(s) (at least {}).\n  join with: fedssl-client --coordinator <HOST>:{} --ca {} --shard K/{}",
        sc.federation.clients,
        sc.federation.min_clients,
        addr.port(),
        cert_hint.display(),
        sc.federation.clients
    );
}
