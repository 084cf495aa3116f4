//! Files in and out, bounded and atomic: every read is capped (by the file's own declared size
//! for safetensors, by a fixed budget otherwise) before anything is allocated, and every write
//! goes to a temporary file beside the target that is synced and renamed over it, so a failed
//! write leaves the old file intact.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};

use crate::error::{Error, Result};
use crate::limits;

fn io_error(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        source,
    }
}

fn too_large(path: &Path, what: &str, size: u64, limit: u64) -> Error {
    Error::Input {
        arg: path.display().to_string(),
        reason: format!("{what} of {size} bytes is over the limit of {limit} bytes"),
    }
}

/// Opens a file for reading with its metadata; a folder is an error naming it.
fn open_file(path: &Path) -> Result<(File, std::fs::Metadata)> {
    let file = File::open(path).map_err(|e| io_error(path, e))?;
    let meta = file.metadata().map_err(|e| io_error(path, e))?;
    if meta.is_dir() {
        return Err(io_error(
            path,
            std::io::Error::other("is a directory, not a file"),
        ));
    }
    Ok((file, meta))
}

/// Reads a checkpoint: a regular file only (a FIFO with no writer would block forever, a
/// device never ends), of at most `max_bytes`.
pub fn read_regular(path: &Path, max_bytes: u64) -> Result<Vec<u8>> {
    let meta = std::fs::metadata(path).map_err(|e| io_error(path, e))?;
    if !meta.is_file() {
        return Err(io_error(
            path,
            std::io::Error::other("is not a regular file (a checkpoint must be one)"),
        ));
    }
    read_bounded(path, max_bytes)
}

/// Reads a whole file of at most `max_bytes`. A regular file over the limit is refused from
/// its metadata; a stream (a pipe, `/dev/zero`) is read until it ends or passes the limit.
pub fn read_bounded(path: &Path, max_bytes: u64) -> Result<Vec<u8>> {
    let (mut file, meta) = open_file(path)?;
    if meta.is_file() && meta.len() > max_bytes {
        return Err(too_large(path, "file", meta.len(), max_bytes));
    }
    let capacity = if meta.is_file() { meta.len() } else { 0 };
    let mut bytes = Vec::with_capacity(capacity as usize);
    (&mut file)
        .take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| io_error(path, e))?;
    if bytes.len() as u64 > max_bytes {
        return Err(too_large(path, "input", bytes.len() as u64, max_bytes));
    }
    Ok(bytes)
}

/// `dir.join(rel)`, checked to stay inside the model folder `dir` once every symlink is
/// resolved: a model folder never makes the program read outside it. The boundary is the
/// folder itself, except in a Hugging Face hub cache, where a snapshot
/// (`models--org--name/snapshots/<revision>`) is a folder of symlinks into the repository's
/// `blobs/`: there the boundary is the repository's folder (`models--org--name`). A path that
/// does not exist is returned as is (the caller reports it missing).
pub fn in_model(dir: &Path, rel: &str) -> Result<PathBuf> {
    let path = dir.join(rel);
    let Ok(real) = std::fs::canonicalize(&path) else {
        return Ok(path);
    };
    let root = std::fs::canonicalize(dir).map_err(|e| io_error(dir, e))?;
    let boundary = hub_repository(&root).unwrap_or(&root);
    if real.starts_with(boundary) {
        Ok(path)
    } else {
        Err(Error::Input {
            arg: path.display().to_string(),
            reason: format!(
                "is a link to {}, outside the model folder {} (a model folder never makes this \
                 program read outside it: copy the file into the folder)",
                real.display(),
                boundary.display()
            ),
        })
    }
}

/// The repository folder of a Hugging Face hub snapshot (`<cache>/models--org--name` for
/// `<cache>/models--org--name/snapshots/<revision>`), `None` for any other folder.
fn hub_repository(folder: &Path) -> Option<&Path> {
    let snapshots = folder.parent()?;
    let repository = snapshots.parent()?;
    let is_hub = snapshots.file_name()? == "snapshots"
        && repository
            .file_name()?
            .to_str()
            .is_some_and(|n| n.starts_with("models--"));
    is_hub.then_some(repository)
}

/// What a safetensors header declares, read without building a map of its entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderSummary {
    /// Tensors listed (`__metadata__` not counted).
    pub tensors: usize,
    /// The largest `data_offsets` end: the byte size of the data section.
    pub data_len: u64,
}

