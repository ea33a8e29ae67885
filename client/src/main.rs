//! `fedssl-client`: join a coordinator and train on this site's unlabelled images.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use fedssl_client::kit::read_kit;
use fedssl_client::{open, run_reconnecting, ClientOptions, DataSource};

#[derive(Parser)]
#[command(
    name = "fedssl-client",
    version,
    about = "Federated self-supervised pretraining: a client site"
)]
struct Cli {
    /// This site's startup kit (from `fedssl-coordinator provision`): its certificate and
    /// key, the CA, and client.toml naming the coordinator and the site. Flags given beside
    /// it win over client.toml.
    #[arg(long)]
    kit: Option<PathBuf>,
    /// Coordinator address, HOST:PORT (UDP); default with --kit: its client.toml's.
    #[arg(long, required_unless_present = "kit")]
    coordinator: Option<String>,
    /// The coordinator's certificate (its cert.pem), or the CA that signed it; default with
    /// --kit: the kit's ca.pem.
    #[arg(long, required_unless_present = "kit")]
    ca: Option<PathBuf>,
    /// Name the coordinator's certificate must be valid for (default: the kit's server_name,
    /// even beside --coordinator; without a kit, HOST of --coordinator).
    #[arg(long)]
    server_name: Option<String>,
    /// Dataset folder (CIFAR-10, CIFAR-100, STL-10: the folder holding cifar-10-batches-bin,
    /// cifar-100-binary or stl10_binary; a folder of images: that folder, read recursively).
    /// Not needed for the synthetic dataset.
    #[arg(long)]
    data: Option<PathBuf>,
    /// What --data holds: `folder` (this site's own PNG/JPEG/WebP/BMP images, whatever the
    /// run's dataset). Default: the run's data.dataset.
    #[arg(long, value_parser = ["folder"])]
    dataset: Option<String>,
    /// Leave out (and count) image files that cannot be decoded instead of failing; implies
    /// --dataset folder.
    #[arg(long)]
    skip_bad_images: bool,
    /// Keep shard K (0-based) of N of the scenario's partition, e.g. --shard 0/3.
    /// Without it the whole dataset in --data is this site's data.
    #[arg(long, value_name = "K/N")]
    shard: Option<String>,
    /// Host virtual clients A to B-1 of a simulation of N clients in this process, e.g.
    /// `--virtual 100..200/1000` (or `K/N`, one): client K trains shard K of the run's
    /// dataset in --data and gets client id K, as `simulate` gives it, so that processes
    /// holding the slices of 0..N against one `serve` run the same federation as `simulate`.
    /// They share one QUIC connection, the dataset (read once) and the cores; their state
    /// between rounds is kept in files (--state-dir), not in memory.
    #[arg(long = "virtual", value_name = "A..B/N", conflicts_with_all = ["shard", "dataset", "skip_bad_images"])]
    virtual_clients: Option<fedssl_client::virtual_slice::VirtualSlice>,
    /// With --virtual: the folder for the virtual clients' state between rounds (default: a
    /// new folder in the system's temporary folder, removed when the run ends well).
    #[arg(long, value_name = "DIR", requires = "virtual_clients")]
    state_dir: Option<PathBuf>,
    /// With --virtual: how many virtual clients train at once (default: half the cores, at
    /// least 1), sharing the cores.
    #[arg(long, value_name = "N", requires = "virtual_clients", value_parser = clap::value_parser!(u64).range(1..))]
    concurrent_training: Option<u64>,
    /// Name shown in the coordinator's log (default: the kit's site, else fedssl-client; with
    /// --virtual, the prefix of `NAME-K`, default `virtual`).
    #[arg(long)]
    name: Option<String>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// No progress bars, and only warnings in the log.
    #[arg(long)]
    quiet: bool,
    /// How long to keep reconnecting when the coordinator cannot be reached or the connection
    /// drops (e.g. 30s, 10m, 1h; 0: never retry): exponential backoff from 0.5 s to 30 s
    /// with jitter, one log line per attempt, then exit non-zero. A refusal (revoked, unknown
    /// site, wrong CA) is never retried.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_duration)]
    retry_for: Duration,
    /// QUIC idle timeout of this client's side (e.g. 20s): a silent coordinator is given up
    /// after this long (or the coordinator's `federation.idle_timeout_seconds`, the shorter);
    /// keep-alives go out at a quarter of it while training runs.
    #[arg(long, value_name = "DURATION", default_value = "20s", value_parser = parse_duration)]
    idle_timeout: Duration,
}

