//! Fixtures of fedssl's end-to-end tests (`e2e`, `handshake`, `processes` next to this
//! crate's manifest): the one tiny scenario every test starts from, the workspace's
//! binaries, built if need be, for the tests that run them as a user would, [`spawn`],
//! those binaries started as processes, and [`relay`], a UDP impairment relay (delay,
//! jitter, loss, outages) to put between a client and the coordinator (also a process:
//! `fedssl-relay`), and [`netns`], a LAN of network namespaces standing for separate hosts.

mod binaries;
pub mod netns;
pub mod relay;
mod scenario;
pub mod spawn;

pub use binaries::{binary, client_command};
pub use scenario::{tiny, TINY};
