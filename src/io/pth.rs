//! PyTorch `.pth`/`.pt` checkpoints: the zip format written by `torch.save` since 1.6 and the
//! legacy sequential-pickle format (`_use_new_zipfile_serialization=False`).
//!
//! Zip layout: `<archive>/data.pkl` (the pickled object), `<archive>/data/<key>` (one raw
//! storage per key, in `<archive>/byteorder`, little-endian when absent), `<archive>/version`.
//! Legacy layout: five pickles back to back (magic number, protocol 1001, sys-info dict, the
//! object, the sorted list of storage keys), then per key an i64 element count and the raw
//! storage bytes.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::Path;
use std::rc::Rc;

use super::elements::{decode, Stored};
use super::host::{HostData, HostTensor, NamedTensors};
use super::pickle::{
    unpickle, Elem, PickleWriter, StorageRef, TensorRef, TorchPersistentLoad, Value,
};
use crate::{Error, Result};

/// First bytes of a legacy-format file: PROTO 2, LONG1 of the magic number 0x1950a86a20f9469cfc6c.
pub(crate) const LEGACY_MAGIC: &[u8] = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19";

/// Budget of one load, beyond the bytes the file itself holds: views may expand (stride-0
/// broadcasts from `expand`, overlapping views of one storage) to at most this many elements
/// more than the storages they read, summed over the tensors loaded. Guards against a 4-byte
/// storage claiming a terabyte-sized broadcast view.
pub(crate) const MAX_BROADCAST_EXTRA_NUMEL: u64 = 1 << 24;

/// Largest `data.pkl` record (decompressed) we read: a state dict's pickle is kilobytes to a
/// few megabytes; the bound stops a small deflated record expanding to gigabytes.
pub(crate) const MAX_PICKLE_BYTES: u64 = 64 << 20;

/// A compressed storage record may expand at most this many times (torch.save stores
/// storages uncompressed; a re-zipped file of weights compresses by a few percent) once it is
/// larger than [`RATIO_FREE_BYTES`].
pub(crate) const MAX_DECOMPRESSION_RATIO: u64 = 64;
pub(crate) const RATIO_FREE_BYTES: u64 = 16 << 20;

/// Where the raw bytes of storages come from.
enum Storages {
    Zip {
        archive: zip::ZipArchive<BufReader<File>>,
        prefix: String,
        big_endian: bool,
    },
    Legacy {
        bytes: Vec<u8>,
        /// key -> byte range of the storage data.
        ranges: HashMap<String, (usize, usize)>,
        big_endian: bool,
    },
}

/// A parsed checkpoint: the object tree plus lazy access to storages.
pub(crate) struct Checkpoint {
    pub root: Value,
    storages: Storages,
    cache: HashMap<String, Rc<Vec<u8>>>,
    path: std::path::PathBuf,
}

impl Checkpoint {
    pub(crate) fn open(path: &Path) -> Result<Checkpoint> {
        let mut head = [0u8; 16];
        let n = {
            let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
            read_up_to(&mut f, &mut head).map_err(|e| Error::io(path, e))?
        };
        let head = &head[..n];
        if head.starts_with(b"PK") {
            Self::open_zip(path)
        } else if head.starts_with(LEGACY_MAGIC) {
            Self::open_legacy(path)
        } else {
            Err(Error::format(
                path,
                "not a PyTorch checkpoint: neither a zip archive (torch.save since 1.6) nor the \
                 legacy pickle format",
            ))
        }
    }

