//! The README's CSWin example: `cargo run --release --example cswin_features -- MODEL_DIR [SIZE]`
//! runs a random image through the backbone and prints the four stage feature shapes.
use backbone::models::cswin::Cswin;
use backbone::reference::HostTensor;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().unwrap_or_else(|| "cswin-t".into()));
    let size: usize = args.next().map_or(Ok(224), |s| s.parse())?;

    let ctx = backbone::Context::from_env_blocking()?;
    let model = Cswin::from_dir(&ctx, &dir)?;
    let pixels: Vec<f32> = (0..3 * size * size)
        .map(|i| ((i * 7919) % 255) as f32 / 127.5 - 1.0)
        .collect();
    let pixel_values = HostTensor::new(&[1, 3, size, size], pixels)?;
    let out = model.forward_blocking(&ctx, &pixel_values, false)?; // HostTensor [B, 3, H, W]
    for (s, features) in out.stages.iter().enumerate() {
        let (h, w) = out.geometry.stages[s];
        println!("stage{}: {:?} = [B, {h}x{w}, C]", s + 1, features.shape); // token = y*w + x
    }
    Ok(())
}
