//! A site's startup kit (`fedssl-coordinator provision` writes one per site): `ca.pem` (the
//! CA both sides trust), `cert.pem` and `key.pem` (the site's certificate and key), and
//! `client.toml` (where the coordinator is, the name its certificate carries, and the
//! site's name). `fedssl-client --kit DIR` reads it; flags given beside it win.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::tls::SiteCredentials;

/// A kit's `client.toml`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KitConfig {
    /// `HOST:PORT` of the coordinator (UDP).
    pub coordinator: String,
    /// Name the coordinator's certificate is valid for.
    pub server_name: String,
    /// This site's name (what its certificate says).
    pub site: String,
}

/// A kit, read.
#[derive(Clone)]
pub struct Kit {
    /// Its `client.toml`.
    pub config: KitConfig,
    /// Path of its `ca.pem`.
    pub ca: PathBuf,
    /// The site's certificate and key.
    pub credentials: SiteCredentials,
}

/// Reads the kit in `dir`; errors name the missing or bad file. A key readable by others
/// than its owner is said on stderr.
pub fn read_kit(dir: &Path) -> Result<Kit> {
    let cfg_path = dir.join("client.toml");
    let text = std::fs::read_to_string(&cfg_path).with_context(|| {
        format!(
            "--kit {}: cannot read {} (is this a site's kit from `fedssl-coordinator provision`?)",
            dir.display(),
            cfg_path.display()
        )
    })?;
    let config: KitConfig = toml::from_str(&text)
        .with_context(|| format!("{}: not a kit's client.toml", cfg_path.display()))?;
    let read = |name: &str| {
        let p = dir.join(name);
        std::fs::read(&p).with_context(|| format!("--kit: cannot read {}", p.display()))
    };
    let credentials = SiteCredentials {
        cert_pem: read("cert.pem")?,
        key_pem: read("key.pem")?,
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let key = dir.join("key.pem");
        if let Ok(m) = std::fs::metadata(&key) {
            if m.permissions().mode() & 0o077 != 0 {
                eprintln!(
                    "warning: {} is readable by other users; chmod 600 it",
                    key.display()
                );
            }
        }
    }
    let ca = dir.join("ca.pem");
    if !ca.is_file() {
        anyhow::bail!("--kit: no {}", ca.display());
    }
    Ok(Kit {
        config,
        ca,
        credentials,
    })
}