/// Checks a safetensors header (the JSON after the 8-byte length) against the limits: at most
/// [`limits::MAX_TENSORS`] entries, each with two ordered `data_offsets`. Stops at the first
/// entry over the limit, so a hostile header costs no more than its own bytes.
pub fn summarize_header(header: &[u8]) -> std::result::Result<HeaderSummary, String> {
    let mut de = serde_json::Deserializer::from_slice(header);
    let summary = HeaderVisitor
        .deserialize(&mut de)
        .map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(summary)
}

struct HeaderVisitor;

impl<'de> DeserializeSeed<'de> for HeaderVisitor {
    type Value = HeaderSummary;
    fn deserialize<D: de::Deserializer<'de>>(
        self,
        d: D,
    ) -> std::result::Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

#[derive(serde::Deserialize)]
struct Entry {
    data_offsets: (u64, u64),
}

impl<'de> Visitor<'de> for HeaderVisitor {
    type Value = HeaderSummary;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a safetensors header (a JSON object of tensors)")
    }
    fn visit_map<A: MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        let mut summary = HeaderSummary {
            tensors: 0,
            data_len: 0,
        };
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key == "__metadata__" {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            summary.tensors += 1;
            if summary.tensors > limits::MAX_TENSORS {
                return Err(de::Error::custom(format!(
                    "more than {} tensors",
                    limits::MAX_TENSORS
                )));
            }
            let Entry {
                data_offsets: (begin, end),
            } = map.next_value()?;
            if begin > end {
                return Err(de::Error::custom(format!(
                    "tensor `{key}` has data_offsets [{begin}, {end}] out of order"
                )));
            }
            summary.data_len = summary.data_len.max(end);
        }
        Ok(summary)
    }
}

/// Reads a safetensors file, bounded by its own declared size: the header (at most
/// [`limits::MAX_HEADER_BYTES`]) is read and checked first, then exactly the data it
/// declares. A file shorter or longer than it declares is an error naming the file.
pub fn read_safetensors(path: &Path) -> Result<Vec<u8>> {
    let bad = Error::Format;
    let in_file = |e: Error| e.in_file(path);
    let (mut file, meta) = open_file(path)?;
    // A short read is a format error; any other read failure is an I/O error.
    let short = |e: std::io::Error, what: String| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            in_file(bad(what))
        } else {
            io_error(path, e)
        }
    };
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(|e| {
        short(
            e,
            "not a safetensors file: shorter than its 8-byte header length".into(),
        )
    })?;
    let n = u64::from_le_bytes(len);
    if n == 0 || n > limits::MAX_HEADER_BYTES {
        return Err(in_file(bad(format!(
            "not a safetensors file: header length {n} (must be 1..={} bytes)",
            limits::MAX_HEADER_BYTES
        ))));
    }
    if meta.is_file() && 8 + n > meta.len() {
        return Err(in_file(bad(format!(
            "truncated: the header declares {n} bytes but the file has {}",
            meta.len()
        ))));
    }
    let mut header = vec![0u8; n as usize];
    file.read_exact(&mut header)
        .map_err(|e| short(e, format!("truncated: the header declares {n} bytes")))?;
    let summary =
        summarize_header(&header).map_err(|e| in_file(bad(format!("invalid header: {e}"))))?;
    let total = (8 + n)
        .checked_add(summary.data_len)
        .filter(|&t| meta.is_file() || t <= limits::MAX_STREAM_BYTES)
        .ok_or_else(|| {
            in_file(bad(format!(
                "the header declares {} data bytes, over the {} a stream may hold",
                summary.data_len,
                limits::MAX_STREAM_BYTES
            )))
        })?;
    if meta.is_file() && meta.len() != total {
        return Err(in_file(bad(format!(
            "the header declares {total} bytes in all but the file has {} ({})",
            meta.len(),
            if meta.len() < total {
                "truncated"
            } else {
                "trailing bytes"
            }
        ))));
    }
    let capacity = if meta.is_file() { total } else { 8 + n };
    let mut bytes = Vec::with_capacity(capacity as usize);
    bytes.extend_from_slice(&len);
    bytes.extend_from_slice(&header);
    (&mut file)
        .take(summary.data_len)
        .read_to_end(&mut bytes)
        .map_err(|e| io_error(path, e))?;
    if (bytes.len() as u64) < total {
        return Err(in_file(bad(format!(
            "truncated: the header declares {total} bytes, only {} could be read",
            bytes.len()
        ))));
    }
    // A stream (or a file that grew) must end where the header says.
    let mut extra = [0u8; 1];
    if file.read(&mut extra).map_err(|e| io_error(path, e))? != 0 {
        return Err(in_file(bad(format!(
            "trailing bytes after the {total} bytes the header declares"
        ))));
    }
    Ok(bytes)
}