    fn open_zip(path: &Path) -> Result<Checkpoint> {
        let f = File::open(path).map_err(|e| Error::io(path, e))?;
        let mut archive = zip::ZipArchive::new(BufReader::new(f))
            .map_err(|e| Error::format(path, format!("bad zip archive: {e}")))?;
        let pkl = archive
            .file_names()
            .filter_map(|n| n.ok().map(|c| c.into_owned()))
            .filter(|n| *n == "data.pkl" || n.ends_with("/data.pkl"))
            .min_by_key(|n| n.len())
            .ok_or_else(|| {
                Error::format(path, "zip archive has no data.pkl: not a torch.save file")
            })?;
        let prefix = pkl[..pkl.len() - "data.pkl".len()].to_string();
        let pkl_size = archive
            .by_name(&pkl)
            .map(|e| e.size())
            .map_err(|e| Error::format(path, format!("record '{pkl}': {e}")))?;
        if pkl_size > MAX_PICKLE_BYTES {
            return Err(Error::format(
                path,
                format!(
                    "pickle size limit exceeded: '{pkl}' is {pkl_size} bytes decompressed, the \
                     limit is {MAX_PICKLE_BYTES}"
                ),
            ));
        }
        let data = read_record(&mut archive, &pkl, Some(MAX_PICKLE_BYTES as usize), path)?;
        let big_endian = match archive.index_for_name(&format!("{prefix}byteorder")) {
            Some(_) => {
                let b = read_record(&mut archive, &format!("{prefix}byteorder"), Some(16), path)?;
                match b.as_slice() {
                    b"little" => false,
                    b"big" => true,
                    other => {
                        return Err(Error::format(
                            path,
                            format!("byteorder record is {:?}", String::from_utf8_lossy(other)),
                        ))
                    }
                }
            }
            None => false,
        };
        let mut pl = TorchPersistentLoad::default();
        let (root, _) =
            unpickle(&data, 0, &mut pl).map_err(|e| Error::format(path, format!("{pkl}: {e}")))?;
        Ok(Checkpoint {
            root,
            storages: Storages::Zip {
                archive,
                prefix,
                big_endian,
            },
            cache: HashMap::new(),
            path: path.to_path_buf(),
        })
    }

