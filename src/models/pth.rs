//! PyTorch checkpoints (`torch.save`, the zip format of torch >= 1.6) read without Python and
//! without executing anything: the archive's `data.pkl` is run on a small pickle interpreter
//! that knows only the opcodes and the globals a state dict needs (`OrderedDict`, the tensor
//! and parameter rebuild functions, the storage types); any other global (`os.system`, ...) or
//! opcode is an error. Tensors are views on the archive's `data/N` storages (f32, f16, bf16,
//! f64; integer storages are read as absent weights), gathered through their offset and strides
//! with every index checked against the storage.
//!
//! The state dict is found the way the official CSWin code saves it: `state_dict_ema`, else
//! `state_dict`, else `model`, else the top-level dict; a `module.` prefix on every key is
//! dropped.

use std::collections::HashMap;
use std::io::Read;

use crate::error::{Error, Result};
use crate::reference::HostTensor;

/// Most values the unpickler keeps on its stack and in its memo.
const MAX_VALUES: usize = 1 << 22;
/// Deepest nesting of tuples, lists and dicts (a state dict needs 3 or 4; bounded so that no
/// value is deep enough to overflow the stack when dropped).
const MAX_DEPTH: u32 = 64;
/// Most values copied out of the memo in total (a pickle can reference a container many
/// times; each reference is a copy here).
const MAX_MEMO_COPIES: u64 = 1 << 24;

// Metadata values (flags, numbers, bytes) are parsed to keep the pickle's structure; only
// strings, dicts and tensors are read.
#[allow(dead_code)]
#[derive(Debug, Clone)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>, Nest),
    List(Vec<Value>, Nest),
    Dict(Vec<(Value, Value)>, Nest),
    Global(Global),
    Storage(Storage),
    Tensor(TensorRef),
}

/// A container's nesting depth and node count, kept so that neither has to be recomputed.
#[derive(Debug, Clone, Copy, Default)]
struct Nest {
    depth: u32,
    nodes: u64,
}

impl Value {
    fn nest(&self) -> Nest {
        match self {
            Value::Tuple(_, n) | Value::List(_, n) | Value::Dict(_, n) => *n,
            _ => Nest { depth: 0, nodes: 1 },
        }
    }
}

/// The nest of a container holding `children` (on top of `base`), refused past [`MAX_DEPTH`].
fn nest_of<'v>(base: Nest, children: impl Iterator<Item = &'v Value>) -> Result<Nest> {
    let mut n = Nest {
        depth: base.depth.max(1),
        nodes: base.nodes.max(1),
    };
    for c in children {
        let cn = c.nest();
        n.depth = n.depth.max(cn.depth + 1);
        n.nodes = n.nodes.saturating_add(cn.nodes);
    }
    if n.depth > MAX_DEPTH {
        return Err(bad(format!("values nested deeper than {MAX_DEPTH}")));
    }
    Ok(n)
}

fn tuple(items: Vec<Value>) -> Result<Value> {
    let n = nest_of(Nest::default(), items.iter())?;
    Ok(Value::Tuple(items, n))
}

fn list(items: Vec<Value>) -> Result<Value> {
    let n = nest_of(Nest::default(), items.iter())?;
    Ok(Value::List(items, n))
}

/// The globals a state dict may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Global {
    OrderedDict,
    RebuildTensor,
    RebuildParameter,
    StorageType(StorageKind),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StorageKind {
    F32,
    F16,
    Bf16,
    F64,
    /// Integer and bool storages: kept so the pickle parses, never read as weights.
    Other(usize),
}

impl StorageKind {
    fn size(self) -> usize {
        match self {
            StorageKind::F32 => 4,
            StorageKind::F16 | StorageKind::Bf16 => 2,
            StorageKind::F64 => 8,
            StorageKind::Other(n) => n,
        }
    }
}

#[derive(Debug, Clone)]
struct Storage {
    kind: StorageKind,
    key: String,
    numel: usize,
}

#[derive(Debug, Clone)]
struct TensorRef {
    storage: Storage,
    offset: usize,
    size: Vec<usize>,
    stride: Vec<usize>,
}

