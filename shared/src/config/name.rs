//! Names a scenario gives: its `name` (also the name of the run's folder) and the site names of
//! `federation.sites` (also `provision`'s kit folders and certificates' DNS names).

use anyhow::{bail, Result};

/// Longest scenario name accepted, in characters.
pub const MAX_NAME_CHARS: usize = 100;

/// Checks that `name` can be the scenario's `name`, which is also a folder name: not empty,
/// not `.` or `..`, at most [`MAX_NAME_CHARS`] characters, no `/` or `\\`, no control
/// characters, none of `<>:"|?*` (refused by Windows), no leading or trailing whitespace.
/// The error names the `name` key and the offending value.
pub fn check_name(name: &str) -> Result<()> {
    let why = if name.is_empty() {
        Some("it is empty")
    } else if name == "." || name == ".." {
        Some("`.` and `..` are not folder names")
    } else if name.chars().count() > MAX_NAME_CHARS {
        Some("it is longer than 100 characters")
    } else if name.contains(['/', '\\']) {
        Some("it contains a path separator (`/` or `\\`)")
    } else if name.chars().any(char::is_control) {
        Some("it contains a control character")
    } else if name.contains(['<', '>', ':', '"', '|', '?', '*']) {
        Some("it contains one of <>:\"|?*")
    } else if name.trim() != name {
        Some("it starts or ends with whitespace")
    } else {
        None
    };
    match why {
        Some(why) => bail!("name {name:?} cannot be used (it names the run's folder): {why}"),
        None => Ok(()),
    }
}

/// Checks a site name: one lower-case DNS label (1–63 letters, digits and inner hyphens), not
/// `ca` or `coordinator`, since it is a site certificate's DNS name and a kit's folder name
/// (`provision --sites`, `federation.sites`, `--revoked`). The error shows the name, escaped
/// and cut at 64 characters.
pub fn check_site_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if !ok {
        let shown: String = name.chars().take(64).collect();
        bail!("site name `{}`: use 1–63 lower-case letters, digits and inner hyphens (it is a DNS name and a folder name)", shown.escape_default());
    }
    if name == "ca" || name == "coordinator" {
        bail!("site name `{name}` is reserved (it is a folder of the kits)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn site_names_are_dns_labels() {
        for ok in ["site-a", "h1", "a"] {
            check_site_name(ok).unwrap();
        }
        for bad in [
            "",
            "Site",
            "a_b",
            "-a",
            "a-",
            "ca",
            "coordinator",
            "a/b",
            "é",
        ] {
            assert!(check_site_name(bad).is_err(), "{bad}");
        }
    }
}