/// A duration as humantime writes it (`30s`, `10m`, `1h 30m`); `0` is zero.
fn parse_duration(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("`{s}`: {e} (expected e.g. 30s, 10m, 1h)"))
}

fn parse_shard(s: &str) -> Result<(u32, u32)> {
    let (k, n) = s
        .split_once('/')
        .with_context(|| format!("--shard `{s}`: expected K/N, e.g. 0/3"))?;
    let k: u32 = k
        .trim()
        .parse()
        .with_context(|| format!("--shard `{s}`: K is not a number"))?;
    let n: u32 = n
        .trim()
        .parse()
        .with_context(|| format!("--shard `{s}`: N is not a number"))?;
    if n == 0 || k >= n {
        bail!("--shard `{s}`: need 0 <= K < N (shards are 0-based)");
    }
    Ok((k, n))
}

async fn real_main(cli: Cli) -> Result<()> {
    if cli.virtual_clients.is_some() && cli.kit.is_some() {
        bail!(
            "--virtual with --kit: a kit's certificate names one site, and a coordinator gives a site one client id; host virtual clients against a `serve` without --kit (its cert.pem as --ca)"
        );
    }
    let device = fedssl_shared::device::parse_device(&cli.device)?;
    let skipped = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let folder = cli.dataset.is_some() || cli.skip_bad_images;
    let data = match &cli.shard {
        _ if cli.virtual_clients.is_some() => DataSource::Whole {
            dir: cli.data.clone(),
        },
        Some(_) if folder => {
            bail!("--shard partitions the run's dataset; a site's own image folder (--dataset folder, --skip-bad-images) is not partitioned")
        }
        None if folder => DataSource::Folder {
            dir: cli
                .data
                .clone()
                .context("--dataset folder needs the folder: --data DIR")?,
            skip_bad_images: cli.skip_bad_images,
            skipped: skipped.clone(),
        },
        Some(s) => {
            let (k, n) = parse_shard(s)?;
            DataSource::Shard {
                dir: cli.data.clone(),
                k,
                n,
            }
        }
        None => DataSource::Whole {
            dir: cli.data.clone(),
        },
    };
    data.check_before_connecting()?;
    let kit = cli.kit.as_deref().map(read_kit).transpose()?;
    let coordinator = match (&cli.coordinator, &kit) {
        (Some(c), _) => c.clone(),
        (None, Some(k)) => k.config.coordinator.clone(),
        (None, None) => bail!("--coordinator HOST:PORT is needed (or --kit)"),
    };
    let addr = tokio::net::lookup_host(&coordinator)
        .await
        .with_context(|| {
            format!("--coordinator `{coordinator}`: cannot resolve (expected HOST:PORT)")
        })?
        .next()
        .with_context(|| format!("--coordinator `{coordinator}`: no address"))?;
    let server_name = match (&cli.server_name, &kit) {
        (Some(s), _) => s.clone(),
        (None, Some(k)) => k.config.server_name.clone(),
        _ => {
            let host = coordinator
                .rsplit_once(':')
                .map(|(h, _)| h)
                .unwrap_or(&coordinator);
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_string()
        }
    };
    let ca = match (&cli.ca, &kit) {
        (Some(c), _) => c.clone(),
        (None, Some(k)) => k.ca.clone(),
        (None, None) => bail!("--ca FILE is needed (or --kit)"),
    };
    let pem = std::fs::read(&ca)
        .with_context(|| format!("cannot read CA certificate {}", ca.display()))?;
    let creds = kit.as_ref().map(|k| &k.credentials);
    if cli.idle_timeout < Duration::from_secs(1) {
        bail!("--idle-timeout must be at least 1s");
    }
    let ccfg =
        fedssl_client::tls::client_config_as(&pem, creds, cli.idle_timeout).with_context(|| {
            match &kit {
                Some(_) => format!("in {} or the kit", ca.display()),
                None => format!("in {}", ca.display()),
            }
        })?;
    let name = cli
        .name
        .clone()
        .or_else(|| kit.as_ref().map(|k| k.config.site.clone()))
        .unwrap_or_else(|| {
            if cli.virtual_clients.is_some() {
                "virtual".into()
            } else {
                "fedssl-client".into()
            }
        });
    let mut opts = ClientOptions::new(name, data);
    opts.device = device;
    if !cli.quiet {
        opts.progress = Some(indicatif::MultiProgress::new());
    }
    if let Some(slice) = cli.virtual_clients {
        let coordinator = fedssl_client::virtual_slice::Coordinator {
            addr,
            server_name,
            tls: ccfg,
        };
        return run_virtual(&cli, slice, coordinator, opts).await;
    }
    let connect = || open(addr, &server_name, ccfg.clone());
    let report = run_reconnecting(connect, &opts, cli.retry_for).await?;
    let bad = skipped.load(std::sync::atomic::Ordering::SeqCst);
    let bad = if bad > 0 {
        format!(" ({bad} bad image file(s) skipped)")
    } else {
        String::new()
    };
    println!(
        "client {}: trained {} round(s){bad}; {}",
        report.client_id, report.rounds_trained, report.message
    );
    Ok(())
}

