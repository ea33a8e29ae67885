//! The federation's own costs (issue 15): what moving weights and hosting many virtual
//! clients cost, beside the physical limit measured in the same run. Writes JSON and prints
//! a table.
//!
//! ```text
//! cargo run --release -p fedssl-tests --example bench_federation -- --out bench-federation.json
//! ```
//!
//! (a) **Transfer**: a weights-sized payload (1 MB, 100 MB, 1 GB by default) sent by the
//! coordinator's QUIC configuration ([`fedssl_coordinator::server::tls::server_config`],
//! the clients' [`fedssl_client::tls::client_config`]: TLS 1.3, the transport settings of a
//! run) over loopback to 1 client and to 8 clients at once, each on its own stream, from one
//! shared buffer (no per-client copy); beside it the same bytes over loopback TCP (plain
//! sockets, no encryption): the machine's limit for moving bytes between two processes'
//! sockets. GB/s = 10⁹ bytes per second of payload, from the first byte sent to the last
//! byte read by every client; the best and the median of `--repeat` tries (default 3).
//!
//! (b) **Virtual clients**: `fedssl-coordinator serve` and one `fedssl-client --virtual
//! 0..N/N` process (tiny model: the end-to-end tests' two-stage ResNet 4 channels wide, the
//! same `--images` synthetic images, default 8,000, for every N, IID, 3 rounds,
//! participation 0.1, no evaluation) for N in `--clients` (10, 100, 1000): each process's
//! peak resident set (Linux `ru_maxrss` from `wait4`), and the coordinator's seconds per
//! round (`rounds.jsonl`); and `simulate` of the same scenario in one process (coordinator
//! and clients together), for N and for 10,000 clients at participation 0.01 (`--big`,
//! default 10000, 8 images a client; 0: skipped). The dataset stays the same across N
//! because the coordinator loads the training set (for the probes and the shard sizes): a
//! dataset growing with N would be counted as the clients' cost.
//!
//! (d) **Model size**: `serve` of a ResNet-8 widened (`model.resnet.widen`, `--widen
//! 2,6,18,57`: backbones of about 1 MB, 11 MB, 100 MB and 1 GB in fp32) with 8 clients, all
//! sampled, 2 rounds of FedAvg, no evaluation: the coordinator's peak resident set against
//! the backbone's bytes. The 8 clients are stand-ins in this process that speak the protocol
//! and answer each round with the global weights they received (one copy kept for all of
//! them, sent back without a copy), so nothing here trains and only the coordinator's memory
//! is measured.
//!
//! (c) **Round overhead** on `scenarios/cifar10-rotation.toml` (real CIFAR-10 from
//! `--cifar10 DIR`, default `../shared/data/cifar10` beside the repository; skipped when it is
//! not there; no evaluation): each round's wall seconds against its training critical path,
//! from `rounds.jsonl` (`seconds`, and the `train_seconds` each client reported): the
//! clients train in `simulation.concurrent_training` slots (0: half the cores), so the path is
//! max(slowest client, Σ training seconds / slots), and the overhead is the rest: sending
//! and receiving the weights, building the models, waiting, aggregating.
//!
//! The binaries are the workspace's, of this build's profile, built first if need be
//! ([`fedssl_tests::binary`]). Flags: `--sizes-mb 1,100,1000`, `--repeat 3`,
//! `--clients 10,100,1000`, `--images 8000`, `--big 10000`, `--widen 2,6,18,57`,
//! `--skip transfer|virtual|models|overhead`, `--cifar10 DIR`,
//! `--out FILE`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

