//! The commands whose inputs may be many: `embed` and `classify` read, run and print a batch
//! at a time, so memory is that of one batch however many texts or images are named.

use std::io::{BufRead, Read as _, Write as _};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use backbone::encoder::{ImageEncoder, TextEncoder};
use backbone::models::{cswin, image};
use backbone::{DType, io, limits};

use crate::{Device, Prompt, check_finite, options};

/// The most bytes of one line of `--texts-file` (texts past the model's length are truncated
/// long before this).
pub const MAX_LINE_BYTES: u64 = 1 << 20;

/// Where `embed`'s texts come from: the command line, or a file (or `-`, standard input) of
/// one text per line, read lazily.
pub enum Texts {
    Args(std::vec::IntoIter<String>),
    Lines {
        name: String,
        reader: Box<dyn BufRead>,
        line: usize,
    },
}

impl Texts {
    /// `--texts-file PATH`: a regular file, a pipe, or `-` for standard input.
    pub fn file(path: &Path) -> Result<Self> {
        let name = path.display().to_string();
        let reader: Box<dyn BufRead> = if path == Path::new("-") {
            Box::new(std::io::stdin().lock())
        } else {
            let file = std::fs::File::open(path).with_context(|| format!("--texts-file {name}"))?;
            if file.metadata().is_ok_and(|m| m.is_dir()) {
                bail!("--texts-file {name} is a directory, not a file of texts");
            }
            Box::new(std::io::BufReader::with_capacity(1 << 16, file))
        };
        Ok(Self::Lines {
            name,
            reader,
            line: 0,
        })
    }

    /// Up to `n` more texts into `batch` (cleared first); empty at the end.
    fn next_batch(&mut self, n: usize, batch: &mut Vec<String>) -> Result<()> {
        batch.clear();
        match self {
            Self::Args(args) => batch.extend(args.by_ref().take(n)),
            Self::Lines { name, reader, line } => {
                while batch.len() < n {
                    let mut bytes = Vec::new();
                    let read = reader
                        .by_ref()
                        .take(MAX_LINE_BYTES + 1)
                        .read_until(b'\n', &mut bytes)
                        .with_context(|| format!("reading --texts-file {name}"))?;
                    if read == 0 {
                        break;
                    }
                    *line += 1;
                    if bytes.last() == Some(&b'\n') {
                        bytes.pop();
                        if bytes.last() == Some(&b'\r') {
                            bytes.pop();
                        }
                    } else if bytes.len() as u64 > MAX_LINE_BYTES {
                        bail!(
                            "--texts-file {name}:{line}: a line of over {MAX_LINE_BYTES} bytes \
                             (one text per line)"
                        );
                    }
                    let text = String::from_utf8(bytes).map_err(|e| {
                        anyhow::anyhow!("--texts-file {name}:{line}: not UTF-8 ({e})")
                    })?;
                    batch.push(text);
                }
            }
        }
        Ok(())
    }
}

/// `embed`: the texts through the folder's [`TextEncoder`] (its length, prompts, pooling),
/// a batch of texts read, embedded and printed at a time; one JSON array of embeddings out,
/// row `i` for text `i`. Nothing is printed unless the first batch succeeds.
pub fn embed(
    model: &Path,
    max_length: Option<usize>,
    prompt: &Prompt,
    device: Device,
    dtype: DType,
    mut texts: Texts,
) -> Result<()> {
    let encoder = TextEncoder::open(model, &options(device, dtype, max_length))?;
    let mut out = std::io::stdout().lock();
    let mut batch = Vec::new();
    let mut rows = 0usize;
    loop {
        texts.next_batch(encoder.texts_per_batch(), &mut batch)?;
        if batch.is_empty() {
            break;
        }
        let refs: Vec<&str> = batch.iter().map(String::as_str).collect();
        let embeddings =
            encoder.encode_blocking(&refs, prompt.text.as_deref(), prompt.name.as_deref())?;
        check_finite("sentence_embedding", &embeddings)?;
        for row in embeddings.data.chunks(embeddings.shape[1]) {
            out.write_all(if rows == 0 { b"[" } else { b"," })?;
            serde_json::to_writer(&mut out, row)?;
            rows += 1;
        }
        out.flush()?;
    }
    if rows == 0 {
        bail!("no texts to embed (the texts file is empty)");
    }
    writeln!(out, "]")?;
    Ok(())
}

/// Images decoded, classified and printed per forward: memory stays that of one batch
/// however many images are named.
const CLASSIFY_BATCH: usize = 16;

/// `classify`: the images in batches of [`CLASSIFY_BATCH`], each decoded, checked and
/// preprocessed, then the top 5 of each from the folder's [`ImageEncoder`], printed before the
/// next batch is read.
pub fn classify(dir: &Path, device: Device, dtype: DType, paths: &[PathBuf]) -> Result<()> {
    let config = cswin::load_config(dir)?;
    let size = config.img_size;
    let mut encoder = None;
    for batch in paths.chunks(CLASSIFY_BATCH) {
        let pixels = batch
            .iter()
            .map(|p| {
                let bytes = io::read_bounded(p, limits::MAX_IMAGE_FILE_BYTES)?;
                let img = image::decode(&bytes, &p.display().to_string())?;
                image::imagenet_preprocess(&img, size).map_err(|e| e.in_file(p))
            })
            .collect::<backbone::Result<Vec<_>>>()?;
        let pixels = image::stack(&pixels)?;
        cswin::check_input(&config, &pixels)?;
        // Opened once the first batch has been read and checked.
        let encoder = match &mut encoder {
            Some(e) => e,
            None => encoder.insert(ImageEncoder::open(dir, &options(device, dtype, None))?),
        };
        let ranked = encoder.classify_blocking(&pixels, 5)?;
        let mut out = std::io::stdout().lock();
        for (path, top) in batch.iter().zip(ranked) {
            writeln!(out, "{}:", path.display())?;
            for (k, p, label) in top {
                writeln!(out, "  {:>6.2}%  {k:>5}  {label}", 100.0 * p)?;
            }
        }
        out.flush()?;
    }
    Ok(())
}
