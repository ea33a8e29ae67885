//! The revocation list of `serve --revoked FILE`: sites that may no longer join, by site name
//! or by certificate serial number (hex, colons and case ignored), one per line, `#` starts a
//! comment. The file is re-read whenever its size or modification time changes, so that a
//! site revoked while the coordinator runs is refused at its next connection. A list that
//! becomes unreadable or holds a bad line refuses every client (fails closed) and says why.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use anyhow::{bail, Context, Result};
use tracing::{info, warn};

/// The revoked names and serials as last read.
#[derive(Debug, Default, PartialEq)]
pub struct Revoked {
    /// Site names.
    pub names: BTreeSet<String>,
    /// Serial numbers, lower-case hex without separators or leading zeros.
    pub serials: BTreeSet<String>,
}

/// A file's size and modification time: when either changes, the file is re-read.
type Stamp = Option<(u64, SystemTime)>;

/// A revocation file, re-read on change.
pub struct RevocationList {
    path: PathBuf,
    state: Mutex<(Stamp, Result<Revoked, String>)>,
}

impl RevocationList {
    /// Reads `path`; an unreadable file or a bad line is an error naming the file and line.
    pub fn open(path: &Path) -> Result<Self> {
        let stamp = stamp(path).with_context(|| format!("--revoked {}", path.display()))?;
        let list = read(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            state: Mutex::new((Some(stamp), Ok(list))),
        })
    }

    /// `Err(reason)` when the site `name` or its certificate `serial` (big-endian bytes) is
    /// revoked, or when the list cannot be read (then every site is refused).
    pub fn check(&self, name: &str, serial: &[u8]) -> Result<(), String> {
        let mut g = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = stamp(&self.path).ok();
        if now != g.0 {
            g.1 = read(&self.path).map_err(|e| format!("{e:#}"));
            match &g.1 {
                Ok(r) => info!(
                    file = %self.path.display(),
                    names = r.names.len(),
                    serials = r.serials.len(),
                    "revocation list re-read"
                ),
                Err(e) => warn!("revocation list unusable, refusing every client: {e}"),
            }
            g.0 = now;
        }
        let revoked = match &g.1 {
            Ok(r) => r,
            Err(e) => {
                return Err(format!(
                    "the coordinator's revocation list is unusable ({e})"
                ))
            }
        };
        let hex = serial_hex(serial);
        if revoked.names.contains(name) {
            return Err(format!("site `{name}` is revoked"));
        }
        if revoked.serials.contains(&hex) {
            return Err(format!(
                "the certificate of site `{name}` (serial {hex}) is revoked"
            ));
        }
        Ok(())
    }
}

/// The file's size and modification time; an error when it cannot be read.
fn stamp(path: &Path) -> Result<(u64, SystemTime)> {
    let m = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok((m.len(), m.modified()?))
}

/// `bytes` as lower-case hex without leading zeros (`"0"` for none).
pub fn serial_hex(bytes: &[u8]) -> String {
    let s: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let t = s.trim_start_matches('0');
    if t.is_empty() {
        "0".into()
    } else {
        t.into()
    }
}

/// Parses the revocation file at `path`.
pub fn read(path: &Path) -> Result<Revoked> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse(&text).with_context(|| format!("in {}", path.display()))
}

/// Parses revocation text: a line is a site name (a DNS label), or a serial as `serial:HEX`
/// or as hex with colons (`3a:4f:…`); blank lines and `#` comments are skipped.
pub fn parse(text: &str) -> Result<Revoked> {
    let mut r = Revoked::default();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let serial = line
            .strip_prefix("serial:")
            .or_else(|| line.contains(':').then_some(line));
        match serial {
            Some(hex) => {
                let digits: String = hex
                    .chars()
                    .filter(|c| *c != ':')
                    .collect::<String>()
                    .to_lowercase();
                if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
                    bail!(
                        "line {}: `{}` is not a hex serial number",
                        i + 1,
                        short(line)
                    );
                }
                let t = digits.trim_start_matches('0');
                r.serials
                    .insert(if t.is_empty() { "0".into() } else { t.into() });
            }
            None => {
                fedssl_shared::config::check_site_name(line)
                    .with_context(|| format!("line {}", i + 1))?;
                r.names.insert(line.to_string());
            }
        }
    }
    Ok(r)
}

/// At most 40 characters of `s`, escaped, for messages.
fn short(s: &str) -> String {
    let t: String = s.chars().take(40).collect();
    format!("{}", t.escape_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_serials_parse_and_bad_lines_are_named() {
        let r = parse("# revoked\nsite-b\n\nserial:00AB12\n0a:ff:01 # lost laptop\n").unwrap();
        assert_eq!(r.names, BTreeSet::from(["site-b".to_string()]));
        assert_eq!(
            r.serials,
            BTreeSet::from(["ab12".to_string(), "aff01".to_string()])
        );
        let e = parse("site-a\nserial:xyz\n").unwrap_err();
        assert!(format!("{e:#}").contains("line 2"), "{e:#}");
        let e = parse("Bad Name\n").unwrap_err();
        assert!(format!("{e:#}").contains("line 1"), "{e:#}");
        assert_eq!(serial_hex(&[0, 0x0a, 0xff, 0x01]), "aff01");
        assert_eq!(serial_hex(&[0]), "0");
    }

    #[test]
    fn the_list_is_re_read_when_it_changes_and_fails_closed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("revoked.txt");
        std::fs::write(&path, "site-b\n").unwrap();
        let list = RevocationList::open(&path).unwrap();
        assert!(list.check("site-a", &[1]).is_ok());
        assert_eq!(
            list.check("site-b", &[1]).unwrap_err(),
            "site `site-b` is revoked"
        );
        // a different size is a change whatever the clock's resolution
        std::fs::write(&path, "site-b\nsite-a # now too\n").unwrap();
        assert!(list.check("site-a", &[1]).is_err());
        std::fs::write(&path, "serial:0102\n").unwrap();
        assert!(list.check("site-b", &[1]).is_ok());
        let e = list.check("site-c", &[1, 2]).unwrap_err();
        assert!(e.contains("serial 102"), "{e}");
        std::fs::remove_file(&path).unwrap();
        let e = list.check("site-a", &[1]).unwrap_err();
        assert!(e.contains("revocation list is unusable"), "{e}");
    }
}
