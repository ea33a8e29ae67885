//! `fedssl-coordinator`: run a federated self-supervised pretraining job.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use fedssl_coordinator::eval::suite::eval_line;
use fedssl_coordinator::experiments::compare::run_compare;
use fedssl_coordinator::experiments::pretext_compare::{compare_pretexts, markdown};
use fedssl_coordinator::experiments::sweep::{sweep, SweepSpec};
use fedssl_coordinator::run::checkpoint_eval::{eval_checkpoint, run_scenario_of};
use fedssl_coordinator::run::features_export::export_features;
use fedssl_coordinator::run::job::{run_job_reporting, Job, Mode};
use fedssl_coordinator::run::outputs::result_line;
use fedssl_shared::config::Scenario;
use fedssl_shared::pretext::PretextKind;

#[derive(Parser)]
#[command(
    name = "fedssl-coordinator",
    version,
    about = "Federated self-supervised pretraining: the coordinator"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args)]
struct Common {
    /// Scenario file (TOML).
    scenario: PathBuf,
    /// Output folder (default: runs/<scenario name>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Dataset folder (overrides data.path), e.g. the folder holding cifar-10-batches-bin.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Override a scenario key, e.g. --set federation.rounds=5 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
    /// Continue the run in the output folder from its newest checkpoint (same scenario;
    /// federation.rounds may grow).
    #[arg(long)]
    resume: bool,
    /// Write TensorBoard event files (round scalars, final probe accuracies) into DIR (the
    /// scenario's `[logging] tensorboard = true` writes them into <out>/tb).
    #[arg(long, value_name = "DIR")]
    tensorboard: Option<PathBuf>,
    /// Serve the read-only live run page (`/`, and its JSON at `/status.json`) on this TCP
    /// address while the run goes: IP:PORT as given, a bare PORT on 127.0.0.1, or a HOST:PORT
    /// that resolves to loopback (sets `[logging] status_addr`). Default: no page.
    #[arg(long, value_name = "ADDR")]
    status_addr: Option<String>,
    /// Keep the live run page up this many seconds after the run ended (sets `[logging]
    /// status_linger_seconds`; default 0).
    #[arg(long, value_name = "SECONDS", allow_negative_numbers = true)]
    status_linger: Option<f64>,
}

