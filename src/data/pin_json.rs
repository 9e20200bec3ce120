//! Reading the PIN++ distribution: `json/<wnid>.json` (COCO style, one file per class),
//! `including/<wnid>.json`, `discarded_data.json`, `category_name.json`, and the global part-id
//! table of DESIGN.md contract C.
//!
//! Parsing is lenient per item: a broken image or annotation entry marks that one image as bad
//! (with a reason) and the rest of the class is kept; only a file that is not JSON, or has no
//! readable `categories`/`images`, loses the whole class.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::rasterise::Segmentation;
use super::report::Skip;
use crate::{Error, Result};

/// One annotation (one part mask) of an image.
#[derive(Clone, Debug)]
pub struct PinAnn {
    pub category_id: i64,
    pub segmentation: Segmentation,
    pub iscrowd: bool,
}

/// One image entry with its annotations in JSON order.
#[derive(Clone, Debug)]
pub struct PinImage {
    pub id: i64,
    /// As written in the JSON (may carry a `<wnid>/` prefix; see [`PinImage::base_name`]).
    pub file_name: String,
    pub height: usize,
    pub width: usize,
    pub anns: Vec<PinAnn>,
    /// Set when an annotation of this image could not be read: the image is skipped.
    pub problem: Option<String>,
}

impl PinImage {
    /// File name without any directory part: `n01440764_10026.JPEG`.
    pub fn base_name(&self) -> &str {
        self.file_name.rsplit('/').next().unwrap_or(&self.file_name)
    }
    /// Base name without extension: the label map is `<stem>.png`.
    pub fn stem(&self) -> &str {
        let b = self.base_name();
        match b.rfind('.') {
            Some(i) if i > 0 => &b[..i],
            _ => b,
        }
    }
}

/// One class file.
#[derive(Clone, Debug)]
pub struct PinClass {
    pub wnid: String,
    pub path: PathBuf,
    /// `(category id, part name)`, sorted by id: the index is the part's rank in its class.
    pub categories: Vec<(i64, String)>,
    pub images: Vec<PinImage>,
    /// Entries that could not be attached to an image (counted and logged, not fatal).
    pub warnings: Vec<Skip>,
}

impl PinClass {
    /// Rank of a category id within this class (0-based), if the id is one of its categories.
    pub fn rank(&self, category_id: i64) -> Option<usize> {
        self.categories
            .binary_search_by_key(&category_id, |c| c.0)
            .ok()
    }
}

fn field<'a>(o: &'a Value, key: &str) -> std::result::Result<&'a Value, String> {
    o.get(key).ok_or_else(|| format!("missing field '{key}'"))
}

