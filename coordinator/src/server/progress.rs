//! The rounds' progress on the terminal: a bar of rounds with the last round's line
//! (`loss … | N clients, M dropped | s | k-NN %`), or that line on stderr when there is no
//! bar to draw (`--quiet`, or not a terminal).

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::server::records::RoundRecord;

/// The progress of rounds `1..=rounds`.
pub struct RoundsProgress {
    bar: Option<ProgressBar>,
    rounds: usize,
    /// Since when no "waiting for clients" line went to stderr (no bar), and whether one did.
    waiting_said: std::sync::Mutex<(std::time::Instant, bool)>,
}

/// Seconds between two "waiting for clients" lines on stderr when there is no bar.
const WAITING_LINE_EVERY_SECONDS: u64 = 10;

impl RoundsProgress {
    /// A bar in `mp` (none without), at round `done` of `rounds`.
    pub fn new(mp: Option<&MultiProgress>, rounds: usize, done: usize) -> Self {
        let bar = mp.map(|mp| {
            let b = mp.add(ProgressBar::new(rounds as u64));
            b.set_position(done as u64);
            b.set_style(
                ProgressStyle::with_template(
                    "round [{bar:30}] {pos}/{len} {elapsed_precise} {wide_msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("##-"),
            );
            b
        });
        Self {
            bar,
            rounds,
            waiting_said: std::sync::Mutex::new((std::time::Instant::now(), false)),
        }
    }

    /// Reports `connected` clients of the `want` a round waits for (`min` at least): on the
    /// bar at once; without one, a line on stderr at most every [`WAITING_LINE_EVERY_SECONDS`]
    /// (none while clients join within that time, as in-process ones do), and the line that
    /// completes the run's clients after any such line.
    pub fn waiting(&self, connected: usize, want: usize, min: usize) {
        let msg = format!("waiting for clients: {connected} of {want} connected (at least {min})");
        match self.bar.as_ref().filter(|b| !b.is_hidden()) {
            Some(b) => b.set_message(msg),
            None => {
                let now = std::time::Instant::now();
                let mut last = self
                    .waiting_said
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let (since, said) = *last;
                let due = now.duration_since(since).as_secs() >= WAITING_LINE_EVERY_SECONDS;
                if due || (said && connected >= want) {
                    eprintln!("{msg}");
                    *last = (now, true);
                }
            }
        }
    }

    /// Reports a completed round.
    pub fn round_done(&self, rec: &RoundRecord) {
        let mut msg = format!(
            "loss {:.3} | {}, {} dropped | {:.1} s",
            rec.mean_loss.unwrap_or(f64::NAN),
            crate::run::outputs::plural(rec.clients.len(), "client", "clients"),
            rec.dropped.len(),
            rec.seconds
        );
        if let Some(k) = rec.knn_top1 {
            msg += &format!(" | k-NN {:.1}%", 100.0 * k);
        }
        match self.bar.as_ref().filter(|b| !b.is_hidden()) {
            Some(b) => {
                b.set_message(msg.clone());
                b.inc(1);
            }
            None => eprintln!("round {}/{}: {msg}", rec.round, self.rounds),
        }
    }

    /// Ends the bar after the last round.
    pub fn finish(self) {
        if let Some(b) = self.bar {
            b.finish();
        }
    }
}
