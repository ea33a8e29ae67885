//! Many clients of one process over one QUIC endpoint ([`SharedEndpoint`]): `simulate`'s
//! in-process clients and `fedssl-client --virtual`'s. One endpoint, not one per client,
//! because each holds its own receive buffer (quinn 0.11 on Linux: 1,472 bytes × 64 GRO
//! segments × 32 datagrams ≈ 3 MB), socket and driver task; and at most
//! [`HANDSHAKES_AT_ONCE`] handshakes at a time, because a thousand clients dialling at once
//! overflow the sockets' buffers, and each lost Initial packet costs its client a
//! retransmission timeout that doubles (1 s, 2 s, 4 s, …: joining 1,000 clients took 31 s
//! that way, against 3 s in turns).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Result;

use crate::session::{client_endpoint, connect_on};

/// Handshakes one [`SharedEndpoint`] runs at once.
pub const HANDSHAKES_AT_ONCE: usize = 32;

/// One client endpoint that many clients of a process connect over, at most
/// [`HANDSHAKES_AT_ONCE`] of them handshaking at a time. Cloning shares it.
#[derive(Clone)]
pub struct SharedEndpoint {
    endpoint: quinn::Endpoint,
    handshakes: Arc<tokio::sync::Semaphore>,
}

impl SharedEndpoint {
    /// A new endpoint on an ephemeral UDP port of `addr`'s family. Errors when no UDP socket
    /// can be opened.
    pub fn new(addr: SocketAddr) -> Result<Self> {
        Ok(Self {
            endpoint: client_endpoint(addr)?,
            handshakes: Arc::new(tokio::sync::Semaphore::new(HANDSHAKES_AT_ONCE)),
        })
    }

    /// The endpoint, e.g. to await it idle before the process exits.
    pub fn endpoint(&self) -> &quinn::Endpoint {
        &self.endpoint
    }

    /// Connects one client (its trust and certificate in `client_cfg`) to the coordinator at
    /// `addr`, valid for `server_name`, waiting for a handshake slot first. Errors as
    /// [`crate::open`]'s.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        server_name: &str,
        client_cfg: quinn::ClientConfig,
    ) -> Result<quinn::Connection> {
        let _slot = self.handshakes.acquire().await?;
        connect_on(&self.endpoint, addr, server_name, client_cfg).await
    }
}
