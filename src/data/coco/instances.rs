//! Label maps -> instances, so `part-ap` can score a labeller that writes maps (the MPM-head
//! pseudo-labeller, `mpm-data pseudo --weights`): one instance per connected region of one part
//! id (8-connected), scored by the mean, over the region, of the head's probability of the
//! label it chose. That labeller stores the probability next to the map
//! (`prob/<wnid>/<stem>.png`, 16-bit, p * 65535); without it every region scores 1.0 and AP
//! then ranks regions of one category by file order only (reported as such).

use crate::data::imageio::LabelMap;
use crate::data::rasterise::Rle;

use super::rle::RunBuilder;

/// One region: its part id, mask and score.
#[derive(Clone, Debug)]
pub struct Region {
    pub id: u16,
    pub rle: Rle,
    pub score: f64,
    pub pixels: u64,
}

/// Connected regions of every non-zero id of `map` (8-connectivity), in order of their first
/// pixel in row-major order. `prob`: per-pixel probability (same size) for the scores.
pub fn regions(map: &LabelMap, prob: Option<&[f32]>) -> Vec<Region> {
    let (h, w) = (map.h, map.w);
    let mut comp = vec![u32::MAX; h * w];
    let mut ids: Vec<u16> = Vec::new();
    let mut stack: Vec<usize> = Vec::new();
    for start in 0..h * w {
        let id = map.data[start];
        if id == 0 || comp[start] != u32::MAX {
            continue;
        }
        let c = ids.len() as u32;
        ids.push(id);
        comp[start] = c;
        stack.push(start);
        while let Some(p) = stack.pop() {
            let (y, x) = (p / w, p % w);
            for dy in [-1i64, 0, 1] {
                for dx in [-1i64, 0, 1] {
                    let (ny, nx) = (y as i64 + dy, x as i64 + dx);
                    if ny < 0 || nx < 0 || ny >= h as i64 || nx >= w as i64 {
                        continue;
                    }
                    let q = ny as usize * w + nx as usize;
                    if map.data[q] == id && comp[q] == u32::MAX {
                        comp[q] = c;
                        stack.push(q);
                    }
                }
            }
        }
    }
    let n = ids.len();
    let mut builders = vec![RunBuilder::default(); n];
    let mut sums = vec![0.0f64; n];
    let mut counts = vec![0u64; n];
    // Column-major walk: runs are built in the RLE's own order.
    for x in 0..w {
        for y in 0..h {
            let p = y * w + x;
            let c = comp[p];
            if c == u32::MAX {
                continue;
            }
            let c = c as usize;
            builders[c].push((x * h + y) as u64);
            counts[c] += 1;
            sums[c] += prob.map_or(1.0, |pr| pr[p] as f64);
        }
    }
    builders
        .into_iter()
        .enumerate()
        .map(|(c, b)| Region {
            id: ids[c],
            rle: b.finish(h, w),
            score: sums[c] / counts[c] as f64,
            pixels: counts[c],
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::rasterise::decode;

    #[test]
    fn regions_are_8_connected_per_id() {
        // Two diagonal pixels of id 1 (one region), a separate id-1 blob, an id-2 pixel.
        #[rustfmt::skip]
        let data = vec![
            1, 0, 0, 1,
            0, 1, 0, 1,
            0, 0, 2, 0,
        ];
        let map = LabelMap { h: 3, w: 4, data };
        let prob: Vec<f32> = (0..12).map(|i| i as f32 / 12.0).collect();
        let r = regions(&map, Some(&prob));
        assert_eq!(r.len(), 3);
        assert_eq!((r[0].id, r[0].pixels), (1, 2));
        // Probabilities are f32: 5/12 carries a rounding error of ~1e-8.
        assert!((r[0].score - (0.0 + 5.0) / 24.0).abs() < 1e-6);
        assert_eq!((r[1].id, r[1].pixels), (1, 2));
        assert_eq!((r[2].id, r[2].pixels), (2, 1));
        let m = decode(&r[1].rle).unwrap();
        assert_eq!(m.data, vec![0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0]);
        assert_eq!(regions(&map, None)[2].score, 1.0);
    }
}