/// Command-line settings.
struct Args {
    sizes_mb: Vec<usize>,
    repeat: usize,
    clients: Vec<usize>,
    images: usize,
    big: usize,
    widen: Vec<usize>,
    skip: Vec<String>,
    cifar10: PathBuf,
    out: Option<PathBuf>,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        sizes_mb: vec![1, 100, 1000],
        repeat: 3,
        clients: vec![10, 100, 1000],
        images: 8_000,
        big: 10_000,
        widen: vec![2, 6, 18, 57],
        skip: vec![],
        cifar10: repo().join("../shared/data/cifar10"),
        out: None,
    };
    let mut it = std::env::args().skip(1);
    let list = |v: Option<String>, flag: &str| -> Result<Vec<usize>> {
        v.with_context(|| format!("{flag} needs a value"))?
            .split(',')
            .map(|x| {
                x.trim()
                    .parse()
                    .with_context(|| format!("{flag}: `{x}` is not a number"))
            })
            .collect()
    };
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--sizes-mb" => a.sizes_mb = list(it.next(), "--sizes-mb")?,
            "--clients" => a.clients = list(it.next(), "--clients")?,
            "--repeat" => a.repeat = list(it.next(), "--repeat")?[0].max(1),
            "--big" => a.big = list(it.next(), "--big")?[0],
            "--images" => a.images = list(it.next(), "--images")?[0],
            "--widen" => a.widen = list(it.next(), "--widen")?,
            "--skip" => a.skip.push(it.next().context("--skip needs a value")?),
            "--cifar10" => a.cifar10 = it.next().context("--cifar10 needs a folder")?.into(),
            "--out" => a.out = Some(it.next().context("--out needs a file")?.into()),
            "--help" | "-h" => {
                println!(
                    "bench_federation: the federation's own costs (tests/examples/bench_federation.rs)\n\
                     flags (defaults): --skip transfer|virtual|models|overhead (repeatable), \
                     --clients 10,100,1000, --images 8000, --big 10000 (0: none), \
                     --widen 2,6,18,57, --sizes-mb 1,100,1000, --repeat 3, \
                     --cifar10 DIR (../shared/data/cifar10), --out FILE"
                );
                std::process::exit(0);
            }
            other => bail!("unknown flag {other} (see --help)"),
        }
    }
    Ok(a)
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let mut report = json!({ "bench": "bench_federation", "cores": std::thread::available_parallelism().map_or(1, |n| n.get()) });
    // (b) first: Linux starts a child's `ru_maxrss` at its parent's peak when it forks, so the
    // processes are started while this one is small (before (a)'s buffers of up to 1 GB).
    if !args.skip.iter().any(|s| s == "virtual") {
        report["virtual"] = Value::Array(virtual_clients(&args)?);
    }
    // (d) next, smallest model first, for the same reason: its stand-in clients keep a copy
    // of each model in this process.
    if !args.skip.iter().any(|s| s == "models") {
        report["models"] = Value::Array(model_sizes(&args)?);
    }
    if !args.skip.iter().any(|s| s == "overhead") {
        report["overhead"] = overhead(&args)?;
    }
    if !args.skip.iter().any(|s| s == "transfer") {
        report["transfer"] = Value::Array(transfer(&args)?);
    }
    print_tables(&report);
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", out.display()))?;
        println!("wrote {}", out.display());
    }
    Ok(())
}

// ---------------------------------------------------------------- (a) transfer

/// GB/s of `bytes` in `secs`.
fn gbps(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / secs / 1e9
}

/// The shortest and the median of `secs` (sorted in place; the upper median of an even count).
fn best_and_median(secs: &mut [f64]) -> (f64, f64) {
    secs.sort_by(f64::total_cmp);
    (secs[0], secs[secs.len() / 2])
}

