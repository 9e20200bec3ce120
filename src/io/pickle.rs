//! A restricted unpickler for PyTorch checkpoints, and the small pickle writer `save_pth` uses.
//!
//! Nothing in a pickle is ever executed. Each GLOBAL is checked against an allow-list when it is
//! read: tensor-rebuild functions, storage types and `OrderedDict` are *interpreted* (we build the
//! value ourselves); a short list of plain-data classes that training scripts put next to the
//! weights (`argparse.Namespace`, numpy scalars, `pathlib` paths, ...) become [`Value::Opaque`]
//! placeholders; every other global (e.g. `posix.system`, `builtins.eval`) is an error naming
//! it. Calling (REDUCE/NEWOBJ) an opaque class gives another opaque value; BUILD never runs
//! `__setstate__`, it drops the state. So a checkpoint whose `args` is a Namespace still loads,
//! and the weights next to it can be extracted.
//!
//! Tensors are not materialised here: `_rebuild_tensor_v2` yields a [`TensorRef`] (storage key,
//! dtype, offset, shape, strides) that `pth.rs` resolves against the zip records, so tensors
//! that are never asked for (optimizer state) are never read.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

/// Deepest nesting of containers (lists, tuples, dicts) and MARKs a pickle may build. Python's
/// own pickler stops near its recursion limit (1,000), so real checkpoints stay far below;
/// the bound keeps any later walk over the tree, and the tensor-rebuild chains
/// (`_rebuild_from_type_v2` inside itself), short.
pub(crate) const MAX_NESTING_DEPTH: u32 = 4_096;
/// Most memo entries (PUT/MEMOIZE) one pickle may create.
pub(crate) const MAX_MEMO_ENTRIES: usize = 1 << 21;
/// Most opcodes one pickle may execute: bounds the values held on the stack, in containers
/// and in the memo (a real state dict needs tens of thousands).
pub(crate) const MAX_OPCODES: u64 = 1 << 24;

/// Element type of a torch storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Elem {
    F32,
    F64,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
    /// A dtype we can read the size of but do not convert (complex, quantized, float8, ...).
    Other(Rc<str>),
}

impl Elem {
    /// Size of one element in bytes, `None` when unknown.
    pub(crate) fn size(&self) -> Option<usize> {
        Some(match self {
            Elem::F64 | Elem::I64 => 8,
            Elem::F32 | Elem::I32 => 4,
            Elem::F16 | Elem::BF16 | Elem::I16 => 2,
            Elem::I8 | Elem::U8 | Elem::Bool => 1,
            Elem::Other(_) => return None,
        })
    }

    pub(crate) fn name(&self) -> &str {
        match self {
            Elem::F32 => "float32",
            Elem::F64 => "float64",
            Elem::F16 => "float16",
            Elem::BF16 => "bfloat16",
            Elem::I64 => "int64",
            Elem::I32 => "int32",
            Elem::I16 => "int16",
            Elem::I8 => "int8",
            Elem::U8 => "uint8",
            Elem::Bool => "bool",
            Elem::Other(n) => n,
        }
    }

    /// From a storage class name such as `FloatStorage`.
    fn from_storage_name(name: &str) -> Option<Elem> {
        let base = name.strip_suffix("Storage")?;
        Some(match base {
            "Float" => Elem::F32,
            "Double" => Elem::F64,
            "Half" => Elem::F16,
            "BFloat16" => Elem::BF16,
            "Long" => Elem::I64,
            "Int" => Elem::I32,
            "Short" => Elem::I16,
            "Char" => Elem::I8,
            // An untyped storage is counted in bytes.
            "Byte" | "Untyped" => Elem::U8,
            "Bool" => Elem::Bool,
            "" | "Typed" => return None,
            other => Elem::Other(Rc::from(other)),
        })
    }

    /// From a `torch.<dtype>` attribute name such as `float32`.
    fn from_dtype_name(name: &str) -> Option<Elem> {
        Some(match name {
            "float32" | "float" => Elem::F32,
            "float64" | "double" => Elem::F64,
            "float16" | "half" => Elem::F16,
            "bfloat16" => Elem::BF16,
            "int64" | "long" => Elem::I64,
            "int32" | "int" => Elem::I32,
            "int16" | "short" => Elem::I16,
            "int8" => Elem::I8,
            "uint8" => Elem::U8,
            "bool" => Elem::Bool,
            "complex32" | "complex64" | "complex128" | "cfloat" | "cdouble" | "chalf"
            | "uint16" | "uint32" | "uint64" | "qint8" | "quint8" | "qint32" | "quint4x2"
            | "float8_e4m3fn" | "float8_e5m2" | "float8_e4m3fnuz" | "float8_e5m2fnuz"
            | "float8_e8m0fnu" => Elem::Other(Rc::from(name)),
            _ => return None,
        })
    }
}

/// What an allowed global is.
#[derive(Debug, Clone)]
pub(crate) enum Global {
    OrderedDict,
    /// `collections.defaultdict`: built as a plain dict (its factory is dropped).
    DefaultDict,
    /// `torch._utils._rebuild_tensor` (legacy) / `_rebuild_tensor_v2` / `_rebuild_tensor_v3`.
    RebuildTensor(u8),
    /// `torch._utils._rebuild_parameter` / `_rebuild_parameter_with_state`.
    RebuildParameter,
    /// `torch._tensor._rebuild_from_type_v2(func, type, args, state)`: tensor subclasses;
    /// we call `func(*args)` (itself an allowed global) and drop the type and state.
    RebuildFromType,
    /// Another `torch._utils._rebuild_*` tensor kind we do not support (sparse, quantized, ...).
    UnsupportedTensor(Rc<str>),
    Storage(Elem),
    Dtype(Elem),
    /// A plain-data class or function that we never call: calling it gives [`Value::Opaque`].
    Opaque(Rc<str>),
}

