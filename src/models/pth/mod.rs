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
