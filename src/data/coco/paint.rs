//! Instance masks -> one 16-bit label map (global part ids, 0 = background).
//!
//! Masks with `score >= threshold` are painted in this order, each over what is there:
//! by inclusion depth (a part inside another, per `including/<wnid>.txt`, is painted after its
//! container, so it stays on top whatever the scores), then by score (the better-scoring mask
//! wins an overlap), then by file order (equal scores: the later record wins, as the later
//! annotation does in `mpm-data labels`).

use crate::data::imageio::LabelMap;
use crate::data::rasterise::Rle;

use super::rle;

#[derive(Clone, Debug)]
pub struct PaintDet {
    /// Global part id.
    pub id: u16,
    pub score: f64,
    /// Inclusion depth of the part (0 = inside nothing).
    pub depth: u32,
    pub index: u64,
    pub rle: Rle,
}

/// Paints `dets` (see the module docs) into an `h x w` map. Returns the map and the number of
/// masks painted; masks below the threshold or of another size are not painted (the caller
/// checked sizes; a mismatch here is skipped rather than written out of bounds).
pub fn paint(dets: &mut [PaintDet], h: usize, w: usize, threshold: f64) -> (LabelMap, usize) {
    dets.sort_by(|a, b| {
        a.depth
            .cmp(&b.depth)
            .then(
                a.score
                    .partial_cmp(&b.score)
                    .unwrap_or(std::cmp::Ordering::Equal),
            )
            .then(a.index.cmp(&b.index))
    });
    let mut map = LabelMap::zeros(h, w);
    let mut painted = 0;
    for d in dets.iter() {
        if d.score < threshold || d.rle.h != h || d.rle.w != w {
            continue;
        }
        rle::paint_into(&d.rle, &mut map.data, d.id);
        painted += 1;
    }
    (map, painted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::rasterise::{encode, Mask};

    fn block(h: usize, w: usize, x0: usize, x1: usize) -> Rle {
        let mut m = Mask::zeros(h, w);
        for y in 0..h {
            for x in x0..x1 {
                m.data[y * w + x] = 1;
            }
        }
        encode(&m)
    }

    #[test]
    fn depth_then_score_then_order() {
        let d = |id, score, depth, index, rle| PaintDet {
            id,
            score,
            depth,
            index,
            rle,
        };
        let mut dets = vec![
            d(3, 0.6, 1, 0, block(2, 6, 2, 3)), // inner part, lower score: still on top
            d(1, 0.9, 0, 1, block(2, 6, 0, 4)),
            d(2, 0.7, 0, 2, block(2, 6, 3, 6)), // overlaps 1 at x=3: loses (lower score)
            d(4, 0.7, 0, 3, block(2, 6, 5, 6)), // ties 2 at x=5: later record wins
            d(5, 0.2, 0, 4, block(2, 6, 0, 6)), // below the threshold
        ];
        let (m, n) = paint(&mut dets, 2, 6, 0.5);
        assert_eq!(n, 4);
        assert_eq!(&m.data[..6], &[1, 1, 3, 1, 2, 4]);
    }
}
