//! PIN++ data pipeline (stands alone: no dependency on the engine modules). See `docs/data.md`.
//!
//! - [`rasterise`]: COCO polygons / RLE -> binary masks, bit-exact with pycocotools.
//! - [`pin_json`]: the PIN++ files (class JSON, inclusion, discarded list, names), part ids.
//! - [`labels`]: `mpm-data labels` (DESIGN.md contract C).
//! - [`layout`]: the reference training layout (img/, seg/, whether_pseudo/ flags).
//! - [`synth`]: `mpm-data synth`, a deterministic synthetic dataset in PIN++ format.
//! - [`index`]: ImageFolder / list-file indexes joined with label maps, balanced subsets.
//! - [`augment`]: aligned train/eval transforms (RandomResizedCrop, flip, jitter; resize+crop).
//! - [`targets`]: multi-scale soft segmentation targets (28/14/7, NHWC), the CPU spec.
//! - [`loader`]: batches (parallel decode + augment + targets), reproducible per sample.
//! - [`pseudo`]: the Category Filter argmax for pseudo labels.
//! - [`stats`], [`show`]: dataset statistics (Table S1 bins) and overlay pictures.
//! - [`imageio`]: image decode, 16-bit PNG label maps, atomic writes.
//! - [`report`]: skipped items (path + reason) and their summary.
//! - [`coco`]: COCO export, segmenter results + Category Filter -> pseudo labels, part AP.
//! - [`corrupt`]: the 15 ImageNet-C corruptions and `mpm-data corrupt` (docs/corruptions.md).
//! - [`tiny`]: `mpm-data tiny`, Tiny-PartImageNet++ from an IN-1K tree (docs/tracks.md).
pub mod augment;
pub mod coco;
pub mod corrupt;
pub mod imageio;
pub mod index;
pub mod labels;
pub mod layout;
pub mod loader;
pub mod pin_json;
pub mod pseudo;
pub mod pseudo_label;
pub mod rasterise;
pub mod report;
pub mod show;
pub mod stats;
pub mod synth;
pub mod targets;
pub mod tiny;
