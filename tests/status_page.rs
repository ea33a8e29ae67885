//! The live run page during a real run: `fedssl-coordinator simulate --status-addr
//! 127.0.0.1:0` (the binary, as a user runs it) of the tiny scenario with three clients and
//! three rounds, where client 2 stalls in round 3 so that the round is held until its 30 s
//! deadline: a window in which the page's state is known (round 3 of 3, sim-0 and sim-1
//! aggregated, sim-2 training) whatever the machine's speed. One test reads `/status.json`
//! all through the run; the other renders `/` in headless Chromium (Debian's `chromium`;
//! skipped, saying why, where it is not installed).

// A test file: a failed unwrap is a failed test, in helpers as in `#[test]` functions.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a poll may wait for the run to reach a state before the test gives up (a bound
/// against a hang, not a timing assertion: the run takes well under a minute).
const PATIENCE: Duration = Duration::from_secs(600);

/// A `simulate` run with its live page, killed when dropped.
struct PageRun {
    child: Child,
    addr: String,
    dir: tempfile::TempDir,
}

impl PageRun {
    /// Starts the tiny scenario (3 clients, 3 rounds, client 2 stalls in round 3) with the
    /// page on a free loopback port; returns once the page's address is announced.
    fn start() -> Self {
        Self::start_with(true)
    }

    /// [`PageRun::start`], with client 2's stall in round 3 or without it.
    fn start_with(stall: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let toml = dir.path().join("tiny.toml");
        std::fs::write(&toml, fedssl_tests::TINY).unwrap();
        let mut child = Command::new(fedssl_tests::binary("fedssl-coordinator"))
            .arg("simulate")
            .arg(&toml)
            .arg("--out")
            .arg(dir.path().join("run"))
            .args([
                "--quiet",
                "--status-addr",
                "127.0.0.1:0",
                "--status-linger",
                "600",
            ])
            .args(["--set", "federation.rounds=3"])
            .args(["--set", "federation.round_deadline_seconds=30"])
            .args(if stall {
                vec![
                    "--set",
                    "simulation.faults=[{client = 2, round = 3, kind = \"stall\"}]",
                ]
            } else {
                vec![]
            })
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let addr = announced_addr(child.stderr.take().unwrap());
        Self { child, addr, dir }
    }

    /// `GET path`: the status code, the head and the body.
    fn get(&self, path: &str) -> (u16, String, String) {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        )
        .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let code = head.split(' ').nth(1).unwrap().parse().unwrap();
        (code, head.to_string(), body.to_string())
    }

    /// `/status.json`, parsed.
    fn status(&self) -> Value {
        let (code, _, body) = self.get("/status.json");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Polls `/status.json` (every 100 ms) until `done` holds, handing every snapshot to
    /// `each`; returns the snapshot where `done` held.
    fn poll(
        &mut self,
        what: &str,
        mut each: impl FnMut(&Value),
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let t0 = Instant::now();
        loop {
            let s = self.status();
            each(&s);
            if done(&s) {
                return s;
            }
            assert_ne!(s["phase"], "failed", "the run failed: {}", s["error"]);
            if let Some(code) = self.child.try_wait().unwrap() {
                panic!("the coordinator exited ({code}) before {what}");
            }
            assert!(t0.elapsed() < PATIENCE, "no {what} after {PATIENCE:?}: {s}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for PageRun {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `IP:PORT` of the coordinator's `live run page: http://IP:PORT/` line on `stderr`
/// (the rest of stderr is drained, and echoed to the test's output, on a thread).
fn announced_addr(stderr: std::process::ChildStderr) -> String {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("coordinator: {line}");
            if let Some(rest) = line.strip_prefix("live run page: http://") {
                let _ = tx.send(rest.trim_end_matches('/').to_string());
            }
        }
    });
    rx.recv_timeout(PATIENCE)
        .expect("the coordinator never announced its live run page")
}

/// Whether `s` shows round 3 held by the stalled client: sim-0 and sim-1 aggregated, sim-2
/// training.
fn in_the_stall(s: &Value) -> bool {
    let states: Vec<(&str, &str)> = s["progress"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), p["state"].as_str().unwrap()))
        .collect();
    s["round"] == 3
        && s["phase"] == "round"
        && states
            == [
                ("sim-0", "aggregated"),
                ("sim-1", "aggregated"),
                ("sim-2", "training"),
            ]
}