impl Global {
    /// The Python name it stands for, for messages (not Rust debug output).
    fn python_name(&self) -> String {
        match self {
            Global::OrderedDict => "collections.OrderedDict".into(),
            Global::DefaultDict => "collections.defaultdict".into(),
            Global::RebuildTensor(1) => "torch._utils._rebuild_tensor".into(),
            Global::RebuildTensor(v) => format!("torch._utils._rebuild_tensor_v{v}"),
            Global::RebuildParameter => "torch._utils._rebuild_parameter".into(),
            Global::RebuildFromType => "torch._tensor._rebuild_from_type_v2".into(),
            Global::UnsupportedTensor(n) | Global::Opaque(n) => n.to_string(),
            Global::Storage(e) => format!("a torch {} storage class", e.name()),
            Global::Dtype(e) => format!("torch.{}", e.name()),
        }
    }
}

/// Storage reference from a persistent id `('storage', type, key, location, numel)`.
#[derive(Debug)]
pub(crate) struct StorageRef {
    pub elem: Elem,
    pub key: String,
    /// In elements of `elem`.
    pub numel: u64,
}

/// A tensor view of a storage, not yet read.
#[derive(Debug)]
pub(crate) struct TensorRef {
    pub storage: Rc<StorageRef>,
    /// The tensor's dtype; differs from the storage's only for an untyped (byte) storage.
    pub elem: Elem,
    pub offset: u64,
    pub shape: Vec<u64>,
    pub stride: Vec<u64>,
}

/// A shared, mutable container (list, tuple or dict). Dicts are stored flat as
/// `[k0, v0, k1, v1, ...]`; a repeated key is resolved by the last occurrence. The second
/// field is the container's nesting depth (1 + the deepest item's, as recorded when items
/// were added), shared by all clones.
#[derive(Debug, Clone, Default)]
pub(crate) struct Seq(pub Rc<RefCell<Vec<Value>>>, Rc<Cell<u32>>);

impl Seq {
    fn new(items: Vec<Value>) -> Self {
        let depth = 1 + items.iter().map(depth_of).max().unwrap_or(0);
        Seq(Rc::new(RefCell::new(items)), Rc::new(Cell::new(depth)))
    }

    /// Appends items, raising the recorded depth; errors past [`MAX_NESTING_DEPTH`].
    fn extend(&self, items: Vec<Value>) -> Result<(), String> {
        let depth = 1 + items.iter().map(depth_of).max().unwrap_or(0);
        check_depth(depth)?;
        self.1.set(self.1.get().max(depth));
        self.0.borrow_mut().extend(items);
        Ok(())
    }
}

/// Nesting depth of a value: 0 for scalars, the recorded depth for containers.
fn depth_of(v: &Value) -> u32 {
    match v {
        Value::List(s) | Value::Tuple(s) | Value::Dict(s) => s.1.get(),
        _ => 0,
    }
}

fn check_depth(depth: u32) -> Result<(), String> {
    if depth > MAX_NESTING_DEPTH {
        return Err(format!(
            "nesting depth limit exceeded: containers nested deeper than {MAX_NESTING_DEPTH} \
             levels (a real checkpoint needs a few)"
        ));
    }
    Ok(())
}

/// A new container of `items`, refused past the nesting depth limit.
fn container(items: Vec<Value>) -> Result<Seq, String> {
    let s = Seq::new(items);
    check_depth(s.1.get())?;
    Ok(s)
}

impl Drop for Seq {
    /// Drops nested containers iteratively: a pickle of a million nested lists would otherwise
    /// overflow the stack in the recursive drop.
    fn drop(&mut self) {
        if Rc::strong_count(&self.0) != 1 {
            return;
        }
        let Ok(mut inner) = self.0.try_borrow_mut() else {
            return;
        };
        let mut pending = std::mem::take(&mut *inner);
        drop(inner);
        while let Some(v) = pending.pop() {
            if let Value::List(s) | Value::Tuple(s) | Value::Dict(s) = &v {
                if Rc::strong_count(&s.0) == 1 {
                    if let Ok(mut b) = s.0.try_borrow_mut() {
                        pending.append(&mut b);
                    }
                }
            }
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer that does not fit i64 (kept as a marker only).
    BigInt,
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    List(Seq),
    Tuple(Seq),
    Dict(Seq),
    Global(Global),
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorRef>),
    /// A tensor kind we cannot convert; the text says which.
    BadTensor(Rc<str>),
    /// A value we deliberately did not build (e.g. an `argparse.Namespace`); text describes it.
    Opaque(Rc<str>),
}

impl Value {
    /// Short description for error messages.
    pub(crate) fn describe(&self) -> String {
        match self {
            Value::None => "None".into(),
            Value::Bool(_) => "a bool".into(),
            Value::Int(_) | Value::BigInt => "an int".into(),
            Value::Float(x) => format!("the float {x}"),
            Value::Str(_) => "a str".into(),
            Value::Bytes(b) => format!("{} bytes", b.len()),
            Value::List(_) => "a list".into(),
            Value::Tuple(_) => "a tuple".into(),
            Value::Dict(_) => "a dict".into(),
            Value::Global(g) => format!("a global ({})", g.python_name()),
            Value::Storage(_) => "a storage".into(),
            Value::Tensor(_) => "a tensor".into(),
            Value::BadTensor(s) => format!("an unsupported tensor ({s})"),
            Value::Opaque(s) => format!("an opaque {s}"),
        }
    }

