//! The README's CSWin example: `cargo run --release --example cswin_features -- MODEL_DIR [SIZE]`
//! runs a random image through the backbone and prints the four stage feature shapes.
use backbone::encoder::{EncoderOptions, ImageEncoder};
use backbone::reference::HostTensor;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().unwrap_or_else(|| "cswin-t".into()));
    let size: usize = args.next().map_or(Ok(224), |s| s.parse())?;

    let model = ImageEncoder::open(&dir, &EncoderOptions::default())?;
    let pixels: Vec<f32> = (0..3 * size * size)
        .map(|i| ((i * 7919) % 255) as f32 / 127.5 - 1.0)
        .collect();
    let pixel_values = HostTensor::new(&[1, 3, size, size], pixels)?; // [B, 3, H, W]
    let out = model.forward_blocking(&pixel_values, false)?;
    for (s, features) in out.stages.iter().enumerate() {
        let (h, w) = out.geometry.stages[s];
        println!("stage{}: {:?} = [B, {h}x{w}, C]", s + 1, features.shape); // token = y*w + x
    }
    Ok(())
}
