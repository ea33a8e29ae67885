//! Staying connected (`fedssl-client --retry-for`): a client whose coordinator cannot be
//! reached, whose connection drops, or that the coordinator cannot take for now
//! ([`Transient`] errors) connects again with exponential backoff and jitter
//! ([`backoff`], [`jittered`]), with the same identity (kit, certificate, shard), and takes
//! part from the next round it is sampled in, keeping its data and local state
//! ([`crate::session::Retained`]). It gives up, with an error, once a streak of failures has
//! lasted the retry window. An error that is not [`Transient`] — a refusal (revoked, unknown
//! site, wrong CA, another protocol version), a protocol error, a run that failed — ends the
//! client at once; a run that finished ends it with success.
//!
//! The jitter is drawn from the operating system's randomness, not from the scenario's seed:
//! it spreads the sites' reconnections in time and never touches what is trained.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use rand::{Rng, SeedableRng};
use tracing::{info, warn};

use crate::options::{ClientOptions, SessionReport};
use crate::session::{run_session_keeping, Link, Retained};

/// First wait before reconnecting.
pub const BACKOFF_START: Duration = Duration::from_millis(500);
/// Longest wait between two attempts.
pub const BACKOFF_CAP: Duration = Duration::from_secs(30);

/// An error that passes: the coordinator is gone for now (unreachable, the connection
/// dropped) or cannot take the client now ([`fedssl_shared::protocol::ServerMessage::Busy`]).
/// [`run_reconnecting`] retries it; [`is_transient`] tells it from the others.
#[derive(Debug)]
pub struct Transient(pub String);

impl std::fmt::Display for Transient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Transient {}

/// A [`Transient`] error saying `what`.
pub fn transient(what: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Transient(what.into()))
}

/// Whether `e` is (or wraps, under context) a [`Transient`] error.
pub fn is_transient(e: &anyhow::Error) -> bool {
    e.downcast_ref::<Transient>().is_some()
}

/// The backoff before attempt `attempt` (0-based) after a failure: [`BACKOFF_START`]
/// doubled `attempt` times, at most [`BACKOFF_CAP`] (0.5 s, 1 s, 2 s, …, 16 s, 30 s, 30 s …).
pub fn backoff(attempt: u32) -> Duration {
    let factor = 1u64 << attempt.min(16);
    (BACKOFF_START * factor as u32).min(BACKOFF_CAP)
}

/// `base` with jitter: a wait drawn uniformly from `[base / 2, base]` with `rng`.
pub fn jittered(base: Duration, rng: &mut impl Rng) -> Duration {
    base.mul_f64(rng.random_range(0.5..=1.0))
}

/// Runs this client's sessions until the run finishes: `connect` opens a connection (a new
/// endpoint each time; the endpoint is awaited idle for up to 3 s after its session, so that
/// the close frame leaves), each session continues from the previous one's data and state,
/// and a [`Transient`] failure is retried after [`jittered`] [`backoff`] — one `warn` line
/// per attempt — until failures have gone on for `retry_for` (measured from the first
/// failure since the last welcome; `Duration::ZERO`: no retry).
///
/// Errors: the first error that is not [`Transient`], or, after `retry_for`, the last one,
/// saying that the client gave up.
pub async fn run_reconnecting<C, F, L>(
    mut connect: C,
    opts: &ClientOptions,
    retry_for: Duration,
) -> Result<SessionReport>
where
    C: FnMut() -> F,
    F: Future<Output = Result<(quinn::Endpoint, L)>>,
    L: Into<Link>,
{
    let mut kept = Retained::default();
    let mut rng = rand::rngs::StdRng::from_os_rng();
    let mut attempt = 0u32;
    let mut failing_since: Option<Instant> = None;
    loop {
        let welcomes = kept.welcomes;
        kept.attempts = attempt;
        let res = match connect().await {
            Ok((endpoint, link)) => {
                let link: Link = link.into();
                let own = matches!(link, Link::Own(_));
                let r = run_session_keeping(link, opts, &mut kept).await;
                // A shared connection outlives this session: its slice closes it at the end.
                if own {
                    let _ =
                        tokio::time::timeout(Duration::from_secs(3), endpoint.wait_idle()).await;
                }
                r
            }
            Err(e) => Err(e),
        };
        let e = match res {
            Ok(report) => return Ok(report),
            Err(e) if retry_for.is_zero() || !is_transient(&e) => return Err(e),
            Err(e) => e,
        };
        if kept.welcomes > welcomes {
            // This session had joined: a new streak of failures starts.
            attempt = 0;
            failing_since = None;
        }
        let since = *failing_since.get_or_insert_with(Instant::now);
        let spent = since.elapsed();
        if spent >= retry_for {
            bail!(
                "gave up reconnecting to the coordinator after {} (--retry-for): {e:#}",
                humantime::format_duration(round_to_ms(retry_for))
            );
        }
        let wait = jittered(backoff(attempt), &mut rng).min(retry_for - spent);
        attempt += 1;
        warn!(
            "{e:#}; reconnecting (attempt {attempt}) in {:.1} s, giving up in {:.0} s",
            wait.as_secs_f64(),
            (retry_for - spent).as_secs_f64()
        );
        tokio::time::sleep(wait).await;
        info!(attempt, "reconnecting to the coordinator");
    }
}