#[derive(Subcommand)]
enum Cmd {
    /// The evaluation suite ([eval]: linear/MLP probes, per layer, few labels) on a saved
    /// backbone; writes eval.json.
    Eval {
        /// Backbone weights: a run's final.safetensors or checkpoints/round-*.safetensors.
        checkpoint: PathBuf,
        /// Scenario the backbone was trained with (its [model], [data] and [eval]): a TOML
        /// file or a run's scenario.json. Default: the scenario.json of the checkpoint's run
        /// (next to final.safetensors, or one folder above checkpoints/round-*.safetensors).
        #[arg(long)]
        scenario: Option<PathBuf>,
        /// Dataset folder (overrides data.path).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Output folder for eval.json (default: the checkpoint's folder).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Override a scenario key, e.g. --set eval.per_layer=true (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// Writes the backbone's pre-logits and stage maps on the first N test images, with the
    /// images themselves, to one safetensors file (to check another implementation, e.g.
    /// python/fedssl_torch, against fedssl's).
    Features {
        /// Backbone weights: a run's final.safetensors or checkpoints/round-*.safetensors.
        checkpoint: PathBuf,
        /// Number of test images (the first N of the scenario's test set).
        #[arg(long, default_value_t = 100)]
        images: usize,
        /// Output file.
        #[arg(long, default_value = "features.safetensors")]
        out: PathBuf,
        /// Scenario the backbone was trained with (default: its run's scenario.json).
        #[arg(long)]
        scenario: Option<PathBuf>,
        /// Dataset folder (overrides data.path).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Override a scenario key, e.g. --set data.test_images=500 (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// Runs several scenarios (simulate) into <out>/<scenario name>/ and writes the comparison
    /// tables (Markdown, CSV) and plots (PNG) of their evaluation suites into <out>.
    Compare {
        /// Scenario files (TOML).
        #[arg(required = true)]
        scenarios: Vec<PathBuf>,
        /// Output folder.
        #[arg(long, default_value = "runs/compare")]
        out: PathBuf,
        /// Dataset folder (overrides data.path of every scenario).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Override a key of every scenario (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Keep a scenario's run when <out>/<name>/ holds a finished run of the same scenario.
        #[arg(long)]
        reuse: bool,
        /// No progress bars.
        #[arg(long)]
        quiet: bool,
    },
    /// Runs every cell of a grid of scenario values × every seed (simulate, one after the
    /// other, into <out>/<cell>/seed-<s>/; a finished run of the same scenario is skipped, a
    /// changed or interrupted one runs again) and writes results.csv, results.md and top1.png
    /// into <out>. The grid and seeds may be the file's own [sweep] table
    /// ([[sweep.axis]] key = "…", values = […]; seeds = […]).
    Sweep {
        /// Base scenario file (TOML), with or without a [sweep] table.
        scenario: PathBuf,
        /// A grid axis, KEY=[V1, V2, …], each value as --set takes it, e.g.
        /// 'partition=[{kind="iid"}, {kind="dirichlet", alpha=0.1}]' or
        /// 'federation.strategy.kind=[fedavg, fedprox]' (repeatable; the cells are the
        /// product of the axes, the first axis is the plot's x axis). After the file's
        /// [[sweep.axis]] axes; one of the same key replaces the file's.
        #[arg(long = "grid", value_name = "KEY=[V1, V2, …]")]
        grid: Vec<String>,
        /// Comma-separated seeds, e.g. 0,1,2 (default: the file's [sweep] seeds, else the
        /// scenario's seed).
        #[arg(long, value_delimiter = ',')]
        seeds: Vec<u64>,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// Dataset folder (overrides data.path of every run).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Override a key of every run, applied before the grid's values (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// No progress bars.
        #[arg(long)]
        quiet: bool,
    },
    /// Coordinator and all clients in this process, over loopback QUIC.
    Simulate(Common),
    /// Listen for clients on the network (they run `fedssl-client`).
    Serve {
        #[command(flatten)]
        common: Common,
        /// UDP address to listen on: IP:PORT or HOST:PORT (e.g. localhost:4433).
        #[arg(long, default_value = "0.0.0.0:4433")]
        listen: String,
        /// PEM certificate (with --key); default: a self-signed one written to the output folder.
        #[arg(long, requires = "key")]
        cert: Option<PathBuf>,
        /// PEM private key for --cert.
        #[arg(long, requires = "cert")]
        key: Option<PathBuf>,
        /// Extra host name or IP address the self-signed certificate is valid for (repeatable).
        #[arg(long = "name")]
        names: Vec<String>,
        /// A provisioned coordinator kit (`provision --out DIR` writes DIR/coordinator): serve
        /// with its certificate and admit only clients with a certificate of its CA.
        #[arg(long, conflicts_with_all = ["cert", "key"])]
        kit: Option<PathBuf>,
        /// With --kit: a file of revoked site names or certificate serials (one a line),
        /// re-read whenever it changes.
        #[arg(long, requires = "kit")]
        revoked: Option<PathBuf>,
    },
    /// Enrol sites: write a CA, the coordinator's kit and one startup kit per site (its
    /// certificate and key, the CA, and a client.toml naming the coordinator) into --out.
    Provision {
        /// Comma-separated site names (lower-case DNS labels), e.g. site-a,site-b,site-c.
        #[arg(long, value_delimiter = ',', required = true)]
        sites: Vec<String>,
        /// Host name or IP address the sites reach the coordinator at (repeatable or
        /// comma-separated; the first goes into the sites' client.toml).
        #[arg(long = "coordinator-name", value_delimiter = ',', required = true)]
        coordinator_names: Vec<String>,
        /// UDP port the coordinator listens on (written into client.toml).
        #[arg(long, default_value_t = 4433)]
        port: u16,
        /// Days the certificates stay valid.
        #[arg(long, default_value_t = 365)]
        days: i64,
        /// Output folder of the kits.
        #[arg(long, default_value = "kits")]
        out: PathBuf,
    },
    /// Train every pretext task under the scenario's budget (one `simulate` run each, in
    /// <out>/<task>/) and write compare.md, compare.csv and compare.png into the output folder.
    ComparePretexts {
        #[command(flatten)]
        common: Common,
        /// Comma-separated tasks to compare (default: all).
        #[arg(long, value_delimiter = ',')]
        tasks: Vec<String>,
        /// Keep a task's finished run in <out>/<task>/ when it was made with the same scenario.
        #[arg(long)]
        reuse: bool,
    },
    /// Draw the scenario's split among its clients without training (as `simulate` would)
    /// and write partition.json and the heat map partition.png into --out; prints the
    /// heterogeneity figures (sizes, mean EMD, mean JS).
    Partition {
        /// Scenario file (TOML).
        scenario: PathBuf,
        /// Dataset folder (overrides data.path).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Override a scenario key, e.g. --set partition.alpha=0.1 (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Output folder of partition.json and partition.png.
        #[arg(long)]
        out: PathBuf,
    },
}

/// The first address `spec` (IP:PORT or HOST:PORT) resolves to; errors name `--listen`.
fn resolve_listen(spec: &str) -> Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    spec.to_socket_addrs()
        .with_context(|| format!("--listen `{spec}`: expected IP:PORT or HOST:PORT"))?
        .next()
        .with_context(|| format!("--listen `{spec}`: the host name resolves to no address"))
}

/// Applies `--data-dir` to `sc` ([`Scenario::set_data_dir`]), saying on stderr when it is not
/// read (synthetic data).
fn apply_data_dir(sc: &mut Scenario, dir: &std::path::Path) {
    if !sc.set_data_dir(dir) {
        eprintln!(
            "warning: --data-dir {} is not read: data.dataset is \"synthetic\" (generated in memory, no files)",
            dir.display()
        );
    }
}

/// The scenario of `common` with its overrides and `--data-dir`, and the output folder.
fn load(common: &Common) -> Result<(Scenario, PathBuf)> {
    let mut sc = Scenario::load(&common.scenario, &common.set)?;
    if let Some(d) = &common.data_dir {
        apply_data_dir(&mut sc, d);
    }
    if let Some(dir) = &common.tensorboard {
        sc.logging.tensorboard = true;
        sc.logging.tensorboard_dir = Some(dir.clone());
    }
    if let Some(addr) = &common.status_addr {
        sc.logging.status_addr = Some(addr.clone());
    }
    if let Some(s) = common.status_linger {
        sc.logging.status_linger_seconds = s;
    }
    sc.logging.validate()?;
    let out = common
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(&sc.name));
    Ok((sc, out))
}

