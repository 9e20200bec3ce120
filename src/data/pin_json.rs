//! Reading the PIN++ release: `json/<wnid>.json` (COCO style, one file per class, file names
//! `<wnid>/<file>.JPEG` of the IN-1K train set, category ids 1-based within the file),
//! `including/<wnid>.txt` (`child:parent` part names per line), `discarded_data.json` (three
//! known shapes), `category_name.json`, and the global part-id table of DESIGN.md contract C
//! (checked against the release's own part counts, `assets/pinpp/part_counts.tsv`).
//!
//! A deviation from the format is an error that names the file and the field. Its scope is the
//! smallest that keeps the rest correct: a broken image entry loses that image, a broken
//! annotation loses its image, a broken category list or top level loses the class file (a
//! category we cannot place would shift every later global id).

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
    /// Image entries left out and annotations that belong to no image, each with the field
    /// that is wrong (skipped items: counted and logged, not fatal).
    pub dropped: Vec<Skip>,
    /// Oddities that change nothing by themselves (a part name used twice).
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

fn field<'a>(o: &'a Value, at: &str, key: &str) -> std::result::Result<&'a Value, String> {
    o.get(key).ok_or_else(|| format!("{at}.{key} is missing"))
}

fn as_i64(v: &Value, at: &str, key: &str) -> std::result::Result<i64, String> {
    v.as_i64()
        .or_else(|| v.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
        .ok_or_else(|| format!("{at}.{key} = {v} is not an integer"))
}

fn as_dim(v: &Value, at: &str, key: &str) -> std::result::Result<usize, String> {
    let d = as_i64(v, at, key)?;
    if d <= 0 || d > 1 << 16 {
        return Err(format!("{at}.{key} = {d} is out of range 1..=65536"));
    }
    Ok(d as usize)
}

/// `n` followed by 8 digits: the WordNet ids that name ImageNet classes (`n01440764`).
pub fn is_wnid(s: &str) -> bool {
    s.len() == 9 && s.starts_with('n') && s[1..].bytes().all(|b| b.is_ascii_digit())
}

/// Checks an image's `file_name`: the image is `IMG_ROOT/<wnid>/<file name>` (DESIGN.md
/// contract C). The release writes the IN-1K train set's own relative path,
/// `<wnid>/<file>.JPEG`; a bare file name is the same image. A folder other than the class's
/// own wnid, or anything that is not a plain file name, is an error.
fn check_file_name(wnid: &str, at: &str, v: &Value) -> std::result::Result<String, String> {
    let s = v
        .as_str()
        .ok_or_else(|| format!("{at}.file_name = {v} is not a string"))?;
    let bad = |why: &str| {
        format!("{at}.file_name = \"{s}\": {why}; expected \"{wnid}/<file>\" or \"<file>\"")
    };
    let base = match s.split_once('/') {
        Some((dir, _)) if dir != wnid => {
            return Err(bad(&format!("folder '{dir}' is not this class's wnid")))
        }
        Some((_, base)) => base,
        None => s,
    };
    if base.is_empty() || base.contains('/') || base.contains('\\') || base.starts_with('.') {
        return Err(bad("not a plain file name"));
    }
    Ok(s.to_string())
}

/// Reads `json/<wnid>.json`.
pub fn read_class(path: &Path) -> Result<PinClass> {
    let wnid = path
        .file_stem()
        .and_then(|s| s.to_str())
        .filter(|s| is_wnid(s))
        .ok_or_else(|| {
            Error::format(
                path,
                "file name is not <wnid>.json (a wnid is n + 8 digits, e.g. n01440764.json)",
            )
        })?
        .to_string();
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let v: Value =
        serde_json::from_str(&text).map_err(|e| Error::format(path, format!("not JSON: {e}")))?;
    parse_class(&wnid, path, &v)
}

fn top_list<'a>(v: &'a Value, path: &Path, key: &str) -> Result<&'a [Value]> {
    match v.get(key) {
        Some(Value::Array(a)) => Ok(a.as_slice()),
        Some(other) => Err(Error::format(
            path,
            format!("field '{key}' is not a list (found {})", kind_of(other)),
        )),
        None => Err(Error::format(path, format!("field '{key}' is missing"))),
    }
}

