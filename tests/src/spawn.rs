//! The binaries as processes, for the tests that run a coordinator and its clients as a user
//! would (`reconnect`): a free loopback UDP port, the tiny scenario written to a file, a
//! `fedssl-coordinator serve` process and `fedssl-client` processes (stderr kept in a file,
//! for the test to read and to show when it fails), and a wait for a file's contents.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::binaries::binary;

/// A free UDP port on 127.0.0.1 (bound, read, released).
///
/// # Panics
/// If no UDP socket can be bound on loopback.
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("cannot bind a loopback UDP socket")
}

/// Writes [`crate::TINY`] to `dir/tiny.toml` and returns the path (the overrides go on the
/// command line, as `--set KEY=VALUE`).
///
/// # Panics
/// If the file cannot be written.
pub fn write_tiny(dir: &Path) -> PathBuf {
    let p = dir.join("tiny.toml");
    std::fs::write(&p, crate::TINY).expect("cannot write tiny.toml");
    p
}

/// A started process and the file its stderr goes to.
pub struct Proc {
    /// The process.
    pub child: Child,
    /// Its stderr, as a file.
    pub stderr: PathBuf,
}

impl Proc {
    /// Starts `cmd` with stderr written to `stderr` and stdout to the same path with the
    /// extension `stdout` ([`Proc::stdout_text`]).
    ///
    /// # Panics
    /// If the files cannot be created or the process not started.
    pub fn start(mut cmd: Command, stderr: PathBuf) -> Self {
        let f = std::fs::File::create(&stderr).expect("cannot create a stderr file");
        let out = std::fs::File::create(stderr.with_extension("stdout"))
            .expect("cannot create a stdout file");
        let child = cmd
            .stdout(out)
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        Self { child, stderr }
    }

    /// What the process wrote to stdout so far.
    pub fn stdout_text(&self) -> String {
        std::fs::read_to_string(self.stderr.with_extension("stdout")).unwrap_or_default()
    }

    /// What the process wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits up to `limit` for the process to exit: its exit status, or `None` (it is then
    /// killed) if it did not.
    pub fn wait_for_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `fedssl-coordinator serve scenario --out out --listen 127.0.0.1:port --quiet` with
/// `--set` for each of `sets`, and `--resume` when `resume`; stderr to `out`'s sibling
/// `<out>.serve[-resume].log`.
pub fn serve(scenario: &Path, out: &Path, port: u16, sets: &[&str], resume: bool) -> Proc {
    let cmd = Command::new(binary("fedssl-coordinator"));
    serve_as(
        cmd,
        scenario,
        out,
        &format!("127.0.0.1:{port}"),
        &[],
        sets,
        resume,
    )
}

/// As [`serve`], with `cmd` the coordinator binary's command (bare, or wrapped, as
/// `ip netns exec NS fedssl-coordinator`), `--listen listen` and `extra` arguments of
/// `serve` (such as `--kit DIR`).
pub fn serve_as(
    mut cmd: Command,
    scenario: &Path,
    out: &Path,
    listen: &str,
    extra: &[&str],
    sets: &[&str],
    resume: bool,
) -> Proc {
    cmd.arg("serve")
        .arg(scenario)
        .arg("--out")
        .arg(out)
        .args(["--listen", listen, "--quiet"])
        .args(extra);
    for s in sets {
        cmd.args(["--set", s]);
    }
    if resume {
        cmd.arg("--resume");
    }
    let log = out.with_extension(if resume {
        "serve-resume.log"
    } else {
        "serve.log"
    });
    Proc::start(cmd, log)
}

/// `fedssl-client --coordinator 127.0.0.1:port --ca cert --shard k/n --quiet` with `extra`
/// arguments; stderr to `logs/client-k.log` (created).
pub fn client(port: u16, cert: &Path, k: u32, n: u32, extra: &[&str], logs: &Path) -> Proc {
    let mut cmd = Command::new(binary("fedssl-client"));
    cmd.args(["--coordinator", &format!("127.0.0.1:{port}"), "--ca"])
        .arg(cert)
        .args(["--shard", &format!("{k}/{n}"), "--quiet"])
        .args(["--name", &format!("proc-{k}")])
        .args(extra);
    std::fs::create_dir_all(logs).expect("cannot create the logs folder");
    Proc::start(cmd, logs.join(format!("client-{k}.log")))
}

/// Waits up to `limit` for the file at `path` to hold text for which `what` is true.
pub fn wait_for_file(path: &Path, what: impl Fn(&str) -> bool, limit: Duration) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if let Ok(s) = std::fs::read_to_string(path) {
            if what(&s) {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// `out/cert.pem`, the certificate a `serve` into `out` writes, once it is there (60 s at
/// most).
///
/// # Panics
/// If no certificate is written within 60 s.
pub fn wait_for_cert(out: &Path) -> PathBuf {
    let cert = out.join("cert.pem");
    assert!(
        wait_for_file(
            &cert,
            |s| s.contains("END CERTIFICATE"),
            Duration::from_secs(60)
        ),
        "serve wrote no {} within 60 s",
        cert.display()
    );
    cert
}
