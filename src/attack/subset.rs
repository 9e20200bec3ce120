//! Class-subset and super-category evaluation (`--class-subset`, `--super-classes`): the
//! attacked model is the masked one.
//!
//! A [`ClassMap`] turns the model's K logits into K' *groups*: with `--class-subset` each
//! listed class is a group of one (the other logits are dropped: "masking out the other
//! category channels"); with `--super-classes` each super-category is a group of its classes.
//! [`GroupedClassifier`] wraps any [`Classifier`] and outputs one logit per group, the
//! **largest logit among the group's classes**. Every attack (APGD-CE/-DLR/-T, FAB, Square,
//! PGD) and every accuracy count then runs on those K' logits unchanged, so:
//! - the prediction is the group holding the argmax over the subset's classes: a class
//!   outside the subset can never be predicted, before or after an attack;
//! - with super-categories, a prediction is correct when the argmax over the subset's classes
//!   falls in the true super-category; the margin the attacks push on (DLR, FAB, the
//!   verification) is max logit within the true super-category minus max logit outside it;
//!   CE is the cross-entropy of the K' max-pooled logits;
//! - gradients reach the model only through the subset's logits (for each group, through the
//!   class holding the group's max; ties go to the first listed class).
//!
//! Labels are mapped the same way (ImageNet class -> its position in the subset, or its
//! super-category), and only samples whose label is in the subset are evaluated
//! ([`MappedSet`]).

use super::imagefolder::EvalSet;
use super::model::{Classifier, Dims};
use crate::tensor::Tensor;
use crate::{io, Error, Result};
use std::collections::BTreeMap;
use std::path::Path;

/// Which flag built a [`ClassMap`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapKind {
    ClassSubset,
    SuperClasses,
}

/// The model's logits regrouped (see the module docs).
#[derive(Clone, Debug)]
pub struct ClassMap {
    pub kind: MapKind,
    /// Logit columns of each group, in file order.
    pub groups: Vec<Vec<usize>>,
    /// The group's name: the class's name, or the super-category.
    pub names: Vec<String>,
    /// Model class -> group.
    group_of: BTreeMap<usize, usize>,
    /// Content hash of the (resolved) mapping, for journal fingerprints.
    pub digest: String,
    /// The file it came from.
    pub source: String,
}

/// Resolves one class token: a logit index, or a class name (an ImageNet wnid for a
/// 1,000-class model, else one of the data's class folder names).
fn resolve_class(
    tok: &str,
    num_classes: usize,
    names: &[String],
    file: &Path,
    line: usize,
) -> Result<usize> {
    let c = if let Ok(i) = tok.parse::<usize>() {
        i
    } else if let Some(i) = names.iter().position(|n| n == tok) {
        i
    } else if num_classes == 1000 {
        crate::eval::assets::imagenet_wnids()
            .iter()
            .position(|w| *w == tok)
            .ok_or_else(|| {
                Error::format(
                    file,
                    format!("line {line}: '{tok}' is not an ImageNet-1K wnid nor a logit index"),
                )
            })?
    } else {
        return Err(Error::format(
            file,
            format!(
                "line {line}: '{tok}' is neither a logit index nor a class name of the data \
                 (wnids are resolved only for 1,000-class models)"
            ),
        ));
    };
    if c >= num_classes {
        return Err(Error::format(
            file,
            format!("line {line}: class {tok} is logit {c}, but the model has {num_classes}"),
        ));
    }
    Ok(c)
}

/// The non-comment lines of a list file, split on whitespace, with their line numbers.
fn lines(text: &str) -> impl Iterator<Item = (usize, Vec<&str>)> + '_ {
    text.lines().enumerate().filter_map(|(i, l)| {
        let l = l.split('#').next().unwrap_or("").trim();
        (!l.is_empty()).then(|| (i + 1, l.split_whitespace().collect()))
    })
}

