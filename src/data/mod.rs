//! PIN++ data pipeline (stands alone: no dependency on the engine modules).
//!
//! - [`rasterise`]: COCO polygons / RLE -> binary masks, bit-exact with pycocotools.
//! - [`augment`]: aligned train/eval transforms (RandomResizedCrop, flip, jitter; resize+crop).
//! - [`pin_json`]: the PIN++ files (class JSON, inclusion, discarded list, names), part ids.
//! - [`labels`]: `mpm-data labels` (DESIGN.md contract C).
//! - [`imageio`]: image decode, 16-bit PNG label maps, atomic writes.
//! - [`report`]: skipped items (path + reason) and their summary.
//! - [`synth`]: `mpm-data synth`, a deterministic synthetic dataset in PIN++ format.
//! - [`targets`]: multi-scale soft segmentation targets (28/14/7, NHWC), the CPU spec.
pub mod augment;
pub mod imageio;
pub mod labels;
pub mod pin_json;
pub mod rasterise;
pub mod report;
pub mod synth;
pub mod targets;