    /// Key/value pairs of a dict, last occurrence of a key winning (in first-seen order).
    pub(crate) fn dict_items(&self) -> Option<Vec<(Value, Value)>> {
        let Value::Dict(s) = self else { return None };
        let flat = s.0.borrow();
        let mut out: Vec<(Value, Value)> = Vec::with_capacity(flat.len() / 2);
        let mut index: HashMap<String, usize> = HashMap::new();
        for kv in flat.chunks_exact(2) {
            let key_id = match &kv[0] {
                Value::Str(s) => Some(format!("s:{s}")),
                Value::Int(i) => Some(format!("i:{i}")),
                _ => None,
            };
            match key_id {
                Some(k) => match index.get(&k) {
                    Some(&i) => out[i].1 = kv[1].clone(),
                    None => {
                        index.insert(k, out.len());
                        out.push((kv[0].clone(), kv[1].clone()));
                    }
                },
                None => out.push((kv[0].clone(), kv[1].clone())),
            }
        }
        Some(out)
    }

    /// Looks a string key up in a dict (last occurrence wins).
    pub(crate) fn dict_get(&self, key: &str) -> Option<Value> {
        let Value::Dict(s) = self else { return None };
        let flat = s.0.borrow();
        flat.chunks_exact(2)
            .rev()
            .find(|kv| matches!(&kv[0], Value::Str(k) if &**k == key))
            .map(|kv| kv[1].clone())
    }
}

/// Resolves a GLOBAL against the allow-list. `Err` carries the reason for refusing it.
pub(crate) fn resolve_global(module: &str, name: &str) -> Result<Global, String> {
    // Python 2 spellings.
    let module = match module {
        "__builtin__" => "builtins",
        "copy_reg" => "copyreg",
        m => m,
    };
    let opaque = |s: &str| Ok(Global::Opaque(Rc::from(s)));
    let full = format!("{module}.{name}");
    match (module, name) {
        ("collections", "OrderedDict") => Ok(Global::OrderedDict),
        ("collections", "defaultdict") => Ok(Global::DefaultDict),
        ("torch._utils", "_rebuild_tensor") => Ok(Global::RebuildTensor(1)),
        ("torch._utils", "_rebuild_tensor_v2") => Ok(Global::RebuildTensor(2)),
        ("torch._utils", "_rebuild_tensor_v3") => Ok(Global::RebuildTensor(3)),
        ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
            Ok(Global::RebuildParameter)
        }
        ("torch._tensor", "_rebuild_from_type_v2") => Ok(Global::RebuildFromType),
        ("torch._utils", n) if n.starts_with("_rebuild_") => {
            Ok(Global::UnsupportedTensor(Rc::from(full.as_str())))
        }
        ("torch" | "torch.cuda" | "torch.storage", n) if n.ends_with("Storage") => {
            match Elem::from_storage_name(n) {
                Some(e) => Ok(Global::Storage(e)),
                None => Err(format!("storage type '{full}' is not supported")),
            }
        }
        ("torch", n) if Elem::from_dtype_name(n).is_some() => {
            Ok(Global::Dtype(Elem::from_dtype_name(n).unwrap_or(Elem::U8)))
        }
        ("torch", "Size" | "device" | "strided" | "sparse_coo" | "channels_last" | "Tensor")
        | ("torch.nn.parameter", "Parameter" | "Buffer")
        | ("torch.serialization", "_get_layout")
        | ("argparse", "Namespace")
        | ("collections", "Counter" | "deque")
        | ("copyreg", "_reconstructor")
        | ("_codecs", "encode")
        | (
            "builtins",
            "object" | "set" | "frozenset" | "list" | "dict" | "tuple" | "int" | "float" | "str"
            | "bytes" | "bytearray" | "complex" | "slice" | "range" | "bool",
        )
        | ("numpy.core.multiarray" | "numpy._core.multiarray", "scalar" | "_reconstruct")
        | ("numpy", "dtype" | "ndarray")
        | ("pathlib", "Path" | "PosixPath" | "WindowsPath" | "PurePosixPath" | "PureWindowsPath")
        | ("datetime", "datetime" | "date" | "time" | "timedelta" | "timezone")
        | ("easydict", "EasyDict")
        | ("yacs.config", "CfgNode") => opaque(&full),
        _ => {
            const CODE_RUNNING: &[&str] = &[
                "os",
                "posix",
                "nt",
                "subprocess",
                "sys",
                "shutil",
                "socket",
                "importlib",
                "runpy",
                "pickle",
                "marshal",
                "code",
                "ctypes",
                "pty",
                "webbrowser",
                "builtins",
                "operator",
                "functools",
                "types",
                "torch.hub",
                "torch.jit",
            ];
            let root = module.split('.').next().unwrap_or(module);
            if CODE_RUNNING.contains(&module) || CODE_RUNNING.contains(&root) {
                Err(format!(
                    "refusing global '{full}': it can run code or touch the system; \
                     this file is unsafe to load"
                ))
            } else {
                Err(format!(
                    "global '{full}' is not on the allow-list (tensors, storages, OrderedDict \
                     and plain-data classes); re-save the checkpoint as a plain state_dict"
                ))
            }
        }
    }
}

/// What the unpickler does with a persistent id.
pub(crate) trait PersistentLoad {
    fn load(&mut self, pid: Value) -> Result<Value, String>;
}

/// Persistent ids of torch checkpoints: `('storage', StorageType, key, location, numel, ...)`
/// gives a [`StorageRef`]; `('module', ...)` (legacy whole-module pickles) gives an opaque
/// value. Every storage seen is recorded in `seen` (the legacy format needs their dtypes).
#[derive(Default)]
pub(crate) struct TorchPersistentLoad {
    pub seen: HashMap<String, Rc<StorageRef>>,
}