impl ClassMap {
    /// `--class-subset FILE`: one class per line (wnid, class folder name or logit index).
    pub fn class_subset(
        file: &Path,
        num_classes: usize,
        class_names: &[String],
    ) -> Result<ClassMap> {
        let text = std::fs::read_to_string(file).map_err(|e| Error::io(file, e))?;
        let mut groups = Vec::new();
        let mut names = Vec::new();
        for (ln, toks) in lines(&text) {
            if toks.len() != 1 {
                return Err(Error::format(
                    file,
                    format!(
                        "line {ln}: expected one class per line, found {}",
                        toks.len()
                    ),
                ));
            }
            let c = resolve_class(toks[0], num_classes, class_names, file, ln)?;
            groups.push(vec![c]);
            names.push(toks[0].to_string());
        }
        Self::build(MapKind::ClassSubset, groups, names, file)
    }

    /// `--super-classes FILE`: `<class> <super-category>` per line; super-categories are
    /// numbered in order of first appearance.
    pub fn super_classes(
        file: &Path,
        num_classes: usize,
        class_names: &[String],
    ) -> Result<ClassMap> {
        let text = std::fs::read_to_string(file).map_err(|e| Error::io(file, e))?;
        let mut groups: Vec<Vec<usize>> = Vec::new();
        let mut names: Vec<String> = Vec::new();
        for (ln, toks) in lines(&text) {
            if toks.len() != 2 {
                return Err(Error::format(
                    file,
                    format!(
                        "line {ln}: expected `<class> <super-category>`, found {} fields",
                        toks.len()
                    ),
                ));
            }
            let c = resolve_class(toks[0], num_classes, class_names, file, ln)?;
            match names.iter().position(|n| n == toks[1]) {
                Some(g) => groups[g].push(c),
                None => {
                    names.push(toks[1].to_string());
                    groups.push(vec![c]);
                }
            }
        }
        if groups.len() < 2 {
            return Err(Error::format(
                file,
                "needs at least two super-categories (one cannot be attacked)",
            ));
        }
        Self::build(MapKind::SuperClasses, groups, names, file)
    }

    fn build(
        kind: MapKind,
        groups: Vec<Vec<usize>>,
        names: Vec<String>,
        file: &Path,
    ) -> Result<ClassMap> {
        if groups.is_empty() {
            return Err(Error::format(file, "lists no class"));
        }
        let mut group_of = BTreeMap::new();
        for (g, cols) in groups.iter().enumerate() {
            for &c in cols {
                if let Some(prev) = group_of.insert(c, g) {
                    return Err(Error::format(
                        file,
                        format!(
                            "logit {c} is listed twice ({} and {})",
                            names[prev], names[g]
                        ),
                    ));
                }
            }
        }
        let mut h = io::ContentHasher::new();
        h.update(format!("{kind:?}").as_bytes());
        for (cols, name) in groups.iter().zip(&names) {
            h.update(name.as_bytes());
            h.update_u64(cols.len() as u64);
            cols.iter().for_each(|&c| h.update_u64(c as u64));
        }
        Ok(ClassMap {
            kind,
            groups,
            names,
            group_of,
            digest: h.hex(),
            source: file.display().to_string(),
        })
    }

    /// Loads what the flags ask for (both flags: the super-categories must cover exactly the
    /// subset's classes). `None` when neither is given.
    pub fn from_flags(
        subset: Option<&Path>,
        supers: Option<&Path>,
        num_classes: usize,
        class_names: &[String],
    ) -> Result<Option<ClassMap>> {
        match (subset, supers) {
            (None, None) => Ok(None),
            (Some(s), None) => Ok(Some(Self::class_subset(s, num_classes, class_names)?)),
            (None, Some(p)) => Ok(Some(Self::super_classes(p, num_classes, class_names)?)),
            (Some(s), Some(p)) => {
                let sub = Self::class_subset(s, num_classes, class_names)?;
                let sup = Self::super_classes(p, num_classes, class_names)?;
                let a: Vec<usize> = sub.group_of.keys().copied().collect();
                let b: Vec<usize> = sup.group_of.keys().copied().collect();
                if a != b {
                    return Err(Error::flag(
                        "--super-classes",
                        format!(
                            "{} assigns {} classes, but --class-subset {} lists {}: they must \
                             name the same classes",
                            p.display(),
                            b.len(),
                            s.display(),
                            a.len()
                        ),
                    ));
                }
                Ok(Some(sup))
            }
        }
    }

