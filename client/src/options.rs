//! How a client session runs ([`ClientOptions`]: name, data, device, behaviour, progress,
//! limits) and what it did ([`SessionReport`]).

use std::sync::Arc;

use candle_core::Device;
use indicatif::MultiProgress;

use crate::behaviour::Behaviour;
use crate::data::DataSource;

/// How a client runs.
#[derive(Clone)]
pub struct ClientOptions {
    /// Name sent in the hello (for the coordinator's logs).
    pub name: String,
    /// Training data.
    pub data: DataSource,
    /// Device to train on.
    pub device: Device,
    /// In simulation, a semaphore shared by all in-process clients so that they split the
    /// cores instead of oversubscribing them.
    pub training_slots: Option<Arc<tokio::sync::Semaphore>>,
    /// Progress bars (local epochs) are drawn here when set.
    pub progress: Option<MultiProgress>,
    /// Largest accepted weights payload (bytes).
    pub max_weights_bytes: u64,
    /// Honest, or a simulated failure (dropout studies and tests).
    pub behaviour: Behaviour,
    /// Where the client keeps its state between rounds: `None` (default) in memory; a folder
    /// (`simulate`: `<run>/clients`): the file `<folder>/<client id>.safetensors`, so that
    /// idle virtual clients hold no model in memory.
    pub state_dir: Option<std::path::PathBuf>,
}

impl ClientOptions {
    /// Options with defaults: CPU, no shared slots, no progress bars, 1 GiB payload limit,
    /// honest, state in memory.
    pub fn new(name: impl Into<String>, data: DataSource) -> Self {
        Self {
            name: name.into(),
            data,
            device: Device::Cpu,
            training_slots: None,
            progress: None,
            max_weights_bytes: 1 << 30,
            behaviour: Behaviour::Honest,
            state_dir: None,
        }
    }
}

/// How many in-process clients train at once when nothing says (`simulate`'s
/// `simulation.concurrent_training = 0`, `fedssl-client --virtual` without
/// `--concurrent-training`): half the cores, at least 1, so that the clients share the cores
/// instead of oversubscribing them.
pub fn default_training_slots() -> usize {
    (num_cpus::get() / 2).max(1)
}

/// What a finished session did.
#[derive(Clone, Debug)]
pub struct SessionReport {
    /// Id the coordinator gave this client.
    pub client_id: u32,
    /// Distinct rounds this client trained and returned (over every session of a client that
    /// reconnected; a round trained again after a coordinator restart counts once).
    pub rounds_trained: usize,
    /// The coordinator's closing message.
    pub message: String,
}
