//! An application that owns its wgpu device (a renderer, a game) and hands it to the library:
//! `cargo run --release --example embed_in_app -- MODEL_DIR TEXT...`
//!
//! The app opens its adapter and device as it always does; `Context::from_device` wraps clones
//! of the handles (the app keeps using its own), and the model's buffers and pipelines live on
//! that device beside the app's.
use std::sync::Arc;

use backbone::encoder::{Device, EncoderOptions, TextEncoder};
use backbone::{Context, ContextOptions};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().unwrap_or_else(|| "all-MiniLM-L6-v2".into()));
    let texts: Vec<String> = args.collect();
    let texts: Vec<&str> = match texts.is_empty() {
        true => vec!["A cat.", "A dog."],
        false => texts.iter().map(String::as_str).collect(),
    };

    // The application's own device, made the way a renderer makes it.
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
        power_preference: wgpu::PowerPreference::HighPerformance,
        ..Default::default()
    }))?;
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("my app"),
        required_features: adapter.features() & wgpu::Features::SHADER_F16,
        required_limits: adapter.limits(),
        ..Default::default()
    }))?;

    // The library on that device: no second device, no copies between them.
    let ctx = Context::from_device_blocking(
        &adapter,
        device.clone(),
        queue.clone(),
        &ContextOptions::default(),
    )?;
    let options = EncoderOptions::default().device(Device::Context(Arc::new(ctx)));
    let model = TextEncoder::open(&dir, &options)?;
    let embeddings = model.encode_blocking(&texts, None, None)?;
    println!(
        "{} on the app's device ({})",
        model.info().model_id,
        model.info().device
    );
    for (text, row) in texts
        .iter()
        .zip(embeddings.data.chunks(embeddings.shape[1]))
    {
        println!("{text:?}: {:?}", &row[..4]);
    }

    // The app goes on using its device and queue.
    let buffer = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("the app's own buffer"),
        size: 256,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    queue.submit([]);
    println!(
        "the app's device still serves it: a {} B buffer",
        buffer.size()
    );
    Ok(())
}