    /// The group of model class `c`, `None` outside the subset.
    pub fn group_of(&self, c: usize) -> Option<usize> {
        self.group_of.get(&c).copied()
    }

    pub fn len(&self) -> usize {
        self.groups.len()
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// The flag name, for messages and reports.
    pub fn flag(&self) -> &'static str {
        match self.kind {
            MapKind::ClassSubset => "--class-subset",
            MapKind::SuperClasses => "--super-classes",
        }
    }

    /// Pools one row of K logits into K' group logits; `arg[g]` is the column chosen.
    fn pool_row(&self, z: &[f32], out: &mut Vec<f32>, arg: &mut Vec<usize>) {
        for cols in &self.groups {
            let mut best = cols[0];
            for &c in &cols[1..] {
                if z[c] > z[best] {
                    best = c;
                }
            }
            out.push(z[best]);
            arg.push(best);
        }
    }

    /// Pools `[n, K]` logits into `[n, K']`; also returns the chosen column per entry.
    pub fn pool(&self, z: &[f32], k: usize) -> (Vec<f32>, Vec<usize>) {
        let n = z.len() / k.max(1);
        let mut out = Vec::with_capacity(n * self.len());
        let mut arg = Vec::with_capacity(n * self.len());
        for row in z.chunks(k.max(1)) {
            self.pool_row(row, &mut out, &mut arg);
        }
        (out, arg)
    }

    /// The report block describing the mapping.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "flag": self.flag(), "file": self.source, "digest": self.digest,
            "groups": self.names.len(), "classes": self.group_of.len(),
            "rule": match self.kind {
                MapKind::ClassSubset => "logits restricted to the listed classes (argmax and every attack)",
                MapKind::SuperClasses => "per super-category logit = max logit of its classes; correct when the argmax over the subset falls in the true super-category; margin = max logit inside the true super-category - max logit outside it; CE on the max-pooled logits",
            },
        })
    }
}

/// A classifier whose logits are the [`ClassMap`]'s groups (see the module docs).
pub struct GroupedClassifier<'a> {
    pub inner: &'a mut dyn Classifier,
    pub map: &'a ClassMap,
}

/// The inner model's backward seed: the caller's gradient on the pooled logits goes to the
/// column each group chose, nothing to the others.
fn regrouped_seed(
    map: &ClassMap,
    k: usize,
    z: &[f32],
    seed: &mut dyn FnMut(&[f32]) -> Vec<f32>,
) -> Vec<f32> {
    let (pooled, arg) = map.pool(z, k);
    let dp = seed(&pooled);
    let mut dz = vec![0f32; z.len()];
    let g = map.len();
    for (r, row) in dp.chunks(g).enumerate() {
        for (j, &d) in row.iter().enumerate() {
            dz[r * k + arg[r * g + j]] += d;
        }
    }
    dz
}