impl PersistentLoad for TorchPersistentLoad {
    fn load(&mut self, pid: Value) -> Result<Value, String> {
        let Value::Tuple(t) = &pid else {
            return Err(format!(
                "persistent id is {}, expected a tuple",
                pid.describe()
            ));
        };
        let items = t.0.borrow();
        match items.first() {
            Some(Value::Str(s)) if &**s == "module" => {
                return Ok(Value::Opaque(Rc::from("pickled nn.Module source")))
            }
            Some(Value::Str(s)) if &**s == "storage" => {}
            _ => return Err("persistent id is not ('storage', ...)".into()),
        }
        let (Some(Value::Global(Global::Storage(elem))), Some(Value::Str(key)), Some(numel)) =
            (items.get(1), items.get(2), items.get(4))
        else {
            return Err(
                "persistent id is not ('storage', <StorageType>, key, location, numel)".into(),
            );
        };
        let numel = match numel {
            Value::Int(n) if *n >= 0 => *n as u64,
            _ => return Err(format!("storage '{key}': bad element count")),
        };
        if !matches!(items.get(5), None | Some(Value::None)) {
            // Pre-0.4 legacy files could save views of storages; never seen in practice since.
            return Err(format!(
                "storage '{key}' is a legacy storage view, which is not supported"
            ));
        }
        if let Some(prev) = self.seen.get(&**key) {
            if prev.elem != *elem || prev.numel != numel {
                return Err(format!(
                    "storage '{key}' is referenced with two different types or sizes"
                ));
            }
            return Ok(Value::Storage(prev.clone()));
        }
        let s = Rc::new(StorageRef {
            elem: elem.clone(),
            key: key.to_string(),
            numel,
        });
        self.seen.insert(key.to_string(), s.clone());
        Ok(Value::Storage(s))
    }
}

/// Unpickles one pickle starting at `data[start..]`. Returns the value and the offset just past
/// STOP. Errors are plain strings; the caller adds the file path.
pub(crate) fn unpickle(
    data: &[u8],
    start: usize,
    persistent: &mut dyn PersistentLoad,
) -> Result<(Value, usize), String> {
    let mut u = Unpickler {
        data,
        pos: start,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
    };
    let v = u.run(persistent).map_err(|e| format!("pickle: {e}"))?;
    Ok((v, u.pos))
}

struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u64, Value>,
}

