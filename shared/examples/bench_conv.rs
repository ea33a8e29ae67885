//! CPU training/inference throughput of a small CIFAR ResNet with candle's stock ops against
//! `fedssl_shared::ops` (issue 3), and of fedssl's VGG-11-BN backbone, each against PyTorch
//! when `python3 -c "import torch"` works.
//!
//! ```text
//! cargo run --release -p fedssl-shared --example bench_conv -- --threads 2 --out bench.json
//! ```
//!
//! Model (self-contained, same shapes as `bench/pytorch_bench.py`): 3×3 stem conv 3→32 + BN +
//! ReLU; three stages of two BasicBlocks each, widths 32/64/128, stride 2 at the start of
//! stages 2 and 3 (1×1 stride-2 conv + BN shortcut); global average pool; linear 128→10.
//! Training step: forward with BatchNorm in training mode, cross-entropy, backward, plain SGD
//! (lr 0.01). Inference: forward with BatchNorm in eval mode. Batch 128 of 32×32 images.
//!
//! Variants: `candle-stock` (candle's conv2d, BatchNorm, ReLU), `fedssl-conv` (our conv2d,
//! candle's BatchNorm and ReLU), both on the self-contained model above; `fedssl` is the
//! project's own backbone (`fedssl_shared::model::ResNet`, `stem_width = 32`,
//! `widths = [32, 64, 128]`, `blocks = [2, 2, 2]`, the same layers) with a linear classifier:
//! exactly what training runs (our conv2d, and BatchNorm fused with its ReLU and residual add).
//! Throughput is the batch over the best (minimum) step time of `--iters` timed steps, which is
//! the least disturbed by other work on a shared machine; the median is in the JSON too. Peak
//! memory is the process's peak resident set while a variant runs (Linux `VmHWM`, reset before
//! each variant through `/proc/self/clear_refs`; the PyTorch script does the same).
//!
//! Flags: `--threads N` (default 2), `--batch B` (128), `--iters K` timed steps (3),
//! `--warmup W` (1), `--ops stock|conv|all|fast|every` (every; fast = conv + all),
//! `--breakdown` (time each op kind alone at the model's shapes; fedssl's convolution both as it
//! runs and as im2col + GEMM only; `BENCH_CONV_LAYERS=1` prints every conv layer), `--no-pytorch`, `--no-vgg`,
//! `--vit` (also fedssl's default ViT against `pytorch_bench.py --model vit`),
//! `--malloc-defaults` (skip [`fedssl_shared::ops::tune_allocator`], which every fedssl binary
//! calls at start), `--device cpu|cuda|cuda:N` (cpu), `--pairs N` (5), `--python PATH`
//! (`python3`: the Python with torch), `--out FILE` (JSON).
//!
//! A machine's speed drifts by ±10 % over minutes, so a ratio of two passes run one after
//! the other moves as much. After the first pass, fedssl's ResNet and VGG-11-BN are therefore
//! measured again in `--pairs` interleaved pairs (fedssl's steps, then PyTorch's, A B A B …):
//! each pair gives a ratio, and the report gives their median with its min–max (JSON
//! `interleaved`).
//!
//! On a GPU (`--device cuda`, a build with `--features cuda`) every timed step ends with
//! `Device::synchronize` (and reads its loss back), so a step's time is the device's; fedssl's
//! ops fall back to candle's CUDA kernels there, so `--ops` defaults to `all` (the three
//! variants would run the same kernels), and PyTorch runs with `--device` too. The JSON then
//! has `"device"`; the CPU's report is unchanged.

use candle_core::{DType, Device, Module, ModuleT, Result, Tensor, Var};
use candle_nn::{BatchNorm, Init, Linear, Optimizer, VarBuilder, VarMap};
use fedssl_shared::ops::ConvAlgorithm;
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ConvKind {
    /// candle's conv2d, BatchNorm and ReLU.
    Stock,
    /// `ops::conv2d`, candle's BatchNorm and ReLU.
    Fast,
    /// fedssl's own ResNet backbone: `ops::conv2d`, `ops::batch_norm_relu`,
    /// `ops::batch_norm_add_relu`, `ops::batch_norm`.
    All,
}

impl ConvKind {
    fn name(self) -> &'static str {
        match self {
            ConvKind::Stock => "candle-stock",
            ConvKind::Fast => "fedssl-conv",
            ConvKind::All => "fedssl",
        }
    }
    fn conv(self, x: &Tensor, w: &Tensor, stride: usize, pad: usize) -> Result<Tensor> {
        match self {
            ConvKind::Stock => x.conv2d(w, pad, stride, 1, 1),
            _ => fedssl_shared::ops::conv2d(x, w, stride, pad),
        }
    }
    fn bn(self, bn: &BatchNorm, x: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            ConvKind::All => fedssl_shared::ops::batch_norm(bn, x, train),
            _ => bn.forward_t(x, train),
        }
    }
}

struct ConvBn {
    w: Tensor,
    bn: BatchNorm,
    stride: usize,
    pad: usize,
}

