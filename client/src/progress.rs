//! The progress bar of one local round, drawn under the caller's [`MultiProgress`]:
//! `  client   1 round 2 [=====>   ] 3/27 steps 5.2/s loss 1.453`. The client and the round
//! are fixed for the bar's life and sit in its prefix; the message is the latest loss.

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// The bar's line: `{prefix}` is `client K round R`, `{wide_msg}` the latest loss.
const TEMPLATE: &str = "  {prefix} [{bar:25}] {pos}/{len} steps {per_sec} loss {wide_msg}";

/// Adds to `mp` the bar of round `shown` (1-based, as logs count) of client `client_id`.
pub(crate) fn round_bar(mp: &MultiProgress, client_id: u32, shown: u32) -> ProgressBar {
    let bar = mp.add(ProgressBar::new(0));
    bar.set_style(
        ProgressStyle::with_template(TEMPLATE)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("client {client_id:>3} round {shown}"));
    bar
}

/// Shows local step `step` of `total` and the loss of that step on `bar`.
pub(crate) fn show_step(bar: &ProgressBar, step: usize, total: usize, loss: f64) {
    bar.set_length(total as u64);
    bar.set_position(step as u64);
    bar.set_message(format!("{loss:.3}"));
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use indicatif::{ProgressDrawTarget, TermLike};

    use super::*;

    /// A terminal that keeps every line written to it.
    #[derive(Debug, Clone, Default)]
    struct Screen(Arc<Mutex<Vec<String>>>);

    impl TermLike for Screen {
        fn width(&self) -> u16 {
            120
        }
        fn move_cursor_up(&self, _: usize) -> io::Result<()> {
            Ok(())
        }
        fn move_cursor_down(&self, _: usize) -> io::Result<()> {
            Ok(())
        }
        fn move_cursor_right(&self, _: usize) -> io::Result<()> {
            Ok(())
        }
        fn move_cursor_left(&self, _: usize) -> io::Result<()> {
            Ok(())
        }
        fn write_line(&self, s: &str) -> io::Result<()> {
            self.write_str(s)
        }
        fn write_str(&self, s: &str) -> io::Result<()> {
            if !s.trim().is_empty() {
                self.0.lock().unwrap().push(s.to_string());
            }
            Ok(())
        }
        fn clear_line(&self) -> io::Result<()> {
            Ok(())
        }
        fn flush(&self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_bar_shows_the_round_and_the_loss_each_in_its_place() {
        let screen = Screen::default();
        let mp = MultiProgress::with_draw_target(ProgressDrawTarget::term_like(Box::new(
            screen.clone(),
        )));
        let bar = round_bar(&mp, 1, 2);
        show_step(&bar, 3, 27, 1.4531);
        bar.abandon();
        let lines = screen.0.lock().unwrap().clone();
        let last = lines.last().expect("the bar drew nothing");
        assert!(
            last.starts_with("  client   1 round 2 ["),
            "round not where it belongs: {last:?}"
        );
        assert!(last.contains("] 3/27 steps "), "{last:?}");
        assert!(last.trim_end().ends_with("loss 1.453"), "{last:?}");
        assert!(!last.contains("round 1.453"), "{last:?}");
    }
}
