//! The README's text-embedding example: `cargo run --release --example embed -- MODEL_DIR TEXT...`
use backbone::encoder::{EncoderOptions, TextEncoder};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().unwrap_or_else(|| "all-MiniLM-L6-v2".into()));
    let texts: Vec<String> = args.collect();
    let texts: Vec<&str> = if texts.is_empty() {
        vec!["A cat.", "A dog."]
    } else {
        texts.iter().map(String::as_str).collect()
    };

    // Config, sentence-transformers modules, tokenizer and weights read once; the best GPU.
    let model = TextEncoder::open(&dir, &EncoderOptions::default())?;
    let embeddings = model.encode_blocking(&texts, None, None)?; // [texts, D], one batch
    let info = model.info();
    println!(
        "{} on {} ({} tokens max)",
        info.model_id, info.device, info.max_length
    );
    println!("{:?}", &embeddings.data[..4]);
    Ok(())
}