async fn real_main(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::ComparePretexts {
            common,
            tasks,
            reuse,
        } => compare_pretexts_cmd(common, tasks, reuse).await,
        Cmd::Eval {
            checkpoint,
            scenario,
            data_dir,
            out,
            set,
        } => eval_cmd(checkpoint, scenario, data_dir, out, set).await,
        Cmd::Features {
            checkpoint,
            images,
            out,
            scenario,
            data_dir,
            set,
        } => features_cmd(checkpoint, images, out, scenario, data_dir, set),
        Cmd::Compare {
            scenarios,
            out,
            data_dir,
            set,
            reuse,
            quiet,
        } => {
            run_compare(&scenarios, &out, data_dir.as_deref(), &set, reuse, !quiet).await?;
            Ok(())
        }
        Cmd::Sweep {
            scenario,
            grid,
            seeds,
            out,
            data_dir,
            set,
            quiet,
        } => {
            let spec = SweepSpec {
                scenario,
                grid,
                seeds,
                sets: set,
                data_dir,
                out,
                progress: !quiet,
            };
            sweep(&spec).await?;
            let md = spec.out.join("results.md");
            print!("{}", std::fs::read_to_string(&md).unwrap_or_default());
            Ok(())
        }
        Cmd::Simulate(c) => run_cmd(c, Mode::Simulate).await,
        Cmd::Serve {
            common,
            listen,
            cert,
            key,
            names,
            kit,
            revoked,
        } => {
            let identity = cert.zip(key);
            let listen = resolve_listen(&listen)?;
            let mode = Mode::Serve {
                listen,
                identity,
                names,
                kit,
                revoked,
            };
            run_cmd(common, mode).await
        }
        Cmd::Provision {
            sites,
            coordinator_names,
            port,
            days,
            out,
        } => provision_cmd(sites, coordinator_names, port, days, &out),
        Cmd::Partition {
            scenario,
            data_dir,
            set,
            out,
        } => partition_cmd(&scenario, data_dir, &set, &out),
    }
}

/// `partition`: draws the split, writes its files, prints the figures and names the files.
fn partition_cmd(
    scenario: &std::path::Path,
    data_dir: Option<PathBuf>,
    set: &[String],
    out: &std::path::Path,
) -> Result<()> {
    let mut sc = Scenario::load(scenario, set)?;
    if let Some(d) = data_dir {
        apply_data_dir(&mut sc, &d);
    }
    let r = fedssl_coordinator::run::split::draw_split(&sc, out)?;
    print!("{}", fedssl_coordinator::run::split::figures_table(&r));
    println!(
        "{} {}",
        out.join("partition.json").display(),
        out.join("partition.png").display()
    );
    Ok(())
}