impl Classifier for GroupedClassifier<'_> {
    fn num_classes(&self) -> usize {
        self.map.len()
    }

    fn logits(&mut self, x: &[f32], dims: Dims) -> Result<Vec<f32>> {
        let k = self.inner.num_classes();
        let z = self.inner.logits(x, dims)?;
        Ok(self.map.pool(&z, k).0)
    }

    fn logits_and_grad(
        &mut self,
        x: &[f32],
        dims: Dims,
        seed: &mut dyn FnMut(&[f32]) -> Vec<f32>,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let k = self.inner.num_classes();
        let map = self.map;
        let mut s = |z: &[f32]| regrouped_seed(map, k, z, &mut *seed);
        let (z, g) = self.inner.logits_and_grad(x, dims, &mut s)?;
        Ok((map.pool(&z, k).0, g))
    }

    fn passes(&self) -> (u64, u64) {
        self.inner.passes()
    }

    fn input_tensor(&mut self, x: &[f32], dims: Dims) -> Result<Tensor> {
        self.inner.input_tensor(x, dims)
    }

    fn input_to_host(&mut self, t: &Tensor, dims: Dims) -> Result<Vec<f32>> {
        self.inner.input_to_host(t, dims)
    }

    fn logits_of_input(&mut self, t: &Tensor, dims: Dims) -> Result<Vec<f32>> {
        let k = self.inner.num_classes();
        let z = self.inner.logits_of_input(t, dims)?;
        Ok(self.map.pool(&z, k).0)
    }

    fn logits_and_grad_of_input(
        &mut self,
        t: &Tensor,
        dims: Dims,
        seed: &mut dyn FnMut(&[f32]) -> Vec<f32>,
    ) -> Result<(Vec<f32>, Tensor)> {
        let k = self.inner.num_classes();
        let map = self.map;
        let mut s = |z: &[f32]| regrouped_seed(map, k, z, &mut *seed);
        let (z, g) = self.inner.logits_and_grad_of_input(t, dims, &mut s)?;
        Ok((map.pool(&z, k).0, g))
    }

    fn model_seconds(&self) -> f64 {
        self.inner.model_seconds()
    }
}

/// The samples of a set whose label is in the subset, labelled by group.
pub struct MappedSet<'a, S: EvalSet + ?Sized> {
    pub inner: &'a S,
    pub map: &'a ClassMap,
    /// Inner indices kept, in order.
    pub kept: Vec<usize>,
}

impl<'a, S: EvalSet + ?Sized> MappedSet<'a, S> {
    pub fn new(inner: &'a S, map: &'a ClassMap) -> Result<MappedSet<'a, S>> {
        let kept: Vec<usize> = (0..inner.len())
            .filter(|&i| map.group_of(inner.label(i)).is_some())
            .collect();
        if kept.is_empty() {
            return Err(Error::flag(
                map.flag(),
                format!(
                    "none of the {} samples of {} has a label in {} (labels are model class \
                     indices)",
                    inner.len(),
                    inner.describe(),
                    map.source
                ),
            ));
        }
        Ok(MappedSet { inner, map, kept })
    }
}

