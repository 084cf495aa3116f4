//! The README's text-embedding example: `cargo run --release --example embed -- MODEL_DIR TEXT...`
use backbone::models::{bert::Bert, tokenizer::TextTokenizer};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().unwrap_or_else(|| "all-MiniLM-L6-v2".into()));
    let texts: Vec<String> = args.collect();
    let texts: Vec<&str> = if texts.is_empty() {
        vec!["A cat.", "A dog."]
    } else {
        texts.iter().map(String::as_str).collect()
    };

    let ctx = backbone::Context::from_env_blocking()?;
    let model = Bert::from_dir(&ctx, &dir)?; // weights checked and uploaded once
    let tokens = TextTokenizer::from_dir(&dir, 256)?.encode(&texts)?;
    let out = model.forward_blocking(&ctx, &tokens, false)?; // one submission per forward
    println!("{:?}", &out.sentence_embedding.data[..4]);
    Ok(())
}
