//! PNG pictures: training curves from `metrics.jsonl` and part-prediction overlays.
use crate::Result;
use std::path::Path;

/// Writes `curves.png` from a metrics file (placeholder until the image backend lands).
pub fn curves_from_metrics(_metrics: &Path, _dir: &Path) -> Result<()> {
    Ok(())
}