impl ConvBn {
    fn new(vb: VarBuilder, c_in: usize, c_out: usize, k: usize, stride: usize) -> Result<Self> {
        let fan_in = (c_in * k * k) as f64;
        let w = vb.get_with_hints(
            (c_out, c_in, k, k),
            "conv.weight",
            Init::Randn {
                mean: 0.0,
                stdev: (2.0 / fan_in).sqrt(),
            },
        )?;
        let bn = candle_nn::batch_norm(c_out, 1e-5, vb.pp("bn"))?;
        Ok(Self {
            w,
            bn,
            stride,
            pad: k / 2,
        })
    }
    fn forward(&self, x: &Tensor, kind: ConvKind, train: bool) -> Result<Tensor> {
        let y = kind.conv(x, &self.w, self.stride, self.pad)?;
        kind.bn(&self.bn, &y, train)
    }
}

struct Block {
    a: ConvBn,
    b: ConvBn,
    shortcut: Option<ConvBn>,
}

impl Block {
    fn new(vb: VarBuilder, c_in: usize, c_out: usize, stride: usize) -> Result<Self> {
        let shortcut = if stride != 1 || c_in != c_out {
            Some(ConvBn::new(vb.pp("shortcut"), c_in, c_out, 1, stride)?)
        } else {
            None
        };
        Ok(Self {
            a: ConvBn::new(vb.pp("a"), c_in, c_out, 3, stride)?,
            b: ConvBn::new(vb.pp("b"), c_out, c_out, 3, 1)?,
            shortcut,
        })
    }
    fn forward(&self, x: &Tensor, kind: ConvKind, train: bool) -> Result<Tensor> {
        let y = self.a.forward(x, kind, train)?.relu()?;
        let y = self.b.forward(&y, kind, train)?;
        let s = match &self.shortcut {
            Some(s) => s.forward(x, kind, train)?,
            None => x.clone(),
        };
        (y + s)?.relu()
    }
}

struct Net {
    stem: ConvBn,
    blocks: Vec<Block>,
    fc: Linear,
}

impl Net {
    fn new(vb: VarBuilder) -> Result<Self> {
        let stem = ConvBn::new(vb.pp("stem"), 3, 32, 3, 1)?;
        let mut blocks = Vec::new();
        let mut c_in = 32;
        for (i, &c) in [32usize, 64, 128].iter().enumerate() {
            for j in 0..2 {
                let stride = if i > 0 && j == 0 { 2 } else { 1 };
                blocks.push(Block::new(vb.pp(format!("s{i}b{j}")), c_in, c, stride)?);
                c_in = c;
            }
        }
        let fc = candle_nn::linear(128, 10, vb.pp("fc"))?;
        Ok(Self { stem, blocks, fc })
    }
    fn forward(&self, x: &Tensor, kind: ConvKind, train: bool) -> Result<Tensor> {
        let mut y = self.stem.forward(x, kind, train)?.relu()?;
        for b in &self.blocks {
            y = b.forward(&y, kind, train)?;
        }
        self.fc.forward(&y.mean((2, 3))?)
    }
    /// `(c_in, c_out, k, stride, input side)` of every conv, for the breakdown.
    fn conv_shapes() -> Vec<(usize, usize, usize, usize, usize)> {
        let mut v = vec![(3, 32, 3, 1, 32)];
        let (mut c_in, mut side) = (32, 32);
        for (i, &c) in [32usize, 64, 128].iter().enumerate() {
            for j in 0..2 {
                let stride = if i > 0 && j == 0 { 2 } else { 1 };
                v.push((c_in, c, 3, stride, side));
                if stride != 1 || c_in != c {
                    v.push((c_in, c, 1, stride, side));
                }
                side /= stride;
                v.push((c, c, 3, 1, side));
                c_in = c;
            }
        }
        v
    }
}

struct Args {
    /// Where the models run (`--device`).
    dev: Device,
    /// `--device` as given (`cpu` for the CPU).
    device_name: String,
    threads: usize,
    batch: usize,
    iters: usize,
    warmup: usize,
    kinds: Vec<ConvKind>,
    breakdown: bool,
    pytorch: bool,
    /// Also benchmark the project's VGG-11-BN backbone ([`vgg_config`]).
    vgg: bool,
    /// Also benchmark the project's default ViT backbone.
    vit: bool,
    /// Leave glibc's allocator settings alone instead of `ops::tune_allocator`.
    malloc_defaults: bool,
    /// Interleaved pairs (fedssl, then PyTorch) per model after the first pass (`--pairs`).
    pairs: usize,
    /// The Python that runs `bench/pytorch_bench.py` (`--python`).
    python: String,
    out: Option<String>,
}