/// `simulate` and `serve`: one run of the scenario; prints the result line.
async fn run_cmd(common: Common, mode: Mode) -> Result<()> {
    let (scenario, out) = load(&common)?;
    let job = Job {
        scenario,
        out: out.clone(),
        mode,
        progress: !common.quiet,
        resume: common.resume,
    };
    run_job_reporting(job, None, |summary| {
        println!("{}", result_line(summary, &out))
    })
    .await
    .context("run failed")?;
    Ok(())
}

/// `provision`: the CA and the kits; names the folders written.
fn provision_cmd(
    sites: Vec<String>,
    coordinator_names: Vec<String>,
    port: u16,
    days: i64,
    out: &std::path::Path,
) -> Result<()> {
    if days < 1 {
        anyhow::bail!("--days must be at least 1, got {days}");
    }
    let req = fedssl_coordinator::provision::ProvisionRequest {
        sites,
        coordinator_names,
        port,
        days,
    };
    let dirs = fedssl_coordinator::provision::provision(&req, out)?;
    println!(
        "CA: {} (keep ca-key.pem private; it is in no kit)",
        out.join("ca").display()
    );
    for d in dirs {
        println!("kit: {}", d.display());
    }
    Ok(())
}

/// `compare-pretexts`: every task of `tasks` (all when empty) under the scenario's budget;
/// prints the table.
async fn compare_pretexts_cmd(common: Common, tasks: Vec<String>, reuse: bool) -> Result<()> {
    let tasks: Vec<PretextKind> = if tasks.is_empty() {
        PretextKind::all().to_vec()
    } else {
        tasks
            .iter()
            .map(|t| PretextKind::from_name(t.trim()))
            .collect::<Result<_>>()
            .context("in --tasks")?
    };
    if common.resume {
        anyhow::bail!("--resume is not supported by compare-pretexts; resume a task's run with `simulate <scenario> --out <out>/<task> --resume --set pretext.task=<task>`");
    }
    let (scenario, out) = load(&common)?;
    let rows = compare_pretexts(&scenario, &tasks, &out, !common.quiet, reuse).await?;
    print!("{}", markdown(&rows));
    println!("table: {}", out.join("compare.md").display());
    Ok(())
}

/// The scenario of `checkpoint`'s run (or `scenario`), with `--data-dir`.
fn checkpoint_scenario(
    checkpoint: &std::path::Path,
    scenario: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    set: &[String],
) -> Result<Scenario> {
    if !checkpoint.is_file() {
        anyhow::bail!(
            "cannot read checkpoint {}: no such file",
            checkpoint.display()
        );
    }
    let scenario = match scenario {
        Some(s) => s,
        None => {
            let s = run_scenario_of(checkpoint)?;
            eprintln!("scenario: {} (the checkpoint's run)", s.display());
            s
        }
    };
    let mut sc = Scenario::load(&scenario, set)?;
    if let Some(d) = data_dir {
        apply_data_dir(&mut sc, &d);
    }
    Ok(sc)
}

/// `features`: the backbone's outputs on the first `images` test images; names the file.
fn features_cmd(
    checkpoint: PathBuf,
    images: usize,
    out: PathBuf,
    scenario: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    set: Vec<String>,
) -> Result<()> {
    let sc = checkpoint_scenario(&checkpoint, scenario, data_dir, &set)?;
    let e = export_features(&sc, &checkpoint, images, &out)?;
    println!(
        "{}: pre_logits ({}, {}), {} stage maps, images (N, 3, H, W) normalised and images_u8",
        out.display(),
        e.images,
        e.dim,
        e.stages
    );
    Ok(())
}

/// `eval`: the suite on `checkpoint` with its run's scenario (or `--scenario`); writes and
/// names `eval.json`.
async fn eval_cmd(
    checkpoint: PathBuf,
    scenario: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    out: Option<PathBuf>,
    set: Vec<String>,
) -> Result<()> {
    let sc = checkpoint_scenario(&checkpoint, scenario, data_dir, &set)?;
    let out = out.unwrap_or_else(|| {
        checkpoint
            .parent()
            .map(|p| p.to_path_buf())
            .unwrap_or_else(|| PathBuf::from("."))
    });
    if out.join("eval.json").is_file() {
        eprintln!(
            "note: {} will be replaced (a run's summary.json keeps the evaluation made at its end; --out writes elsewhere)",
            out.join("eval.json").display()
        );
    }
    let e = tokio::task::spawn_blocking({
        let out = out.clone();
        move || eval_checkpoint(&sc, &checkpoint, &out)
    })
    .await??;
    println!("{}", eval_line(&e));
    println!("{}", out.join("eval.json").display());
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    fedssl_shared::cli::run_main("warn", real_main(cli))
}
