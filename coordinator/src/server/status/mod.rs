//! The live run page (`--status-addr`, `[logging] status_addr`): the run's live state
//! ([`board`], fed by the job and the rounds) and the read-only HTTP server of the page and
//! its JSON ([`http`], with `page.html`).

pub mod board;
pub mod http;