fn transfer(args: &Args) -> Result<Vec<Value>> {
    let rt = tokio::runtime::Runtime::new()?;
    let mut rows = Vec::new();
    for &mb in &args.sizes_mb {
        let payload = bytes::Bytes::from(vec![7u8; mb * 1_000_000]);
        for clients in [1usize, 8] {
            let mut quic = Vec::new();
            let mut tcp = Vec::new();
            for _ in 0..args.repeat {
                quic.push(rt.block_on(quic_send(&payload, clients))?);
                tcp.push(tcp_send(&payload, clients)?);
            }
            let (quic, quic_median) = best_and_median(&mut quic);
            let (tcp, tcp_median) = best_and_median(&mut tcp);
            let total = payload.len() * clients;
            let row = json!({
                "payload_bytes": payload.len(),
                "clients": clients,
                "quic_seconds": quic,
                "quic_gbps": gbps(total, quic),
                "quic_gbps_median": gbps(total, quic_median),
                "tcp_seconds": tcp,
                "tcp_gbps": gbps(total, tcp),
                "tcp_gbps_median": gbps(total, tcp_median),
                "quic_vs_tcp": tcp / quic,
            });
            eprintln!("{row}");
            rows.push(row);
        }
    }
    Ok(rows)
}

/// Seconds for a QUIC server to send `payload` to `clients` clients at once (one stream
/// each, the same buffer), until every client has read all of it.
async fn quic_send(payload: &bytes::Bytes, clients: usize) -> Result<f64> {
    let idle = Duration::from_secs(30);
    let id = fedssl_coordinator::server::tls::self_signed(&[])?;
    let server = fedssl_shared::quic::endpoint(
        "127.0.0.1:0".parse()?,
        Some(fedssl_coordinator::server::tls::server_config(
            &id, idle, None, clients,
        )?),
    )?;
    let addr = server.local_addr()?;
    let ccfg = fedssl_client::tls::client_config(id.cert_pem.as_bytes(), idle)?;
    let client_ep = fedssl_client::client_endpoint(addr)?;
    let acceptor = {
        let server = server.clone();
        tokio::spawn(async move {
            let mut conns = Vec::new();
            for _ in 0..clients {
                let inc = server.accept().await.context("no connection")?;
                conns.push(inc.await?);
            }
            anyhow::Ok(conns)
        })
    };
    let mut readers = Vec::new();
    for _ in 0..clients {
        let conn = fedssl_client::connect_on(&client_ep, addr, "localhost", ccfg.clone()).await?;
        readers.push(conn);
    }
    let conns = acceptor.await??;
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for c in &conns {
        let c = c.clone();
        let p = payload.clone();
        tasks.push(tokio::spawn(async move {
            // a bidirectional stream, as a round's (a client takes no unidirectional one)
            let (mut s, r) = c.open_bi().await?;
            s.write_chunk(p).await?;
            s.finish()?;
            anyhow::Ok((s, r))
        }));
    }
    let mut reads = Vec::new();
    for r in &readers {
        let r = r.clone();
        reads.push(tokio::spawn(async move {
            let (_send, mut s) = r.accept_bi().await?;
            let mut n = 0usize;
            while let Some(chunk) = s.read_chunk(usize::MAX, true).await? {
                n += chunk.bytes.len();
            }
            anyhow::Ok(n)
        }));
    }
    for r in reads {
        let n = r.await??;
        if n != payload.len() {
            bail!("a client read {n} of {} bytes", payload.len());
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    for t in tasks {
        drop(t.await??);
    }
    for c in readers {
        c.close(0u32.into(), b"done");
    }
    server.close(0u32.into(), b"done");
    Ok(secs)
}

/// Seconds to send `payload` over loopback TCP to `clients` readers at once (a thread each
/// side), until every reader has read all of it.
fn tcp_send(payload: &bytes::Bytes, clients: usize) -> Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr: SocketAddr = listener.local_addr()?;
    let readers: Vec<_> = (0..clients)
        .map(|_| {
            let s = TcpStream::connect(addr)?;
            anyhow::Ok(s)
        })
        .collect::<Result<_>>()?;
    let writers: Vec<TcpStream> = (0..clients)
        .map(|_| Ok(listener.accept()?.0))
        .collect::<Result<_>>()?;
    let t0 = Instant::now();
    let w: Vec<_> = writers
        .into_iter()
        .map(|mut s| {
            let p = payload.clone();
            std::thread::spawn(move || s.write_all(&p))
        })
        .collect();
    let r: Vec<_> = readers
        .into_iter()
        .map(|mut s| {
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 20];
                let mut n = 0usize;
                loop {
                    match s.read(&mut buf) {
                        Ok(0) => return Ok(n),
                        Ok(k) => n += k,
                        Err(e) => return Err(e),
                    }
                }
            })
        })
        .collect();
    for t in w {
        t.join()
            .map_err(|_| anyhow::anyhow!("a TCP writer panicked"))??;
    }
    let mut got = Vec::new();
    for t in r {
        // the writer's socket closed when its thread ended: the reader sees the end
        got.push(
            t.join()
                .map_err(|_| anyhow::anyhow!("a TCP reader panicked"))??,
        );
    }
    let secs = t0.elapsed().as_secs_f64();
    if got.iter().any(|&n| n != payload.len()) {
        bail!("a TCP reader read {got:?} of {} bytes", payload.len());
    }
    Ok(secs)
}

