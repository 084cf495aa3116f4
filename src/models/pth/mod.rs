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

mod pickle;

use std::collections::HashMap;
use std::io::Read;

use crate::error::{Error, Result};
use crate::host::HostTensor;
use pickle::{StorageKind, TensorRef, Unpickler, Value, bad};

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

/// Most dimensions of a tensor view (a state dict's are at most 5).
const MAX_RANK: usize = 8;

/// Gathers a tensor's elements from its storage bytes as f32; `None` for integer storages.
/// A view may not hold more elements than its storage (a stride-0 view over a tiny storage
/// would otherwise gather gigabytes from a few bytes), nor more than 8 dimensions.
fn materialize(name: &str, t: &TensorRef, bytes: &[u8]) -> Result<Option<HostTensor>> {
    let err = |reason: String| Error::Weights {
        key: name.to_string(),
        reason,
    };
    if t.size.len() > MAX_RANK || t.stride.len() != t.size.len() {
        return Err(err(format!(
            "a view of rank {} (strides {}): at most {MAX_RANK} dimensions, one stride each",
            t.size.len(),
            t.stride.len()
        )));
    }
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
    if numel > t.storage.numel {
        return Err(err(format!(
            "view of shape {:?} holds {numel} elements, more than its storage's {} (a view \
             repeating its storage's elements is not a weight)",
            t.size, t.storage.numel
        )));
    }
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
    end_records(bytes).map_err(in_file)?;
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| in_file(Error::Format(format!("not a torch.save zip archive: {e}"))))?;
    no_overlaps(&mut archive).map_err(in_file)?;
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
        copied_bytes: 0,
    }
    .run()
    .map_err(in_file)?;
    let tensors = state_dict(root).map_err(in_file)?;
    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    let mut out = Vec::with_capacity(tensors.len());
    // What the tensors gather, as f32, is bounded by the archive's own size: f16 and bf16
    // double, and a storage shared by a few keys (tied weights) counts each time.
    let budget = (bytes.len() as u64)
        .saturating_mul(8)
        .saturating_add(1 << 20);
    let mut gathered = 0u64;
    for (name, t) in tensors {
        if !storages.contains_key(&t.storage.key) {
            let data = entry(&format!("{prefix}data/{}", t.storage.key)).map_err(in_file)?;
            storages.insert(t.storage.key.clone(), data);
        }
        // One tensor holds at most its storage's elements (materialize checks that before
        // allocating); the sum over tensors is checked after each.
        let Some(host) = materialize(&name, &t, &storages[&t.storage.key]).map_err(in_file)? else {
            continue;
        };
        gathered = gathered.saturating_add(host.data.len() as u64 * 4);
        if gathered > budget {
            return Err(in_file(Error::Weights {
                key: name,
                reason: format!(
                    "the tensors gather more than {} MiB from a {} MiB archive",
                    budget >> 20,
                    bytes.len() >> 20
                ),
            }));
        }
        out.push((name, host));
    }
    Ok(out)
}

/// The zip end-of-central-directory record appears once in a `torch.save` archive; many of
/// them (an archive made of repeated end records) make the archive reader's search quadratic,
/// so they are refused after one linear scan.
fn end_records(bytes: &[u8]) -> Result<()> {
    const SIGNATURE: &[u8; 4] = b"PK\x05\x06";
    const MOST: usize = 16;
    let found = bytes
        .windows(4)
        .filter(|w| w == SIGNATURE)
        .take(MOST + 1)
        .count();
    if found > MOST {
        return Err(Error::Format(format!(
            "more than {MOST} zip end records: not a torch.save archive"
        )));
    }
    Ok(())
}

/// Entries whose data overlap (one storage read many times over: an archive bomb) are
/// refused.
fn no_overlaps<R: std::io::Read + std::io::Seek>(archive: &mut zip::ZipArchive<R>) -> Result<()> {
    let mut spans = Vec::with_capacity(archive.len());
    for i in 0..archive.len() {
        let f = archive
            .by_index_raw(i)
            .map_err(|e| Error::Format(format!("archive entry {i}: {e}")))?;
        let start = f.header_start();
        let end = f.data_start().saturating_add(f.compressed_size());
        spans.push((start, end, f.name().to_string()));
    }
    spans.sort();
    for pair in spans.windows(2) {
        if pair[1].0 < pair[0].1 {
            return Err(Error::Format(format!(
                "archive entries {} and {} overlap: not a torch.save archive",
                pair[0].2, pair[1].2
            )));
        }
    }
    Ok(())
}

/// The checkpoint as safetensors bytes (f32), for the safetensors loaders and `convert`.
/// A weight that is NaN or infinite (or an f64 past f32's range) is refused, as every loader
/// refuses it.
pub fn pth_to_safetensors(bytes: &[u8], what: &str) -> Result<Vec<u8>> {
    let tensors = read_pth(bytes, what)?;
    for (name, t) in &tensors {
        if let Some((i, v)) = t.first_non_finite() {
            return Err(Error::Weights {
                key: name.clone(),
                reason: format!(
                    "holds {v} at flat index {i} (a non-finite weight, or an f64 past f32's \
                     range)"
                ),
            }
            .in_file(std::path::Path::new(what)));
        }
    }
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
        1 => {
            let name = found.remove(0);
            let rel = name.file_name().map(|n| n.to_string_lossy().into_owned());
            crate::io::in_model(dir, &rel.unwrap_or_default())
        }
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
