//! The scenario's `name`, which is also the name of the run's folder.

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
