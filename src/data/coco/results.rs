//! Streaming reader for COCO results files: a JSON list of detections
//! `{"image_id", "category_id", "score", "segmentation", ["bbox"], ["scores"]}` as detectron2's
//! `COCOEvaluator` and mmdetection's `results2json` write them, of any length.
//!
//! The list is walked element by element through serde's sequence visitor: one detection is
//! in memory at a time (plus whatever the caller keeps), so a results file for the full IN-1K
//! train set needs no more memory than its largest record. A record that is not a usable
//! detection (a field missing or of the wrong type, a malformed RLE) is handed to the caller as
//! a reason, to be counted; only a file that is not a JSON list stops the read.

use std::fmt;
use std::io::BufReader;
use std::path::Path;

use serde::de::{DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde_json::Value;

use crate::data::rasterise::Segmentation;
use crate::{Error, Result};

/// One detection as read (segmentation parsed, not yet rasterised: polygons need the image
/// size, which only the image table knows).
#[derive(Clone, Debug)]
pub struct RawDet {
    /// Position in the file (0-based): the tie-break of equal scores.
    pub index: u64,
    pub image_id: i64,
    pub category_id: i64,
    pub score: f64,
    pub segmentation: Segmentation,
    /// The extended form: a score per part category (global ids 1..=K at 0..K), optionally
    /// followed by background.
    pub scores: Option<Vec<f32>>,
}

fn int(v: &Value, key: &str) -> std::result::Result<i64, String> {
    match v {
        Value::Null => Err(format!("'{key}' is missing")),
        _ => v
            .as_i64()
            .or_else(|| v.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
            .ok_or_else(|| format!("'{key}' = {v} is not an integer")),
    }
}

/// Turns one list element into a detection, or a reason it is not one.
pub fn parse_record(index: u64, v: &Value) -> std::result::Result<RawDet, String> {
    let o = v
        .as_object()
        .ok_or_else(|| format!("record is {}, not an object", super::kind(v)))?;
    let get = |k: &str| o.get(k).unwrap_or(&Value::Null);
    let image_id = int(get("image_id"), "image_id")?;
    let category_id = int(get("category_id"), "category_id")?;
    let score = match get("score") {
        Value::Null => return Err("'score' is missing".into()),
        s => s
            .as_f64()
            .filter(|f| f.is_finite())
            .ok_or_else(|| format!("'score' = {s} is not a finite number"))?,
    };
    let segmentation = match get("segmentation") {
        Value::Null => return Err("'segmentation' is missing".into()),
        s => Segmentation::from_json(s).map_err(|e| format!("malformed segmentation: {e}"))?,
    };
    let scores = match get("scores") {
        Value::Null => None,
        Value::Array(a) => Some(
            a.iter()
                .map(|x| {
                    x.as_f64()
                        .filter(|f| f.is_finite())
                        .map(|f| f as f32)
                        .ok_or_else(|| format!("'scores' holds {x}, not a finite number"))
                })
                .collect::<std::result::Result<Vec<f32>, String>>()?,
        ),
        s => return Err(format!("'scores' is {}, not a list", super::kind(s))),
    };
    Ok(RawDet {
        index,
        image_id,
        category_id,
        score,
        segmentation,
        scores,
    })
}

struct Each<'f, F> {
    f: &'f mut F,
    /// An error the callback returned: it stops the walk and is reported as itself.
    stop: &'f mut Option<Error>,
    count: &'f mut u64,
}

impl<'de, F> Visitor<'de> for Each<'_, F>
where
    F: FnMut(std::result::Result<RawDet, String>) -> Result<()>,
{
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON list of detections (COCO results format)")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<(), A::Error> {
        while let Some(v) = seq.next_element::<Value>()? {
            let rec = parse_record(*self.count, &v);
            *self.count += 1;
            if let Err(e) = (self.f)(rec) {
                *self.stop = Some(e);
                return Err(serde::de::Error::custom("stopped by the caller"));
            }
        }
        Ok(())
    }
}

impl<'de, F> DeserializeSeed<'de> for Each<'_, F>
where
    F: FnMut(std::result::Result<RawDet, String>) -> Result<()>,
{
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

/// Streams the detections of a results file to `f` in file order (each as a detection or the
/// reason the record is unusable). Returns the number of records. A file that is not a JSON
/// list (or is cut off) is an error naming the file and how many records were read first; an
/// error returned by `f` stops the walk and is returned as is.
pub fn stream(
    path: &Path,
    mut f: impl FnMut(std::result::Result<RawDet, String>) -> Result<()>,
) -> Result<u64> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut de = serde_json::Deserializer::from_reader(BufReader::with_capacity(1 << 20, file));
    let mut stop = None;
    let mut count = 0u64;
    let res = Each {
        f: &mut f,
        stop: &mut stop,
        count: &mut count,
    }
    .deserialize(&mut de)
    .and_then(|()| de.end());
    if let Some(e) = stop {
        return Err(e);
    }
    res.map_err(|e| {
        Error::format(
            path,
            format!(
                "not a COCO results file (a JSON list of detections): {e} (after {count} \
                 record(s))"
            ),
        )
    })?;
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_records_and_reports_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.json");
        std::fs::write(
            &p,
            r#"[{"image_id": 1, "category_id": 2, "score": 0.5,
                 "segmentation": {"size": [2, 2], "counts": "04"}},
                {"image_id": 1, "category_id": 2},
                7,
                {"image_id": 2, "category_id": 1, "score": 0.1, "scores": [0.1, 0.2],
                 "segmentation": [[0, 0, 1, 0, 1, 1]], "bbox": [0, 0, 1, 1]}]"#,
        )
        .unwrap();
        let mut ok = Vec::new();
        let mut bad = Vec::new();
        let n = stream(&p, |r| {
            match r {
                Ok(d) => ok.push(d),
                Err(e) => bad.push(e),
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(n, 4);
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[1].index, 3);
        assert_eq!(ok[1].scores.as_deref(), Some(&[0.1f32, 0.2][..]));
        assert_eq!(
            bad,
            vec!["'score' is missing", "record is a number, not an object"]
        );
        std::fs::write(&p, r#"{"annotations": []}"#).unwrap();
        let e = stream(&p, |_| Ok(())).unwrap_err().to_string();
        assert!(e.contains("not a COCO results file"), "{e}");
        std::fs::write(&p, r#"[{"image_id": 1}, "#).unwrap();
        let e = stream(&p, |_| Ok(())).unwrap_err().to_string();
        assert!(e.contains("after 1 record"), "{e}");
        std::fs::write(&p, "[]").unwrap();
        assert_eq!(stream(&p, |_| Ok(())).unwrap(), 0);
    }
}
