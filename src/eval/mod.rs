//! Robustness beyond adversarial attacks (issue 16): common corruptions (the paper's Table 3),
//! out-of-distribution datasets (Table 4), model-vs-human consistency (Table S4) and the
//! tables that put several models side by side. The `mpm-eval` binary drives it; the model,
//! device, batching, eval transform and journal conventions are `mpm-attack`'s.
//!
//! Where things live:
//! - `assets`       : embedded class lists, AlexNet's ImageNet-C errors, model-vs-human tables.
//! - `sets`         : datasets with each one's evaluation transform, corruptions on the fly.
//! - `predict`      : the shared loop (parallel loader, batched forward, heads, journal).
//! - `runs`         : clean accuracy, ImageNet-C (Table 3) and the OOD datasets (Table 4).
//! - `human`        : model-vs-human stimuli -> the benchmark's session CSV files.
//! - `human_metrics`: contract E, the benchmark's metrics against its human raw data.
//! - `table`        : several reports -> Tables 2, 3, 4 and S4 (Markdown, CSV, PNG charts).
//! - `report`       : JSON + Markdown output and table helpers.

pub mod assets;
pub mod human;
pub mod human_metrics;
pub mod predict;
pub mod report;
pub mod runs;
pub mod sets;
pub mod table;
