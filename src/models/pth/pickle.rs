//! The allow-listed pickle interpreter of [`super`]: the opcodes and globals a `torch.save`
//! state dict uses, with nesting, memo copies and value counts bounded; everything else is
//! refused and nothing is executed.

use std::collections::HashMap;

use crate::error::{Error, Result};

/// Most values the unpickler keeps on its stack and in its memo.
pub(super) const MAX_VALUES: usize = 1 << 22;
/// Deepest nesting of tuples, lists and dicts (a state dict needs 3 or 4; bounded so that no
/// value is deep enough to overflow the stack when dropped).
pub(super) const MAX_DEPTH: u32 = 64;
/// Most values copied out of the memo in total (a pickle can reference a container many
/// times; each reference is a copy here).
pub(super) const MAX_MEMO_COPIES: u64 = 1 << 24;
/// Most bytes the interpreter may materialise by copying values (memo puts and gets, `DUP`):
/// a memo bomb copies one large string many times, which a count of values does not see.
pub(super) const MAX_COPIED_BYTES: u64 = 256 << 20;

// Metadata values (flags, numbers, bytes) are parsed to keep the pickle's structure; only
// strings, dicts and tensors are read.
#[allow(dead_code)]
#[derive(Debug, Clone)]
pub(super) enum Value {
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

/// A container's nesting depth, node count and bytes (its strings' and byte strings' lengths
/// plus a value's size per node), kept so that none has to be recomputed.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Nest {
    depth: u32,
    nodes: u64,
    bytes: u64,
}

const VALUE_BYTES: u64 = std::mem::size_of::<Value>() as u64;

impl Value {
    fn nest(&self) -> Nest {
        let leaf = |extra: usize| Nest {
            depth: 0,
            nodes: 1,
            bytes: VALUE_BYTES + extra as u64,
        };
        match self {
            Value::Tuple(_, n) | Value::List(_, n) | Value::Dict(_, n) => *n,
            Value::Str(s) => leaf(s.len()),
            Value::Bytes(b) => leaf(b.len()),
            _ => leaf(0),
        }
    }
}

/// The nest of a container holding `children` (on top of `base`), refused past [`MAX_DEPTH`].
pub(super) fn nest_of<'v>(base: Nest, children: impl Iterator<Item = &'v Value>) -> Result<Nest> {
    let mut n = Nest {
        depth: base.depth.max(1),
        nodes: base.nodes.max(1),
        bytes: base.bytes.max(VALUE_BYTES),
    };
    for c in children {
        let cn = c.nest();
        n.depth = n.depth.max(cn.depth + 1);
        n.nodes = n.nodes.saturating_add(cn.nodes);
        n.bytes = n.bytes.saturating_add(cn.bytes);
    }
    if n.depth > MAX_DEPTH {
        return Err(bad(format!("values nested deeper than {MAX_DEPTH}")));
    }
    Ok(n)
}

pub(super) fn tuple(items: Vec<Value>) -> Result<Value> {
    let n = nest_of(Nest::default(), items.iter())?;
    Ok(Value::Tuple(items, n))
}

pub(super) fn list(items: Vec<Value>) -> Result<Value> {
    let n = nest_of(Nest::default(), items.iter())?;
    Ok(Value::List(items, n))
}

/// The globals a state dict may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Global {
    OrderedDict,
    RebuildTensor,
    RebuildParameter,
    StorageType(StorageKind),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StorageKind {
    F32,
    F16,
    Bf16,
    F64,
    /// Integer and bool storages: kept so the pickle parses, never read as weights.
    Other(usize),
}

impl StorageKind {
    pub(super) fn size(self) -> usize {
        match self {
            StorageKind::F32 => 4,
            StorageKind::F16 | StorageKind::Bf16 => 2,
            StorageKind::F64 => 8,
            StorageKind::Other(n) => n,
        }
    }
}

#[derive(Debug, Clone)]
pub(super) struct Storage {
    pub(super) kind: StorageKind,
    pub(super) key: String,
    pub(super) numel: usize,
}

#[derive(Debug, Clone)]
pub(super) struct TensorRef {
    pub(super) storage: Storage,
    pub(super) offset: usize,
    pub(super) size: Vec<usize>,
    pub(super) stride: Vec<usize>,
}

pub(super) fn global(module: &str, name: &str) -> Result<Global> {
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
pub(super) struct Unpickler<'a> {
    pub(super) data: &'a [u8],
    pub(super) pos: usize,
    pub(super) stack: Vec<Value>,
    pub(super) marks: Vec<usize>,
    pub(super) memo: HashMap<u32, Value>,
    pub(super) copied: u64,
    /// Bytes materialised by copies so far (bounded by [`MAX_COPIED_BYTES`]).
    pub(super) copied_bytes: u64,
}

pub(super) fn bad(reason: impl Into<String>) -> Error {
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

    /// Counts a copy of `v` against the byte budget.
    fn copying(&mut self, v: &Value) -> Result<()> {
        self.copied_bytes = self.copied_bytes.saturating_add(v.nest().bytes);
        if self.copied_bytes > MAX_COPIED_BYTES {
            return Err(bad(format!(
                "copies of values (memo, DUP) past {} MiB: a memo bomb",
                MAX_COPIED_BYTES >> 20
            )));
        }
        Ok(())
    }

    fn memo_put(&mut self, key: u32) -> Result<()> {
        let top = self
            .stack
            .last()
            .ok_or_else(|| bad("memo of an empty stack"))?
            .clone();
        self.copying(&top)?;
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
        self.copying(&v)?;
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

    pub(super) fn run(mut self) -> Result<Value> {
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
                    self.copying(&top)?;
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
pub(super) fn persistent_storage(pid: Value) -> Result<Storage> {
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

pub(super) fn usizes(v: &Value, what: &str) -> Result<Vec<usize>> {
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

pub(super) fn reduce(callable: Value, args: Value) -> Result<Value> {
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
