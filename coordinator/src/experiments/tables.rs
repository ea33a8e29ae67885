//! The Markdown and CSV lines of the experiments' tables: a Markdown header (with its
//! `|---|` rule), a Markdown row and a CSV row, each ending in a newline. Cells are written
//! as given; numbers are formatted by the caller.

/// `| a | b |` then `|---|---|`, each line ending in `\n`.
pub fn markdown_header(columns: &[&str]) -> String {
    let rule = vec!["---"; columns.len()];
    markdown_row(columns) + "|" + &rule.join("|") + "|\n"
}

/// `| a | b |\n`.
pub fn markdown_row<S: AsRef<str>>(cells: &[S]) -> String {
    let cells: Vec<&str> = cells.iter().map(|c| c.as_ref()).collect();
    format!("| {} |\n", cells.join(" | "))
}

/// `a,b\n` (cells are not quoted: they hold names and numbers only).
pub fn csv_row<S: AsRef<str>>(cells: &[S]) -> String {
    let cells: Vec<&str> = cells.iter().map(|c| c.as_ref()).collect();
    cells.join(",") + "\n"
}

/// A fraction in [0, 1] as a percentage with one decimal, without the sign: `0.421` → `42.1`.
pub fn pct(v: f64) -> String {
    format!("{:.1}", 100.0 * v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_of_both_formats() {
        assert_eq!(markdown_header(&["a", "b c"]), "| a | b c |\n|---|---|\n");
        assert_eq!(markdown_row(&["1", "x"]), "| 1 | x |\n");
        assert_eq!(csv_row(&["run", "0.5"]), "run,0.5\n");
        assert_eq!(pct(0.421), "42.1");
    }
}
