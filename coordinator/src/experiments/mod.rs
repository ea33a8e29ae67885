//! Experiments built from whole runs: [`compare`] runs several scenarios and tabulates their
//! evaluation suites, [`pretext_compare`] trains every pretext task under one budget; both
//! write their tables with [`tables`] and their charts with [`plot`]; [`heatmap`] draws a
//! split's clients × classes heat map.

pub mod compare;
pub mod heatmap;
pub mod plot;
pub mod pretext_compare;
pub mod tables;
