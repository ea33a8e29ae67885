//! `[logging]`: optional logs a run writes besides `rounds.jsonl`, such as TensorBoard event
//! files, and the live run page the coordinator can serve while it runs. Every key defaults to
//! off, so a scenario without the section behaves as before (and its `scenario.json` is
//! unchanged: the live page's keys are only written when set).

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
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
    /// TCP address of the read-only live run page (`GET /`, `GET /status.json`), e.g.
    /// `"127.0.0.1:8080"`, or a bare port (`"8080"`: loopback). The coordinator's
    /// `--status-addr` sets it. Default none: no page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_addr: Option<String>,
    /// Seconds the live page stays up after the run ended (finished or failed), so that a
    /// watcher sees its end (`--status-linger`). Default 0.
    #[serde(skip_serializing_if = "is_zero")]
    pub status_linger_seconds: f64,
}

/// Whether `x` is 0 (the default of `status_linger_seconds`, left out of `scenario.json`).
fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

impl LoggingConfig {
    /// Checks `status_linger_seconds` (finite, ≥ 0), that `status_addr` is not empty (the
    /// address itself is resolved when the coordinator binds it) and that `tensorboard_dir`
    /// comes with `tensorboard = true` (alone it would be ignored).
    pub fn validate(&self) -> Result<()> {
        let s = self.status_linger_seconds;
        if !s.is_finite() || s < 0.0 {
            bail!("logging.status_linger_seconds must be finite and >= 0, got {s}");
        }
        if self
            .status_addr
            .as_deref()
            .is_some_and(|a| a.trim().is_empty())
        {
            bail!("logging.status_addr is empty: give IP:PORT, HOST:PORT or a port");
        }
        if let (false, Some(dir)) = (self.tensorboard, &self.tensorboard_dir) {
            bail!(
                "logging.tensorboard_dir is {} but logging.tensorboard is false, so nothing would be written there: set logging.tensorboard = true as well (on the command line, --tensorboard DIR alone sets both)",
                super::limits::shorten(&dir.display().to_string(), 120)
            );
        }
        Ok(())
    }

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
            ..LoggingConfig::default()
        };
        assert_eq!(on.tensorboard_dir(out), Some(PathBuf::from("runs/x/tb")));
        let elsewhere = LoggingConfig {
            tensorboard: true,
            tensorboard_dir: Some("logs/tb".into()),
            ..LoggingConfig::default()
        };
        assert_eq!(
            elsewhere.tensorboard_dir(out),
            Some(PathBuf::from("logs/tb"))
        );
    }

    #[test]
    fn a_tensorboard_dir_without_tensorboard_is_refused_naming_both_keys() {
        let dir_only = LoggingConfig {
            tensorboard_dir: Some("logs/tb".into()),
            ..LoggingConfig::default()
        };
        let e = dir_only.validate().unwrap_err().to_string();
        assert!(
            e.contains("logging.tensorboard_dir is logs/tb")
                && e.contains("logging.tensorboard is false"),
            "{e}"
        );
        LoggingConfig {
            tensorboard: true,
            ..dir_only
        }
        .validate()
        .unwrap();
    }

    #[test]
    fn the_live_page_keys_are_left_out_of_scenario_json_unless_set() {
        let off = serde_json::to_value(LoggingConfig::default()).unwrap();
        assert_eq!(
            off,
            serde_json::json!({"tensorboard": false, "tensorboard_dir": null})
        );
        let on: LoggingConfig =
            toml::from_str("status_addr = \"127.0.0.1:8080\"\nstatus_linger_seconds = 30\n")
                .unwrap();
        assert_eq!(on.status_addr.as_deref(), Some("127.0.0.1:8080"));
        let v = serde_json::to_value(&on).unwrap();
        assert_eq!(v["status_addr"], "127.0.0.1:8080");
        assert_eq!(v["status_linger_seconds"], 30.0);
        on.validate().unwrap();
        let bad = LoggingConfig {
            status_linger_seconds: -1.0,
            ..LoggingConfig::default()
        };
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains("logging.status_linger_seconds"), "{e}");
    }
}