    fn open_legacy(path: &Path) -> Result<Checkpoint> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let fmt = |e: String| Error::format(path, format!("legacy checkpoint: {e}"));
        let mut pl = TorchPersistentLoad::default();
        let (_magic, pos) = unpickle(&bytes, 0, &mut pl).map_err(fmt)?;
        let (proto, pos) = unpickle(&bytes, pos, &mut pl).map_err(fmt)?;
        if !matches!(proto, Value::Int(1001)) {
            return Err(fmt(format!(
                "protocol version is {}, expected 1001",
                proto.describe()
            )));
        }
        let (sys_info, pos) = unpickle(&bytes, pos, &mut pl).map_err(fmt)?;
        let big_endian = matches!(sys_info.dict_get("little_endian"), Some(Value::Bool(false)));
        let (root, pos) = unpickle(&bytes, pos, &mut pl).map_err(fmt)?;
        let (keys, mut pos) = unpickle(&bytes, pos, &mut pl).map_err(fmt)?;
        let Value::List(keys) = keys else {
            return Err(fmt("storage key list is missing".into()));
        };
        let mut ranges = HashMap::new();
        for k in keys.0.borrow().iter() {
            let Value::Str(k) = k else {
                return Err(fmt(format!("storage key is {}", k.describe())));
            };
            let s = pl
                .seen
                .get(&**k)
                .ok_or_else(|| fmt(format!("storage '{k}' is listed but never used")))?;
            let esize = s.elem.size().ok_or_else(|| {
                fmt(format!(
                    "storage '{k}' has unsupported dtype {}",
                    s.elem.name()
                ))
            })?;
            let count_bytes = bytes
                .get(pos..pos + 8)
                .ok_or_else(|| fmt(format!("truncated before storage '{k}'")))?;
            let mut c = [0u8; 8];
            c.copy_from_slice(count_bytes);
            let count = if big_endian {
                u64::from_be_bytes(c)
            } else {
                u64::from_le_bytes(c)
            };
            if count != s.numel {
                return Err(fmt(format!(
                    "storage '{k}' holds {count} elements, the pickle says {}",
                    s.numel
                )));
            }
            let len = usize::try_from(count)
                .ok()
                .and_then(|c| c.checked_mul(esize))
                .ok_or_else(|| fmt(format!("storage '{k}' is too large")))?;
            let start = pos + 8;
            let end = start
                .checked_add(len)
                .filter(|&e| e <= bytes.len())
                .ok_or_else(|| {
                    fmt(format!(
                        "truncated: storage '{k}' needs {len} bytes at offset {start}, file has {}",
                        bytes.len()
                    ))
                })?;
            ranges.insert(k.to_string(), (start, end));
            pos = end;
        }
        Ok(Checkpoint {
            root,
            storages: Storages::Legacy {
                bytes,
                ranges,
                big_endian,
            },
            cache: HashMap::new(),
            path: path.to_path_buf(),
        })
    }

    /// Checks, without reading it, that a storage's data is in the file: the record exists,
    /// holds at least `numel * elem size` bytes, and (when compressed) does not expand past
    /// the decompression-ratio limit. Returns its size in bytes.
    fn check_storage(&mut self, s: &StorageRef) -> Result<u64> {
        let path = self.path.clone();
        let esize = s.elem.size().ok_or_else(|| {
            Error::format(
                &path,
                format!(
                    "storage '{}': dtype {} is not supported",
                    s.key,
                    s.elem.name()
                ),
            )
        })?;
        let len = s
            .numel
            .checked_mul(esize as u64)
            .ok_or_else(|| Error::format(&path, format!("storage '{}' is too large", s.key)))?;
        match &mut self.storages {
            Storages::Zip {
                archive, prefix, ..
            } => {
                let name = format!("{prefix}data/{}", s.key);
                let entry = archive
                    .by_name(&name)
                    .map_err(|e| Error::format(&path, format!("record '{name}': {e}")))?;
                if entry.size() < len {
                    return Err(Error::format(
                        &path,
                        format!(
                            "storage record '{name}' has {} bytes, expected {len} ({} x {})",
                            entry.size(),
                            s.numel,
                            s.elem.name()
                        ),
                    ));
                }
                let packed = entry.compressed_size().max(1);
                if entry.compression() != zip::CompressionMethod::Stored
                    && len > RATIO_FREE_BYTES
                    && len / packed > MAX_DECOMPRESSION_RATIO
                {
                    return Err(Error::format(
                        &path,
                        format!(
                            "decompression ratio limit exceeded: record '{name}' expands from \
                             {packed} to {len} bytes (more than {MAX_DECOMPRESSION_RATIO}x)"
                        ),
                    ));
                }
            }
            Storages::Legacy { ranges, .. } => {
                // Ranges were checked against the file's length when it was opened.
                if !ranges.contains_key(&s.key) {
                    return Err(Error::format(
                        &path,
                        format!("storage '{}' has no data in the file", s.key),
                    ));
                }
            }
        }
        Ok(len)
    }

    /// Checks a view against its storage without reading it; returns its element count.
    fn check_view(&self, t: &TensorRef, name: &str) -> Result<u64> {
        let err = |msg: String| Error::format(&self.path, format!("tensor '{name}': {msg}"));
        t.elem
            .size()
            .ok_or_else(|| err(format!("dtype {} is not supported", t.elem.name())))?;
        let numel = t
            .shape
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .ok_or_else(|| err(format!("shape {} overflows", dims_text(&t.shape))))?;
        if numel == 0 {
            return Ok(0);
        }
        let last = t
            .shape
            .iter()
            .zip(&t.stride)
            .try_fold(t.offset, |a, (&d, &s)| {
                (d - 1).checked_mul(s).and_then(|x| a.checked_add(x))
            })
            .ok_or_else(|| err("offset/strides overflow".into()))?;
        // An untyped (byte) storage holds `numel` bytes; in the tensor's elements that is less.
        let esize = t.elem.size().unwrap_or(1) as u64;
        let ssize = t.storage.elem.size().unwrap_or(1) as u64;
        let avail = t.storage.numel.saturating_mul(ssize) / esize;
        if last >= avail {
            return Err(err(format!(
                "storage '{}' is too short: shape {}, strides {} and offset {} reach element \
                 {last} but the storage holds {avail} {} elements",
                t.storage.key,
                dims_text(&t.shape),
                dims_text(&t.stride),
                t.offset,
                t.elem.name()
            )));
        }
        Ok(numel)
    }

    /// Reads the given views, after checking all of them and the load's budget: every
    /// storage present and not a decompression bomb, and the elements materialised at most
    /// the storages' own plus [`MAX_BROADCAST_EXTRA_NUMEL`]. Nothing is read before all
    /// checks pass.
    pub(crate) fn materialize_all(
        &mut self,
        views: Vec<(String, Rc<TensorRef>)>,
    ) -> Result<NamedTensors> {
        let mut storages: HashMap<String, u64> = HashMap::new();
        let mut view_numel = 0u64;
        for (name, t) in &views {
            view_numel = view_numel.saturating_add(self.check_view(t, name)?);
            if !storages.contains_key(&t.storage.key) {
                self.check_storage(&t.storage)?;
                let elems = t
                    .storage
                    .numel
                    .saturating_mul(t.storage.elem.size().unwrap_or(1) as u64)
                    / t.elem.size().unwrap_or(1) as u64;
                storages.insert(t.storage.key.clone(), elems);
            }
        }
        let storage_numel: u64 = storages.values().fold(0u64, |a, &b| a.saturating_add(b));
        if view_numel > storage_numel.saturating_add(MAX_BROADCAST_EXTRA_NUMEL) {
            return Err(Error::format(
                &self.path,
                format!(
                    "materialised size limit exceeded: the {} tensors expand to {view_numel} \
                     elements from storages of {storage_numel} (broadcast or overlapping views \
                     may add at most {MAX_BROADCAST_EXTRA_NUMEL})",
                    views.len()
                ),
            ));
        }
        let mut out = NamedTensors::new();
        for (name, t) in views {
            let host = self.materialize(&t, &name)?;
            out.insert(name, host);
        }
        Ok(out)
    }

    /// Raw bytes of a storage (exactly `numel * elem size`), read once and cached.
    fn storage_bytes(&mut self, s: &StorageRef) -> Result<(Rc<Vec<u8>>, bool)> {
        let path = self.path.clone();
        let esize = s.elem.size().ok_or_else(|| {
            Error::format(
                &path,
                format!(
                    "storage '{}': dtype {} is not supported",
                    s.key,
                    s.elem.name()
                ),
            )
        })?;
        let len = usize::try_from(s.numel)
            .ok()
            .and_then(|n| n.checked_mul(esize))
            .ok_or_else(|| Error::format(&path, format!("storage '{}' is too large", s.key)))?;
        let big_endian = match &self.storages {
            Storages::Zip { big_endian, .. } | Storages::Legacy { big_endian, .. } => *big_endian,
        };
        if let Some(b) = self.cache.get(&s.key) {
            return Ok((b.clone(), big_endian));
        }
        let bytes = match &mut self.storages {
            Storages::Zip {
                archive, prefix, ..
            } => {
                let name = format!("{prefix}data/{}", s.key);
                let b = read_record(archive, &name, Some(len), &path)?;
                if b.len() < len {
                    return Err(Error::format(
                        &path,
                        format!(
                            "storage record '{name}' has {} bytes, expected {len} ({} x {})",
                            b.len(),
                            s.numel,
                            s.elem.name()
                        ),
                    ));
                }
                b
            }
            Storages::Legacy { bytes, ranges, .. } => {
                let &(a, b) = ranges.get(&s.key).ok_or_else(|| {
                    Error::format(
                        &path,
                        format!("storage '{}' has no data in the file", s.key),
                    )
                })?;
                bytes[a..b].to_vec()
            }
        };
        let bytes = Rc::new(bytes);
        self.cache.insert(s.key.clone(), bytes.clone());
        Ok((bytes, big_endian))
    }

    /// Reads a tensor view into a contiguous [`HostTensor`].
    pub(crate) fn materialize(&mut self, t: &TensorRef, name: &str) -> Result<HostTensor> {
        let path = self.path.clone();
        let err = |msg: String| Error::format(&path, format!("tensor '{name}': {msg}"));
        let esize = t
            .elem
            .size()
            .ok_or_else(|| err(format!("dtype {} is not supported", t.elem.name())))?;
        let shape: Vec<usize> = t
            .shape
            .iter()
            .map(|&d| usize::try_from(d).map_err(|_| err(format!("size {d} too large"))))
            .collect::<Result<_>>()?;
        let numel = t
            .shape
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .ok_or_else(|| err(format!("shape {} overflows", dims_text(&t.shape))))?;
        if numel == 0 {
            let data = match to_host_kind(&t.elem) {
                Kind::F32 => HostData::F32(Vec::new()),
                Kind::I64 => HostData::I64(Vec::new()),
            };
            return Ok(HostTensor { shape, data });
        }
        // Last element touched: offset + sum((size-1)*stride).
        let last = t
            .shape
            .iter()
            .zip(&t.stride)
            .try_fold(t.offset, |a, (&d, &s)| {
                (d - 1).checked_mul(s).and_then(|x| a.checked_add(x))
            })
            .ok_or_else(|| err("offset/strides overflow".into()))?;
        let (bytes, big_endian) = self.storage_bytes(&t.storage)?;
        let avail = (bytes.len() / esize) as u64;
        if last >= avail {
            return Err(err(format!(
                "storage '{}' is too short: shape {}, strides {} and offset {} reach element \
                 {last} but the storage holds {avail} {} elements",
                t.storage.key,
                dims_text(&t.shape),
                dims_text(&t.stride),
                t.offset,
                t.elem.name()
            )));
        }
        if numel > avail && numel > MAX_BROADCAST_EXTRA_NUMEL {
            return Err(err(format!(
                "materialised size limit exceeded: broadcast view of {numel} elements over a \
                 storage of {avail} (at most {MAX_BROADCAST_EXTRA_NUMEL})"
            )));
        }
        let numel = numel as usize;
        // A size-1 dim never moves, whatever its stride (which may be arbitrary in a file).
        let stride: Vec<u64> = shape
            .iter()
            .zip(&t.stride)
            .map(|(&d, &s)| if d == 1 { 0 } else { s })
            .collect();
        let stored = match &t.elem {
            Elem::F32 => Stored::F32,
            Elem::F64 => Stored::F64,
            Elem::F16 => Stored::F16,
            Elem::BF16 => Stored::BF16,
            Elem::I64 => Stored::I64,
            Elem::I32 => Stored::I32,
            Elem::I16 => Stored::I16,
            Elem::I8 => Stored::I8,
            Elem::U8 => Stored::U8,
            Elem::Bool => Stored::Bool,
            Elem::Other(n) => return Err(err(format!("dtype {n} is not supported"))),
        };
        let data = match element_indices(&shape, &stride, t.offset, numel) {
            // A contiguous little-endian view (what `torch.save` writes on every current
            // machine) is a byte range of the storage: decoded by a cast, no per-element work.
            Indices::Range(start) if !big_endian => {
                decode(stored, &bytes[start * esize..(start + numel) * esize])
            }
            // Strided views gather their elements, and legacy files saved on a big-endian
            // machine (sys-info `little_endian: False`) need each element's bytes reversed:
            // both are per-element by nature. Gather into little-endian order, then decode.
            idx => {
                let mut le = Vec::with_capacity(numel * esize);
                let mut put = |i: usize| {
                    let src = &bytes[i * esize..(i + 1) * esize];
                    if big_endian {
                        le.extend(src.iter().rev());
                    } else {
                        le.extend_from_slice(src);
                    }
                };
                match idx {
                    Indices::Range(start) => (start..start + numel).for_each(&mut put),
                    Indices::Strided(v) => v.into_iter().for_each(&mut put),
                }
                decode(stored, &le)
            }
        };
        Ok(HostTensor { shape, data })
    }
}