impl<S: EvalSet + ?Sized> EvalSet for MappedSet<'_, S> {
    fn len(&self) -> usize {
        self.kept.len()
    }
    fn dims(&self) -> Dims {
        self.inner.dims()
    }
    fn label(&self, i: usize) -> usize {
        let y = self.inner.label(self.kept[i]);
        // `new` kept only labels in the map.
        self.map.group_of(y).unwrap_or(usize::MAX)
    }
    fn image(&self, i: usize) -> Result<Vec<f32>> {
        self.inner.image(self.kept[i])
    }
    fn class_names(&self) -> Vec<String> {
        self.map.names.clone()
    }
    fn describe(&self) -> String {
        format!(
            "{} ({} samples with a label in {} {})",
            self.inner.describe(),
            self.kept.len(),
            self.map.flag(),
            self.map.source
        )
    }
    fn item_key(&self, i: usize, h: &mut io::ContentHasher) -> Result<()> {
        h.update_u64(self.kept[i] as u64);
        self.inner.item_key(self.kept[i], h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A linear model: logits = W x (K x D), exact gradients.
    struct Linear {
        w: Vec<f32>,
        k: usize,
    }

    impl Classifier for Linear {
        fn num_classes(&self) -> usize {
            self.k
        }
        fn logits(&mut self, x: &[f32], dims: Dims) -> Result<Vec<f32>> {
            let d = dims.len();
            Ok(x.chunks(d)
                .flat_map(|xi| {
                    (0..self.k)
                        .map(|c| (0..d).map(|j| self.w[c * d + j] * xi[j]).sum::<f32>())
                        .collect::<Vec<_>>()
                })
                .collect())
        }
        fn logits_and_grad(
            &mut self,
            x: &[f32],
            dims: Dims,
            seed: &mut dyn FnMut(&[f32]) -> Vec<f32>,
        ) -> Result<(Vec<f32>, Vec<f32>)> {
            let d = dims.len();
            let z = self.logits(x, dims)?;
            let dz = seed(&z);
            let mut g = vec![0f32; x.len()];
            for (r, gi) in g.chunks_mut(d).enumerate() {
                for c in 0..self.k {
                    let row = &self.w[c * d..(c + 1) * d];
                    for (gj, wj) in gi.iter_mut().zip(row) {
                        *gj += dz[r * self.k + c] * wj;
                    }
                }
            }
            Ok((z, g))
        }
    }

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn pooled_logits_and_gradients_follow_the_groups() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(dir.path(), "s.txt", "# animals\n0 a\n2 a\n3 b # c\n");
        let map = ClassMap::super_classes(&f, 4, &[]).unwrap();
        assert_eq!(map.groups, vec![vec![0, 2], vec![3]]);
        assert_eq!(map.group_of(1), None);
        let dims = Dims { c: 1, h: 1, w: 2 };
        // Class 1 (outside the subset) has the largest logit by far.
        let mut lin = Linear {
            w: vec![1.0, 0.0, 10.0, 10.0, 0.0, 2.0, 3.0, 0.0],
            k: 4,
        };
        let x = [1.0f32, 0.5];
        let mut g = GroupedClassifier {
            inner: &mut lin,
            map: &map,
        };
        assert_eq!(g.num_classes(), 2);
        // z = [1, 15, 1, 3]: group a = max(z0, z2) = 1 (column 0, the first), b = 3.
        assert_eq!(g.logits(&x, dims).unwrap(), vec![1.0, 3.0]);
        let mut seen = Vec::new();
        let (z, grad) = g
            .logits_and_grad(&x, dims, &mut |p: &[f32]| {
                seen = p.to_vec();
                vec![1.0, -1.0]
            })
            .unwrap();
        assert_eq!(seen, vec![1.0, 3.0], "the loss sees the pooled logits");
        assert_eq!(z, vec![1.0, 3.0]);
        // d/dx (z0 - z3) = w0 - w3 = [1 - 3, 0 - 0]: nothing flows through class 1 or 2.
        assert_eq!(grad, vec![-2.0, 0.0]);
    }

    #[test]
    fn lists_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let dup = write(dir.path(), "d.txt", "1\n1\n");
        let e = ClassMap::class_subset(&dup, 4, &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("listed twice"), "{e}");
        let big = write(dir.path(), "b.txt", "7\n");
        let e = ClassMap::class_subset(&big, 4, &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("model has 4"), "{e}");
        let one = write(dir.path(), "o.txt", "0 a\n1 a\n");
        let e = ClassMap::super_classes(&one, 4, &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("two super-categories"), "{e}");
        let names = vec!["cat".to_string(), "dog".to_string()];
        let named = write(dir.path(), "n.txt", "dog\n");
        let m = ClassMap::class_subset(&named, 2, &names).unwrap();
        assert_eq!(m.groups, vec![vec![1]]);
        // Both flags must name the same classes.
        let sub = write(dir.path(), "s.txt", "0\n1\n");
        let sup = write(dir.path(), "p.txt", "0 a\n2 b\n");
        let e = ClassMap::from_flags(Some(&sub), Some(&sup), 4, &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("same classes"), "{e}");
    }

    #[test]
    fn the_committed_partimagenet_list_has_158_classes_in_11_super_categories() {
        let p =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/subsets/partimagenet_super11.txt");
        let m = ClassMap::super_classes(&p, 1000, &[]).unwrap();
        assert_eq!(m.len(), 11);
        assert_eq!(m.groups.iter().map(|g| g.len()).sum::<usize>(), 158);
        assert_eq!(m.names[0], "Fish");
        // n01440764 (tench) is ImageNet class 0.
        assert_eq!(m.group_of(0), Some(0));
    }
}