/// `d` rounded down to whole milliseconds (for messages).
fn round_to_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn the_backoff_doubles_from_half_a_second_to_thirty() {
        let secs: Vec<f64> = (0..9).map(|a| backoff(a).as_secs_f64()).collect();
        assert_eq!(secs, [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]);
        assert_eq!(backoff(u32::MAX), BACKOFF_CAP);
    }

    #[test]
    fn jitter_stays_between_half_and_all_of_the_backoff() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let base = Duration::from_secs(8);
        let waits: Vec<Duration> = (0..200).map(|_| jittered(base, &mut rng)).collect();
        assert!(waits.iter().all(|w| *w >= base / 2 && *w <= base));
        // spread, not one value
        let lo = waits.iter().min().copied().unwrap_or_default();
        let hi = waits.iter().max().copied().unwrap_or_default();
        assert!(hi - lo > Duration::from_secs(3), "{lo:?}..{hi:?}");
    }

    #[test]
    fn transient_errors_are_told_apart_under_context() {
        let e = transient("lost the coordinator").context("in the session");
        assert!(is_transient(&e));
        assert_eq!(format!("{e:#}"), "in the session: lost the coordinator");
        let refused: Result<()> = Err(anyhow::anyhow!("refused: revoked"));
        assert!(!is_transient(&refused.context("joining").unwrap_err()));
    }

    #[tokio::test]
    async fn a_refusal_is_not_retried_and_a_transient_failure_gives_up_after_the_window() {
        let opts = ClientOptions::new("t", crate::DataSource::Whole { dir: None });
        let mut calls = 0;
        let e = run_reconnecting(
            || {
                calls += 1;
                async {
                    Err::<(quinn::Endpoint, Link), _>(anyhow::anyhow!(
                        "the coordinator refused this client"
                    ))
                }
            },
            &opts,
            Duration::from_secs(60),
        )
        .await
        .unwrap_err();
        assert_eq!(calls, 1);
        assert!(e.to_string().contains("refused"), "{e}");

        let mut calls = 0;
        let t0 = Instant::now();
        let e = run_reconnecting(
            || {
                calls += 1;
                async {
                    Err::<(quinn::Endpoint, Link), _>(transient("cannot reach the coordinator"))
                }
            },
            &opts,
            Duration::from_millis(1200),
        )
        .await
        .unwrap_err();
        // waits of [0.25, 0.5] s, then [0.5, 1] s, … cut at the window: 3 or 4 attempts
        assert!((3..=4).contains(&calls), "{calls} attempts");
        assert!(t0.elapsed() >= Duration::from_millis(1200));
        let msg = format!("{e:#}");
        assert!(
            msg.starts_with("gave up reconnecting to the coordinator after 1s 200ms (--retry-for)")
                && msg.ends_with("cannot reach the coordinator"),
            "{msg}"
        );

        // no retry window: the first transient failure is the error
        let mut calls = 0;
        run_reconnecting(
            || {
                calls += 1;
                async { Err::<(quinn::Endpoint, Link), _>(transient("x")) }
            },
            &opts,
            Duration::ZERO,
        )
        .await
        .unwrap_err();
        assert_eq!(calls, 1);
    }
}
