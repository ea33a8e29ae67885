//! What both binaries (`fedssl-client`, `fedssl-coordinator`) do around their command: the
//! allocator tuning of [`crate::ops::tune_allocator`], logs on stderr filtered by
//! `FEDSSL_LOG`, a multi-threaded tokio runtime, and a failure printed as one line `error: …`
//! with a non-zero exit status.

use std::future::Future;
use std::process::ExitCode;

/// Runs `command` to completion and turns its result into the process's exit status.
/// `default_log` is the tracing filter used when `FEDSSL_LOG` is unset (e.g. `"warn"`).
pub fn run_main(default_log: &str, command: impl Future<Output = anyhow::Result<()>>) -> ExitCode {
    // Before any tensor exists: keep freed heap memory for the next training step.
    crate::ops::tune_allocator();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FEDSSL_LOG")
                .unwrap_or_else(|_| default_log.into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line (`outer: inner: …`), trimmed, with every other control
/// character written as an escape (`\u{1b}`), so that a path or value from a file or the
/// command line can never send raw terminal escapes to the user's terminal.
fn one_line(e: &anyhow::Error) -> String {
    let text = format!("{e:#}").replace('\n', " ");
    let mut out = String::with_capacity(text.len());
    for c in text.trim().chars() {
        if c.is_control() {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_and_its_causes_fit_one_line() {
        let e = anyhow::anyhow!("inner\nsecond line").context("outer");
        assert_eq!(one_line(&e), "outer: inner second line");
        // a trailing newline of the innermost message leaves no trailing space
        let e = anyhow::anyhow!("unknown field `x` in `train`\n");
        assert_eq!(one_line(&e), "unknown field `x` in `train`");
    }

    #[test]
    fn control_characters_are_escaped_not_echoed() {
        let e = anyhow::anyhow!("folder /tmp/nope\u{1b}[31mRED\u{1b}[0m\tx does not exist");
        assert_eq!(
            one_line(&e),
            "folder /tmp/nope\\u{1b}[31mRED\\u{1b}[0m\\u{9}x does not exist"
        );
    }
}
