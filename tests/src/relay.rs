//! A UDP impairment relay for the network tests (`tc netem` is not available on the test
//! machines, so the impairment is ours): a client sends to the relay's address instead of the
//! coordinator's, and every datagram, both ways, is dropped with probability `loss`, dropped
//! during an outage ([`Relay::outage`]), or else delivered after `delay ± jitter` (uniform;
//! datagrams may overtake each other, as on a real path). Each client address gets its own
//! upstream socket, so the coordinator sees one peer per client connection.
//!
//! The drops and delays are drawn from one RNG seeded by [`Impairment::seed`]; which datagram
//! gets which draw depends on their arrival order, which the scheduler decides.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::net::UdpSocket;

/// How a relay impairs the path.
#[derive(Clone, Copy, Debug)]
pub struct Impairment {
    /// Mean one-way delay added to every datagram.
    pub delay: Duration,
    /// Half-width of the uniform spread around `delay` (`delay ± jitter`).
    pub jitter: Duration,
    /// Probability in `[0, 1]` that a datagram is dropped.
    pub loss: f64,
    /// Seed of the drops and delays.
    pub seed: u64,
}

/// What the relay shares between its tasks.
struct Shared {
    imp: Impairment,
    rng: Mutex<StdRng>,
    outage_until: Mutex<Option<Instant>>,
    forwarded: AtomicU64,
    dropped: AtomicU64,
}

impl Shared {
    /// The delay of the next datagram, or `None` if it is dropped.
    fn fate(&self) -> Option<Duration> {
        let out = self
            .outage_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if out.is_some_and(|t| Instant::now() < t) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        drop(out);
        let mut rng = self.rng.lock().unwrap_or_else(PoisonError::into_inner);
        if rng.random_bool(self.imp.loss.clamp(0.0, 1.0)) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let (d, j) = (self.imp.delay.as_secs_f64(), self.imp.jitter.as_secs_f64());
        let s = if j > 0.0 {
            rng.random_range(d - j..=d + j)
        } else {
            d
        };
        self.forwarded.fetch_add(1, Ordering::Relaxed);
        Some(Duration::from_secs_f64(s.max(0.0)))
    }
}

/// A running relay towards one upstream address (stops when dropped).
pub struct Relay {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Starts a relay on `127.0.0.1:0` forwarding to `upstream` with `imp`. Must be called
    /// inside a tokio runtime, which runs its tasks.
    ///
    /// # Errors
    /// If the loopback socket cannot be bound.
    pub async fn start(upstream: SocketAddr, imp: Impairment) -> std::io::Result<Self> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), upstream, imp).await
    }

    /// Starts a relay listening on `listen` (port 0: any free one) forwarding to `upstream`
    /// with `imp`; its upstream sockets bind the unspecified address of `upstream`'s family.
    /// Must be called inside a tokio runtime, which runs its tasks.
    ///
    /// # Errors
    /// If `listen` cannot be bound.
    pub async fn start_on(
        listen: SocketAddr,
        upstream: SocketAddr,
        imp: Impairment,
    ) -> std::io::Result<Self> {
        let front = Arc::new(UdpSocket::bind(listen).await?);
        let addr = front.local_addr()?;
        let shared = Arc::new(Shared {
            imp,
            rng: Mutex::new(StdRng::seed_from_u64(imp.seed)),
            outage_until: Mutex::new(None),
            forwarded: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        });
        let task = tokio::spawn(front_loop(front, upstream, shared.clone()));
        Ok(Self { addr, shared, task })
    }

    /// The address clients send to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every datagram, both ways, from now for `len`.
    pub fn outage(&self, len: Duration) {
        *self
            .shared
            .outage_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now() + len);
    }

    /// Datagrams forwarded so far (both ways).
    pub fn forwarded(&self) -> u64 {
        self.shared.forwarded.load(Ordering::Relaxed)
    }

    /// Datagrams dropped so far (loss and outages, both ways).
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sends `buf` on `sock` (to `to`, or its connected peer) after the fate the relay draws.
fn forward(shared: &Shared, sock: Arc<UdpSocket>, to: Option<SocketAddr>, buf: Vec<u8>) {
    let Some(delay) = shared.fate() else { return };
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let _ = match to {
            Some(to) => sock.send_to(&buf, to).await,
            None => sock.send(&buf).await,
        };
    });
}

/// Reads the client side: each new client address gets an upstream socket (and a task
/// carrying the answers back); every datagram goes upstream through [`forward`].
async fn front_loop(front: Arc<UdpSocket>, upstream: SocketAddr, shared: Arc<Shared>) {
    let mut peers: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut back = tokio::task::JoinSet::new();
    let mut buf = vec![0u8; 65536];
    while let Ok((n, from)) = front.recv_from(&mut buf).await {
        let up = match peers.get(&from) {
            Some(s) => s.clone(),
            None => {
                let any: SocketAddr = if upstream.is_ipv4() {
                    ([0, 0, 0, 0], 0).into()
                } else {
                    (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
                };
                let Ok(s) = UdpSocket::bind(any).await else {
                    continue;
                };
                if s.connect(upstream).await.is_err() {
                    continue;
                }
                let s = Arc::new(s);
                back.spawn(back_loop(s.clone(), front.clone(), from, shared.clone()));
                peers.insert(from, s.clone());
                s
            }
        };
        forward(&shared, up, None, buf[..n].to_vec());
    }
}

/// Carries what the coordinator sends on `up` back to client `client` through `front`.
async fn back_loop(
    up: Arc<UdpSocket>,
    front: Arc<UdpSocket>,
    client: SocketAddr,
    shared: Arc<Shared>,
) {
    let mut buf = vec![0u8; 65536];
    while let Ok(n) = up.recv(&mut buf).await {
        forward(&shared, front.clone(), Some(client), buf[..n].to_vec());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on loopback; its address.
    async fn echo() -> SocketAddr {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = s.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = s.recv_from(&mut buf).await {
                let _ = s.send_to(&buf[..n], from).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn datagrams_go_both_ways_and_an_outage_or_total_loss_drops_them() {
        let up = echo().await;
        let clean = Impairment {
            delay: Duration::from_millis(5),
            jitter: Duration::from_millis(2),
            loss: 0.0,
            seed: 1,
        };
        let relay = Relay::start(up, clean).await.unwrap();
        let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        c.send_to(b"ping", relay.addr()).await.unwrap();
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(10), c.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..n], b"ping");
        assert_eq!((relay.forwarded(), relay.dropped()), (2, 0));

        relay.outage(Duration::from_secs(3600));
        c.send_to(b"lost", relay.addr()).await.unwrap();
        while relay.dropped() < 1 {
            tokio::task::yield_now().await;
        }
        assert_eq!((relay.forwarded(), relay.dropped()), (2, 1));

        let lossy = Relay::start(up, Impairment { loss: 1.0, ..clean })
            .await
            .unwrap();
        for _ in 0..5 {
            c.send_to(b"x", lossy.addr()).await.unwrap();
        }
        while lossy.dropped() < 5 {
            tokio::task::yield_now().await;
        }
        assert_eq!(lossy.forwarded(), 0);
    }
}
