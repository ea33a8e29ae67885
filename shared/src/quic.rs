//! QUIC transport settings both sides share, sized to move model weights fast: the UDP
//! sockets' kernel buffers, the largest datagram, and the flow-control windows.
//!
//! quinn's defaults suit the web (1,452-byte datagrams, a 1.25 MB stream window, the
//! kernel's 208 KB socket buffer). Over loopback they moved a 100 MB payload at 0.4–0.5 GB/s,
//! and the receiving socket overflowed: 1–2 % of the packets were lost and each loss halved the
//! congestion window. With the settings here the same transfer runs at 1.7–1.9 GB/s
//! (`bench_federation` part (a), median and best of 5); on a network path of an ordinary 1,500-byte MTU, path MTU
//! discovery (RFC 8899, quinn's) settles where it always did, and the initial datagram stays
//! 1,200 bytes (RFC 9000 §14.1).

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;

use anyhow::{Context, Result};

/// The largest UDP payload (bytes) this side accepts and path MTU discovery probes up to.
/// quinn sends up to 10 datagrams in one generic-segmentation-offload `sendmsg`, whose total
/// the kernel bounds at 64 KiB: 10 × 6,500 stays within it (a 9,000-byte bound made every
/// full batch fail with `EMSGSIZE`, which quinn counts as loss).
pub const MAX_UDP_PAYLOAD: u16 = 6_500;

/// Kernel receive and send buffer asked for each UDP socket (bytes); Linux grants at most
/// `net.core.rmem_max` / `wmem_max` (often 208 KB on a desktop, raise them with `sysctl` for
/// full speed).
pub const SOCKET_BUFFER_BYTES: usize = 4 << 20;

/// The largest stream receive window (bytes): how much of one stream the peer may send ahead
/// of what was read. quinn's default is 1.25 MB.
pub const MAX_STREAM_WINDOW: u64 = 16 << 20;

/// The smallest stream receive window (bytes) [`receive_window`] gives: quinn's default.
pub const MIN_STREAM_WINDOW: u64 = 1_250_000;

/// What the coordinator lets all its clients together send ahead of its reading (bytes).
pub const COORDINATOR_RECEIVE_BUDGET: u64 = 64 << 20;

/// The stream receive window (bytes) for a side that may receive from `peers` peers at once:
/// [`COORDINATOR_RECEIVE_BUDGET`] shared among them, between [`MIN_STREAM_WINDOW`] and
/// [`MAX_STREAM_WINDOW`]. A coordinator reads updates a few at a time, and what its clients
/// send ahead waits in its memory: 4 clients get 16 MiB each, 8 clients 8 MiB, 54 or more
/// quinn's 1.25 MB. (A 1 GB model's round with 8 clients, `bench_federation` part (d):
/// 8 MiB windows took 31–36 s a round at 4.3–4.4× the model in coordinator RSS, 16 MiB
/// windows 33–36 s at 4.6×, quinn's 1.25 MB 51 s at 4.4×.)
pub fn receive_window(peers: usize) -> u64 {
    (COORDINATOR_RECEIVE_BUDGET / peers.max(1) as u64).clamp(MIN_STREAM_WINDOW, MAX_STREAM_WINDOW)
}

/// Sets the datagram size bound and the windows on `transport`: a stream receive window of
/// `stream_window` bytes, twice that for the connection's receive and send windows (a
/// multiplexed connection carries many streams; quinn's send buffer holds slices of the
/// written buffers, not copies, for a payload written with `write_chunk`).
///
/// # Panics
/// Never for `stream_window` below 2^61 (a QUIC varint).
pub fn tune(transport: &mut quinn::TransportConfig, stream_window: u64) {
    let mut mtud = quinn::MtuDiscoveryConfig::default();
    mtud.upper_bound(MAX_UDP_PAYLOAD);
    transport.mtu_discovery_config(Some(mtud));
    let varint = |v: u64| quinn::VarInt::from_u64(v).expect("window below 2^62");
    transport.stream_receive_window(varint(stream_window));
    transport.receive_window(varint(2 * stream_window));
    transport.send_window(2 * stream_window);
}

