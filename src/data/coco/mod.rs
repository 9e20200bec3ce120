//! COCO instance segmentation, the bridge to external part segmenters (issue 20,
//! docs/part-labels.md): PIN++ out for mmdetection / detectron2, their results in, the
//! Category Filter, pseudo label maps, and part AP as pycocotools computes it.
//!
//! - [`rle`]: RLE masks (annToRLE, union, area, bbox, IoU) on runs, as maskApi.c.
//! - [`dataset`]: COCO files: image table with each image's class, categories, GT masks.
//! - [`results`]: the streaming reader of results files (standard and extended form).
//! - [`export`]: `mpm-data coco-export`.
//! - [`filter`]: the Category Filter on detections (exact with score vectors, per mask without).
//! - [`paint`]: detections -> 16-bit label map (inclusion depth, score, file order).
//! - [`pseudo`]: `mpm-data pseudo --from-coco-results`.
//! - [`ap`]: COCOeval(iouType="segm"); [`part_ap`]: `mpm-data part-ap`.
//! - [`instances`]: label maps -> instances (connected regions), to score map labellers.
pub mod ap;
pub mod dataset;
pub mod export;
pub mod filter;
pub mod instances;
pub mod paint;
pub mod part_ap;
pub mod pseudo;
pub mod results;
pub mod rle;

/// "a string", "a number", ... for messages about a JSON value of the wrong kind.
pub(crate) fn kind(v: &serde_json::Value) -> &'static str {
    crate::data::pin_json::kind_of(v)
}