fn global(module: &str, name: &str) -> Result<Global> {
    let kind = |k| Ok(Global::StorageType(k));
    match (module, name) {
        ("collections", "OrderedDict") => Ok(Global::OrderedDict),
        ("torch._utils", "_rebuild_tensor_v2") => Ok(Global::RebuildTensor),
        ("torch._utils", "_rebuild_parameter") => Ok(Global::RebuildParameter),
        ("torch", "FloatStorage") => kind(StorageKind::F32),
        ("torch", "HalfStorage") => kind(StorageKind::F16),
        ("torch", "BFloat16Storage") => kind(StorageKind::Bf16),
        ("torch", "DoubleStorage") => kind(StorageKind::F64),
        ("torch", "LongStorage") => kind(StorageKind::Other(8)),
        ("torch", "IntStorage") => kind(StorageKind::Other(4)),
        ("torch", "ShortStorage") => kind(StorageKind::Other(2)),
        ("torch", "CharStorage" | "ByteStorage" | "BoolStorage") => kind(StorageKind::Other(1)),
        _ => Err(Error::Format(format!(
            "data.pkl names the global {module}.{name}, which a state dict never needs: refused \
             (loading a checkpoint never runs code)"
        ))),
    }
}

/// The pickle interpreter's state.
struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    copied: u64,
}

fn bad(reason: impl Into<String>) -> Error {
    Error::Format(format!("data.pkl: {}", reason.into()))
}

