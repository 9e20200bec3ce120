//! PIN++ data pipeline.
//!
//! - [`rasterise`]: COCO polygons / RLE -> binary masks, bit-exact with pycocotools.
pub mod rasterise;