/// "a string", "a number", ... for messages about a JSON value of the wrong kind.
pub fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Parses a class JSON value (see [`read_class`]).
///
/// The file itself must be a COCO-style object with `images`, `annotations` and `categories`
/// lists, and every category must have a 1-based integer `id` (unique) and a non-empty `name`:
/// otherwise the whole file is an error, because a category we cannot place would shift every
/// later global id. A bad image entry is left out, a bad annotation marks its image bad; both
/// are reported with the field that is wrong (`images[3].file_name = ...`).
pub fn parse_class(wnid: &str, path: &Path, v: &Value) -> Result<PinClass> {
    if !v.is_object() {
        return Err(Error::format(
            path,
            format!(
                "expected a COCO-style object with images, annotations, categories (found {})",
                kind_of(v)
            ),
        ));
    }
    let cats = top_list(v, path, "categories")?;
    let imgs = top_list(v, path, "images")?;
    let anns = top_list(v, path, "annotations")?;
    if cats.is_empty() {
        return Err(Error::format(path, "field 'categories' is empty"));
    }
    let mut warnings = Vec::new();
    let mut categories: Vec<(i64, String)> = Vec::new();
    let mut seen = HashSet::new();
    for (i, c) in cats.iter().enumerate() {
        let at = format!("categories[{i}]");
        let parsed = (|| -> std::result::Result<(i64, String), String> {
            let id = as_i64(field(c, &at, "id")?, &at, "id")?;
            if id < 1 {
                return Err(format!("{at}.id = {id}: category ids are 1-based"));
            }
            let name = field(c, &at, "name")?
                .as_str()
                .filter(|s| !s.trim().is_empty())
                .ok_or_else(|| format!("{at}.name is not a non-empty string"))?;
            if !seen.insert(id) {
                return Err(format!("{at}.id = {id} is listed twice"));
            }
            Ok((id, name.to_string()))
        })();
        categories.push(parsed.map_err(|e| Error::format(path, e))?);
    }
    categories.sort_by_key(|c| c.0);
    let mut names = HashSet::new();
    for (id, n) in &categories {
        if !names.insert(n.as_str()) {
            warnings.push(Skip::new(
                path,
                format!("category name '{n}' (id {id}) is used twice: including/ cannot tell them apart"),
            ));
        }
    }

    let mut dropped = Vec::new();
    let mut left_out: HashSet<i64> = HashSet::new();
    let mut images: Vec<PinImage> = Vec::with_capacity(imgs.len());
    let mut by_id: HashMap<i64, usize> = HashMap::new();
    for (i, im) in imgs.iter().enumerate() {
        let at = format!("images[{i}]");
        let parsed = (|| -> std::result::Result<PinImage, String> {
            Ok(PinImage {
                id: as_i64(field(im, &at, "id")?, &at, "id")?,
                file_name: check_file_name(wnid, &at, field(im, &at, "file_name")?)?,
                height: as_dim(field(im, &at, "height")?, &at, "height")?,
                width: as_dim(field(im, &at, "width")?, &at, "width")?,
                anns: Vec::new(),
                problem: None,
            })
        })();
        match parsed {
            Ok(p) => {
                if by_id.contains_key(&p.id) {
                    dropped.push(Skip::new(
                        path,
                        format!("{at}.id = {} is used by an earlier image", p.id),
                    ));
                    continue;
                }
                by_id.insert(p.id, images.len());
                images.push(p);
            }
            Err(e) => {
                // Its annotations are not reported again: the image is.
                if let Some(id) = im.get("id").and_then(Value::as_i64) {
                    left_out.insert(id);
                }
                dropped.push(Skip::new(path, e))
            }
        }
    }

    for (i, a) in anns.iter().enumerate() {
        let at = format!("annotations[{i}]");
        let image_id = match field(a, &at, "image_id").and_then(|x| as_i64(x, &at, "image_id")) {
            Ok(id) => id,
            Err(e) => {
                dropped.push(Skip::new(path, e));
                continue;
            }
        };
        let Some(&idx) = by_id.get(&image_id) else {
            if left_out.contains(&image_id) {
                continue;
            }
            dropped.push(Skip::new(
                path,
                format!("{at}.image_id = {image_id} is not an id in 'images'"),
            ));
            continue;
        };
        let parsed = (|| -> std::result::Result<PinAnn, String> {
            let category_id = as_i64(field(a, &at, "category_id")?, &at, "category_id")?;
            if !seen.contains(&category_id) {
                return Err(format!(
                    "{at}.category_id = {category_id} is not an id in 'categories'"
                ));
            }
            let iscrowd = match a.get("iscrowd") {
                None => false,
                Some(x) => match as_i64(x, &at, "iscrowd")? {
                    0 => false,
                    1 => true,
                    k => return Err(format!("{at}.iscrowd = {k}: expected 0 or 1")),
                },
            };
            let segmentation = Segmentation::from_json(field(a, &at, "segmentation")?)
                .map_err(|e| format!("{at}.segmentation: {e}"))?;
            Ok(PinAnn {
                category_id,
                segmentation,
                iscrowd,
            })
        })();
        let img = &mut images[idx];
        match parsed {
            Ok(p) => img.anns.push(p),
            Err(e) => {
                if img.problem.is_none() {
                    img.problem = Some(e);
                }
            }
        }
    }
    Ok(PinClass {
        wnid: wnid.to_string(),
        path: path.to_path_buf(),
        categories,
        images,
        dropped,
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

/// The readable PIN++ classes of a json directory with their part table: what `labels` and
/// `coco-export` both start from.
#[derive(Debug)]
pub struct LoadedClasses {
    /// The readable classes, in wnid order.
    pub classes: Vec<PinClass>,
    pub table: PartTable,
    /// Class files that could not be read (the global ids of later classes shift by their
    /// part counts), in wnid order.
    pub unreadable: Vec<Skip>,
    /// The comparison with the release's part counts, then each class's own warnings.
    pub warnings: Vec<Skip>,
    /// Entries the classes left out while parsing.
    pub dropped: Vec<Skip>,
}

/// Reads every `<wnid>.json` of `json_dir` (in parallel), builds the part table and collects
/// the release-comparison and per-class warnings. An unreadable class file is skipped and
/// listed; no class file at all, or none readable, is an error prefixed with `cmd`.
pub fn load_classes(json_dir: &Path, cmd: &str) -> Result<LoadedClasses> {
    use rayon::prelude::*;
    let files = class_files(json_dir)?;
    if files.is_empty() {
        return Err(Error::format(json_dir, "no <wnid>.json files"));
    }
    let parsed: Vec<std::result::Result<PinClass, Skip>> = files
        .par_iter()
        .map(|(_, p)| read_class(p).map_err(|e| Skip::from_error(p, &e)))
        .collect();
    let (mut classes, mut unreadable) = (Vec::new(), Vec::new());
    for r in parsed {
        match r {
            Ok(c) => classes.push(c),
            Err(s) => unreadable.push(s),
        }
    }
    if classes.is_empty() {
        return Err(Error::Msg(format!(
            "{cmd}: no readable class JSON in {} ({} unreadable{})",
            json_dir.display(),
            unreadable.len(),
            unreadable
                .first()
                .map(|s| format!(", e.g. {s}"))
                .unwrap_or_default()
        )));
    }
    let refs: Vec<&PinClass> = classes.iter().collect();
    let table = PartTable::from_classes(&refs);
    let mut warnings: Vec<Skip> = compare_with_release(&table)
        .into_iter()
        .map(|w| Skip::new(json_dir, w))
        .collect();
    let mut dropped = Vec::new();
    for c in &classes {
        warnings.extend(c.warnings.iter().cloned());
        dropped.extend(c.dropped.iter().cloned());
    }
    Ok(LoadedClasses {
        classes,
        table,
        unreadable,
        warnings,
        dropped,
    })
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
    /// Contract C offsets from part counts in wnid order: `first_id[c] = 1 + sum(counts[..c])`.
    /// Part names are left empty strings (only the counts are known).
    pub fn from_counts(counts: &[(String, usize)]) -> Self {
        let mut t = PartTable::default();
        let mut next = 1u32;
        for (w, n) in counts {
            t.wnids.push(w.clone());
            t.first_id.push(next);
            t.names.push(vec![String::new(); *n]);
            next += *n as u32;
        }
        t
    }
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

/// One line of `including/<wnid>.txt`: `child:parent` by part name (the child lies inside the
/// parent, e.g. `nose:head`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inclusion {
    /// 1-based line number, for messages.
    pub line: usize,
    pub child: String,
    pub parent: String,
}

/// Reads `including/<wnid>.txt`: one `child:parent` line per inclusion (blank lines allowed;
/// names are trimmed). Anything else is an error naming the file and the line.
pub fn read_including(path: &Path) -> Result<Vec<Inclusion>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse_including(path, &text)
}

/// Parses the text of an `including/<wnid>.txt` file (see [`read_including`]).
pub fn parse_including(path: &Path, text: &str) -> Result<Vec<Inclusion>> {
    if text.trim_start().starts_with(['{', '[']) {
        return Err(Error::format(
            path,
            "line 1: expected 'child:parent' part names (e.g. nose:head), found JSON",
        ));
    }
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        let parts: Vec<&str> = line.split(':').map(str::trim).collect();
        match parts.as_slice() {
            [child, parent] if !child.is_empty() && !parent.is_empty() => out.push(Inclusion {
                line: i + 1,
                child: child.to_string(),
                parent: parent.to_string(),
            }),
            _ => {
                return Err(Error::format(
                    path,
                    format!(
                        "line {}: expected 'child:parent' part names (e.g. nose:head), found \"{line}\"",
                        i + 1
                    ),
                ))
            }
        }
    }
    Ok(out)
}

/// Paint depth per part rank: 0 for parts inside nothing, 1 + depth(parent) otherwise. An
/// annotation is painted after every annotation of smaller depth, so inner parts end up over
/// their containers at any nesting level; equal depths keep JSON order (later wins).
/// A name that is not one of `names`, a part inside itself and a cycle are errors (the message
/// names the line).
pub fn paint_depths(
    names: &[String],
    pairs: &[Inclusion],
) -> std::result::Result<Vec<u32>, String> {
    let idx: HashMap<&str, usize> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let mut parent: Vec<Vec<usize>> = vec![Vec::new(); names.len()];
    for p in pairs {
        let find = |n: &str| {
            idx.get(n).copied().ok_or_else(|| {
                format!(
                    "line {}: '{n}' is not a part of this class (its parts: {})",
                    p.line,
                    names.join(", ")
                )
            })
        };
        let (c, q) = (find(&p.child)?, find(&p.parent)?);
        if c == q {
            return Err(format!("line {}: part '{}' inside itself", p.line, p.child));
        }
        parent[c].push(q);
    }
    // Depth by repeated relaxation: a chain of n parts settles within n rounds; still
    // changing after that means a cycle.
    let mut d = vec![0u32; names.len()];
    for _ in 0..=names.len() {
        let mut changed = false;
        for c in 0..names.len() {
            let want = parent[c].iter().map(|&q| d[q] + 1).max().unwrap_or(0);
            if want != d[c] {
                d[c] = want;
                changed = true;
            }
        }
        if !changed {
            return Ok(d);
        }
    }
    Err("the inclusion relations contain a cycle".into())
}

/// The inclusion file of a class in the release format: `dir/<wnid>.txt`.
pub fn including_path(dir: &Path, wnid: &str) -> PathBuf {
    dir.join(format!("{wnid}.txt"))
}

/// Paint depths of a class's parts from `including_dir/<wnid>.txt` (all 0 when the directory
/// is not given or the class has no file: the release has files only for classes with an
/// inclusion). An error names the file and line. A `<wnid>.json` in its place (the format an
/// older `mpm-data synth` wrote) is an error rather than silently ignored.
pub fn class_depths(including_dir: Option<&Path>, class: &PinClass) -> Result<Vec<u32>> {
    let names: Vec<String> = class.categories.iter().map(|x| x.1.clone()).collect();
    let Some(dir) = including_dir else {
        return Ok(vec![0; names.len()]);
    };
    let p = including_path(dir, &class.wnid);
    if !p.exists() {
        let old = dir.join(format!("{}.json", class.wnid));
        if old.exists() {
            return Err(Error::format(
                &old,
                format!(
                    "inclusion relations are read from {}.txt ('child:parent' lines, the PIN++ \
                     release format); this JSON file is not read",
                    class.wnid
                ),
            ));
        }
        return Ok(vec![0; names.len()]);
    }
    let pairs = read_including(&p)?;
    paint_depths(&names, &pairs).map_err(|e| Error::format(&p, e))
}

/// Which of the known shapes a `discarded_data.json` had.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DiscardedShape {
    /// `["n01440764_123.JPEG", "n01440764/n01440764_9.JPEG", ...]`
    Names,
    /// `[{"file_name": "n01440764/n01440764_123.JPEG", ...}, ...]`
    FileNameObjects,
    /// `{"n01440764": ["n01440764_123.JPEG", ...], ...}` (entries: names or objects with
    /// `file_name`)
    ByWnid,
}