impl<'a> Unpickler<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        let end = end.ok_or_else(|| bad("truncated"))?;
        let out = &self.data[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn line(&mut self) -> Result<String> {
        let rest = &self.data[self.pos..];
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| bad("truncated"))?;
        let s = String::from_utf8_lossy(&rest[..end]).into_owned();
        self.pos += end + 1;
        Ok(s)
    }

    fn push(&mut self, v: Value) -> Result<()> {
        if self.stack.len() >= MAX_VALUES {
            return Err(bad("too many values"));
        }
        self.stack.push(v);
        Ok(())
    }

    fn pop(&mut self) -> Result<Value> {
        self.stack.pop().ok_or_else(|| bad("stack underflow"))
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let mark = self.marks.pop().ok_or_else(|| bad("no mark"))?;
        if mark > self.stack.len() {
            return Err(bad("mark past the stack"));
        }
        Ok(self.stack.split_off(mark))
    }

    fn memo_put(&mut self, key: u32) -> Result<()> {
        let top = self
            .stack
            .last()
            .ok_or_else(|| bad("memo of an empty stack"))?
            .clone();
        if self.memo.len() >= MAX_VALUES {
            return Err(bad("memo too large"));
        }
        self.memo.insert(key, top);
        Ok(())
    }

    fn memo_get(&mut self, key: u32) -> Result<()> {
        let nodes = self.memo.get(&key).map(|v| v.nest().nodes);
        let nodes = nodes.ok_or_else(|| bad(format!("memo {key} unset")))?;
        self.copied = self.copied.saturating_add(nodes);
        if self.copied > MAX_MEMO_COPIES {
            return Err(bad("too many values copied from the memo"));
        }
        let v = self.memo[&key].clone();
        self.push(v)
    }

    fn string(&mut self, n: usize) -> Result<()> {
        let s = String::from_utf8(self.take(n)?.to_vec()).map_err(|_| bad("string not UTF-8"))?;
        self.push(Value::Str(s))
    }

    fn set_items(&mut self, items: Vec<Value>) -> Result<()> {
        if !items.len().is_multiple_of(2) {
            return Err(bad("odd SETITEMS"));
        }
        let Some(Value::Dict(dict, nest)) = self.stack.last_mut() else {
            return Err(bad("SETITEMS on a non-dict"));
        };
        *nest = nest_of(*nest, items.iter())?;
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            dict.push((k, v));
        }
        Ok(())
    }

    fn run(mut self) -> Result<Value> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    self.u8()?; // PROTO
                }
                0x95 => {
                    self.take(8)?; // FRAME
                }
                b'.' => return self.pop(), // STOP
                b'(' => self.marks.push(self.stack.len()),
                b'}' => self.push(Value::Dict(Vec::new(), Nest::default()))?,
                b']' => self.push(list(Vec::new())?)?,
                b')' => self.push(tuple(Vec::new())?)?,
                b'N' => self.push(Value::None)?,
                0x88 => self.push(Value::Bool(true))?,
                0x89 => self.push(Value::Bool(false))?,
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(tuple(items)?)?;
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err(bad("stack underflow"));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.push(tuple(items)?)?;
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(list(items)?)?;
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Dict(Vec::new(), Nest::default()))?;
                    self.set_items(items)?;
                }
                b'q' => {
                    let k = self.u8()? as u32;
                    self.memo_put(k)?;
                }
                b'r' => {
                    let k = self.u32()?;
                    self.memo_put(k)?;
                }
                0x94 => {
                    let k = self.memo.len() as u32;
                    self.memo_put(k)?;
                }
                b'h' => {
                    let k = self.u8()? as u32;
                    self.memo_get(k)?;
                }
                b'j' => {
                    let k = self.u32()?;
                    self.memo_get(k)?;
                }
                b'J' => {
                    let v = self.u32()? as i32;
                    self.push(Value::Int(v as i64))?;
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(v as i64))?;
                }
                b'M' => {
                    let b = self.take(2)?;
                    self.push(Value::Int(u16::from_le_bytes([b[0], b[1]]) as i64))?;
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    if n > 8 {
                        return Err(bad("integer wider than 64 bits"));
                    }
                    let mut v: i64 = 0;
                    for (i, &byte) in b.iter().enumerate() {
                        v |= (byte as i64) << (8 * i);
                    }
                    if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n);
                    }
                    self.push(Value::Int(v))?;
                }
                b'G' => {
                    let b = self.take(8)?;
                    let v = f64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
                    self.push(Value::Float(v))?;
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    self.string(n)?;
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    self.string(n)?;
                }
                b'U' | b'C' => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.push(Value::Bytes(b))?;
                }
                b'T' | b'B' => {
                    let n = self.u32()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.push(Value::Bytes(b))?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?;
                }
                b'a' | b'e' => {
                    let items = if op == b'a' {
                        vec![self.pop()?]
                    } else {
                        self.pop_mark()?
                    };
                    match self.stack.last_mut() {
                        Some(Value::List(l, nest)) => {
                            *nest = nest_of(*nest, items.iter())?;
                            l.extend(items);
                        }
                        _ => return Err(bad("APPEND to a non-list")),
                    }
                }
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let top = self
                        .stack
                        .last()
                        .cloned()
                        .ok_or_else(|| bad("DUP of nothing"))?;
                    self.push(top)?;
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let g = global(&module, &name)?;
                    self.push(Value::Global(g))?;
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Value::Str(module), Value::Str(name)) = (module, name) else {
                        return Err(bad("STACK_GLOBAL of non-strings"));
                    };
                    let g = global(&module, &name)?;
                    self.push(Value::Global(g))?;
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let storage = persistent_storage(pid)?;
                    self.push(Value::Storage(storage))?;
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = reduce(callable, args)?;
                    self.push(v)?;
                }
                b'b' => {
                    // BUILD: state for the object below (OrderedDict metadata, tensor
                    // attributes) that a state dict does not need.
                    self.pop()?;
                    if self.stack.is_empty() {
                        return Err(bad("BUILD without an object"));
                    }
                }
                other => {
                    return Err(bad(format!(
                        "opcode 0x{other:02x} at byte {} is not allowed in a state dict",
                        self.pos - 1
                    )));
                }
            }
        }
    }
}

/// `('storage', StorageType, key, location, numel)`.
fn persistent_storage(pid: Value) -> Result<Storage> {
    let Value::Tuple(items, _) = pid else {
        return Err(bad("a persistent id that is not a tuple"));
    };
    match &items[..] {
        [
            Value::Str(tag),
            Value::Global(Global::StorageType(kind)),
            Value::Str(key),
            _,
            Value::Int(numel),
        ] if tag == "storage" && *numel >= 0 => Ok(Storage {
            kind: *kind,
            key: key.clone(),
            numel: *numel as usize,
        }),
        _ => Err(bad("a persistent id that is not a storage")),
    }
}

