//! Network namespaces for the across-hosts test (`tests/netns.rs`): a small LAN of
//! namespaces that stand for separate machines. Host 0 holds a bridge with address
//! `10.211.0.1/24`; host `i` (from 1) is joined to it by a veth pair and has `10.211.0.(1 + i)`.
//! The addresses are our own private test range, visible only inside the namespaces.
//! Everything is done with `ip` (iproute2) and needs root; [`Lan::unavailable`] says why a
//! test must skip. The namespaces are deleted when the [`Lan`] is dropped.

use std::net::Ipv4Addr;
use std::process::Command;

/// A LAN of network namespaces (deleted on drop).
pub struct Lan {
    names: Vec<String>,
}

/// Runs `ip args`, returning its stderr as the error when it fails.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `ip` (iproute2): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Lan {
    /// Why namespaces cannot be made here (no `ip`, not root, no `CAP_SYS_ADMIN`), found by
    /// trying: `None` when they can.
    pub fn unavailable() -> Option<String> {
        let probe = format!("fsl{}probe", std::process::id());
        match ip(&["netns", "add", &probe]) {
            Ok(()) => {
                let _ = ip(&["netns", "del", &probe]);
                None
            }
            Err(e) => Some(e),
        }
    }

    /// Makes `hosts` namespaces (at least 2), named `fsl<pid><tag>h<i>` (at most 15
    /// characters of `tag` kept short by the caller), host 0 the bridge's.
    ///
    /// # Errors
    /// The failing `ip` command and what it said; the namespaces made so far are deleted.
    pub fn create(tag: &str, hosts: usize) -> Result<Self, String> {
        let pid = std::process::id();
        let mut lan = Lan { names: Vec::new() };
        for i in 0..hosts.max(2) {
            let n = format!("fsl{pid}{tag}h{i}");
            ip(&["netns", "add", &n])?;
            lan.names.push(n);
            ip(&["-n", &lan.names[i], "link", "set", "lo", "up"])?;
        }
        let hub = lan.names[0].clone();
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &hub, "addr", "add", "10.211.0.1/24", "dev", "br0"])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        for i in 1..lan.names.len() {
            let port = format!("v{i}");
            let host = lan.names[i].clone();
            ip(&[
                "-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &host,
            ])?;
            ip(&["-n", &hub, "link", "set", &port, "master", "br0", "up"])?;
            let addr = format!("{}/24", lan.addr(i));
            ip(&["-n", &host, "addr", "add", &addr, "dev", "eth0"])?;
            ip(&["-n", &host, "link", "set", "eth0", "up"])?;
        }
        Ok(lan)
    }

    /// Host `i`'s namespace name.
    pub fn ns(&self, i: usize) -> &str {
        &self.names[i]
    }

    /// Host `i`'s address on the LAN: `10.211.0.(1 + i)`.
    pub fn addr(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 211, 0, 1 + i as u8)
    }

    /// `ip netns exec <host i> program`, to add arguments to and start.
    pub fn command(&self, i: usize, program: &std::path::Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", self.ns(i)]).arg(program);
        c
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = ip(&["netns", "del", n]);
        }
    }
}
