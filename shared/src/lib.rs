//! fedssl-shared: everything the coordinator and the clients both need — datasets and
//! partitioners, backbones and pretext tasks, the optimiser, named weights, the wire
//! protocol and the scenario schema. No networking loops live here.

pub mod augment;
pub mod cli;
pub mod config;
pub mod data;
pub mod device;
pub mod image;
pub mod model;
pub mod ops;
pub mod optim;
pub mod partition;
pub mod pretext;
pub mod protocol;
pub mod seed;
pub mod train;
pub mod weights;