// ---------------------------------------------------------------- (b) virtual clients

/// The scenario of part (b): the tests' tiny model, `images` synthetic images (IID), 3
/// rounds, no evaluation; `--set` overrides give the clients and the participation.
fn scenario_sets(clients: usize, participation: f64, images: usize) -> Vec<String> {
    vec![
        format!("data.train_images={images}"),
        "data.test_images=100".into(),
        "partition={kind = \"iid\"}".into(),
        "train.batch_size=8".into(),
        format!("federation.clients={clients}"),
        format!("federation.participation={participation}"),
        "federation.rounds=3".into(),
        "federation.start_grace_seconds=300".into(),
        "federation.join_timeout_seconds=600".into(),
        "federation.idle_timeout_seconds=60".into(),
        "eval.enabled=false".into(),
    ]
}

/// A finished process: its exit status, wall seconds and peak resident set (bytes).
struct Ended {
    ok: bool,
    seconds: f64,
    peak_rss: u64,
}

/// Waits for `child` with `wait4`, for its resource usage: peak RSS from `ru_maxrss`.
fn wait_rusage(child: std::process::Child, t0: Instant) -> Result<Ended> {
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: `rusage` is plain data, zero is a valid value; `pid` is our child.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers to locals; waits for our own child only.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    if r != pid {
        bail!("wait4({pid}) failed: {}", std::io::Error::last_os_error());
    }
    std::mem::forget(child);
    let st = std::process::ExitStatus::from_raw(status);
    Ok(Ended {
        ok: st.success(),
        seconds: t0.elapsed().as_secs_f64(),
        peak_rss: ru.ru_maxrss as u64 * 1024,
    })
}

fn coordinator(args: &[String], log: &Path) -> Result<std::process::Child> {
    let f = std::fs::File::create(log)?;
    Ok(Command::new(fedssl_tests::binary("fedssl-coordinator"))
        .args(args)
        .stdout(f.try_clone()?)
        .stderr(f)
        .spawn()?)
}

/// Seconds of each round of the run in `out`.
fn round_seconds(out: &Path) -> Result<Vec<f64>> {
    let text = std::fs::read_to_string(out.join("rounds.jsonl"))
        .with_context(|| format!("no rounds.jsonl in {}", out.display()))?;
    text.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l)?;
            v["seconds"].as_f64().context("a round without seconds")
        })
        .collect()
}