/// The endpoint configuration: accepts datagrams up to [`MAX_UDP_PAYLOAD`] bytes (the
/// transport parameter `max_udp_payload_size` the peer's path MTU discovery is bounded by).
pub fn endpoint_config() -> quinn::EndpointConfig {
    let mut cfg = quinn::EndpointConfig::default();
    cfg.max_udp_payload_size(MAX_UDP_PAYLOAD)
        .expect("MAX_UDP_PAYLOAD is within QUIC's 1,200..=65,527");
    cfg
}

/// A UDP socket bound to `addr` with kernel buffers of [`SOCKET_BUFFER_BYTES`] asked for.
/// A kernel that grants less is not an error (the transfer is slower, not wrong); the granted
/// size is logged at debug level.
///
/// # Errors
/// The socket cannot be bound (address in use, not local).
pub fn udp_socket(addr: SocketAddr) -> Result<UdpSocket> {
    let socket = UdpSocket::bind(addr).with_context(|| format!("cannot bind UDP {addr}"))?;
    let s = socket2::SockRef::from(&socket);
    let _ = s.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
    let _ = s.set_send_buffer_size(SOCKET_BUFFER_BYTES);
    tracing::debug!(
        "UDP {addr}: receive buffer {:?} bytes, send buffer {:?} bytes (asked {SOCKET_BUFFER_BYTES})",
        s.recv_buffer_size().ok(),
        s.send_buffer_size().ok()
    );
    Ok(socket)
}

/// A quinn endpoint on `addr` (a coordinator's when `server` is given, a client's otherwise)
/// with [`endpoint_config`] and [`udp_socket`]'s buffers. Must run inside a tokio runtime.
///
/// # Errors
/// The socket cannot be bound or handed to the runtime.
pub fn endpoint(addr: SocketAddr, server: Option<quinn::ServerConfig>) -> Result<quinn::Endpoint> {
    let socket = udp_socket(addr)?;
    quinn::Endpoint::new(
        endpoint_config(),
        server,
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .with_context(|| format!("cannot open a QUIC endpoint on UDP {addr}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_receive_budget_is_shared_within_quinns_default_and_the_cap() {
        assert_eq!(receive_window(1), MAX_STREAM_WINDOW);
        assert_eq!(receive_window(4), 16 << 20);
        assert_eq!(receive_window(8), 8 << 20);
        assert_eq!(receive_window(32), 2 << 20);
        assert_eq!(receive_window(53), (64 << 20) / 53);
        assert_eq!(receive_window(54), MIN_STREAM_WINDOW);
        assert_eq!(receive_window(1_000), MIN_STREAM_WINDOW);
        assert_eq!(receive_window(0), MAX_STREAM_WINDOW);
    }

    #[test]
    fn a_full_segmentation_offload_batch_fits_the_kernels_64_kib() {
        // quinn 0.11: MAX_TRANSMIT_SEGMENTS = 10; IPv6 + UDP headers: 48 bytes
        assert!(10 * MAX_UDP_PAYLOAD as usize + 48 <= 65_535);
        assert_eq!(
            endpoint_config().get_max_udp_payload_size(),
            MAX_UDP_PAYLOAD as u64
        );
    }

    #[test]
    fn sockets_get_the_buffer_asked_for_up_to_the_kernels_maximum() {
        let s = udp_socket("127.0.0.1:0".parse().unwrap()).unwrap();
        let got = socket2::SockRef::from(&s).recv_buffer_size().unwrap();
        // Linux doubles what it grants (bookkeeping); rmem_max bounds it
        let max = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok());
        if let Some(max) = max {
            assert_eq!(got, 2 * max.min(SOCKET_BUFFER_BYTES));
        }
    }
}
