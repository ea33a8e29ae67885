//! `[logging]`: optional logs a run writes besides `rounds.jsonl`, such as TensorBoard event
//! files. Every key defaults to off, so a scenario without the section behaves as before.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Logging section.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    /// Write TensorBoard event files (per-round scalars and the final probe accuracies), by
    /// default into `<run>/tb`.
    pub tensorboard: bool,
    /// Folder of the event files instead of `<run>/tb` (the coordinator's `--tensorboard DIR`
    /// sets it and `tensorboard`); relative to the working directory.
    pub tensorboard_dir: Option<PathBuf>,
}

impl LoggingConfig {
    /// The folder TensorBoard event files go to for a run writing into `out`; `None` when
    /// TensorBoard logging is off.
    pub fn tensorboard_dir(&self, out: &Path) -> Option<PathBuf> {
        self.tensorboard.then(|| {
            self.tensorboard_dir
                .clone()
                .unwrap_or_else(|| out.join("tb"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_by_default_and_tb_under_the_run() {
        let out = Path::new("runs/x");
        assert_eq!(LoggingConfig::default().tensorboard_dir(out), None);
        let on = LoggingConfig {
            tensorboard: true,
            tensorboard_dir: None,
        };
        assert_eq!(on.tensorboard_dir(out), Some(PathBuf::from("runs/x/tb")));
        let elsewhere = LoggingConfig {
            tensorboard: true,
            tensorboard_dir: Some("logs/tb".into()),
        };
        assert_eq!(
            elsewhere.tensorboard_dir(out),
            Some(PathBuf::from("logs/tb"))
        );
    }
}