impl<'a> Unpickler<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        match end {
            Some(end) => {
                let s = &self.data[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(format!(
                "truncated: needs {n} bytes at offset {} but only {} remain",
                self.pos,
                self.data.len().saturating_sub(self.pos)
            )),
        }
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn arr<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn len_u64(&mut self, n: u64) -> Result<usize, String> {
        usize::try_from(n).map_err(|_| format!("length {n} too large"))
    }

    fn line(&mut self) -> Result<&'a str, String> {
        let rest = &self.data[self.pos.min(self.data.len())..];
        let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
            return Err(format!("unterminated line at offset {}", self.pos));
        };
        let s = self.take(nl + 1)?;
        std::str::from_utf8(&s[..nl]).map_err(|_| "non-UTF-8 text line".to_string())
    }

    fn pop(&mut self) -> Result<Value, String> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err(format!(
                "stack underflow (at a MARK) at offset {}",
                self.pos
            ));
        }
        self.stack
            .pop()
            .ok_or_else(|| format!("stack underflow at offset {}", self.pos))
    }

    fn top(&mut self) -> Result<&mut Value, String> {
        let pos = self.pos;
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err(format!("stack underflow (at a MARK) at offset {pos}"));
        }
        self.stack
            .last_mut()
            .ok_or_else(|| format!("stack underflow at offset {pos}"))
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>, String> {
        let m = self
            .marks
            .pop()
            .ok_or_else(|| format!("no MARK on the stack at offset {}", self.pos))?;
        Ok(self.stack.split_off(m.min(self.stack.len())))
    }

    fn memo_get(&self, i: u64) -> Result<Value, String> {
        self.memo
            .get(&i)
            .cloned()
            .ok_or_else(|| format!("memo key {i} not found at offset {}", self.pos))
    }

    fn memo_put(&mut self, i: u64) -> Result<(), String> {
        let v = self.top()?.clone();
        if self.memo.len() >= MAX_MEMO_ENTRIES && !self.memo.contains_key(&i) {
            return Err(format!(
                "memo size limit exceeded: more than {MAX_MEMO_ENTRIES} memo entries"
            ));
        }
        self.memo.insert(i, v);
        Ok(())
    }

    fn str_val(&self, b: &[u8]) -> Result<Value, String> {
        std::str::from_utf8(b)
            .map(|s| Value::Str(Rc::from(s)))
            .map_err(|_| format!("invalid UTF-8 string at offset {}", self.pos))
    }

    fn global(&mut self, module: &str, name: &str) -> Result<(), String> {
        let g = resolve_global(module, name)?;
        self.stack.push(Value::Global(g));
        Ok(())
    }

    fn run(&mut self, persistent: &mut dyn PersistentLoad) -> Result<Value, String> {
        let mut ops = 0u64;
        loop {
            let at = self.pos;
            ops += 1;
            if ops > MAX_OPCODES {
                return Err(format!(
                    "opcode limit exceeded: more than {MAX_OPCODES} opcodes in one pickle"
                ));
            }
            let op = self.u8()?;
            match op {
                0x80 => {
                    let p = self.u8()?;
                    if p > 5 {
                        return Err(format!("unsupported pickle protocol {p}"));
                    }
                }
                0x95 => {
                    self.take(8)?; // FRAME: length only, the data follows inline
                }
                b'.' => {
                    let v = self.pop()?;
                    return Ok(v);
                }
                b'(' => {
                    if self.marks.len() >= MAX_NESTING_DEPTH as usize {
                        return Err(format!(
                            "nesting depth limit exceeded: more than {MAX_NESTING_DEPTH} open \
                             MARKs at offset {at}"
                        ));
                    }
                    self.marks.push(self.stack.len())
                }
                b'0' => {
                    if self.marks.last().is_some_and(|&m| m == self.stack.len()) {
                        self.marks.pop();
                    } else {
                        self.pop()?;
                    }
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.stack.push(v);
                }
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'J' => {
                    let v = i32::from_le_bytes(self.arr()?);
                    self.stack.push(Value::Int(i64::from(v)));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(i64::from(v)));
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.arr()?);
                    self.stack.push(Value::Int(i64::from(v)));
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a {
                        usize::from(self.u8()?)
                    } else {
                        let n = i32::from_le_bytes(self.arr()?);
                        usize::try_from(n).map_err(|_| "negative LONG4 length".to_string())?
                    };
                    let b = self.take(n)?;
                    self.stack.push(long_from_le(b));
                }
                b'I' => {
                    // Protocol 0 INT; "I00"/"I01" are False/True.
                    let l = self.line()?;
                    let v = match l {
                        "00" => Value::Bool(false),
                        "01" => Value::Bool(true),
                        _ => Value::Int(l.trim().parse().map_err(|_| format!("bad INT '{l}'"))?),
                    };
                    self.stack.push(v);
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.arr()?);
                    self.stack.push(Value::Float(v));
                }
                b'X' | 0x8c | 0x8d | b'T' | b'U' => {
                    let n = match op {
                        b'X' => u64::from(u32::from_le_bytes(self.arr()?)),
                        b'T' => {
                            let n = i32::from_le_bytes(self.arr()?);
                            u64::try_from(n).map_err(|_| "negative string length".to_string())?
                        }
                        0x8d => u64::from_le_bytes(self.arr()?),
                        _ => u64::from(self.u8()?),
                    };
                    let n = self.len_u64(n)?;
                    let b = self.take(n)?;
                    let v = if op == b'T' || op == b'U' {
                        // Python 2 byte strings: keep them as text, lossily.
                        Value::Str(Rc::from(String::from_utf8_lossy(b).as_ref()))
                    } else {
                        self.str_val(b)?
                    };
                    self.stack.push(v);
                }
                b'B' | b'C' | 0x8e | 0x96 => {
                    let n = match op {
                        b'B' => u64::from(u32::from_le_bytes(self.arr()?)),
                        b'C' => u64::from(self.u8()?),
                        _ => u64::from_le_bytes(self.arr()?),
                    };
                    let n = self.len_u64(n)?;
                    let b = self.take(n)?;
                    self.stack.push(Value::Bytes(Rc::from(b)));
                }
                b'}' => self.stack.push(Value::Dict(Seq::default())),
                b']' => self.stack.push(Value::List(Seq::default())),
                b')' => self.stack.push(Value::Tuple(Seq::default())),
                0x8f => self.stack.push(Value::Opaque(Rc::from("set"))),
                0x91 => {
                    self.pop_mark()?;
                    self.stack.push(Value::Opaque(Rc::from("frozenset")));
                }
                0x90 => {
                    self.pop_mark()?;
                    match self.top()? {
                        Value::Opaque(_) => {}
                        other => return Err(format!("ADDITEMS on {}", other.describe())),
                    }
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    if items.len() % 2 != 0 {
                        return Err("DICT with an odd number of items".into());
                    }
                    self.stack.push(Value::Dict(container(items)?));
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::List(container(items)?));
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(container(items)?));
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.stack.push(Value::Tuple(container(items)?));
                }
                b'a' | b'e' => {
                    let items = if op == b'a' {
                        vec![self.pop()?]
                    } else {
                        self.pop_mark()?
                    };
                    match self.top()? {
                        Value::List(s) => s.extend(items)?,
                        Value::Opaque(_) => {}
                        other => return Err(format!("APPEND to {}", other.describe())),
                    }
                }
                b's' | b'u' => {
                    let items = if op == b's' {
                        let v = self.pop()?;
                        let k = self.pop()?;
                        vec![k, v]
                    } else {
                        self.pop_mark()?
                    };
                    if items.len() % 2 != 0 {
                        return Err("SETITEMS with an odd number of items".into());
                    }
                    match self.top()? {
                        Value::Dict(s) => s.extend(items)?,
                        Value::Opaque(_) => {}
                        other => return Err(format!("SETITEM on {}", other.describe())),
                    }
                }
                b'q' => {
                    let i = self.u8()?;
                    self.memo_put(u64::from(i))?;
                }
                b'r' => {
                    let i = u32::from_le_bytes(self.arr()?);
                    self.memo_put(u64::from(i))?;
                }
                0x94 => {
                    let i = self.memo.len() as u64;
                    self.memo_put(i)?;
                }
                b'p' => {
                    let l = self.line()?;
                    let i = l.parse().map_err(|_| format!("bad PUT index '{l}'"))?;
                    self.memo_put(i)?;
                }
                b'h' => {
                    let i = self.u8()?;
                    let v = self.memo_get(u64::from(i))?;
                    self.stack.push(v);
                }
                b'j' => {
                    let i = u32::from_le_bytes(self.arr()?);
                    let v = self.memo_get(u64::from(i))?;
                    self.stack.push(v);
                }
                b'g' => {
                    let l = self.line()?;
                    let i = l.parse().map_err(|_| format!("bad GET index '{l}'"))?;
                    let v = self.memo_get(i)?;
                    self.stack.push(v);
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.global(module, name)?;
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Value::Str(m), Value::Str(n)) = (&module, &name) else {
                        return Err("STACK_GLOBAL needs two strings".into());
                    };
                    self.global(m, n)?;
                }
                b'i' => {
                    // INST: a class called with the items above the mark.
                    let module = self.line()?;
                    let name = self.line()?;
                    let g = resolve_global(module, name)?;
                    let args = self.pop_mark()?;
                    let v = call(Value::Global(g), Value::Tuple(container(args)?))?;
                    self.stack.push(v);
                }
                b'o' => {
                    let mut items = self.pop_mark()?.into_iter();
                    let cls = items.next().ok_or("OBJ with an empty mark")?;
                    let v = new_object(&cls)?;
                    self.stack.push(v);
                }
                b'R' => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    let v = call(func, args)?;
                    self.stack.push(v);
                }
                0x81 | 0x92 => {
                    if op == 0x92 {
                        self.pop()?; // kwargs
                    }
                    self.pop()?; // args
                    let cls = self.pop()?;
                    let v = new_object(&cls)?;
                    self.stack.push(v);
                }
                b'b' => {
                    // BUILD: the state is dropped; no __setstate__ ever runs.
                    self.pop()?;
                    self.top()?;
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = persistent.load(pid)?;
                    self.stack.push(v);
                }
                0x82..=0x84 => {
                    return Err("EXT opcodes (copyreg extension registry) are not supported".into())
                }
                0x97 | 0x98 => return Err("out-of-band buffers are not supported".into()),
                _ => {
                    return Err(format!(
                        "unsupported opcode 0x{op:02x} ('{}') at offset {at}",
                        (op as char).escape_default()
                    ))
                }
            }
        }
    }
}