/// `discarded_data.json`: the images to leave out. Three shapes are accepted (see
/// [`DiscardedShape`]); an entry names an image by its file name (`n01440764_123.JPEG`), its
/// stem, or `<wnid>/<file name>` (the JSON's `file_name`). Any other shape is an error naming
/// the file and the offending element.
#[derive(Clone, Debug, Default)]
pub struct Discarded {
    /// The entries as keys: `name`, or `<wnid>/<name>` when the shape gives the wnid.
    keys: HashSet<String>,
    /// The entries in file order (for the unmatched count).
    entries: Vec<String>,
    shape: Option<DiscardedShape>,
    wnids: usize,
}

impl Discarded {
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| Error::format(path, format!("not JSON: {e}")))?;
        Self::parse(path, &v)
    }

    /// Parses a `discarded_data.json` value (see [`Discarded`]).
    pub fn parse(path: &Path, v: &Value) -> Result<Self> {
        let err = |m: String| Error::format(path, m);
        // One entry: a name, or an object with a `file_name` string.
        let entry = |x: &Value, at: &str| -> std::result::Result<(String, bool), String> {
            match x {
                Value::String(s) if !s.trim().is_empty() => Ok((s.trim().to_string(), false)),
                Value::Object(o) => match o.get("file_name") {
                    Some(Value::String(s)) if !s.trim().is_empty() => {
                        Ok((s.trim().to_string(), true))
                    }
                    Some(other) => Err(format!(
                        "{at}.file_name is {}, expected a non-empty string",
                        kind_of(other)
                    )),
                    None => Err(format!("{at} is an object without 'file_name'")),
                },
                other => Err(format!(
                    "{at} is {}; expected an image name or an object with 'file_name'",
                    kind_of(other)
                )),
            }
        };
        let mut d = Discarded::default();
        match v {
            Value::Array(a) => {
                let mut objects = None;
                for (i, x) in a.iter().enumerate() {
                    let (name, is_obj) = entry(x, &format!("[{i}]")).map_err(err)?;
                    if *objects.get_or_insert(is_obj) != is_obj {
                        return Err(err(format!(
                            "[{i}] mixes names and objects with 'file_name' in one list"
                        )));
                    }
                    d.keys.insert(name.clone());
                    d.entries.push(name);
                }
                d.shape = Some(if objects == Some(true) {
                    DiscardedShape::FileNameObjects
                } else {
                    DiscardedShape::Names
                });
            }
            Value::Object(o) => {
                for (k, x) in o {
                    if !is_wnid(k) {
                        return Err(err(format!(
                            "key \"{k}\" is not a wnid (n + 8 digits): expected a map wnid -> \
                             list of image names"
                        )));
                    }
                    let Value::Array(a) = x else {
                        return Err(err(format!(
                            "[\"{k}\"] is {}, expected a list of image names",
                            kind_of(x)
                        )));
                    };
                    for (i, y) in a.iter().enumerate() {
                        let (name, _) = entry(y, &format!("[\"{k}\"][{i}]")).map_err(err)?;
                        // `<wnid>/<file>` already carries the wnid; a bare name gets it.
                        let key = if name.starts_with(&format!("{k}/")) {
                            name
                        } else {
                            format!("{k}/{name}")
                        };
                        d.keys.insert(key.clone());
                        d.entries.push(key);
                    }
                }
                d.wnids = o.len();
                d.shape = Some(DiscardedShape::ByWnid);
            }
            other => {
                return Err(err(format!(
                    "top level is {}; expected a list of image names, a list of objects with \
                     'file_name', or a map wnid -> list of image names",
                    kind_of(other)
                )))
            }
        }
        Ok(d)
    }

    /// Keys under which an image may be listed.
    fn image_keys(wnid: &str, img: &PinImage) -> [String; 5] {
        let (b, s) = (img.base_name(), img.stem());
        [
            img.file_name.clone(),
            b.to_string(),
            s.to_string(),
            format!("{wnid}/{b}"),
            format!("{wnid}/{s}"),
        ]
    }

    pub fn contains(&self, wnid: &str, img: &PinImage) -> bool {
        !self.keys.is_empty()
            && Self::image_keys(wnid, img)
                .iter()
                .any(|k| self.keys.contains(k))
    }

    /// Number of entries that name no image of `classes` (a sign of a naming mismatch), with
    /// up to 3 examples.
    pub fn unmatched(&self, classes: &[PinClass]) -> (usize, Vec<String>) {
        let mut all = HashSet::new();
        for c in classes {
            for img in &c.images {
                all.extend(Self::image_keys(&c.wnid, img));
            }
        }
        let missing: Vec<&String> = self.entries.iter().filter(|e| !all.contains(*e)).collect();
        (
            missing.len(),
            missing.iter().take(3).map(|s| s.to_string()).collect(),
        )
    }

    pub fn shape(&self) -> Option<DiscardedShape> {
        self.shape
    }

    /// What was understood, e.g. "a list of 12 image names".
    pub fn describe(&self) -> String {
        let n = self.entries.len();
        match self.shape {
            None => "no discarded list".into(),
            Some(DiscardedShape::Names) => format!("a list of {n} image names"),
            Some(DiscardedShape::FileNameObjects) => {
                format!("a list of {n} objects with 'file_name'")
            }
            Some(DiscardedShape::ByWnid) => {
                format!("a map of {} wnids -> {n} image names", self.wnids)
            }
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Part categories per class in the public PIN++ release, `(wnid, count)` sorted by wnid
/// (`assets/pinpp/part_counts.tsv`: 1,000 classes, 3,310 parts).
pub fn release_part_counts() -> Vec<(String, usize)> {
    static TSV: &str = include_str!("../../assets/pinpp/part_counts.tsv");
    TSV.lines()
        .skip(1)
        .filter_map(|l| {
            let (w, n) = l.split_once('\t')?;
            Some((w.to_string(), n.trim().parse().ok()?))
        })
        .collect()
}

/// Compares the classes read against the release's part counts: a class whose count differs
/// shifts every later global id, and a subset of the release's classes numbers its parts
/// differently from the full release. Classes unknown to the release (synthetic wnids) are
/// not compared. Returns one message per finding.
pub fn compare_with_release(table: &PartTable) -> Vec<String> {
    let release: HashMap<String, usize> = release_part_counts().into_iter().collect();
    let mut out = Vec::new();
    let mut known = 0;
    for (w, names) in table.wnids.iter().zip(&table.names) {
        if let Some(&n) = release.get(w) {
            known += 1;
            if n != names.len() {
                out.push(format!(
                    "{w}: {} part categories, the PIN++ release has {n}: global ids of every \
                     later class differ from the release's",
                    names.len()
                ));
            }
        }
    }
    if known > 0 && known < release.len() {
        out.push(format!(
            "{known} of the release's {} classes are present: global part ids are numbered over \
             these classes only (S = {}), not over the full release (S = {})",
            release.len(),
            table.num_parts() + 1,
            release.values().sum::<usize>() + 1
        ));
    }
    out
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

    const W: &str = "n01440764";

    fn cats(ids: &[(i64, &str)]) -> Value {
        Value::Array(
            ids.iter()
                .map(|(i, n)| json!({"id": i, "name": n}))
                .collect(),
        )
    }

    #[test]
    fn ranks_follow_sorted_ids_not_listing_order() {
        let v = json!({"categories": cats(&[(30, "tail"), (4, "head"), (11, "body")]),
                       "images": [], "annotations": []});
        let c = parse_class(W, Path::new("n1.json"), &v).unwrap();
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
            .starts_with("1\tn01440764\thead\n2\tn01440764\tbody\n3\tn01440764\ttail\n"));
    }

    #[test]
    fn bad_entries_name_their_field() {
        let v = json!({"categories": cats(&[(1, "a")]),
            "images": [{"id": 1, "file_name": "n01440764/x.JPEG", "height": 4, "width": 4},
                       {"id": 2, "file_name": "n01440764/y.JPEG", "height": 4, "width": 4},
                       {"id": 3, "file_name": "n01440764/z.JPEG"},
                       {"id": 4, "file_name": "w.JPEG", "height": 4, "width": 4},
                       {"id": 5, "file_name": "n01443537/v.JPEG", "height": 4, "width": 4},
                       {"id": 6, "file_name": "n01440764/u.png", "height": 4, "width": 4}],
            "annotations": [{"image_id": 1, "category_id": 1},
                            {"image_id": 2, "category_id": 1,
                             "segmentation": [[0, 0, 3, 0, 3, 3]]},
                            {"image_id": 9, "category_id": 1, "segmentation": []}]});
        let c = parse_class(W, Path::new("n1.json"), &v).unwrap();
        // A bare file name (id 4) and a non-JPEG name (id 6) are images like the release's.
        assert_eq!(c.images.len(), 4);
        assert_eq!(
            c.images[0].problem.as_deref(),
            Some("annotations[0].segmentation is missing")
        );
        assert!(c.images[1].problem.is_none());
        assert!(c.warnings.is_empty());
        let w: Vec<&str> = c.dropped.iter().map(|s| s.reason.as_str()).collect();
        assert_eq!(w.len(), 3, "{w:?}");
        assert_eq!(w[0], "images[2].height is missing");
        assert!(w[1].contains("images[4].file_name") && w[1].contains("not this class's wnid"));
        assert_eq!(w[2], "annotations[2].image_id = 9 is not an id in 'images'");
    }

    #[test]
    fn file_level_deviations_are_errors() {
        let p = Path::new("json/n01440764.json");
        let msg = |v: Value| parse_class(W, p, &v).unwrap_err().to_string();
        let ok_imgs = json!([]);
        assert!(msg(json!([])).contains("expected a COCO-style object"));
        assert!(msg(json!({"images": ok_imgs, "annotations": []}))
            .contains("field 'categories' is missing"));
        assert!(msg(json!({"categories": cats(&[(1, "a")]), "images": []}))
            .contains("field 'annotations' is missing"));
        assert!(
            msg(json!({"categories": cats(&[(1, "a")]), "images": {}, "annotations": []}))
                .contains("field 'images' is not a list (found an object)")
        );
        let e = msg(json!({"categories": cats(&[(0, "a")]), "images": [], "annotations": []}));
        assert!(e.starts_with("json/n01440764.json"), "{e}");
        assert!(
            e.contains("categories[0].id = 0: category ids are 1-based"),
            "{e}"
        );
        let e = msg(
            json!({"categories": cats(&[(2, "a"), (2, "b")]), "images": [], "annotations": []}),
        );
        assert!(e.contains("categories[1].id = 2 is listed twice"), "{e}");
        let e = msg(json!({"categories": [{"id": 1}], "images": [], "annotations": []}));
        assert!(e.contains("categories[0].name is missing"), "{e}");
        let e = msg(
            json!({"categories": [{"id": "1", "name": "a"}], "images": [],
                           "annotations": []}),
        );
        assert!(
            e.contains("categories[0].id = \"1\" is not an integer"),
            "{e}"
        );
        // The file name must be a wnid.
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("fish.json");
        std::fs::write(&f, "{}").unwrap();
        assert!(read_class(&f)
            .unwrap_err()
            .to_string()
            .contains("file name is not <wnid>.json"));
    }

    #[test]
    fn load_classes_keeps_the_readable_ones_in_wnid_order() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        assert!(load_classes(d, "labels")
            .unwrap_err()
            .to_string()
            .contains("no <wnid>.json files"));
        std::fs::write(d.join("n01443537.json"), "{\"images\": [trunc").unwrap();
        let e = load_classes(d, "coco-export").unwrap_err().to_string();
        assert!(
            e.starts_with("coco-export: no readable class JSON") && e.contains("1 unreadable"),
            "{e}"
        );
        let v = json!({"categories": cats(&[(2, "b"), (1, "a")]),
            "images": [{"id": 1, "file_name": "n01440764/x.JPEG", "height": 4, "width": 4},
                       {"id": 2, "file_name": "n09999999/y.JPEG", "height": 4, "width": 4}],
            "annotations": []});
        std::fs::write(d.join("n01440764.json"), v.to_string()).unwrap();
        std::fs::write(d.join("n01494475.json"), v.to_string()).unwrap();
        let l = load_classes(d, "labels").unwrap();
        let wnids: Vec<&str> = l.classes.iter().map(|c| c.wnid.as_str()).collect();
        assert_eq!(wnids, ["n01440764", "n01494475"]);
        assert_eq!(l.table.first_id, vec![1, 3]);
        assert_eq!(l.unreadable.len(), 1);
        assert!(l.unreadable[0].path.ends_with("n01443537.json"));
        // Images in another wnid's folder are dropped: y in both classes, x in the second.
        assert_eq!(l.dropped.len(), 3);
        // A subset of the release's classes numbers its parts differently: one warning at
        // least, naming the json folder.
        assert!(l.warnings.iter().any(|w| w.path == d), "{:?}", l.warnings);
    }

    #[test]
    fn iscrowd_must_be_0_or_1() {
        let v = json!({"categories": cats(&[(1, "a")]),
            "images": [{"id": 1, "file_name": "n01440764/x.JPEG", "height": 4, "width": 4}],
            "annotations": [{"image_id": 1, "category_id": 1, "iscrowd": 2,
                             "segmentation": [[0, 0, 3, 0, 3, 3]]}]});
        let c = parse_class(W, Path::new("n1.json"), &v).unwrap();
        assert_eq!(
            c.images[0].problem.as_deref(),
            Some("annotations[0].iscrowd = 2: expected 0 or 1")
        );
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn including_txt_and_depths() {
        let p = Path::new("including/n01440764.txt");
        let pairs = parse_including(p, "horn:head\n\n tip : horn \n").unwrap();
        assert_eq!(
            pairs[1],
            Inclusion {
                line: 3,
                child: "tip".into(),
                parent: "horn".into()
            }
        );
        let n = names(&["head", "horn", "tip", "body"]);
        assert_eq!(paint_depths(&n, &pairs).unwrap(), vec![0, 1, 2, 0]);
        // Malformed lines, unknown names, self-inclusion and cycles are errors with the line.
        for (text, want) in [
            ("horn-head\n", "line 1: expected 'child:parent'"),
            ("horn:head:x\n", "line 1: expected 'child:parent'"),
            ("horn:\n", "line 1: expected 'child:parent'"),
            ("{\"horn\": \"head\"}", "line 1: expected 'child:parent'"),
        ] {
            let e = parse_including(p, text).unwrap_err().to_string();
            assert!(e.starts_with("including/n01440764.txt"), "{e}");
            assert!(e.contains(want), "{e}");
        }
        let bad = |t: &str| paint_depths(&n, &parse_including(p, t).unwrap()).unwrap_err();
        assert!(bad("horn:head\nnose:head\n").starts_with("line 2: 'nose' is not a part"));
        assert!(bad("horn:horn\n").contains("inside itself"));
        assert!(bad("horn:head\nhead:tip\ntip:horn\n").contains("cycle"));
    }

    #[test]
    fn discarded_shapes() {
        let p = Path::new("discarded_data.json");
        let img = |f: &str| PinImage {
            id: 1,
            file_name: f.into(),
            height: 1,
            width: 1,
            anns: vec![],
            problem: None,
        };
        let a = img("n01440764/n01440764_1.JPEG");
        let b = img("n01440764/n01440764_2.JPEG");
        let names = Discarded::parse(p, &json!(["n01440764_1.JPEG"])).unwrap();
        assert_eq!(names.shape(), Some(DiscardedShape::Names));
        assert_eq!(names.describe(), "a list of 1 image names");
        assert!(names.contains(W, &a) && !names.contains(W, &b));
        let objs = Discarded::parse(
            p,
            &json!([{"file_name": "n01440764/n01440764_2.JPEG", "id": 7}]),
        )
        .unwrap();
        assert_eq!(objs.shape(), Some(DiscardedShape::FileNameObjects));
        assert!(objs.contains(W, &b) && !objs.contains(W, &a));
        let map = Discarded::parse(
            p,
            &json!({"n01440764": ["n01440764_1", "n01440764/n01440764_2.JPEG"],
                    "n01443537": []}),
        )
        .unwrap();
        assert_eq!(map.describe(), "a map of 2 wnids -> 2 image names");
        assert!(map.contains(W, &a) && map.contains(W, &b));
        // The wnid of the map restricts the match.
        assert!(!map.contains("n01443537", &img("n01443537/n01440764_1.JPEG")));
        for (v, want) in [
            (json!(3), "top level is a number"),
            (json!([1]), "[0] is a number"),
            (
                json!([{"name": "x"}]),
                "[0] is an object without 'file_name'",
            ),
            (
                json!(["a.JPEG", {"file_name": "b"}]),
                "[1] mixes names and objects",
            ),
            (json!({"fish": ["a"]}), "key \"fish\" is not a wnid"),
            (json!({"n01440764": "a"}), "[\"n01440764\"] is a string"),
            (json!({"n01440764": [null]}), "[\"n01440764\"][0] is null"),
        ] {
            let e = Discarded::parse(p, &v).unwrap_err().to_string();
            assert!(
                e.starts_with("discarded_data.json") && e.contains(want),
                "{e}"
            );
        }
    }

    /// Contract C on the release's own counts (a committed copy, assets/pinpp): 1,000 classes,
    /// 3,310 parts, S = 3,311; offsets are running sums over the sorted wnids.
    #[test]
    fn release_counts_give_s_3311() {
        let counts = release_part_counts();
        assert_eq!(counts.len(), 1000);
        assert!(counts.windows(2).all(|w| w[0].0 < w[1].0), "sorted wnids");
        assert!(counts
            .iter()
            .all(|(w, n)| is_wnid(w) && (1..=9).contains(n)));
        let t = PartTable::from_counts(&counts);
        assert_eq!(t.num_parts(), 3310);
        assert_eq!(t.num_parts() + 1, 3311);
        assert_eq!(t.first_id[0], 1);
        // n01440764 (tench) has 4 parts, so n01443537 starts at 5; the last class ends at 3310.
        assert_eq!((t.wnids[1].as_str(), t.first_id[1]), ("n01443537", 5));
        let last = t.ranges()[999];
        assert_eq!(last.1, 3311);
        let mut next = 1;
        for (c, (_, n)) in counts.iter().enumerate() {
            assert_eq!(t.first_id[c], next);
            next += *n as u32;
        }
        assert_eq!(t.locate(3310).map(|x| x.0), Some(999));
        assert_eq!(t.locate(3311), None);
        assert!(compare_with_release(&t).is_empty());
        // A subset or a class with another count is reported.
        let sub = PartTable::from_counts(&counts[..2]);
        let m = compare_with_release(&sub);
        assert_eq!(m.len(), 1);
        assert!(m[0].contains("2 of the release's 1000 classes") && m[0].contains("S = 9"));
        let mut off = counts.clone();
        off[0].1 = 3;
        let m = compare_with_release(&PartTable::from_counts(&off));
        assert!(m[0].starts_with("n01440764: 3 part categories, the PIN++ release has 4"));
    }
}