fn virtual_clients(args: &Args) -> Result<Vec<Value>> {
    // found (and built, if need be) before any clock starts
    fedssl_tests::binary("fedssl-coordinator");
    let dir = tempfile::tempdir()?;
    let scenario = fedssl_tests::spawn::write_tiny(dir.path());
    let mut rows = Vec::new();
    let mut runs: Vec<(usize, f64, usize)> = args
        .clients
        .iter()
        .map(|&n| (n, 0.1, args.images))
        .collect();
    if args.big > 0 {
        runs.push((args.big, 0.01, args.big * 8));
    }
    for (n, part, images) in runs {
        let sets: Vec<String> = scenario_sets(n, part, images)
            .into_iter()
            .flat_map(|s| ["--set".to_string(), s])
            .collect();
        // one process: simulate
        let out = dir.path().join(format!("sim-{n}"));
        let mut a = vec!["simulate".to_string(), scenario.display().to_string()];
        a.extend(["--out".into(), out.display().to_string(), "--quiet".into()]);
        a.extend(sets.iter().cloned());
        let t0 = Instant::now();
        let sim = wait_rusage(
            coordinator(&a, &dir.path().join(format!("sim-{n}.log")))?,
            t0,
        )?;
        if !sim.ok {
            bail!(
                "simulate with {n} clients failed: {}",
                std::fs::read_to_string(dir.path().join(format!("sim-{n}.log")))?
            );
        }
        let sim_rounds = round_seconds(&out)?;
        let mut row = json!({
            "clients": n,
            "participation": part,
            "train_images": images,
            "simulate_peak_rss_bytes": sim.peak_rss,
            "simulate_seconds": sim.seconds,
            "simulate_round_seconds": sim_rounds,
        });
        // two processes: serve + one --virtual slice of all
        if part >= 0.1 {
            let out = dir.path().join(format!("serve-{n}"));
            let port = fedssl_tests::spawn::free_udp_port();
            let mut a = vec!["serve".to_string(), scenario.display().to_string()];
            a.extend([
                "--out".into(),
                out.display().to_string(),
                "--listen".into(),
                format!("127.0.0.1:{port}"),
                "--quiet".into(),
            ]);
            a.extend(sets.iter().cloned());
            let t0 = Instant::now();
            let serve = coordinator(&a, &dir.path().join(format!("serve-{n}.log")))?;
            let cert = fedssl_tests::spawn::wait_for_cert(&out);
            let log = std::fs::File::create(dir.path().join(format!("slice-{n}.log")))?;
            let slice = Command::new(fedssl_tests::binary("fedssl-client"))
                .args(["--coordinator", &format!("127.0.0.1:{port}"), "--ca"])
                .arg(&cert)
                .args(["--virtual", &format!("0..{n}/{n}"), "--quiet"])
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()?;
            let s = wait_rusage(serve, t0)?;
            let c = wait_rusage(slice, t0)?;
            if !s.ok || !c.ok {
                bail!(
                    "serve + --virtual with {n} clients failed: {}",
                    std::fs::read_to_string(dir.path().join(format!("serve-{n}.log")))?
                );
            }
            row["serve_peak_rss_bytes"] = json!(s.peak_rss);
            row["virtual_process_peak_rss_bytes"] = json!(c.peak_rss);
            row["serve_round_seconds"] = json!(round_seconds(&out)?);
        }
        eprintln!("{row}");
        rows.push(row);
    }
    Ok(rows)
}

// ---------------------------------------------------------------- (d) model size