fn usizes(v: &Value, what: &str) -> Result<Vec<usize>> {
    let Value::Tuple(items, _) = v else {
        return Err(bad(format!("tensor {what} is not a tuple")));
    };
    items
        .iter()
        .map(|x| match x {
            Value::Int(i) if *i >= 0 => Ok(*i as usize),
            _ => Err(bad(format!("tensor {what} holds a non-size"))),
        })
        .collect()
}

fn reduce(callable: Value, args: Value) -> Result<Value> {
    let (Value::Global(g), Value::Tuple(args, _)) = (callable, args) else {
        return Err(bad("REDUCE of something other than an allowed global"));
    };
    match g {
        Global::OrderedDict => Ok(Value::Dict(Vec::new(), Nest::default())),
        Global::RebuildTensor => match &args[..] {
            [Value::Storage(s), Value::Int(offset), size, stride, ..] if *offset >= 0 => {
                let (size, stride) = (usizes(size, "size")?, usizes(stride, "stride")?);
                if size.len() != stride.len() {
                    return Err(bad("tensor size and stride of different ranks"));
                }
                Ok(Value::Tensor(TensorRef {
                    storage: s.clone(),
                    offset: *offset as usize,
                    size,
                    stride,
                }))
            }
            _ => Err(bad("_rebuild_tensor_v2 with unexpected arguments")),
        },
        Global::RebuildParameter => match args.into_iter().next() {
            Some(t @ Value::Tensor(_)) => Ok(t),
            _ => Err(bad("_rebuild_parameter without a tensor")),
        },
        Global::StorageType(_) => Err(bad("a storage type called as a function")),
    }
}

/// The state dict inside a checkpoint's root object.
fn state_dict(root: Value) -> Result<Vec<(String, TensorRef)>> {
    let Value::Dict(mut entries, _) = root else {
        return Err(bad("the checkpoint is not a dict"));
    };
    for wrapper in ["state_dict_ema", "state_dict", "model"] {
        let found = entries.iter().position(|(k, v)| {
            matches!(k, Value::Str(s) if s == wrapper) && matches!(v, Value::Dict(..))
        });
        if let Some(i) = found {
            let Value::Dict(inner, _) = entries.swap_remove(i).1 else {
                unreachable!("checked above")
            };
            entries = inner;
            break;
        }
    }
    let mut out = Vec::new();
    for (k, v) in entries {
        match (k, v) {
            (Value::Str(k), Value::Tensor(t)) => out.push((k, t)),
            // Non-tensor entries of a state dict (versions, metadata) carry no weights.
            (Value::Str(_), _) => {}
            _ => return Err(bad("a state dict key that is not a string")),
        }
    }
    if !out.is_empty() && out.iter().all(|(k, _)| k.starts_with("module.")) {
        for (k, _) in &mut out {
            k.drain(.."module.".len());
        }
    }
    Ok(out)
}

/// Gathers a tensor's elements from its storage bytes as f32; `None` for integer storages.
fn materialize(name: &str, t: &TensorRef, bytes: &[u8]) -> Result<Option<HostTensor>> {
    let err = |reason: String| Error::Weights {
        key: name.to_string(),
        reason,
    };
    let size = t.storage.kind.size();
    let needed = t
        .storage
        .numel
        .checked_mul(size)
        .ok_or_else(|| err("storage too large".into()))?;
    if bytes.len() < needed {
        return Err(err(format!(
            "storage data/{} holds {} bytes, shorter than its {} elements of {size} bytes",
            t.storage.key,
            bytes.len(),
            t.storage.numel
        )));
    }
    let numel = t
        .size
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n as u64 <= crate::limits::MAX_TENSOR_ELEMENTS)
        .ok_or_else(|| err(format!("shape {:?} is too large", t.size)))?;
    if numel > 0 {
        // The farthest element must lie inside the storage.
        let last = t
            .size
            .iter()
            .zip(&t.stride)
            .try_fold(t.offset, |acc, (&d, &s)| {
                (d - 1).checked_mul(s).and_then(|x| acc.checked_add(x))
            });
        if last.is_none_or(|l| l >= t.storage.numel) {
            return Err(err(format!(
                "view (offset {}, size {:?}, stride {:?}) reaches past its storage of {} elements",
                t.offset, t.size, t.stride, t.storage.numel
            )));
        }
    }
    let read = |i: usize| -> f32 {
        let b = &bytes[i * size..(i + 1) * size];
        match t.storage.kind {
            StorageKind::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            StorageKind::F16 => half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
            StorageKind::Bf16 => half::bf16::from_le_bytes([b[0], b[1]]).to_f32(),
            StorageKind::F64 => {
                f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
            }
            StorageKind::Other(_) => 0.0,
        }
    };
    if matches!(t.storage.kind, StorageKind::Other(_)) {
        return Ok(None);
    }
    let mut data = Vec::with_capacity(numel);
    let mut index = vec![0usize; t.size.len()];
    for _ in 0..numel {
        let at = t.offset
            + index
                .iter()
                .zip(&t.stride)
                .map(|(i, s)| i * s)
                .sum::<usize>();
        data.push(read(at));
        for d in (0..index.len()).rev() {
            index[d] += 1;
            if index[d] < t.size[d] {
                break;
            }
            index[d] = 0;
        }
    }
    HostTensor::new(&t.size, data).map(Some)
}