/// The invariants of every snapshot: the run's name and length, a round counter that never
/// goes back, and a history of exactly the rounds completed.
fn check_snapshot(s: &Value, last_round: &mut u64) {
    assert_eq!(s["run"], "tiny");
    assert_eq!(s["rounds"], 3);
    let round = s["round"].as_u64().unwrap();
    assert!(
        round >= *last_round && round <= 3,
        "round {round} after {last_round}"
    );
    *last_round = round;
    let history = s["history"].as_array().unwrap();
    let rounds: Vec<u64> = history
        .iter()
        .map(|r| r["round"].as_u64().unwrap())
        .collect();
    assert_eq!(rounds, (1..=rounds.len() as u64).collect::<Vec<_>>());
    assert!(
        rounds.len() as u64 == round || rounds.len() as u64 + 1 == round,
        "{} rounds in the history at round {round}",
        rounds.len()
    );
    if s["finished"] == true {
        assert_eq!((round, rounds.len()), (3, 3));
    }
}

/// A page first opened after the run finished still lists every site that took part (as
/// `left`), names the last round's clients by site, and its clock stopped with the run.
#[test]
fn a_page_opened_after_the_run_lists_its_sites_and_a_stopped_clock() {
    let run = PageRun::start_with(false);
    let summary = run.dir.path().join("run").join("summary.json");
    let t0 = Instant::now();
    while !summary.is_file() {
        assert!(t0.elapsed() < PATIENCE, "the run never finished");
        std::thread::sleep(Duration::from_millis(200));
    }
    let end = run.status();
    assert_eq!(end["phase"], "finished");
    let sites: Vec<(&str, &str)> = end["sites"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| (x["name"].as_str().unwrap(), x["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        sites,
        [("sim-0", "left"), ("sim-1", "left"), ("sim-2", "left")],
        "{end}"
    );
    let names: Vec<&str> = end["progress"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["sim-0", "sim-1", "sim-2"]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(run.status()["elapsed_seconds"], end["elapsed_seconds"]);
}

#[test]
fn status_json_follows_a_simulated_run_round_by_round() {
    let mut run = PageRun::start();
    let mut last_round = 0;
    let mut rounds_seen = Vec::new();
    let mut observe = |s: &Value| {
        check_snapshot(s, &mut last_round);
        if rounds_seen.last() != Some(&last_round) {
            rounds_seen.push(last_round);
        }
    };
    let stall = run.poll("round 3's stall", &mut observe, in_the_stall);
    let sites = stall["sites"].as_array().unwrap();
    let names: Vec<&str> = sites.iter().map(|x| x["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["sim-0", "sim-1", "sim-2"]);
    for x in sites {
        assert!(
            x["address"].as_str().unwrap().starts_with("127.0.0.1:"),
            "{x}"
        );
        assert_eq!(x["connected"], true);
        assert!(x["last_seen_seconds"].as_f64().unwrap() >= 0.0);
    }
    assert_eq!(sites[2]["state"], "training");
    assert_eq!(stall["history"].as_array().unwrap().len(), 2);

    let end = run.poll("the end of the run", &mut observe, |s| {
        s["finished"] == true
    });
    assert_eq!(rounds_seen.last(), Some(&3));
    assert_eq!(end["phase"], "finished");
    assert!(end["error"].is_null());
    let history = end["history"].as_array().unwrap();
    for r in history {
        assert!(r["bytes_sent"].as_u64().unwrap() > 0, "{r}");
        assert!(r["bytes_received"].as_u64().unwrap() > 0, "{r}");
        assert!(r["mean_loss"].as_f64().unwrap().is_finite());
        assert!(r["seconds"].as_f64().unwrap() > 0.0);
    }
    assert_eq!(history[0]["clients"], serde_json::json!([0, 1, 2]));
    assert_eq!(history[2]["clients"], serde_json::json!([0, 1]));
    assert_eq!(history[2]["dropped"], serde_json::json!([2]));
    assert_eq!(
        history[2]["dropped_reasons"]["2"],
        "missed the 30 s round deadline"
    );
    let top1 = end["eval"]["linear"]["top1"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&top1), "{top1}");
    assert_eq!(end["scenario"]["name"], "tiny");
    assert_eq!(end["scenario"]["federation"]["rounds"], 3);
    let text = end.to_string();
    assert!(
        !text.contains("PRIVATE KEY") && !text.contains("BEGIN"),
        "a secret on the page"
    );

    let (code, head, page) = run.get("/");
    assert_eq!(code, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/html"),
        "{head}"
    );
    assert!(page.contains("status.json") && page.contains("<script>"));
    for external in [
        "src=\"http",
        "href=\"http",
        "src='http",
        "href='http",
        "@import",
        "url(",
    ] {
        assert!(
            !page.contains(external),
            "the page loads something from elsewhere: {external}"
        );
    }
    assert_eq!(run.get("/nothing-here").0, 404);
    assert_eq!(run.get("/status.json/x").0, 404);
}

/// Debian's `chromium`, or why there is none.
fn chromium() -> Result<PathBuf, String> {
    let path = PathBuf::from("/usr/bin/chromium");
    match Command::new(&path).arg("--version").output() {
        Ok(o) if o.status.success() => Ok(path),
        Ok(o) => Err(format!(
            "`{} --version` failed: {}",
            path.display(),
            o.status
        )),
        Err(e) => Err(format!(
            "no {} ({e}); `apt-get install chromium` (.ci/run does)",
            path.display()
        )),
    }
}

/// Runs headless Chromium on `url` with `args` (a fresh profile in `profile`); its stdout.
fn headless(chromium: &Path, profile: &Path, args: &[&str], url: &str) -> String {
    let mut child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--virtual-time-budget=4000")
        .args(args)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(child.wait().unwrap().success(), "chromium {args:?} failed");
    out
}

/// The pixels of the PNG at `path` as RGB, and its size.
fn rgb_pixels(path: &Path) -> (Vec<[u8; 3]>, u32, u32) {
    let mut decoder = png::Decoder::new(std::fs::File::open(path).unwrap());
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    assert!(channels >= 3, "a grey screenshot: {:?}", info.color_type);
    let pixels = buf[..info.buffer_size()]
        .chunks(channels)
        .map(|p| [p[0], p[1], p[2]])
        .collect();
    (pixels, info.width, info.height)
}

#[test]
fn the_page_renders_in_headless_chromium_during_a_run() {
    let chromium = match chromium() {
        Ok(c) => c,
        Err(why) => {
            eprintln!("skipped: headless Chromium is needed to render the page: {why}");
            return;
        }
    };
    let mut run = PageRun::start();
    run.poll("round 3's stall", |_| {}, in_the_stall);
    let profile = tempfile::tempdir().unwrap();
    let url = format!("http://{}/", run.addr);
    let dom = headless(&chromium, profile.path(), &["--dump-dom"], &url);
    let shot = profile.path().join("page.png");
    let shot_arg = format!("--screenshot={}", shot.display());
    headless(
        &chromium,
        profile.path(),
        &[&shot_arg, "--window-size=1200,900"],
        &url,
    );
    assert!(
        in_the_stall(&run.status()),
        "the run left round 3's stall while Chromium rendered the page"
    );

    assert!(
        dom.contains("Round 3 / 3"),
        "no round counter in the rendered page: {dom}"
    );
    for name in [
        "sim-0",
        "sim-1",
        "sim-2",
        "training",
        "aggregated",
        "127.0.0.1:",
    ] {
        assert!(dom.contains(name), "`{name}` is not on the rendered page");
    }
    assert!(
        dom.contains("<circle"),
        "the loss curve of rounds 1-2 was not drawn"
    );

    let (pixels, w, h) = rgb_pixels(&shot);
    assert_eq!((w, h), (1200, 900));
    let not_white = pixels.iter().filter(|p| p.iter().any(|c| *c < 240)).count();
    assert!(
        not_white > pixels.len() / 10,
        "a blank screenshot: {not_white} non-white pixels"
    );
    // the header bar's colour (#1d2b4f), drawn by the page's own style sheet
    let header = pixels.iter().filter(|p| **p == [0x1d, 0x2b, 0x4f]).count();
    assert!(
        header > 1200 * 20,
        "no header bar in the screenshot ({header} pixels)"
    );
}