fn as_i64(v: &Value, key: &str) -> std::result::Result<i64, String> {
    v.as_i64()
        .or_else(|| v.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
        .ok_or_else(|| format!("field '{key}' is not an integer"))
}

fn as_dim(v: &Value, key: &str) -> std::result::Result<usize, String> {
    let d = as_i64(v, key)?;
    if d <= 0 || d > 1 << 16 {
        return Err(format!("field '{key}' = {d} out of range 1..=65536"));
    }
    Ok(d as usize)
}

/// Reads `json/<wnid>.json`.
pub fn read_class(path: &Path) -> Result<PinClass> {
    let wnid = path
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or_else(|| Error::format(path, "file name is not a wnid"))?
        .to_string();
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let v: Value =
        serde_json::from_str(&text).map_err(|e| Error::format(path, format!("not JSON: {e}")))?;
    parse_class(&wnid, path, &v)
}

/// Parses a class JSON value (see [`read_class`]).
pub fn parse_class(wnid: &str, path: &Path, v: &Value) -> Result<PinClass> {
    let cats = v
        .get("categories")
        .and_then(|c| c.as_array())
        .ok_or_else(|| Error::format(path, "missing 'categories' list"))?;
    let mut warnings = Vec::new();
    let mut categories: Vec<(i64, String)> = Vec::new();
    let mut seen = HashSet::new();
    for (i, c) in cats.iter().enumerate() {
        let id = field(c, "id").and_then(|x| as_i64(x, "id"));
        let name = field(c, "name").and_then(|x| {
            x.as_str()
                .map(str::to_string)
                .ok_or_else(|| "field 'name' is not a string".to_string())
        });
        match (id, name) {
            (Ok(id), Ok(name)) => {
                if seen.insert(id) {
                    categories.push((id, name));
                } else {
                    warnings.push(Skip::new(path, format!("category id {id} listed twice")));
                }
            }
            (Err(e), _) | (_, Err(e)) => {
                // A category we cannot identify would shift every later global id: fatal.
                return Err(Error::format(path, format!("categories[{i}]: {e}")));
            }
        }
    }
    categories.sort_by_key(|c| c.0);

    let imgs = v
        .get("images")
        .and_then(|c| c.as_array())
        .ok_or_else(|| Error::format(path, "missing 'images' list"))?;
    let mut images: Vec<PinImage> = Vec::with_capacity(imgs.len());
    let mut by_id: HashMap<i64, usize> = HashMap::new();
    for (i, im) in imgs.iter().enumerate() {
        let parsed = (|| -> std::result::Result<PinImage, String> {
            Ok(PinImage {
                id: as_i64(field(im, "id")?, "id")?,
                file_name: field(im, "file_name")?
                    .as_str()
                    .filter(|s| !s.is_empty() && !s.contains(".."))
                    .ok_or("field 'file_name' is not a usable file name")?
                    .to_string(),
                height: as_dim(field(im, "height")?, "height")?,
                width: as_dim(field(im, "width")?, "width")?,
                anns: Vec::new(),
                problem: None,
            })
        })();
        match parsed {
            Ok(p) => {
                if by_id.contains_key(&p.id) {
                    warnings.push(Skip::new(
                        path,
                        format!("images[{i}]: duplicate id {}", p.id),
                    ));
                    continue;
                }
                by_id.insert(p.id, images.len());
                images.push(p);
            }
            Err(e) => warnings.push(Skip::new(path, format!("images[{i}]: {e}"))),
        }
    }

    let anns = match v.get("annotations") {
        Some(Value::Array(a)) => a.as_slice(),
        None => &[],
        Some(_) => return Err(Error::format(path, "'annotations' is not a list")),
    };
    for (i, a) in anns.iter().enumerate() {
        let image_id = match field(a, "image_id").and_then(|x| as_i64(x, "image_id")) {
            Ok(id) => id,
            Err(e) => {
                warnings.push(Skip::new(path, format!("annotations[{i}]: {e}")));
                continue;
            }
        };
        let Some(&idx) = by_id.get(&image_id) else {
            warnings.push(Skip::new(
                path,
                format!("annotations[{i}]: image_id {image_id} is not in 'images'"),
            ));
            continue;
        };
        let parsed = (|| -> std::result::Result<PinAnn, String> {
            let category_id = as_i64(field(a, "category_id")?, "category_id")?;
            if !seen.contains(&category_id) {
                return Err(format!("category_id {category_id} is not in 'categories'"));
            }
            Ok(PinAnn {
                category_id,
                segmentation: Segmentation::from_json(field(a, "segmentation")?)?,
                iscrowd: a.get("iscrowd").and_then(|x| x.as_i64()).unwrap_or(0) != 0,
            })
        })();
        let img = &mut images[idx];
        match parsed {
            Ok(p) => img.anns.push(p),
            Err(e) => {
                if img.problem.is_none() {
                    img.problem = Some(format!("annotations[{i}]: {e}"));
                }
            }
        }
    }
    Ok(PinClass {
        wnid: wnid.to_string(),
        path: path.to_path_buf(),
        categories,
        images,
        warnings,
    })
}

/// The `*.json` files of a json directory, sorted by wnid (file stem).
pub fn class_files(json_dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let rd = std::fs::read_dir(json_dir).map_err(|e| Error::io(json_dir, e))?;
    let mut out = Vec::new();
    for e in rd {
        let e = e.map_err(|e| Error::io(json_dir, e))?;
        let p = e.path();
        if p.extension().and_then(|x| x.to_str()) == Some("json") {
            if let Some(stem) = p.file_stem().and_then(|s| s.to_str()) {
                out.push((stem.to_string(), p));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Global part ids (contract C): class `c` (in wnid order) owns ids
/// `first_id[c] .. first_id[c] + n_parts[c]`, `first_id[0] = 1`; 0 is background.
#[derive(Clone, Debug, Default)]
pub struct PartTable {
    pub wnids: Vec<String>,
    pub first_id: Vec<u32>,
    /// Part names per class, in rank order.
    pub names: Vec<Vec<String>>,
}

impl PartTable {
    pub fn from_classes(classes: &[&PinClass]) -> Self {
        let mut t = PartTable::default();
        let mut next = 1u32;
        for c in classes {
            t.wnids.push(c.wnid.clone());
            t.first_id.push(next);
            t.names
                .push(c.categories.iter().map(|x| x.1.clone()).collect());
            next += c.categories.len() as u32;
        }
        t
    }
    /// Number of part classes K (S = K + 1 with background).
    pub fn num_parts(&self) -> usize {
        self.names.iter().map(Vec::len).sum()
    }
    /// `(class index, rank)` of a global id (> 0).
    pub fn locate(&self, id: u32) -> Option<(usize, usize)> {
        if id == 0 {
            return None;
        }
        let c = self.first_id.partition_point(|&f| f <= id).checked_sub(1)?;
        let r = (id - self.first_id[c]) as usize;
        (r < self.names[c].len()).then_some((c, r))
    }
    /// Global-id ranges per class: `(first, end)` half-open, for the Category Filter.
    pub fn ranges(&self) -> Vec<(u32, u32)> {
        self.first_id
            .iter()
            .zip(&self.names)
            .map(|(&f, n)| (f, f + n.len() as u32))
            .collect()
    }
    /// `parts.tsv`: `global_id<TAB>wnid<TAB>part name`, no header.
    pub fn to_tsv(&self) -> String {
        let mut s = String::new();
        for (c, w) in self.wnids.iter().enumerate() {
            for (r, n) in self.names[c].iter().enumerate() {
                s.push_str(&format!(
                    "{}\t{}\t{}\n",
                    self.first_id[c] as usize + r,
                    w,
                    n
                ));
            }
        }
        s
    }
    /// Reads `parts.tsv` back (wnids in first-appearance order, which is wnid order).
    pub fn from_tsv(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut t = PartTable::default();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let f: Vec<&str> = line.splitn(3, '\t').collect();
            let id: u32 = f
                .first()
                .and_then(|x| x.parse().ok())
                .filter(|_| f.len() == 3)
                .ok_or_else(|| {
                    Error::format(path, format!("line {}: expected id\\twnid\\tname", i + 1))
                })?;
            if t.wnids.last().map(String::as_str) != Some(f[1]) {
                t.wnids.push(f[1].to_string());
                t.first_id.push(id);
                t.names.push(Vec::new());
            }
            let c = t.wnids.len() - 1;
            if id != t.first_id[c] + t.names[c].len() as u32 {
                return Err(Error::format(
                    path,
                    format!("line {}: ids not consecutive", i + 1),
                ));
            }
            t.names[c].push(f[2].to_string());
        }
        Ok(t)
    }
}

/// `including/<wnid>.json`: inner part name -> container part name(s). Accepted shapes:
/// `{"horn": "head"}`, `{"horn": ["head"]}`, `[["horn", "head"], ...]`,
/// `[{"inner": "horn", "container": "head"}, ...]`.
pub fn read_including(path: &Path) -> Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let v: Value =
        serde_json::from_str(&text).map_err(|e| Error::format(path, format!("not JSON: {e}")))?;
    let bad = || {
        Error::format(
            path,
            "expected {inner: container} or [[inner, container], ...]",
        )
    };
    let mut out = Vec::new();
    match &v {
        Value::Object(o) => {
            for (k, val) in o {
                match val {
                    Value::String(s) => out.push((k.clone(), s.clone())),
                    Value::Array(a) => {
                        for x in a {
                            out.push((k.clone(), x.as_str().ok_or_else(bad)?.to_string()));
                        }
                    }
                    _ => return Err(bad()),
                }
            }
        }
        Value::Array(a) => {
            for x in a {
                match x {
                    Value::Array(p) if p.len() == 2 => out.push((
                        p[0].as_str().ok_or_else(bad)?.to_string(),
                        p[1].as_str().ok_or_else(bad)?.to_string(),
                    )),
                    Value::Object(o) => out.push((
                        o.get("inner")
                            .and_then(|s| s.as_str())
                            .ok_or_else(bad)?
                            .to_string(),
                        o.get("container")
                            .and_then(|s| s.as_str())
                            .ok_or_else(bad)?
                            .to_string(),
                    )),
                    _ => return Err(bad()),
                }
            }
        }
        _ => return Err(bad()),
    }
    Ok(out)
}

/// Paint depth per part rank: 0 for parts inside nothing, 1 + depth(container) otherwise. An
/// annotation is painted after every annotation of smaller depth, so inner parts end up over
/// their containers at any nesting level; equal depths keep JSON order (later wins).
/// Unknown names and cycles are reported in the returned warnings.
pub fn paint_depths(names: &[String], pairs: &[(String, String)]) -> (Vec<u32>, Vec<String>) {
    let idx: HashMap<&str, usize> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let mut parent: Vec<Vec<usize>> = vec![Vec::new(); names.len()];
    let mut warnings = Vec::new();
    for (inner, cont) in pairs {
        match (idx.get(inner.as_str()), idx.get(cont.as_str())) {
            (Some(&i), Some(&c)) if i != c => parent[i].push(c),
            _ => warnings.push(format!("inclusion {inner} -> {cont}: unknown part name")),
        }
    }
    fn depth(
        i: usize,
        parent: &[Vec<usize>],
        memo: &mut [Option<u32>],
        stack: &mut Vec<usize>,
    ) -> u32 {
        if let Some(d) = memo[i] {
            return d;
        }
        if stack.contains(&i) {
            return 0; // cycle: broken here
        }
        stack.push(i);
        let d = parent[i]
            .iter()
            .map(|&p| 1 + depth(p, parent, memo, stack))
            .max()
            .unwrap_or(0);
        stack.pop();
        memo[i] = Some(d);
        d
    }
    let mut memo = vec![None; names.len()];
    let mut d = Vec::with_capacity(names.len());
    for i in 0..names.len() {
        let mut stack = Vec::new();
        d.push(depth(i, &parent, &mut memo, &mut stack));
    }
    if d.iter().any(|&x| x as usize >= names.len().max(1)) {
        warnings.push("inclusion relations contain a cycle".into());
    }
    (d, warnings)
}

/// `discarded_data.json`: every string in the file (at any depth) names a discarded image, as a
/// file name (`n01440764_123.JPEG`), a stem, or `<wnid>/<file name>`; object keys that are
/// wnids with list values are read as `<wnid>/<entry>` too.
#[derive(Clone, Debug, Default)]
pub struct Discarded(HashSet<String>);

impl Discarded {
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| Error::format(path, format!("not JSON: {e}")))?;
        let mut set = HashSet::new();
        fn walk(v: &Value, prefix: Option<&str>, set: &mut HashSet<String>) {
            match v {
                Value::String(s) => {
                    set.insert(s.clone());
                    if let Some(p) = prefix {
                        set.insert(format!("{p}/{s}"));
                    }
                }
                Value::Array(a) => a.iter().for_each(|x| walk(x, prefix, set)),
                Value::Object(o) => o.iter().for_each(|(k, x)| walk(x, Some(k), set)),
                _ => {}
            }
        }
        walk(&v, None, &mut set);
        Ok(Discarded(set))
    }
    pub fn contains(&self, wnid: &str, img: &PinImage) -> bool {
        let b = img.base_name();
        self.0.contains(&img.file_name)
            || self.0.contains(b)
            || self.0.contains(img.stem())
            || self.0.contains(&format!("{wnid}/{b}"))
            || self.0.contains(&format!("{wnid}/{}", img.stem()))
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// `category_name.json`: wnid -> human-readable class name (a string, or a list whose first
/// string is used). Other shapes are ignored with an error.
pub fn read_category_names(path: &Path) -> Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let v: Value =
        serde_json::from_str(&text).map_err(|e| Error::format(path, format!("not JSON: {e}")))?;
    let o = v
        .as_object()
        .ok_or_else(|| Error::format(path, "expected an object wnid -> name"))?;
    let mut out = BTreeMap::new();
    for (k, x) in o {
        let name = match x {
            Value::String(s) => s.clone(),
            Value::Array(a) => a
                .iter()
                .find_map(|s| s.as_str())
                .unwrap_or_default()
                .to_string(),
            other => other.to_string(),
        };
        out.insert(k.clone(), name);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ranks_follow_sorted_ids_not_listing_order() {
        let v = json!({"categories": [{"id": 30, "name": "tail"}, {"id": 4, "name": "head"},
                                      {"id": 11, "name": "body"}],
                       "images": [], "annotations": []});
        let c = parse_class("n1", Path::new("n1.json"), &v).unwrap();
        assert_eq!(c.rank(4), Some(0));
        assert_eq!(c.rank(11), Some(1));
        assert_eq!(c.rank(30), Some(2));
        assert_eq!(c.rank(5), None);
        let t = PartTable::from_classes(&[&c, &c]);
        assert_eq!(t.first_id, vec![1, 4]);
        assert_eq!(t.locate(5), Some((1, 1)));
        assert_eq!(t.locate(7), None);
        assert!(t
            .to_tsv()
            .starts_with("1\tn1\thead\n2\tn1\tbody\n3\tn1\ttail\n"));
    }

    #[test]
    fn bad_annotation_marks_only_its_image() {
        let v = json!({"categories": [{"id": 1, "name": "a"}],
            "images": [{"id": 1, "file_name": "x.JPEG", "height": 4, "width": 4},
                       {"id": 2, "file_name": "y.JPEG", "height": 4, "width": 4},
                       {"id": 3, "file_name": "z.JPEG"}],
            "annotations": [{"image_id": 1, "category_id": 1},
                            {"image_id": 2, "category_id": 1,
                             "segmentation": [[0, 0, 3, 0, 3, 3]]},
                            {"image_id": 9, "category_id": 1, "segmentation": []}]});
        let c = parse_class("n1", Path::new("n1.json"), &v).unwrap();
        assert_eq!(c.images.len(), 2);
        assert!(c.images[0].problem.is_some());
        assert!(c.images[1].problem.is_none());
        assert_eq!(c.warnings.len(), 2); // image 3 (no size), annotation of image 9
    }

    #[test]
    fn depths_nest() {
        let names: Vec<String> = ["head", "horn", "tip", "body"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let pairs = vec![
            ("horn".to_string(), "head".to_string()),
            ("tip".to_string(), "horn".to_string()),
        ];
        let (d, w) = paint_depths(&names, &pairs);
        assert_eq!(d, vec![0, 1, 2, 0]);
        assert!(w.is_empty());
    }
}