enum Kind {
    F32,
    I64,
}

fn to_host_kind(e: &Elem) -> Kind {
    match e {
        Elem::F32 | Elem::F64 | Elem::F16 | Elem::BF16 | Elem::Other(_) => Kind::F32,
        _ => Kind::I64,
    }
}

/// Storage element indices in row-major order: a range when contiguous, else an odometer walk.
enum Indices {
    Range(usize),
    Strided(Vec<usize>),
}

/// Bounds were checked by the caller (every index < storage length, size-1 dims have stride 0),
/// so every stride is below the storage length and the arithmetic cannot overflow.
fn element_indices(shape: &[usize], stride: &[u64], offset: u64, numel: usize) -> Indices {
    let mut expect = 1u64;
    let mut contiguous = true;
    for (&d, &s) in shape.iter().zip(stride).rev() {
        if d != 1 && s != expect {
            contiguous = false;
            break;
        }
        expect *= d as u64;
    }
    if contiguous {
        return Indices::Range(offset as usize);
    }
    let mut out = Vec::with_capacity(numel);
    let nd = shape.len();
    let mut pos = vec![0usize; nd];
    let mut cur = offset as usize;
    for _ in 0..numel {
        out.push(cur);
        for d in (0..nd).rev() {
            pos[d] += 1;
            cur += stride[d] as usize;
            if pos[d] < shape[d] {
                break;
            }
            cur -= stride[d] as usize * shape[d];
            pos[d] = 0;
        }
    }
    Indices::Strided(out)
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Reads a zip record; with `limit`, reads at most that many bytes.
fn read_record(
    archive: &mut zip::ZipArchive<BufReader<File>>,
    name: &str,
    limit: Option<usize>,
    path: &Path,
) -> Result<Vec<u8>> {
    let mut entry = archive
        .by_name(name)
        .map_err(|e| Error::format(path, format!("record '{name}': {e}")))?;
    let size = entry.size();
    let want = match limit {
        Some(l) => (l as u64).min(size),
        None => size,
    };
    let mut out = Vec::new();
    out.try_reserve_exact(usize::try_from(want).unwrap_or(usize::MAX))
        .map_err(|_| Error::format(path, format!("record '{name}' is too large ({size} bytes)")))?;
    // A whole record is read to its end, where the zip reader checks its CRC-32 (torch.save
    // writes one per record): a flipped bit in a storage or in data.pkl is an error, not a
    // silently different tensor. A `take` stops short of that end and skips the check, so it
    // is used only for a record longer than the limit.
    let read = if want == size {
        entry.read_to_end(&mut out)
    } else {
        entry.take(want).read_to_end(&mut out)
    };
    read.map_err(|e| Error::format(path, format!("record '{name}': {e}")))?;
    if (out.len() as u64) < want {
        return Err(Error::format(
            path,
            format!(
                "record '{name}' is truncated: {} of {want} bytes",
                out.len()
            ),
        ));
    }
    Ok(out)
}

/// Every tensor reachable through nested dicts, keys joined with '.', e.g.
/// `state_dict.conv1.weight`, `optimizer.state.0.momentum_buffer`.
pub fn load_pth(path: &Path) -> Result<NamedTensors> {
    let mut ck = Checkpoint::open(path)?;
    let root = ck.root.clone();
    let mut views = Vec::new();
    match &root {
        Value::Dict(_) => flatten(&ck, &root, &mut views)?,
        // torch.save(tensor): a single unnamed tensor.
        Value::Tensor(t) => views.push((String::new(), t.clone())),
        other => {
            return Err(Error::format(
                path,
                format!(
                    "top-level object is {}, expected a dict of tensors",
                    other.describe()
                ),
            ))
        }
    }
    ck.materialize_all(views)
}

/// Deepest nesting of dicts [`load_pth`] walks.
const MAX_DICT_DEPTH: usize = 64;

/// Collects the tensor views of nested dicts, iteratively (an explicit work list, never
/// recursion on the file's depth). A dict reachable twice (or through a cycle) is walked
/// once, under its first name.
fn flatten(ck: &Checkpoint, root: &Value, out: &mut Vec<(String, Rc<TensorRef>)>) -> Result<()> {
    let mut seen: std::collections::HashSet<*const ()> = Default::default();
    let mut work: Vec<(Value, String, usize)> = vec![(root.clone(), String::new(), 0)];
    while let Some((dict, prefix, depth)) = work.pop() {
        if let Value::Dict(s) = &dict {
            if !seen.insert(Rc::as_ptr(&s.0) as *const ()) {
                continue;
            }
        }
        if depth > MAX_DICT_DEPTH {
            return Err(Error::format(
                &ck.path,
                format!("dicts nested deeper than {MAX_DICT_DEPTH} at '{prefix}'"),
            ));
        }
        let mut nested = Vec::new();
        for (k, v) in dict.dict_items().unwrap_or_default() {
            let key = match &k {
                Value::Str(s) => s.to_string(),
                Value::Int(i) => i.to_string(),
                _ => continue,
            };
            let name = if prefix.is_empty() {
                key
            } else {
                format!("{prefix}.{key}")
            };
            match &v {
                Value::Tensor(t) => out.push((name, t.clone())),
                Value::BadTensor(what) => {
                    return Err(Error::format(
                        &ck.path,
                        format!("tensor '{name}': unsupported ({what})"),
                    ))
                }
                Value::Dict(_) => nested.push((v.clone(), name, depth + 1)),
                _ => {}
            }
        }
        // Walk nested dicts in file order.
        work.extend(nested.into_iter().rev());
    }
    Ok(())
}

/// The tensor views of one dict value (non-tensor entries are skipped), names as stored,
/// nothing read yet. [`Checkpoint::materialize_all`] checks every view and budgets the load
/// before reading any storage; other entries of the file (optimiser state, ...) are never
/// touched.
pub(crate) fn dict_views(
    ck: &Checkpoint,
    dict: &Value,
    what: &str,
) -> Result<Vec<(String, Rc<TensorRef>)>> {
    let mut views = Vec::new();
    for (k, v) in dict.dict_items().unwrap_or_default() {
        let Value::Str(name) = &k else { continue };
        match &v {
            Value::Tensor(t) => views.push((name.to_string(), t.clone())),
            Value::BadTensor(kind) => {
                return Err(Error::format(
                    &ck.path,
                    format!("{what}: tensor '{name}' is unsupported ({kind})"),
                ))
            }
            _ => {}
        }
    }
    Ok(views)
}

/// `[2, 3, 4]` for messages.
fn dims_text(d: &[u64]) -> String {
    let parts: Vec<String> = d.iter().map(u64::to_string).collect();
    format!("[{}]", parts.join(", "))
}

/// Does this dict hold at least one tensor directly?
pub(crate) fn holds_tensors(v: &Value) -> bool {
    v.dict_items().is_some_and(|it| {
        it.iter()
            .any(|(_, v)| matches!(v, Value::Tensor(_) | Value::BadTensor(_)))
    })
}

/// Writes `tensors` as a `torch.save`-style zip that `torch.load(p, weights_only=True)` reads
/// as an `OrderedDict` of CPU tensors (f32 -> float32, i64 -> int64). Atomic.
pub fn save_pth(path: &Path, tensors: &NamedTensors) -> Result<()> {
    let mut pk = PickleWriter::default();
    pk.proto();
    pk.global("collections", "OrderedDict");
    pk.empty_tuple();
    pk.reduce();
    pk.mark();
    let mut storages = Vec::with_capacity(tensors.len());
    for (i, (name, t)) in tensors.iter().enumerate() {
        let numel = t.checked_numel(name).map_err(|m| Error::format(path, m))?;
        let key = i.to_string();
        pk.str(name);
        pk.global("torch._utils", "_rebuild_tensor_v2");
        pk.mark();
        pk.mark();
        pk.str("storage");
        match t.data {
            HostData::F32(_) => pk.global("torch", "FloatStorage"),
            HostData::I64(_) => pk.global("torch", "LongStorage"),
        }
        pk.str(&key);
        pk.str("cpu");
        pk.int(numel as i64);
        pk.tuple();
        pk.binpersid();
        pk.int(0);
        let shape = t
            .shape
            .iter()
            .map(|&d| i64::try_from(d))
            .collect::<std::result::Result<Vec<i64>, _>>()
            .map_err(|_| Error::format(path, format!("tensor '{name}': size too large")))?;
        // Contiguous strides, computed like torch (a zero-size dim counts as 1).
        let mut stride = vec![1i64; shape.len()];
        for d in (0..shape.len().saturating_sub(1)).rev() {
            stride[d] = stride[d + 1].saturating_mul(shape[d + 1].max(1));
        }
        pk.int_tuple(&shape);
        pk.int_tuple(&stride);
        pk.bool(false);
        pk.global("collections", "OrderedDict");
        pk.empty_tuple();
        pk.reduce();
        pk.tuple();
        pk.reduce();
        storages.push((key, t));
    }
    pk.setitems();
    pk.stop();

    super::write_atomic(path, |file| {
        let zerr = |e: zip::result::ZipError| Error::format(path, format!("writing zip: {e}"));
        let ioerr = |e: std::io::Error| Error::io(path, e);
        let mut z = zip::ZipWriter::new(file);
        let opts = |len: usize| {
            zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Stored)
                .with_alignment(64)
                .large_file(len as u64 >= u64::from(u32::MAX))
        };
        let a = "archive";
        z.start_file(format!("{a}/data.pkl"), opts(pk.buf.len()))
            .map_err(zerr)?;
        z.write_all(&pk.buf).map_err(ioerr)?;
        for (rec, body) in [
            (".format_version", "1"),
            (".storage_alignment", "64"),
            ("byteorder", "little"),
        ] {
            z.start_file(format!("{a}/{rec}"), opts(body.len()))
                .map_err(zerr)?;
            z.write_all(body.as_bytes()).map_err(ioerr)?;
        }
        for (key, t) in storages {
            let bytes = t.le_bytes();
            z.start_file(format!("{a}/data/{key}"), opts(bytes.len()))
                .map_err(zerr)?;
            z.write_all(bytes).map_err(ioerr)?;
        }
        z.start_file(format!("{a}/version"), opts(2))
            .map_err(zerr)?;
        z.write_all(b"3\n").map_err(ioerr)?;
        let f = z.finish().map_err(zerr)?;
        f.sync_all().map_err(ioerr)
    })
}