/// The VGG-BN of the benchmark: fedssl's own backbone (`model.backbone = "vgg_bn"`), VGG-11
/// with `base_width` 32 (blocks of 32, 64, 128, 256, 256 channels), hidden layer 256, plus
/// a linear 256→10 classifier; `bench/pytorch_bench.py --model vgg11` builds the same layers.
fn vgg_config() -> fedssl_shared::model::ModelConfig {
    fedssl_shared::model::ModelConfig {
        backbone: fedssl_shared::model::BackboneKind::VggBn,
        vgg: fedssl_shared::model::VggConfig {
            depth: 11,
            base_width: 32,
            widen: 1,
            hidden: Some(256),
        },
        ..Default::default()
    }
}

/// The ResNet of the benchmark as fedssl's own backbone (`model.backbone = "resnet"`): the
/// layers of [`Net`] (stem 32, stages 32/64/128 with two BasicBlocks each).
fn resnet_config() -> fedssl_shared::model::ModelConfig {
    fedssl_shared::model::ModelConfig {
        resnet: fedssl_shared::model::ResNetConfig {
            stem_width: 32,
            widths: vec![32, 64, 128],
            blocks: vec![2, 2, 2],
            widen: 1,
        },
        ..Default::default()
    }
}

/// Training and inference images/s of one of fedssl's backbones ([`resnet_config`],
/// [`vgg_config`]) with a linear classifier: the same step as [`measure`] (forward in
/// training mode, cross-entropy, backward, SGD lr 0.01) with the ops fedssl runs.
fn measure_backbone(cfg: &fedssl_shared::model::ModelConfig, a: &Args) -> anyhow::Result<Measured> {
    reset_peak_rss();
    let dev = a.dev.clone();
    let (net, varmap) = fedssl_shared::model::build_backbone(cfg, 0, &dev)?;
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let fc = candle_nn::linear(net.feature_dim(), 10, vb.pp("fc"))?;
    let x = Tensor::randn(0f32, 1.0, (a.batch, 3, 32, 32), &dev)?;
    let labels: Vec<u32> = (0..a.batch as u32).map(|i| (i * 7 + 3) % 10).collect();
    let y = Tensor::new(labels, &dev)?;
    // candle's SGD steps only variables with a gradient: BN running statistics are left alone
    let mut opt = candle_nn::SGD::new(varmap.all_vars(), 0.01)?;
    let mut loss_v = f32::NAN;
    let train_s = time_it(&a.dev, a.warmup, a.iters, || {
        let logits = fc.forward(&net.forward_t(&x, true)?.pre_logits)?;
        let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
        opt.backward_step(&loss)?;
        loss_v = loss.to_scalar::<f32>()?;
        Ok(())
    })?;
    let infer_s = time_it(&a.dev, a.warmup, a.iters, || {
        let logits = fc.forward(&net.forward_inference(&x)?.pre_logits)?;
        logits.sum_all()?.to_scalar::<f32>()?;
        Ok(())
    })?;
    let b = a.batch as f64;
    Ok(Measured {
        kind: ConvKind::All,
        train: (b / train_s.0, b / train_s.1),
        infer: (b / infer_s.0, b / infer_s.1),
        final_loss: loss_v,
        peak_rss: peak_rss_bytes(),
    })
}