/// Every floating-point tensor of a `torch.save` checkpoint (the state dict found as the
/// module documentation says), by name, as f32. Errors name `what` (the file).
pub fn read_pth(bytes: &[u8], what: &str) -> Result<Vec<(String, HostTensor)>> {
    let in_file = |e: Error| e.in_file(std::path::Path::new(what));
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| in_file(Error::Format(format!("not a torch.save zip archive: {e}"))))?;
    let pkl = (0..archive.len())
        .filter_map(|i| archive.name_for_index(i).map(str::to_string))
        .find(|n| n.ends_with("data.pkl") && n.matches('/').count() <= 1)
        .ok_or_else(|| in_file(Error::Format("no data.pkl in the archive".into())))?;
    let prefix = pkl.trim_end_matches("data.pkl").to_string();
    let mut entry = |name: &str| -> Result<Vec<u8>> {
        let mut f = archive
            .by_name(name)
            .map_err(|e| Error::Format(format!("archive entry {name}: {e}")))?;
        if f.size() > bytes.len() as u64 {
            return Err(Error::Format(format!(
                "archive entry {name} claims {} bytes",
                f.size()
            )));
        }
        let mut out = Vec::with_capacity(f.size() as usize);
        f.read_to_end(&mut out)
            .map_err(|e| Error::Format(format!("archive entry {name}: {e}")))?;
        Ok(out)
    };
    let pickle = entry(&pkl).map_err(in_file)?;
    let root = Unpickler {
        data: &pickle,
        pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        copied: 0,
    }
    .run()
    .map_err(in_file)?;
    let tensors = state_dict(root).map_err(in_file)?;
    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    let mut out = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        if !storages.contains_key(&t.storage.key) {
            let data = entry(&format!("{prefix}data/{}", t.storage.key)).map_err(in_file)?;
            storages.insert(t.storage.key.clone(), data);
        }
        if let Some(host) = materialize(&name, &t, &storages[&t.storage.key]).map_err(in_file)? {
            out.push((name, host));
        }
    }
    Ok(out)
}

/// The checkpoint as safetensors bytes (f32), for the safetensors loaders and `convert`.
pub fn pth_to_safetensors(bytes: &[u8], what: &str) -> Result<Vec<u8>> {
    let tensors = read_pth(bytes, what)?;
    let refs: Vec<(&str, &HostTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    crate::models::weights::to_safetensors(&refs)
}

/// The one PyTorch checkpoint (`.pth` or `.pt`) in a model folder without `model.safetensors`.
#[cfg(not(target_arch = "wasm32"))]
pub fn checkpoint_in(dir: &std::path::Path) -> Result<std::path::PathBuf> {
    let io = |e: std::io::Error| Error::Io {
        path: dir.display().to_string(),
        source: e,
    };
    let mut found: Vec<_> = std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "pth" || x == "pt"))
        .collect();
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(Error::Io {
            path: format!(
                "{} (no model.safetensors and no .pth / .pt checkpoint)",
                dir.display()
            ),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        }),
        n => Err(Error::Format(format!(
            "{}: {n} PyTorch checkpoints and no model.safetensors: keep one",
            dir.display()
        ))),
    }
}