/// LONG1/LONG4 payload: little-endian two's complement.
fn long_from_le(b: &[u8]) -> Value {
    if b.is_empty() {
        return Value::Int(0);
    }
    if b.len() > 8 {
        return Value::BigInt;
    }
    let neg = b[b.len() - 1] & 0x80 != 0;
    let mut buf = if neg { [0xffu8; 8] } else { [0u8; 8] };
    buf[..b.len()].copy_from_slice(b);
    Value::Int(i64::from_le_bytes(buf))
}

/// NEWOBJ/OBJ: instances are never built, only described.
fn new_object(cls: &Value) -> Result<Value, String> {
    match cls {
        Value::Global(Global::OrderedDict | Global::DefaultDict) => Ok(Value::Dict(Seq::default())),
        Value::Global(Global::Opaque(name)) => {
            Ok(Value::Opaque(Rc::from(format!("{name} object"))))
        }
        Value::Opaque(_) => Ok(Value::Opaque(Rc::from("object"))),
        other => Err(format!("cannot instantiate {}", other.describe())),
    }
}

fn tuple_items(args: &Value, what: &str) -> Result<Vec<Value>, String> {
    match args {
        Value::Tuple(t) => Ok(t.0.borrow().clone()),
        other => Err(format!(
            "{what}: arguments are {}, expected a tuple",
            other.describe()
        )),
    }
}

fn int_list(v: &Value, what: &str) -> Result<Vec<u64>, String> {
    let (Value::Tuple(s) | Value::List(s)) = v else {
        return Err(format!(
            "{what} is {}, expected a tuple of ints",
            v.describe()
        ));
    };
    s.0.borrow()
        .iter()
        .map(|x| match x {
            Value::Int(i) if *i >= 0 => Ok(*i as u64),
            other => Err(format!(
                "{what} holds {}, expected a non-negative int",
                other.describe()
            )),
        })
        .collect()
}

/// REDUCE: `func(*args)` for the globals we interpret.
fn call(func: Value, args: Value) -> Result<Value, String> {
    // `_rebuild_from_type_v2(func, type, args, state)` calls `func(*args)`, and `func` may be
    // `_rebuild_from_type_v2` again: unwrap such chains in a loop, never by recursion (a small
    // file can hold tens of thousands of links).
    let (mut func, mut args) = (func, args);
    while let Value::Global(Global::RebuildFromType) = func {
        let a = tuple_items(&args, "_rebuild_from_type_v2")?;
        let (Some(inner_func), Some(inner_args)) = (a.first(), a.get(2)) else {
            return Err("_rebuild_from_type_v2: expected (func, type, args, state)".into());
        };
        if !matches!(inner_func, Value::Global(_)) {
            return Err(format!(
                "_rebuild_from_type_v2: func is {}",
                inner_func.describe()
            ));
        }
        (func, args) = (inner_func.clone(), inner_args.clone());
    }
    let g = match func {
        Value::Global(g) => g,
        Value::Opaque(name) => return Ok(Value::Opaque(Rc::from(format!("result of {name}")))),
        other => {
            return Err(format!(
                "REDUCE on {}, which is not callable",
                other.describe()
            ))
        }
    };
    match g {
        Global::OrderedDict | Global::DefaultDict => {
            let items = tuple_items(&args, "OrderedDict")?;
            let mut flat = Vec::new();
            // OrderedDict([(k, v), ...]) (defaultdict's only argument is its factory).
            if let (Global::OrderedDict, Some(Value::List(pairs))) = (&g, items.first()) {
                for p in pairs.0.borrow().iter() {
                    match p {
                        Value::Tuple(kv) | Value::List(kv) if kv.0.borrow().len() == 2 => {
                            flat.extend(kv.0.borrow().iter().cloned())
                        }
                        _ => return Err("OrderedDict: items are not pairs".into()),
                    }
                }
            }
            Ok(Value::Dict(container(flat)?))
        }
        Global::RebuildTensor(version) => {
            let a = tuple_items(&args, "_rebuild_tensor")?;
            let min = match version {
                1 => 4,
                2 => 6,
                _ => 7,
            };
            if a.len() < min {
                return Err(format!(
                    "_rebuild_tensor_v{version}: {} arguments, expected at least {min}",
                    a.len()
                ));
            }
            let Value::Storage(storage) = &a[0] else {
                return Err(format!(
                    "_rebuild_tensor: first argument is {}, expected a storage",
                    a[0].describe()
                ));
            };
            let offset = match &a[1] {
                Value::Int(o) if *o >= 0 => *o as u64,
                other => return Err(format!("_rebuild_tensor: offset is {}", other.describe())),
            };
            let shape = int_list(&a[2], "tensor size")?;
            let stride = int_list(&a[3], "tensor stride")?;
            if shape.len() != stride.len() {
                return Err(format!(
                    "_rebuild_tensor: size has {} dims but stride has {}",
                    shape.len(),
                    stride.len()
                ));
            }
            let elem = if version == 3 {
                match &a[6] {
                    Value::Global(Global::Dtype(e)) => e.clone(),
                    other => {
                        return Err(format!("_rebuild_tensor_v3: dtype is {}", other.describe()))
                    }
                }
            } else {
                storage.elem.clone()
            };
            if elem != storage.elem && storage.elem != Elem::U8 {
                return Err(format!(
                    "tensor of dtype {} on a {} storage",
                    elem.name(),
                    storage.elem.name()
                ));
            }
            Ok(Value::Tensor(Rc::new(TensorRef {
                storage: storage.clone(),
                elem,
                offset,
                shape,
                stride,
            })))
        }
        Global::RebuildParameter => {
            let a = tuple_items(&args, "_rebuild_parameter")?;
            match a.into_iter().next() {
                Some(t @ (Value::Tensor(_) | Value::BadTensor(_))) => Ok(t),
                Some(other) => Ok(Value::BadTensor(Rc::from(format!(
                    "parameter wrapping {}",
                    other.describe()
                )))),
                None => Err("_rebuild_parameter without arguments".into()),
            }
        }
        // Unwrapped by the loop above; kept as an error rather than a panic.
        Global::RebuildFromType => Err("_rebuild_from_type_v2 chain not unwrapped".into()),
        Global::UnsupportedTensor(name) => Ok(Value::BadTensor(name)),
        Global::Storage(e) => Ok(Value::Opaque(Rc::from(format!(
            "{}Storage object",
            e.name()
        )))),
        Global::Dtype(e) => Ok(Value::Opaque(Rc::from(format!("torch.{} call", e.name())))),
        Global::Opaque(name) => Ok(Value::Opaque(Rc::from(format!("{name} object")))),
    }
}