fn parse_args() -> std::result::Result<Args, String> {
    let mut a = Args {
        dev: Device::Cpu,
        device_name: "cpu".into(),
        threads: 2,
        batch: 128,
        iters: 3,
        warmup: 1,
        kinds: vec![ConvKind::Stock, ConvKind::Fast, ConvKind::All],
        breakdown: false,
        pytorch: true,
        vgg: true,
        vit: false,
        malloc_defaults: false,
        pairs: 5,
        python: "python3".into(),
        out: None,
    };
    let mut ops_given = false;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let num = |s: String| s.parse::<usize>().map_err(|e| format!("{s}: {e}"));
        match flag.as_str() {
            "--threads" => a.threads = num(val()?)?.max(1),
            "--batch" => a.batch = num(val()?)?.max(2),
            "--iters" => a.iters = num(val()?)?.max(1),
            "--warmup" => a.warmup = num(val()?)?,
            "--ops" => {
                ops_given = true;
                a.kinds = match val()?.as_str() {
                    "stock" => vec![ConvKind::Stock],
                    "conv" => vec![ConvKind::Fast],
                    "all" => vec![ConvKind::All],
                    "fast" => vec![ConvKind::Fast, ConvKind::All],
                    "every" => vec![ConvKind::Stock, ConvKind::Fast, ConvKind::All],
                    other => {
                        return Err(format!(
                            "--ops {other}: expected stock, conv, all, fast or every"
                        ))
                    }
                }
            }
            "--breakdown" => a.breakdown = true,
            "--no-pytorch" => a.pytorch = false,
            "--no-vgg" => a.vgg = false,
            "--vit" => a.vit = true,
            "--device" => {
                let spec = val()?;
                a.dev = fedssl_shared::device::parse_device(&spec).map_err(|e| format!("{e:#}"))?;
                a.device_name = if a.dev.is_cpu() { "cpu".into() } else { spec };
            }
            "--malloc-defaults" => a.malloc_defaults = true,
            "--pairs" => a.pairs = num(val()?)?,
            "--python" => a.python = val()?,
            "--out" => a.out = Some(val()?),
            "-h" | "--help" => {
                println!(
                    "bench_conv [--threads N] [--batch B] [--iters K] [--warmup W] \
                     [--ops stock|conv|all|fast|every] [--breakdown] [--no-pytorch] [--no-vgg] \
                     [--vit] [--malloc-defaults] [--device cpu|cuda|cuda:N] [--pairs N] \
                     [--python PATH] [--out FILE]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if !a.dev.is_cpu() && !ops_given {
        // off the CPU every variant runs candle's kernels: time the project's backbone only
        a.kinds = vec![ConvKind::All];
    }
    Ok(a)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Seconds of one run of `f`: `(best, median)` over `iters` timed runs after `warmup` untimed.
/// Off the CPU each run ends with `dev.synchronize()`, so that it counts the device's work.
fn time_it(
    dev: &Device,
    warmup: usize,
    iters: usize,
    mut f: impl FnMut() -> Result<()>,
) -> Result<(f64, f64)> {
    for _ in 0..warmup {
        f()?;
    }
    dev.synchronize()?;
    let mut t = Vec::new();
    for _ in 0..iters {
        let s = Instant::now();
        f()?;
        dev.synchronize()?;
        t.push(s.elapsed().as_secs_f64());
    }
    let best = t.iter().cloned().fold(f64::INFINITY, f64::min);
    Ok((best, median(t)))
}

/// Resets the process's peak resident set (Linux: writing 5 to `/proc/self/clear_refs` sets
/// `VmHWM` back to the current RSS). Errors are ignored: then the peak spans the process.
fn reset_peak_rss() {
    // Memory an earlier variant freed but the tuned allocator kept would count otherwise.
    fedssl_shared::ops::trim_allocator();
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Peak resident set size of this process in bytes since the last [`reset_peak_rss`]
/// (`VmHWM` of `/proc/self/status`); `None` off Linux.
fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

struct Measured {
    kind: ConvKind,
    /// Peak resident memory of the process while this variant ran (bytes), training and
    /// inference together, model and data included.
    peak_rss: Option<u64>,
    /// Images per second: (best step, median step).
    train: (f64, f64),
    infer: (f64, f64),
    final_loss: f32,
}

fn measure(kind: ConvKind, a: &Args) -> anyhow::Result<Measured> {
    if kind == ConvKind::All {
        return measure_backbone(&resnet_config(), a);
    }
    reset_peak_rss();
    let dev = a.dev.clone();
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let net = Net::new(vb)?;
    let x = Tensor::randn(0f32, 1.0, (a.batch, 3, 32, 32), &dev)?;
    let labels: Vec<u32> = (0..a.batch as u32).map(|i| (i * 7 + 3) % 10).collect();
    let y = Tensor::new(labels, &dev)?;
    let mut opt = candle_nn::SGD::new(varmap.all_vars(), 0.01)?;
    let mut loss_v = f32::NAN;
    let train_s = time_it(&a.dev, a.warmup, a.iters, || {
        let logits = net.forward(&x, kind, true)?;
        let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
        opt.backward_step(&loss)?;
        loss_v = loss.to_scalar::<f32>()?;
        Ok(())
    })?;
    let infer_s = time_it(&a.dev, a.warmup, a.iters, || {
        let logits = net.forward(&x, kind, false)?;
        logits.sum_all()?.to_scalar::<f32>()?;
        Ok(())
    })?;
    let b = a.batch as f64;
    Ok(Measured {
        kind,
        train: (b / train_s.0, b / train_s.1),
        infer: (b / infer_s.0, b / infer_s.1),
        final_loss: loss_v,
        peak_rss: peak_rss_bytes(),
    })
}

/// Milliseconds per training step spent in each kind of op, each op timed alone (best of
/// `--iters`) at every shape where the model uses it: `(name, forward, forward + backward)`.
fn breakdown(a: &Args) -> Result<Vec<(String, f64, f64)>> {
    let dev = a.dev.clone();
    let b = a.batch;
    // Backward of sum(y · g) minus that loss's own cost (a mul, a sum and their backward).
    let fwd_bwd = |x: &Var, f: &dyn Fn(&Tensor) -> Result<Tensor>| -> Result<(f64, f64)> {
        let y0 = f(x.as_tensor())?;
        let g = Tensor::randn(0f32, 1.0, y0.dims(), &dev)?;
        let fwd = time_it(&dev, 1, a.iters, || {
            f(x.as_tensor())?;
            Ok(())
        })?
        .0;
        let both = time_it(&dev, 1, a.iters, || {
            let y = f(x.as_tensor())?;
            (y * &g)?.sum_all()?.backward()?;
            Ok(())
        })?
        .0;
        let yv = Var::from_tensor(&y0)?;
        let loss_only = time_it(&dev, 1, a.iters, || {
            (yv.as_tensor() * &g)?.sum_all()?.backward()?;
            Ok(())
        })?
        .0;
        Ok((fwd * 1e3, (both - loss_only).max(fwd) * 1e3))
    };
    let mut rows = Vec::new();
    let im2col = |x: &Tensor, w: &Tensor, stride: usize, pad: usize| {
        fedssl_shared::ops::conv2d_with(x, w, stride, pad, ConvAlgorithm::Im2col)
    };
    for (label, kind) in [("candle", ConvKind::Stock), ("fedssl", ConvKind::All)] {
        // fedssl's convolution is timed twice: as it runs (Winograd where it is faster), and
        // with im2col + GEMM for every layer.
        let algos: &[Option<ConvAlgorithm>] = if kind == ConvKind::All {
            &[None, Some(ConvAlgorithm::Im2col)]
        } else {
            &[None]
        };
        for &algo in algos {
            let label = if algo.is_some() {
                format!("{label}, im2col only")
            } else {
                label.to_string()
            };
            let (mut f, mut fb) = (0.0, 0.0);
            for (c_in, c_out, k, stride, side) in Net::conv_shapes() {
                let x = Var::randn(0f32, 1.0, (b, c_in, side, side), &dev)?;
                let w = Var::randn(0f32, 0.1, (c_out, c_in, k, k), &dev)?;
                let (t1, t2) = match algo {
                    Some(_) => fwd_bwd(&x, &|x| im2col(x, w.as_tensor(), stride, k / 2))?,
                    None => fwd_bwd(&x, &|x| kind.conv(x, w.as_tensor(), stride, k / 2))?,
                };
                f += t1;
                fb += t2;
                if std::env::var_os("BENCH_CONV_LAYERS").is_some() {
                    let (oh, gflop) = (side.div_ceil(stride), 1e-9);
                    let flop = 2.0 * (b * c_out * oh * oh * c_in * k * k) as f64 * gflop;
                    println!(
                    "    {label} conv {c_in}->{c_out} k{k} s{stride} {side}x{side}: fwd {t1:.1} ms \
                     ({:.0} GFLOP/s), bwd {:.1} ms ({:.0} GFLOP/s)",
                    flop / t1 * 1e3,
                    t2 - t1,
                    2.0 * flop / (t2 - t1) * 1e3
                );
                }
            }
            rows.push((format!("conv2d ({label})"), f, fb));
        }
        let label = label.to_string();
        // BatchNorm (training mode) after every conv. candle: BatchNorm, then a separate ReLU after every 3×3 conv. fedssl: the fused
        // BatchNorm + ReLU after every 3×3 conv (the residual add + ReLU is timed as the same
        // fused op without the add), the plain fused BatchNorm after 1×1 shortcut convs.
        let (mut bn_f, mut bn_fb, mut relu_f, mut relu_fb) = (0.0, 0.0, 0.0, 0.0);
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
        for (i, (_, c_out, k, stride, side)) in Net::conv_shapes().into_iter().enumerate() {
            let side = side / stride;
            let x = Var::randn(0f32, 1.0, (b, c_out, side, side), &dev)?;
            let bn = candle_nn::batch_norm(c_out, 1e-5, vb.pp(format!("bn{i}")))?;
            let (t1, t2) = if kind == ConvKind::All && k == 3 {
                fwd_bwd(&x, &|x| fedssl_shared::ops::batch_norm_relu(&bn, x, true))?
            } else {
                fwd_bwd(&x, &|x| kind.bn(&bn, x, true))?
            };
            bn_f += t1;
            bn_fb += t2;
            if k == 3 && kind != ConvKind::All {
                let (t1, t2) = fwd_bwd(&x, &|x| x.relu())?;
                relu_f += t1;
                relu_fb += t2;
            }
        }
        if kind == ConvKind::All {
            rows.push((format!("batch_norm+relu train ({label})"), bn_f, bn_fb));
        } else {
            rows.push((format!("batch_norm train ({label})"), bn_f, bn_fb));
            rows.push((format!("relu ({label})"), relu_f, relu_fb));
        }
    }
    Ok(rows)
}

/// PyTorch's measurement of a model (the script's JSON), or why there is none.
type Torch = std::result::Result<serde_json::Value, String>;

/// Runs `bench/pytorch_bench.py` on `model` (`resnet` or `vgg11`) with this run's threads,
/// batch and iterations.
fn pytorch(a: &Args, model: &str) -> Torch {
    let ok = std::process::Command::new(&a.python)
        .args(["-c", "import torch"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        return Err("PyTorch is not available (python3 -c \"import torch\" failed)".into());
    }
    // the checkout it was built from, else `bench/` under the current folder (a bundle)
    let built = concat!(env!("CARGO_MANIFEST_DIR"), "/../bench/pytorch_bench.py");
    let script = if std::path::Path::new(built).exists() {
        built
    } else {
        "bench/pytorch_bench.py"
    };
    let out = std::process::Command::new(&a.python)
        .arg(script)
        .args(["--device", &a.device_name])
        .args(["--threads", &a.threads.to_string()])
        .args(["--batch", &a.batch.to_string()])
        .args(["--iters", &a.iters.to_string()])
        .args(["--warmup", &a.warmup.max(1).to_string()])
        .args(["--model", model])
        .output()
        .map_err(|e| format!("running {script}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{script} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().unwrap_or_default();
    serde_json::from_str(last).map_err(|e| format!("{script} printed no JSON ({e}): {last}"))
}

/// Bytes as MiB for the table, `-` when unknown.
fn mib(b: Option<u64>) -> String {
    b.map_or("-".into(), |b| {
        format!("{:.0}", b as f64 / (1024.0 * 1024.0))
    })
}

/// One of fedssl's other backbones measured (`label`, e.g. `fedssl-vgg11`, with the layout
/// `cfg`) and PyTorch's same layers (`bench/pytorch_bench.py --model torch_model`, unless
/// `--no-pytorch`), printed as table rows with their ratio.
fn backbone_rows(
    a: &Args,
    label: &str,
    what: &str,
    cfg: &fedssl_shared::model::ModelConfig,
    torch_model: &str,
) -> anyhow::Result<(Measured, Option<Torch>)> {
    let m = fedssl_shared::device::on_device(&a.dev, || measure_backbone(cfg, a))?;
    println!(
        "  {:<14} {:>12.1} {:>16.1} {:>10}   {what}",
        label,
        m.train.0,
        m.infer.0,
        mib(m.peak_rss)
    );
    let torch = a.pytorch.then(|| pytorch(a, torch_model));
    let torch_label = format!("pytorch-{}", label.trim_start_matches("fedssl-"));
    match &torch {
        Some(Ok(t)) => {
            println!(
                "  {:<14} {:>12.1} {:>16.1} {:>10}",
                torch_label,
                t["train_ips"].as_f64().unwrap_or(f64::NAN),
                t["infer_ips"].as_f64().unwrap_or(f64::NAN),
                mib(t["peak_rss_bytes"].as_u64()),
            );
            println!(
                "  {label} / PyTorch: train {:.2}, inference {:.2}",
                m.train.0 / t["train_ips"].as_f64().unwrap_or(f64::NAN),
                m.infer.0 / t["infer_ips"].as_f64().unwrap_or(f64::NAN)
            );
        }
        Some(Err(e)) => println!("  PyTorch {torch_model}: {e}"),
        None => {}
    }
    Ok((m, torch))
}

/// fedssl's VGG-11-BN measured (with `--vgg`) and PyTorch's (also with PyTorch), printed as
/// table rows.
fn vgg_rows(a: &Args) -> anyhow::Result<(Option<Measured>, Option<Torch>)> {
    if !a.vgg {
        return Ok((None, None));
    }
    let what = "VGG-11-BN (fedssl's vgg_bn, base width 32, hidden 256)";
    let (m, t) = backbone_rows(a, "fedssl-vgg11", what, &vgg_config(), "vgg11")?;
    Ok((Some(m), t))
}

/// fedssl's default ViT measured (with `--vit`) and PyTorch's, printed as table rows.
fn vit_rows(a: &Args) -> anyhow::Result<(Option<Measured>, Option<Torch>)> {
    if !a.vit {
        return Ok((None, None));
    }
    let cfg = fedssl_shared::model::ModelConfig {
        backbone: fedssl_shared::model::BackboneKind::Vit,
        ..Default::default()
    };
    let what = "ViT (fedssl's default vit: patch 4, dim 96, depth 4, 4 heads)";
    let (m, t) = backbone_rows(a, "fedssl-vit", what, &cfg, "vit")?;
    Ok((Some(m), t))
}

/// PyTorch's ResNet measured (unless `--no-pytorch`) and printed as a table row, with its
/// train and inference images per second.
fn pytorch_row(a: &Args) -> (Torch, Option<f64>, Option<f64>) {
    let torch = if a.pytorch {
        pytorch(a, "resnet")
    } else {
        Err("skipped (--no-pytorch)".into())
    };
    let (tt, ti) = match &torch {
        Ok(t) => {
            let (tt, ti) = (
                t["train_ips"].as_f64().unwrap_or(f64::NAN),
                t["infer_ips"].as_f64().unwrap_or(f64::NAN),
            );
            println!(
                "  {:<14} {:>12.1} {:>16.1} {:>10}   (torch {})",
                "pytorch",
                tt,
                ti,
                mib(t["peak_rss_bytes"].as_u64()),
                t["torch_version"].as_str().unwrap_or("?")
            );
            (Some(tt), Some(ti))
        }
        Err(e) => {
            println!("  PyTorch: {e}");
            (None, None)
        }
    };
    (torch, tt, ti)
}

/// The speed-ups over candle's stock ops and over PyTorch (`torch`: its train and inference
/// images per second), and the per-op breakdown `rows`.
fn print_ratios(results: &[Measured], torch: Option<(f64, f64)>, rows: &[(String, f64, f64)]) {
    if let Some(s) = results.iter().find(|m| m.kind == ConvKind::Stock) {
        for m in results.iter().filter(|m| m.kind != ConvKind::Stock) {
            println!(
                "  {} vs candle-stock: train {:.2}x, inference {:.2}x",
                m.kind.name(),
                m.train.0 / s.train.0,
                m.infer.0 / s.infer.0
            );
        }
    }
    if let Some((tt, ti)) = torch {
        for m in results {
            println!(
                "  {} / PyTorch: train {:.2}, inference {:.2}",
                m.kind.name(),
                m.train.0 / tt,
                m.infer.0 / ti
            );
        }
    }
    if !rows.is_empty() {
        println!("per-step time by op kind (each op timed alone at the model's shapes):");
        println!("  {:<28} {:>10} {:>12}", "op", "fwd ms", "fwd+bwd ms");
        for (name, f, fb) in rows {
            println!("  {:<28} {:>10.1} {:>12.1}", name, f, fb);
        }
    }
}

/// fedssl against PyTorch on one model, interleaved: `pairs` of (fedssl's steps, then
/// PyTorch's in its own process), so that both sides of a pair see the same machine; each
/// pair gives a ratio (fedssl images/s ÷ PyTorch images/s, each the best of `--iters` steps).
struct Paired {
    model: &'static str,
    train: Vec<f64>,
    infer: Vec<f64>,
}

/// `(median, min, max)` of `v` (not empty).
fn spread(v: &[f64]) -> (f64, f64, f64) {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (median(v.to_vec()), lo, hi)
}

/// `a.pairs` interleaved pairs of fedssl's `cfg` and PyTorch's `torch_model` (after the first
/// pass, which warmed both up); `None` without PyTorch or pairs. A pair whose PyTorch run
/// fails ends the series.
fn paired(
    a: &Args,
    model: &'static str,
    cfg: &fedssl_shared::model::ModelConfig,
    torch_model: &str,
) -> anyhow::Result<Option<Paired>> {
    if a.pairs == 0 || !a.pytorch {
        return Ok(None);
    }
    let mut p = Paired {
        model,
        train: vec![],
        infer: vec![],
    };
    for _ in 0..a.pairs {
        let m = fedssl_shared::device::on_device(&a.dev, || measure_backbone(cfg, a))?;
        let Ok(t) = pytorch(a, torch_model) else {
            break;
        };
        let (tt, ti) = (
            t["train_ips"].as_f64().unwrap_or(f64::NAN),
            t["infer_ips"].as_f64().unwrap_or(f64::NAN),
        );
        p.train.push(m.train.0 / tt);
        p.infer.push(m.infer.0 / ti);
    }
    Ok((!p.train.is_empty()).then_some(p))
}

/// The interleaved pairs as a table: the median ratio with its min–max.
fn print_paired(ps: &[Paired]) {
    if ps.is_empty() {
        return;
    }
    println!("interleaved with PyTorch (fedssl / PyTorch, median of the pairs, min-max):");
    println!("  | model | pairs | training | inference |\n  |---|---:|---:|---:|");
    for p in ps {
        let (t, tl, th) = spread(&p.train);
        let (i, il, ih) = spread(&p.infer);
        println!(
            "  | {} | {} | {t:.2} ({tl:.2}-{th:.2}) | {i:.2} ({il:.2}-{ih:.2}) |",
            p.model,
            p.train.len()
        );
    }
}

/// The interleaved pairs in the JSON report.
fn paired_json(ps: &[Paired]) -> serde_json::Value {
    let side = |v: &[f64]| {
        let (m, lo, hi) = spread(v);
        serde_json::json!({ "median": m, "min": lo, "max": hi, "pairs": v })
    };
    ps.iter()
        .map(|p| {
            serde_json::json!({
                "model": p.model,
                "train_ratio": side(&p.train),
                "inference_ratio": side(&p.infer),
            })
        })
        .collect::<Vec<_>>()
        .into()
}

/// The `--out` report: every measurement of the run.
fn report_json(
    a: &Args,
    tuned: bool,
    results: &[Measured],
    rows: &[(String, f64, f64)],
    torch: &Torch,
    (vgg, torch_vgg): &(Option<Measured>, Option<Torch>),
    (vit, torch_vit): &(Option<Measured>, Option<Torch>),
) -> serde_json::Value {
    let mut report = serde_json::json!({
        "model": "resnet-small (stem 32, stages 32/64/128 x 2 BasicBlocks)",
        "batch": a.batch,
        "image": [3, 32, 32],
        "threads": a.threads,
        "iters": a.iters,
        "allocator_tuned": tuned,
        "statistic": "images per second over the best step; *_median over the median step",
        "results": results.iter().map(|m| serde_json::json!({
            "ops": m.kind.name(),
            "train_images_per_s": m.train.0,
            "inference_images_per_s": m.infer.0,
            "train_images_per_s_median": m.train.1,
            "inference_images_per_s_median": m.infer.1,
            "peak_rss_bytes": m.peak_rss,
        })).collect::<Vec<_>>(),
        "peak_rss": "peak resident memory of the process while the variant ran (Linux VmHWM, reset before each variant), model, data and allocator included",
        "breakdown_ms_per_step": rows.iter().map(|(n, f, fb)| serde_json::json!({
            "op": n, "fwd": f, "fwd_bwd": fb,
        })).collect::<Vec<_>>(),
        "pytorch": match torch {
            Ok(t) => t.clone(),
            Err(e) => serde_json::json!({ "unavailable": e }),
        },
        "vgg11_bn": vgg.as_ref().map(|m| serde_json::json!({
            "model": "fedssl vgg_bn: VGG-11-BN, base width 32 (32/64/128/256/256), hidden 256, linear 256->10",
            "train_images_per_s": m.train.0,
            "inference_images_per_s": m.infer.0,
            "train_images_per_s_median": m.train.1,
            "inference_images_per_s_median": m.infer.1,
            "peak_rss_bytes": m.peak_rss,
            "pytorch": match torch_vgg {
                Some(Ok(t)) => t.clone(),
                Some(Err(e)) => serde_json::json!({ "unavailable": e }),
                None => serde_json::json!({ "unavailable": "skipped (--no-pytorch)" }),
            },
        })),
    });
    // Keys only the GPU and --vit runs have; a CPU run's report is as before.
    if !a.dev.is_cpu() {
        report["device"] = a.device_name.clone().into();
    }
    if let Some(m) = vit {
        report["vit"] = serde_json::json!({
            "model": "fedssl vit (default): patch 4, dim 96, depth 4, 4 heads, MLP ratio 4, linear 96->10",
            "train_images_per_s": m.train.0,
            "inference_images_per_s": m.infer.0,
            "train_images_per_s_median": m.train.1,
            "inference_images_per_s_median": m.infer.1,
            "peak_rss_bytes": m.peak_rss,
            "pytorch": match torch_vit {
                Some(Ok(t)) => t.clone(),
                Some(Err(e)) => serde_json::json!({ "unavailable": e }),
                None => serde_json::json!({ "unavailable": "skipped (--no-pytorch)" }),
            },
        });
    }
    report
}

fn main() -> anyhow::Result<()> {
    let a = parse_args().map_err(anyhow::Error::msg)?;
    // As fedssl's binaries do (`ops::tune_allocator`); `--malloc-defaults` keeps glibc's.
    let tuned = !a.malloc_defaults && fedssl_shared::ops::tune_allocator();
    // Candle sizes its pool and its GEMM parallelism from RAYON_NUM_THREADS; set it before the
    // first candle call so `--threads` governs everything.
    std::env::set_var("RAYON_NUM_THREADS", a.threads.to_string());
    println!(
        "small ResNet (stem 32, stages 32/64/128 x 2 BasicBlocks), batch {}, 32x32, {}{} thread(s), best of {}, allocator {}",
        a.batch,
        if a.dev.is_cpu() { String::new() } else { format!("device {}, ", a.device_name) },
        a.threads,
        a.iters,
        if tuned { "tuned (ops::tune_allocator)" } else { "glibc defaults" }
    );
    println!(
        "  {:<14} {:>12} {:>16} {:>10}",
        "ops", "train img/s", "inference img/s", "peak MiB"
    );
    let (results, rows) = fedssl_shared::device::on_device(&a.dev, || -> anyhow::Result<_> {
        let mut results = Vec::new();
        for &kind in &a.kinds {
            let m = measure(kind, &a)?;
            println!(
                "  {:<14} {:>12.1} {:>16.1} {:>10}   (median {:.1} / {:.1}, loss {:.3})",
                m.kind.name(),
                m.train.0,
                m.infer.0,
                mib(m.peak_rss),
                m.train.1,
                m.infer.1,
                m.final_loss
            );
            results.push(m);
        }
        let rows = if a.breakdown {
            breakdown(&a)?
        } else {
            Vec::new()
        };
        Ok((results, rows))
    })?;
    let vgg = vgg_rows(&a)?;
    let vit = vit_rows(&a)?;
    let (torch, tt, ti) = pytorch_row(&a);
    print_ratios(&results, tt.zip(ti), &rows);
    let mut pairs = Vec::new();
    if torch.is_ok() {
        pairs.extend(paired(&a, "resnet", &resnet_config(), "resnet")?);
        if a.vgg {
            pairs.extend(paired(&a, "vgg11_bn", &vgg_config(), "vgg11")?);
        }
    }
    print_paired(&pairs);
    if let Some(path) = &a.out {
        let mut json = report_json(&a, tuned, &results, &rows, &torch, &vgg, &vit);
        if !pairs.is_empty() {
            json["interleaved"] = paired_json(&pairs);
        }
        std::fs::write(path, serde_json::to_string_pretty(&json)? + "\n")?;
        println!("wrote {path}");
    }
    Ok(())
}
