//! `fedssl-relay`: the test crate's UDP impairment relay ([`fedssl_tests::relay`]) as a
//! process, for a path between network namespaces (`tests/netns.rs`) or a trial of one's own:
//!
//! ```sh
//! fedssl-relay --listen 10.211.0.1:4434 --upstream 127.0.0.1:4433 --delay-ms 50 --jitter-ms 10 --loss 0.02
//! ```
//!
//! Clients send to `--listen` instead of the coordinator; every datagram, both ways, is
//! dropped with probability `--loss` or delivered after `delay ± jitter`. `SIGUSR1` starts an
//! outage of `--outage-ms` (every datagram dropped). Once a second, while traffic flows, it
//! writes `relay: forwarded N, dropped M` to stderr (the counts so far, both ways).

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use fedssl_tests::relay::{Impairment, Relay};

/// A UDP impairment relay: delay, jitter, loss and outages on the way to a coordinator.
#[derive(Parser, Debug)]
#[command(name = "fedssl-relay", version)]
struct Args {
    /// Address the clients send to (IP:PORT).
    #[arg(long)]
    listen: SocketAddr,
    /// The coordinator's address (IP:PORT).
    #[arg(long)]
    upstream: SocketAddr,
    /// Mean one-way delay, milliseconds.
    #[arg(long, default_value_t = 50)]
    delay_ms: u64,
    /// Half-width of the uniform spread around the delay, milliseconds.
    #[arg(long, default_value_t = 10)]
    jitter_ms: u64,
    /// Probability in [0, 1] that a datagram is dropped.
    #[arg(long, default_value_t = 0.02)]
    loss: f64,
    /// Length of the outage that SIGUSR1 starts, milliseconds.
    #[arg(long, default_value_t = 5000)]
    outage_ms: u64,
    /// Seed of the drops and delays.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

fn main() -> std::io::Result<()> {
    let a = Args::parse();
    if !(0.0..=1.0).contains(&a.loss) {
        eprintln!("fedssl-relay: --loss {} is outside [0, 1]", a.loss);
        std::process::exit(2);
    }
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let imp = Impairment {
            delay: Duration::from_millis(a.delay_ms),
            jitter: Duration::from_millis(a.jitter_ms),
            loss: a.loss,
            seed: a.seed,
        };
        let relay = Relay::start_on(a.listen, a.upstream, imp).await?;
        eprintln!(
            "relay: {} -> {} ({} ± {} ms, loss {})",
            relay.addr(),
            a.upstream,
            a.delay_ms,
            a.jitter_ms,
            a.loss
        );
        let mut usr1 =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())?;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut last = (0, 0);
        loop {
            tokio::select! {
                _ = usr1.recv() => {
                    relay.outage(Duration::from_millis(a.outage_ms));
                    eprintln!("relay: outage of {} ms", a.outage_ms);
                }
                _ = tick.tick() => {
                    let now = (relay.forwarded(), relay.dropped());
                    if now != last {
                        eprintln!("relay: forwarded {}, dropped {}", now.0, now.1);
                        last = now;
                    }
                }
            }
        }
    })
}
