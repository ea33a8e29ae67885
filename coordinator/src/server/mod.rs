//! The QUIC server of a run: the [`registry`] of connected clients, their admission
//! ([`handshake`], with its [`handshake::Authenticator`] seam), the [`rounds`] loop with each
//! client's part of a round (`client_round.rs`), what the rounds write ([`records`]), their
//! progress on the terminal (`progress.rs`), and the server's [`tls`].

mod client_round;
pub mod handshake;
mod progress;
pub mod records;
pub mod registry;
pub mod rounds;
pub mod tls;

// Old paths (before issue 11's restructure) that `coordinator/tests` still uses: hidden shims,
// to be deleted once the lead has re-pointed the top-level tests crate.
#[doc(hidden)]
pub use registry::Registry;

/// [`handshake::accept_loop`] with [`handshake::OpenAdmission`] (the old signature, for
/// `coordinator/tests`).
#[doc(hidden)]
pub async fn accept_loop(endpoint: quinn::Endpoint, registry: std::sync::Arc<Registry>) {
    handshake::accept_loop(
        endpoint,
        registry,
        std::sync::Arc::new(handshake::OpenAdmission),
    )
    .await
}
