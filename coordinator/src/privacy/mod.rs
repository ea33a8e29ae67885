//! Privacy of the clients' updates: the differential-privacy accountant of DP-FedAvg
//! ([`accountant`]) and the clipping and Gaussian noise it accounts for ([`dp`]).

pub mod accountant;
pub mod dp;
