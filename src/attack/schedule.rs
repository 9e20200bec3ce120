//! Runs of an attack (its targets and restarts, in the reference's order) grouped so that
//! consecutive runs share model passes when `pass_batch` has room for them. Runs are
//! independent per sample, so running a group side by side and keeping, per sample, the first
//! run that fooled it gives the sequential result (each sample's random stream must be drawn
//! in run order; the callers do).

use std::ops::Range;

/// One group: the samples no earlier run fooled, their images and labels, and which runs.
pub struct Group {
    /// Indices (into the attack's batch) of the samples under attack.
    pub active: Vec<usize>,
    /// Their images (`active.len()` rows of `d` values) and labels.
    pub xs: Vec<f32>,
    pub ys: Vec<usize>,
    /// The runs of this group (indices into the caller's run list).
    pub runs: Range<usize>,
}

impl Group {
    /// `(row, j, i)` for every row of the side-by-side batch, in run order: row `row` is run
    /// `runs.start + row / active.len()` on sample `i = active[j]`.
    pub fn rows(&self) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
        let na = self.active.len();
        (0..self.runs.len() * na).map(move |row| (row, row % na, self.active[row % na]))
    }

    /// `v` (one value per active sample) repeated once per run of the group.
    pub fn tile<T: Clone>(&self, v: &[T]) -> Vec<T> {
        let mut out = Vec::with_capacity(v.len() * self.runs.len());
        for _ in self.runs.clone() {
            out.extend_from_slice(v);
        }
        out
    }
}

/// Hands out the groups of `total` runs.
pub struct RunGroups {
    total: usize,
    next: usize,
    pass_batch: usize,
}

impl RunGroups {
    /// `pass_batch`: the most images one pass may hold (0: one run at a time).
    pub fn new(total: usize, pass_batch: usize) -> Self {
        RunGroups {
            total,
            next: 0,
            pass_batch,
        }
    }

    /// The next group over the samples still robust (`robust[i]`), with as many runs as fit in
    /// `pass_batch` (at least one); None when the runs are done or no sample is left.
    pub fn next_group(
        &mut self,
        robust: &[bool],
        x: &[f32],
        y: &[usize],
        d: usize,
    ) -> Option<Group> {
        let active: Vec<usize> = (0..robust.len()).filter(|&i| robust[i]).collect();
        if self.next >= self.total || active.is_empty() {
            return None;
        }
        let group = (self.pass_batch / active.len()).clamp(1, self.total - self.next);
        let runs = self.next..self.next + group;
        self.next += group;
        let xs = active
            .iter()
            .flat_map(|&i| x[i * d..(i + 1) * d].iter().copied())
            .collect();
        let ys = active.iter().map(|&i| y[i]).collect();
        Some(Group {
            active,
            xs,
            ys,
            runs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_fill_the_pass_and_skip_fooled_samples() {
        let x: Vec<f32> = (0..8).map(|v| v as f32).collect(); // 4 samples of d = 2
        let y = [0, 1, 2, 3];
        let mut g = RunGroups::new(5, 7);
        let a = g.next_group(&[true, false, true, true], &x, &y, 2).unwrap();
        assert_eq!((a.active.clone(), a.runs.clone()), (vec![0, 2, 3], 0..2));
        assert_eq!(a.xs, vec![0.0, 1.0, 4.0, 5.0, 6.0, 7.0]);
        assert_eq!(a.ys, vec![0, 2, 3]);
        let rows: Vec<_> = a.rows().collect();
        assert_eq!(rows[4], (4, 1, 2));
        assert_eq!(a.tile(&a.ys), vec![0, 2, 3, 0, 2, 3]);
        let b = g
            .next_group(&[false, false, true, false], &x, &y, 2)
            .unwrap();
        assert_eq!(b.runs, 2..5, "one sample: the remaining three runs fit");
        assert!(g.next_group(&[true; 4], &x, &y, 2).is_none());
        let mut one = RunGroups::new(3, 0);
        assert_eq!(one.next_group(&[true; 4], &x, &y, 2).unwrap().runs, 0..1);
        assert!(RunGroups::new(3, 9)
            .next_group(&[false; 4], &x, &y, 2)
            .is_none());
    }
}