/// Writes protocol-2 pickles (the subset `save_pth` needs).
#[derive(Default)]
pub(crate) struct PickleWriter {
    pub buf: Vec<u8>,
}

impl PickleWriter {
    pub fn proto(&mut self) {
        self.buf.extend([0x80, 2]);
    }
    pub fn stop(&mut self) {
        self.buf.push(b'.');
    }
    pub fn mark(&mut self) {
        self.buf.push(b'(');
    }
    pub fn global(&mut self, module: &str, name: &str) {
        self.buf.push(b'c');
        self.buf.extend(module.as_bytes());
        self.buf.push(b'\n');
        self.buf.extend(name.as_bytes());
        self.buf.push(b'\n');
    }
    pub fn str(&mut self, s: &str) {
        self.buf.push(b'X');
        // Keys longer than 4 GiB are not a thing; clamp rather than wrap.
        let n = u32::try_from(s.len()).unwrap_or(u32::MAX);
        self.buf.extend(n.to_le_bytes());
        self.buf.extend(&s.as_bytes()[..n as usize]);
    }
    pub fn int(&mut self, v: i64) {
        if (0..=0xff).contains(&v) {
            self.buf.extend([b'K', v as u8]);
        } else if (0..=0xffff).contains(&v) {
            self.buf.push(b'M');
            self.buf.extend((v as u16).to_le_bytes());
        } else if let Ok(v) = i32::try_from(v) {
            self.buf.push(b'J');
            self.buf.extend(v.to_le_bytes());
        } else {
            self.buf.extend([0x8a, 8]);
            self.buf.extend(v.to_le_bytes());
        }
    }
    pub fn bool(&mut self, b: bool) {
        self.buf.push(if b { 0x88 } else { 0x89 });
    }
    pub fn int_tuple(&mut self, vals: &[i64]) {
        match vals.len() {
            0 => self.buf.push(b')'),
            n @ 1..=3 => {
                for &v in vals {
                    self.int(v);
                }
                self.buf.push(0x84 + n as u8);
            }
            _ => {
                self.mark();
                for &v in vals {
                    self.int(v);
                }
                self.tuple();
            }
        }
    }
    pub fn tuple(&mut self) {
        self.buf.push(b't');
    }
    pub fn empty_tuple(&mut self) {
        self.buf.push(b')');
    }
    pub fn reduce(&mut self) {
        self.buf.push(b'R');
    }
    pub fn binpersid(&mut self) {
        self.buf.push(b'Q');
    }
    pub fn setitems(&mut self) {
        self.buf.push(b'u');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(bytes: &[u8]) -> Result<Value, String> {
        unpickle(bytes, 0, &mut TorchPersistentLoad::default()).map(|(v, _)| v)
    }

    #[test]
    fn globals_are_described_by_their_python_names() {
        let describe = |module: &str, name: &str| {
            let mut w = PickleWriter::default();
            w.proto();
            w.global(module, name);
            w.stop();
            run(&w.buf).unwrap().describe()
        };
        assert_eq!(
            describe("collections", "OrderedDict"),
            "a global (collections.OrderedDict)"
        );
        assert_eq!(
            describe("torch", "FloatStorage"),
            "a global (a torch float32 storage class)"
        );
        assert_eq!(
            describe("torch._utils", "_rebuild_tensor_v2"),
            "a global (torch._utils._rebuild_tensor_v2)"
        );
        assert_eq!(describe("torch", "bfloat16"), "a global (torch.bfloat16)");
    }

    #[test]
    fn plain_values() {
        // pickle.dumps({'a': [1, -2, 2**40, 1.5, None, True], 'b': (u'x',)}, protocol=2)
        let mut w = PickleWriter::default();
        w.proto();
        w.buf.push(b'}');
        w.mark();
        w.str("a");
        w.buf.push(b']');
        w.mark();
        w.int(1);
        w.int(-2);
        w.int(1 << 40);
        w.buf.push(b'G');
        w.buf.extend(1.5f64.to_be_bytes());
        w.buf.push(b'N');
        w.bool(true);
        w.buf.push(b'e');
        w.str("b");
        w.str("x");
        w.buf.push(0x85);
        w.setitems();
        w.stop();
        let v = run(&w.buf).expect("parses");
        let a = v.dict_get("a").expect("key a");
        let Value::List(l) = a else { panic!("list") };
        let l = l.0.borrow();
        assert!(matches!(l[0], Value::Int(1)));
        assert!(matches!(l[1], Value::Int(-2)));
        assert!(matches!(l[2], Value::Int(x) if x == 1 << 40));
        assert!(matches!(l[3], Value::Float(x) if x == 1.5));
        assert!(matches!(l[5], Value::Bool(true)));
    }

    #[test]
    fn rejects_code_globals() {
        for (m, n) in [
            ("posix", "system"),
            ("os", "system"),
            ("builtins", "eval"),
            ("__builtin__", "exec"),
            ("subprocess", "Popen"),
        ] {
            let mut w = PickleWriter::default();
            w.proto();
            w.global(m, n);
            w.str("echo hi");
            w.buf.push(0x85);
            w.reduce();
            w.stop();
            let e = run(&w.buf).expect_err("must refuse");
            assert!(e.contains(n), "{e}");
        }
        let e = run(b"\x80\x02cmymod\nMyClass\n)\x81.").expect_err("unknown class");
        assert!(e.contains("mymod.MyClass"), "{e}");
    }

    #[test]
    fn malformed_never_panics() {
        for bad in [
            &b""[..],
            b"\x80",
            b"\x80\x02",
            b"\x80\x02X\xff\xff\xff\xff",
            b"\x80\x02.",
            b"\x80\x02(t0.",
            b"\x80\x02h\x05.",
            b"\x80\x02K\x01K\x02s.",
            b"\x80\x02e.",
            b"\x80\x02\x8b\xff\xff\xff\x7f",
            b"\x80\x02Nq\x00h\x00h\x00R.",
            b"\x80\x02\xff.",
            b"\x80\x02c\nfoo",
        ] {
            assert!(run(bad).is_err(), "{bad:?} should fail");
        }
    }

    fn nested_lists(depth: usize) -> Vec<u8> {
        let mut b = vec![0x80, 2];
        b.extend(std::iter::repeat_n(b']', depth));
        b.extend(std::iter::repeat_n(b'a', depth - 1));
        b.push(b'.');
        b
    }

    #[test]
    fn deep_nesting_drops_without_overflow() {
        let v = run(&nested_lists(MAX_NESTING_DEPTH as usize)).expect("parses");
        drop(v);
    }

    #[test]
    fn nesting_past_the_limit_is_refused() {
        let e = run(&nested_lists(200_000)).expect_err("too deep");
        assert!(e.contains("nesting depth limit"), "{e}");
        let mut b = vec![0x80, 2];
        b.extend(std::iter::repeat_n(b'(', 100_000));
        b.push(b'.');
        let e = run(&b).expect_err("too many marks");
        assert!(e.contains("nesting depth limit"), "{e}");
    }

    /// `_rebuild_from_type_v2(_rebuild_from_type_v2, T, (_rebuild_from_type_v2, T, (...)),
    /// state)`, `links` deep, around one `_rebuild_parameter(None)`; built inside out with
    /// `depth` tuple levels per link.
    fn rebuild_chain(links: usize) -> Vec<u8> {
        let mut w = PickleWriter::default();
        w.proto();
        w.global("torch._tensor", "_rebuild_from_type_v2");
        w.buf.push(b'q');
        w.buf.push(0);
        w.global("torch", "Tensor");
        w.buf.push(b'q');
        w.buf.push(1);
        w.buf.push(0x30); // POP
        w.buf.push(0x30);
        // Outermost call first: func, then args = (func, type, <inner args>, state).
        w.buf.extend([b'h', 0]);
        for _ in 0..links {
            w.mark();
            w.buf.extend([b'h', 0, b'h', 1]);
        }
        // Innermost args: (_rebuild_parameter, T, (None,), None) -> calls _rebuild_parameter(None).
        w.mark();
        w.global("torch._utils", "_rebuild_parameter");
        w.buf.extend([b'h', 1]);
        w.buf.push(b'N');
        w.buf.push(0x85);
        w.buf.push(b'N');
        w.tuple();
        for _ in 0..links {
            w.buf.push(b'N');
            w.tuple();
        }
        w.reduce();
        w.stop();
        w.buf
    }

    #[test]
    fn rebuild_from_type_chains_never_recurse() {
        // Within the depth limit: unwrapped in a loop down to the parameter call.
        let v = run(&rebuild_chain(1_000)).expect("short chain");
        assert!(matches!(v, Value::BadTensor(_)), "{}", v.describe());
        // The reported attack: ~50,000 links. A clean error, not a stack overflow.
        let e = run(&rebuild_chain(50_000)).expect_err("long chain");
        assert!(e.contains("nesting depth limit"), "{e}");
    }

    #[test]
    fn memo_and_opcode_limits_name_themselves() {
        let mut b = vec![0x80, 4, b'N'];
        b.extend(std::iter::repeat_n(0x94, MAX_MEMO_ENTRIES + 1)); // MEMOIZE
        b.push(b'.');
        let e = run(&b).expect_err("memo");
        assert!(e.contains("memo size limit"), "{e}");
        let mut b = vec![0x80, 2, b'N'];
        for _ in 0..MAX_OPCODES / 2 {
            b.extend([b'0', b'N']); // POP, NONE: constant memory
        }
        b.push(b'.');
        let e = run(&b).expect_err("ops");
        assert!(e.contains("opcode limit"), "{e}");
    }

    #[test]
    fn long_decoding() {
        assert!(matches!(long_from_le(&[0xff]), Value::Int(-1)));
        assert!(matches!(long_from_le(&[0x00, 0x01]), Value::Int(256)));
        assert!(matches!(long_from_le(&[1; 9]), Value::BigInt));
    }
}
