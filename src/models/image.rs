//! Image input for the vision models: ImageNet evaluation preprocessing as timm applies it
//! for CSWin (`default_cfgs`): resize the shorter side to `size / crop_pct` with bicubic
//! filtering, centre-crop `size x size`, scale to [0, 1], normalise with ImageNet mean/std.

use image::{DynamicImage, imageops::FilterType};

use crate::error::{Error, Result};
use crate::reference::HostTensor;

pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// The official crop fraction: 0.9 at 224, 1.0 at 384.
pub fn crop_pct(size: usize) -> f64 {
    if size >= 384 { 1.0 } else { 0.9 }
}

/// Decodes an encoded image (JPEG, PNG, WebP, BMP).
pub fn decode(bytes: &[u8], what: &str) -> Result<DynamicImage> {
    image::load_from_memory(bytes).map_err(|e| Error::Input {
        arg: what.into(),
        reason: format!("cannot decode image: {e}"),
    })
}

/// One image as `pixel_values` [1, 3, size, size].
pub fn imagenet_preprocess(img: &DynamicImage, size: usize) -> Result<HostTensor> {
    if size == 0 || img.width() == 0 || img.height() == 0 {
        return Err(Error::Input {
            arg: "image".into(),
            reason: "empty image or size".into(),
        });
    }
    let scale_size = (size as f64 / crop_pct(size)).floor() as u32;
    let (w, h) = (img.width() as f64, img.height() as f64);
    let (rw, rh) = if w <= h {
        (scale_size, ((h / w) * scale_size as f64).round() as u32)
    } else {
        (((w / h) * scale_size as f64).round() as u32, scale_size)
    };
    let resized = img.to_rgb8();
    let resized = image::imageops::resize(
        &resized,
        rw.max(size as u32),
        rh.max(size as u32),
        FilterType::CatmullRom,
    );
    let (left, top) = (
        (resized.width() - size as u32) / 2,
        (resized.height() - size as u32) / 2,
    );
    let mut data = vec![0.0f32; 3 * size * size];
    for y in 0..size {
        for x in 0..size {
            let p = resized.get_pixel(left + x as u32, top + y as u32);
            for c in 0..3 {
                data[(c * size + y) * size + x] =
                    (p[c] as f32 / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
            }
        }
    }
    HostTensor::new(&[1, 3, size, size], data)
}

/// Stacks single-image tensors [1, 3, S, S] into one batch [B, 3, S, S].
pub fn stack(images: &[HostTensor]) -> Result<HostTensor> {
    let Some(first) = images.first() else {
        return Err(Error::Input {
            arg: "images".into(),
            reason: "no image given".into(),
        });
    };
    let mut shape = first.shape.clone();
    if shape.len() != 4 || images.iter().any(|t| t.shape != first.shape) {
        return Err(Error::Input {
            arg: "images".into(),
            reason: "every image must be a [1, 3, S, S] tensor of the same size".into(),
        });
    }
    shape[0] = images.len();
    HostTensor::new(
        &shape,
        images.iter().flat_map(|t| t.data.iter().copied()).collect(),
    )
}