/// Part (d): for each `--widen`, `serve` with 8 stand-in clients; the coordinator's peak RSS
/// against the backbone's bytes.
fn model_sizes(args: &Args) -> Result<Vec<Value>> {
    fedssl_tests::binary("fedssl-coordinator");
    let dir = tempfile::tempdir()?;
    let scenario = dir.path().join("models.toml");
    std::fs::write(
        &scenario,
        "name = \"models\"\nseed = 1\n[data]\ndataset = \"synthetic\"\ntrain_images = 80\n\
         test_images = 20\n[partition]\nkind = \"iid\"\n[federation]\nclients = 8\n\
         min_clients = 8\nrounds = 2\nround_deadline_seconds = 3600\n\
         join_timeout_seconds = 600\n[eval]\nenabled = false\n",
    )?;
    let rt = tokio::runtime::Runtime::new()?;
    let mut rows = Vec::new();
    for &widen in &args.widen {
        let out = dir.path().join(format!("w{widen}"));
        let port = fedssl_tests::spawn::free_udp_port();
        let a: Vec<String> = vec![
            "serve".into(),
            scenario.display().to_string(),
            "--out".into(),
            out.display().to_string(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--quiet".into(),
            "--set".into(),
            format!("model.resnet.widen={widen}"),
        ];
        let log = dir.path().join(format!("w{widen}.log"));
        let t0 = Instant::now();
        let serve = coordinator(&a, &log)?;
        let cert = fedssl_tests::spawn::wait_for_cert(&out);
        let pem = std::fs::read(&cert)?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let clients = rt.block_on(stand_in_clients(addr, &pem, 8));
        let s = wait_rusage(serve, t0)?;
        if let Err(e) = clients {
            bail!(
                "(d) widen {widen}: a stand-in client failed: {e:#}\n{}",
                std::fs::read_to_string(&log)?
            );
        }
        if !s.ok {
            bail!(
                "(d) widen {widen}: serve failed: {}",
                std::fs::read_to_string(&log)?
            );
        }
        let summary: Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("summary.json"))?)?;
        let model_bytes = summary["backbone_values"].as_u64().unwrap_or(0) * 4;
        let row = json!({
            "widen": widen,
            "clients": 8,
            "backbone_bytes": model_bytes,
            "serve_peak_rss_bytes": s.peak_rss,
            "rss_vs_model": s.peak_rss as f64 / model_bytes as f64,
            "serve_round_seconds": round_seconds(&out)?,
        });
        eprintln!("{row}");
        rows.push(row);
    }
    Ok(rows)
}

/// The weights payload of the current round that every stand-in client sends back: its
/// 12-byte header (length, CRC-32) and bytes, received in full by client 0 only.
type Echo = tokio::sync::watch::Sender<Option<([u8; 12], bytes::Bytes)>>;