/// How an output reaches `path`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// A regular file, or nothing yet: replaced atomically (a temporary file renamed over it).
    Replace,
    /// A character device or a FIFO (`/dev/stdout`, `/dev/null`, a named pipe): written in
    /// place, never replaced by a regular file.
    InPlace,
}

/// What `path` is, and so how it may be written; a folder, a socket or a block device is an
/// error naming it.
fn target(path: &Path) -> Result<Target> {
    let text = path.as_os_str().to_string_lossy();
    if text.ends_with('/') || text.ends_with(std::path::MAIN_SEPARATOR) {
        return Err(io_error(
            path,
            std::io::Error::other("is a directory; give a file name"),
        ));
    }
    let meta = match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Target::Replace),
        Err(e) => return Err(io_error(path, e)),
        Ok(meta) => meta,
    };
    let kind = meta.file_type();
    if kind.is_file() {
        return Ok(Target::Replace);
    }
    if kind.is_dir() {
        return Err(io_error(
            path,
            std::io::Error::other("is a directory; give a file name"),
        ));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_char_device() || kind.is_fifo() {
            return Ok(Target::InPlace);
        }
    }
    Err(io_error(
        path,
        std::io::Error::other(
            "is not a regular file, a character device or a FIFO (a socket or a block device): \
             refusing to write to it",
        ),
    ))
}

/// True when the temporary file beside `path` cannot be made for want of permission but
/// `path` is an existing regular file this process may write: it is then written in place.
fn writable_in_place(path: &Path, e: &Error) -> bool {
    let denied = matches!(e, Error::Io { source, .. }
        if source.kind() == std::io::ErrorKind::PermissionDenied);
    denied
        && std::fs::metadata(path).is_ok_and(|m| m.is_file())
        && std::fs::OpenOptions::new().write(true).open(path).is_ok()
}

/// Checks that `path` can be written: its folder exists and takes a new file (or `path` is a
/// regular file it may write in place, or a device or FIFO), and `path` is not a folder, a
/// socket or a block device. Run before the work whose result goes there.
pub fn check_writable(path: &Path) -> Result<()> {
    if target(path)? == Target::InPlace {
        return Ok(());
    }
    match create_temp(path) {
        Ok((tmp, file)) => {
            drop(file);
            std::fs::remove_file(&tmp).map_err(|e| io_error(&tmp, e))
        }
        Err(e) if writable_in_place(path, &e) => Ok(()),
        Err(e) => Err(e),
    }
}

/// True when `a` and `b` name the same existing file (hard links and `./x` vs `x` included).
pub fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (std::fs::metadata(a), std::fs::metadata(b)) {
            (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

fn create_temp(path: &Path) -> Result<(PathBuf, File)> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io_error(path, std::io::Error::other("has no file name")))?
        .to_string_lossy();
    // The temporary name must fit the file-name limit (255 bytes) however long the name is.
    let mut short = String::new();
    for c in name.chars() {
        if short.len() + c.len_utf8() > 64 {
            break;
        }
        short.push(c);
    }
    let name = short;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    for attempt in 0..16u32 {
        let tmp = dir.join(format!(
            ".{name}.{}.{nanos:x}{attempt}.tmp",
            std::process::id()
        ));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
        {
            Ok(file) => return Ok((tmp, file)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_error(path, e)),
        }
    }
    Err(io_error(
        path,
        std::io::Error::other("could not create a temporary file beside it"),
    ))
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, written, synced,
/// then renamed over `path` (and the folder synced). On any failure the temporary file is
/// removed and whatever was at `path` before is left as it was. A character device or a FIFO
/// (`/dev/stdout`, a named pipe) is written in place, never replaced; a regular file in a folder
/// that takes no new file is written in place too (not atomically; a warning says so).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let in_place = |truncate: bool| {
        std::fs::OpenOptions::new()
            .write(true)
            .truncate(truncate)
            .open(path)
            .and_then(|mut f| f.write_all(bytes).and_then(|()| f.flush()))
            .map_err(|e| io_error(path, e))
    };
    if target(path)? == Target::InPlace {
        return in_place(false);
    }
    let (tmp, mut file) = match create_temp(path) {
        Ok(made) => made,
        Err(e) if writable_in_place(path, &e) => {
            log::warn!(
                "{}: its folder takes no new file, so it is written in place, not atomically",
                path.display()
            );
            return in_place(true);
        }
        Err(e) => return Err(e),
    };
    let written = file
        .write_all(bytes)
        .and_then(|()| file.sync_all())
        .and_then(|()| {
            drop(file);
            std::fs::rename(&tmp, path)
        });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_error(path, e));
    }
    #[cfg(unix)]
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}
