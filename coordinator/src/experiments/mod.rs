//! Experiments built from whole runs, all made by the one [`runner`] (planned runs, each a
//! `simulate` run in its own folder, a finished run of the same scenario skipped): [`sweep`]
//! runs a [`grid`] of scenario values × seeds and tabulates the linear probe; its presets
//! [`compare`] runs several scenario files and tabulates their evaluation suites, and
//! [`pretext_compare`] trains every pretext task under one budget. They write their tables
//! with [`tables`] and their charts with [`plot`] ([`epsilon_chart`]: a DP sweep's top-1 against
//! ε); [`heatmap`] draws a split's clients ×
//! classes heat map.

pub mod compare;
pub mod epsilon_chart;
pub mod grid;
pub mod heatmap;
pub mod plot;
pub mod pretext_compare;
pub mod runner;
pub mod sweep;
pub mod tables;