/// `n` clients of the coordinator at `addr` (certificate `pem`) that answer every round with
/// the global weights they received, until the run finishes.
async fn stand_in_clients(addr: SocketAddr, pem: &[u8], n: u32) -> Result<()> {
    let cfg = fedssl_client::tls::client_config(pem, Duration::from_secs(60))?;
    let echo: std::sync::Arc<Echo> = std::sync::Arc::new(tokio::sync::watch::channel(None).0);
    let mut tasks = Vec::new();
    for k in 0..n {
        let (cfg, echo) = (cfg.clone(), echo.clone());
        tasks.push(tokio::spawn(
            async move { stand_in(addr, cfg, k, echo).await },
        ));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// Stand-in client `k`: hello, welcome, then each round: read the round message and the
/// weights (client 0 keeps them, the others read and drop them), reply with an update of
/// 10 samples and the kept weights.
async fn stand_in(
    addr: SocketAddr,
    cfg: quinn::ClientConfig,
    k: u32,
    echo: std::sync::Arc<Echo>,
) -> Result<()> {
    use fedssl_shared::protocol::{
        read_message, write_message, ClientMessage, ServerMessage, PROTOCOL_VERSION,
    };
    let conn = fedssl_client::connect(addr, "localhost", cfg).await?;
    let (mut ctrl, mut ctrl_recv) = conn.open_bi().await?;
    let hello = ClientMessage::Hello {
        protocol_version: PROTOCOL_VERSION,
        client_name: format!("stand-in-{k}"),
        shard: None,
    };
    write_message(&mut ctrl, &hello).await?;
    match read_message::<_, ServerMessage>(&mut ctrl_recv).await? {
        ServerMessage::Welcome { .. } => {}
        other => bail!("stand-in {k}: expected a welcome, got {other:?}"),
    }
    let finished = tokio::spawn(async move {
        loop {
            match read_message::<_, ServerMessage>(&mut ctrl_recv).await {
                Ok(ServerMessage::Finished { .. }) | Err(_) => break,
                Ok(_) => {}
            }
        }
    });
    tokio::pin!(finished);
    loop {
        let (mut send, mut recv) = tokio::select! {
            _ = &mut finished => break,
            s = conn.accept_bi() => s?,
        };
        let round = match read_message::<_, ServerMessage>(&mut recv).await? {
            ServerMessage::Round { round, .. } => round,
            other => bail!("stand-in {k}: expected a round, got {other:?}"),
        };
        let mut header = [0u8; 12];
        recv.read_exact(&mut header).await?;
        let len = u64::from_le_bytes(header[..8].try_into()?) as usize;
        if k == 0 {
            let mut body = vec![0u8; len];
            recv.read_exact(&mut body).await?;
            echo.send_replace(Some((header, bytes::Bytes::from(body))));
        } else {
            let mut left = len;
            while left > 0 {
                let c = recv.read_chunk(left, true).await?.context("stream ended")?;
                left -= c.bytes.len();
            }
        }
        let mut rx = echo.subscribe();
        let body = rx
            .wait_for(|v| v.as_ref().is_some_and(|(h, _)| *h == header))
            .await?
            .as_ref()
            .map(|(_, b)| b.clone())
            .context("no weights")?;
        let update = ClientMessage::Update {
            round,
            num_samples: 10,
            loss: 1.0,
            accuracy: None,
            train_seconds: 0.0,
        };
        write_message(&mut send, &update).await?;
        send.write_all(&header).await?;
        send.write_chunk(body).await?;
        send.finish()?;
    }
    conn.close(0u32.into(), b"done");
    Ok(())
}

// ---------------------------------------------------------------- (c) round overhead

/// The repository's root (this crate is `tests/` in it).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn overhead(args: &Args) -> Result<Value> {
    if !args.cifar10.join("cifar-10-batches-bin").is_dir()
        && !args.cifar10.join("data_batch_1.bin").is_file()
    {
        eprintln!("(c) skipped: no CIFAR-10 at {}", args.cifar10.display());
        return Ok(json!({ "skipped": format!("no CIFAR-10 at {}", args.cifar10.display()) }));
    }
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("c10");
    let scenario = repo().join("scenarios/cifar10-rotation.toml");
    let a: Vec<String> = vec![
        "simulate".into(),
        scenario.display().to_string(),
        "--data-dir".into(),
        args.cifar10.display().to_string(),
        "--out".into(),
        out.display().to_string(),
        "--quiet".into(),
        "--set".into(),
        "eval.enabled=false".into(),
    ];
    fedssl_tests::binary("fedssl-coordinator");
    let t0 = Instant::now();
    let log = dir.path().join("c10.log");
    let run = wait_rusage(coordinator(&a, &log)?, t0)?;
    if !run.ok {
        bail!(
            "the CIFAR-10 run failed: {}",
            std::fs::read_to_string(&log)?
        );
    }
    let text = std::fs::read_to_string(out.join("scenario.json"))?;
    let sc: Value = serde_json::from_str(&text)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let slots = match sc["simulation"]["concurrent_training"].as_u64() {
        Some(0) | None => (cores / 2).max(1),
        Some(n) => n as usize,
    };
    let mut rounds = Vec::new();
    for l in std::fs::read_to_string(out.join("rounds.jsonl"))?.lines() {
        let v: Value = serde_json::from_str(l)?;
        let secs = v["seconds"].as_f64().context("no seconds")?;
        let t: Vec<f64> = v["train_seconds"]
            .as_object()
            .context("no train_seconds")?
            .values()
            .filter_map(Value::as_f64)
            .collect();
        let slowest = t.iter().copied().fold(0.0, f64::max);
        let path = slowest.max(t.iter().sum::<f64>() / slots as f64);
        rounds.push(json!({
            "round": v["round"],
            "seconds": secs,
            "train_seconds": t,
            "critical_path_seconds": path,
            "overhead_seconds": secs - path,
            "overhead_fraction": (secs - path) / secs,
        }));
    }
    let row = json!({ "scenario": "cifar10-rotation", "slots": slots, "rounds": rounds, "run_seconds": run.seconds });
    eprintln!("{row}");
    Ok(row)
}

// ---------------------------------------------------------------- report

fn mib(v: &Value) -> String {
    v.as_f64()
        .map_or("-".into(), |b| format!("{:.0}", b / (1u64 << 20) as f64))
}

fn print_tables(r: &Value) {
    if let Some(rows) = r["overhead"]["rounds"].as_array() {
        println!(
            "\n| round (cifar10-rotation, {} slot(s)) | seconds | training critical path s | overhead s | overhead % |",
            r["overhead"]["slots"]
        );
        println!("|---:|---:|---:|---:|---:|");
        for x in rows {
            println!(
                "| {} | {:.1} | {:.1} | {:.2} | {:.2} |",
                x["round"],
                x["seconds"].as_f64().unwrap_or(0.0),
                x["critical_path_seconds"].as_f64().unwrap_or(0.0),
                x["overhead_seconds"].as_f64().unwrap_or(0.0),
                100.0 * x["overhead_fraction"].as_f64().unwrap_or(0.0)
            );
        }
    }
    if let Some(rows) = r["transfer"].as_array() {
        println!(
            "\n| payload | clients | QUIC GB/s best (median) | TCP GB/s best (median; loopback, no TLS) | QUIC / TCP (best) |"
        );
        println!("|---:|---:|---:|---:|---:|");
        let f = |x: &Value, k: &str| x[k].as_f64().unwrap_or(0.0);
        for x in rows {
            println!(
                "| {} MB | {} | {:.2} ({:.2}) | {:.2} ({:.2}) | {:.2} |",
                f(x, "payload_bytes") / 1e6,
                x["clients"],
                f(x, "quic_gbps"),
                f(x, "quic_gbps_median"),
                f(x, "tcp_gbps"),
                f(x, "tcp_gbps_median"),
                f(x, "quic_vs_tcp")
            );
        }
    }
    if let Some(rows) = r["models"].as_array() {
        println!("\n| widen | backbone MB | clients | serve peak RSS MiB | RSS ÷ backbone | serve s/round |");
        println!("|---:|---:|---:|---:|---:|---|");
        for x in rows {
            println!(
                "| {} | {:.1} | {} | {} | {:.2} | {} |",
                x["widen"],
                x["backbone_bytes"].as_f64().unwrap_or(0.0) / 1e6,
                x["clients"],
                mib(&x["serve_peak_rss_bytes"]),
                x["rss_vs_model"].as_f64().unwrap_or(0.0),
                x["serve_round_seconds"].as_array().map_or("-".into(), |a| a
                    .iter()
                    .map(|v| format!("{:.2}", v.as_f64().unwrap_or(0.0)))
                    .collect::<Vec<_>>()
                    .join(" / ")),
            );
        }
    }
    if let Some(rows) = r["virtual"].as_array() {
        println!("\n| clients | participation | images | simulate peak RSS MiB | simulate s/round | serve peak RSS MiB | --virtual process peak RSS MiB | serve s/round |");
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
        let per_round = |v: &Value| {
            v.as_array().map_or("-".into(), |a| {
                let s: Vec<String> = a
                    .iter()
                    .map(|x| format!("{:.2}", x.as_f64().unwrap_or(0.0)))
                    .collect();
                s.join(" / ")
            })
        };
        for x in rows {
            println!(
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                x["clients"],
                x["participation"],
                x["train_images"],
                mib(&x["simulate_peak_rss_bytes"]),
                per_round(&x["simulate_round_seconds"]),
                mib(&x["serve_peak_rss_bytes"]),
                mib(&x["virtual_process_peak_rss_bytes"]),
                per_round(&x["serve_round_seconds"]),
            );
        }
        let serve: Vec<(u64, f64)> = rows
            .iter()
            .filter_map(|x| Some((x["clients"].as_u64()?, x["serve_peak_rss_bytes"].as_f64()?)))
            .collect();
        if let (Some(lo), Some(hi)) = (serve.first(), serve.last()) {
            if hi.0 > lo.0 {
                println!(
                    "\nserve peak RSS at {} clients / at {} clients: {:.2}×",
                    hi.0,
                    lo.0,
                    hi.1 / lo.1
                );
            }
        }
    }
}
