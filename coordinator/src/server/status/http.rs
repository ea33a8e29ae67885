//! The live run page's HTTP server (axum on the run's tokio runtime), read-only: `GET /` is
//! the one self-contained page (`page.html`, compiled into the binary: no CDN, its script
//! and charts inline), `GET /status.json` the [`StatusBoard`]'s snapshot, which the page
//! polls every second; anything else is 404 (and a method other than GET on those two, 405).
//!
//! Where it listens ([`resolve_status_addr`]): `IP:PORT` is bound as given (an explicit
//! non-loopback IP is the user's choice); a bare `PORT` means `127.0.0.1:PORT`; a
//! `HOST:PORT` must resolve to a loopback address (a name is no explicit consent to expose
//! the page on a network).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::server::status::board::StatusBoard;

/// The page, as compiled in.
pub const PAGE: &str = include_str!("page.html");

/// The address `spec` names (`IP:PORT`, `PORT`, or a loopback `HOST:PORT`); errors name
/// `--status-addr` / `logging.status_addr`.
pub fn resolve_status_addr(spec: &str) -> Result<SocketAddr> {
    let spec = spec.trim();
    let what = "--status-addr / logging.status_addr";
    if let Ok(port) = spec.parse::<u16>() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    if let Ok(addr) = spec.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let port = spec.rsplit(':').next().unwrap_or(spec);
    if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_err()
    {
        bail!("{what} `{spec}`: port {port} is outside 0..=65535");
    }
    let addrs: Vec<SocketAddr> = spec
        .to_socket_addrs()
        .with_context(|| format!("{what} `{spec}`: expected IP:PORT, PORT or HOST:PORT"))?
        .collect();
    match addrs.iter().find(|a| a.ip().is_loopback()) {
        Some(a) => Ok(*a),
        None if addrs.is_empty() => bail!("{what} `{spec}`: the host name resolves to no address"),
        None => bail!(
            "{what} `{spec}`: the host name resolves to no loopback address ({}); give an IP:PORT to serve the page on a network",
            addrs[0].ip()
        ),
    }
}

/// The page's server while it runs; dropping it stops the server.
pub struct StatusServer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl StatusServer {
    /// The address it listens on (the port chosen when `:0` was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Keeps serving for `seconds` more (`logging.status_linger_seconds`), then stops.
    pub async fn linger(self, seconds: f64) {
        if seconds > 0.0 {
            eprintln!(
                "live run page: still at http://{}/ for {seconds:.0} s (--status-linger)",
                self.addr
            );
            tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
        }
    }
}

impl Drop for StatusServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds `spec` ([`resolve_status_addr`]) and serves `board`'s page there; says where on
/// stderr (`live run page: http://ADDR/`).
pub async fn serve_status(spec: &str, board: Arc<StatusBoard>) -> Result<StatusServer> {
    let want = resolve_status_addr(spec)?;
    let listener = tokio::net::TcpListener::bind(want)
        .await
        .with_context(|| format!("--status-addr / logging.status_addr: cannot listen on {want}"))?;
    let addr = listener.local_addr()?;
    let app = router(board);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!("live run page: the server stopped: {e}");
        }
    });
    eprintln!("live run page: http://{addr}/");
    Ok(StatusServer { addr, task })
}

/// The routes: `/`, `/status.json`, 404 for the rest.
fn router(board: Arc<StatusBoard>) -> Router {
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/status.json", get(move || status_json(board.clone())))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "not found: the live run page has / and /status.json\n",
            )
        })
}

/// `board`'s snapshot as JSON, never cached.
async fn status_json(board: Arc<StatusBoard>) -> Response {
    match serde_json::to_vec(&board.snapshot()) {
        Ok(body) => (
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_is_loopback_an_ip_is_taken_as_given_a_name_must_be_loopback() {
        assert_eq!(
            resolve_status_addr("8080").unwrap(),
            "127.0.0.1:8080".parse().unwrap()
        );
        assert_eq!(
            resolve_status_addr("0.0.0.0:9000").unwrap(),
            "0.0.0.0:9000".parse().unwrap()
        );
        assert_eq!(
            resolve_status_addr("[::1]:7").unwrap(),
            "[::1]:7".parse().unwrap()
        );
        assert!(resolve_status_addr("localhost:8080")
            .unwrap()
            .ip()
            .is_loopback());
        let e = resolve_status_addr("no port").unwrap_err().to_string();
        assert!(e.contains("--status-addr") && e.contains("no port"), "{e}");
        for spec in ["70000", "127.0.0.1:70000"] {
            let e = resolve_status_addr(spec).unwrap_err().to_string();
            assert!(e.ends_with("port 70000 is outside 0..=65535"), "{e}");
        }
    }

    #[test]
    fn the_page_is_self_contained() {
        assert!(PAGE.contains("status.json"));
        for external in [
            "src=\"http",
            "href=\"http",
            "src='http",
            "href='http",
            "@import",
        ] {
            assert!(!PAGE.contains(external), "the page loads {external}…");
        }
    }
}
