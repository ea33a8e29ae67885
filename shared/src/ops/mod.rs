//! Fast CPU kernels for the hot operations of CNN training, written as candle custom ops so
//! candle's autograd keeps working (issue 3: stock candle 0.11 CPU conv training runs ~10×
//! slower than PyTorch, see huggingface/candle#2144 and #1383).
//!
//! Every op here takes and returns ordinary candle tensors. On the CPU with `f32` inputs it
//! runs our kernels; on any other device or dtype it falls back to candle's own op, so CUDA
//! keeps candle's kernels and the `cuda` feature builds unchanged.
//!
//! Threading: the kernels use rayon's *current* pool. Run training inside
//! `Device::Cpu.with_context(|| …)` (candle's warm pool, sized by `RAYON_NUM_THREADS` /
//! candle's `utils::get_num_threads`) or inside your own `ThreadPool::install` to bound it.

pub mod act;
pub mod batch_norm;
pub mod conv;

pub use act::{add_relu, relu};
pub use batch_norm::batch_norm;
pub use conv::conv2d;