/// `--virtual`: runs the slice's virtual clients, prints one line for the slice, and fails
/// (naming the first failed clients and why) when any of them failed.
async fn run_virtual(
    cli: &Cli,
    slice: fedssl_client::virtual_slice::VirtualSlice,
    coordinator: fedssl_client::virtual_slice::Coordinator,
    mut opts: ClientOptions,
) -> Result<()> {
    // 1,000 progress bars would be noise: the slice prints one line at the end.
    opts.progress = None;
    let temporary = cli.state_dir.is_none();
    let state_dir = match &cli.state_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!(
            "fedssl-virtual-{}-{}-of-{}-{}",
            slice.first,
            slice.end,
            slice.of,
            std::process::id()
        )),
    };
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("--state-dir {}: cannot create it", state_dir.display()))?;
    let concurrent = cli
        .concurrent_training
        .map_or_else(fedssl_client::default_training_slots, |n| n as usize);
    let outcomes = fedssl_client::virtual_slice::run_virtual_slice(
        slice,
        coordinator,
        cli.data.clone(),
        &opts,
        state_dir.clone(),
        concurrent,
        cli.retry_for,
    )
    .await;
    // A temporary folder goes when nothing in it is worth keeping: the slice finished, or no
    // client wrote any state (it could not start, or was refused); a --state-dir is the user's.
    let discard = || {
        if temporary {
            let _ = std::fs::remove_dir_all(&state_dir);
        }
    };
    let nothing_kept = temporary && !holds_files(&state_dir);
    let outcomes = match outcomes {
        Ok(o) => o,
        Err(e) => {
            discard();
            return Err(e);
        }
    };
    let failed: Vec<_> = outcomes.iter().filter(|o| o.result.is_err()).collect();
    let rounds: usize = outcomes
        .iter()
        .filter_map(|o| o.result.as_ref().ok())
        .map(|r| r.rounds_trained)
        .sum();
    let message = outcomes
        .iter()
        .find_map(|o| o.result.as_ref().ok())
        .map(|r| format!("; {}", r.message))
        .unwrap_or_default();
    println!(
        "virtual clients {}..{} of {}: {} finished, {} failed; {rounds} local round(s) trained in all{message}",
        slice.first,
        slice.end,
        slice.of,
        outcomes.len() - failed.len(),
        failed.len()
    );
    if failed.is_empty() || nothing_kept {
        discard();
    }
    if failed.is_empty() {
        return Ok(());
    }
    let kept = if nothing_kept {
        String::new()
    } else {
        format!(" (state kept in {})", state_dir.display())
    };
    let first: Vec<String> = failed
        .iter()
        .take(3)
        .map(|o| match &o.result {
            Err(e) => format!("virtual client {}: {e:#}", o.k),
            Ok(_) => String::new(),
        })
        .collect();
    bail!(
        "{} of {} virtual clients failed{kept}; the first: {}",
        failed.len(),
        outcomes.len(),
        first.join("; ")
    )
}

/// Whether `dir` or a folder below it holds a file (false for a folder that cannot be read).
fn holds_files(dir: &std::path::Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            let path = e.path();
            if path.is_dir() {
                holds_files(&path)
            } else {
                true
            }
        })
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log = if cli.quiet { "warn" } else { "info" };
    fedssl_shared::cli::run_main(log, real_main(cli))
}
