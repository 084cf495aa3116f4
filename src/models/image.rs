//! Image input for the vision models: ImageNet evaluation preprocessing as timm applies it
//! for CSWin (`default_cfgs`): resize the shorter side to `size / crop_pct` with bicubic
//! filtering, centre-crop `size x size`, scale to [0, 1], normalise with ImageNet mean/std.

use image::{DynamicImage, imageops::FilterType};

use crate::error::{Error, Result};
use crate::host::HostTensor;
use crate::limits;

pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// The official crop fraction: 0.9 at 224, 1.0 at 384.
pub fn crop_pct(size: usize) -> f64 {
    if size >= 384 { 1.0 } else { 0.9 }
}

fn input_error(what: &str, reason: String) -> Error {
    Error::Input {
        arg: what.into(),
        reason,
    }
}

/// Decodes an encoded image (JPEG, PNG, WebP, BMP) strictly and within bounds: sides up to
/// [`limits::MAX_IMAGE_SIDE`], decoder memory up to [`limits::MAX_DECODE_BYTES`], both
/// checked from the header before the pixels are decoded; a truncated or corrupt file is an
/// error, not a partly grey picture.
pub fn decode(bytes: &[u8], what: &str) -> Result<DynamicImage> {
    let format = image::guess_format(bytes)
        .map_err(|e| input_error(what, format!("cannot decode image: {e}")))?;
    match format {
        image::ImageFormat::Jpeg => check_jpeg_strictly(bytes, what)?,
        image::ImageFormat::Png => check_png_strictly(bytes, what)?,
        _ => {}
    }
    let mut reader = image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(limits::MAX_IMAGE_SIDE);
    limits.max_image_height = Some(limits::MAX_IMAGE_SIDE);
    limits.max_alloc = Some(limits::MAX_DECODE_BYTES);
    reader.limits(limits);
    reader.decode().map_err(|e| {
        input_error(
            what,
            match e {
                image::ImageError::Limits(_) => format!(
                    "image is over the decoder's limits (sides up to {} pixels, {} MiB): {e}",
                    limits::MAX_IMAGE_SIDE,
                    limits::MAX_DECODE_BYTES >> 20
                ),
                _ => format!("cannot decode image: {e}"),
            },
        )
    })
}

/// Raw 8-bit pixels, row-major `height x width x channels` (1: grey, 3: RGB, 4: RGBA), as an
/// image: what a NumPy `uint8` array of shape (H, W, C) holds. The sides are checked against
/// [`limits::MAX_IMAGE_SIDE`] and the length against the shape before anything is copied.
pub fn from_pixels(
    width: usize,
    height: usize,
    channels: usize,
    pixels: &[u8],
    what: &str,
) -> Result<DynamicImage> {
    let max = limits::MAX_IMAGE_SIDE as usize;
    if width == 0 || height == 0 || width > max || height > max {
        return Err(input_error(
            what,
            format!("{height}x{width} pixels: each side must be 1 to {max}"),
        ));
    }
    let expected = width * height * channels;
    if pixels.len() != expected {
        return Err(input_error(
            what,
            format!(
                "{} bytes for {height}x{width}x{channels} pixels (expected {expected})",
                pixels.len()
            ),
        ));
    }
    let (w, h, data) = (width as u32, height as u32, pixels.to_vec());
    let image = match channels {
        1 => image::GrayImage::from_raw(w, h, data).map(DynamicImage::ImageLuma8),
        3 => image::RgbImage::from_raw(w, h, data).map(DynamicImage::ImageRgb8),
        4 => image::RgbaImage::from_raw(w, h, data).map(DynamicImage::ImageRgba8),
        _ => {
            return Err(input_error(
                what,
                format!("{channels} channels: 1 (grey), 3 (RGB) or 4 (RGBA) expected"),
            ));
        }
    };
    image.ok_or_else(|| input_error(what, "pixel buffer does not match its shape".into()))
}

/// `image` decodes JPEG leniently (a file cut short comes out grey at the bottom); decode it
/// once in zune-jpeg's strict mode, which refuses truncated or corrupt entropy data.
fn check_jpeg_strictly(bytes: &[u8], what: &str) -> Result<()> {
    use zune_jpeg::zune_core::{
        bytestream::ZCursor, colorspace::ColorSpace, options::DecoderOptions,
    };
    let side = limits::MAX_IMAGE_SIDE as usize;
    let options = DecoderOptions::default()
        .set_strict_mode(true)
        .set_max_width(side)
        .set_max_height(side)
        .jpeg_set_out_colorspace(ColorSpace::RGB);
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    decoder
        .decode()
        .map_err(|e| input_error(what, format!("corrupt or truncated JPEG: {e:?}")))?;
    // Entropy-coded data never holds FF D9 (an FF there is stuffed as FF 00), so the end
    // marker after the first scan is the file's end; without it the file was cut short.
    let scan = bytes.windows(2).position(|w| w == [0xFF, 0xDA]);
    let ended = scan.is_some_and(|s| bytes[s..].windows(2).any(|w| w == [0xFF, 0xD9]));
    if !ended {
        return Err(input_error(
            what,
            "JPEG without its end marker (FF D9): the file was cut short".into(),
        ));
    }
    Ok(())
}

/// `image` decodes PNG without checking the zlib stream's Adler-32 checksum (a corrupt
/// deflate stream can come out as a picture); decode it once with every checksum checked.
fn check_png_strictly(bytes: &[u8], what: &str) -> Result<()> {
    let corrupt =
        |e: png::DecodingError| input_error(what, format!("cannot decode image: corrupt PNG: {e}"));
    let limits = png::Limits {
        bytes: limits::MAX_DECODE_BYTES as usize,
    };
    let mut decoder = png::Decoder::new_with_limits(std::io::Cursor::new(bytes), limits);
    decoder.ignore_checksums(false);
    let mut reader = decoder.read_info().map_err(corrupt)?;
    let (w, h) = (reader.info().width, reader.info().height);
    let size = reader.output_buffer_size();
    match size {
        // Over the sides or the memory: `image` refuses it with the limits' message.
        _ if w > limits::MAX_IMAGE_SIDE || h > limits::MAX_IMAGE_SIDE => Ok(()),
        Some(n) if n as u64 <= limits::MAX_DECODE_BYTES => {
            let mut pixels = vec![0u8; n];
            reader.next_frame(&mut pixels).map_err(corrupt)?;
            reader.finish().map_err(corrupt)
        }
        _ => Ok(()),
    }
}

/// The resize before the centre crop: the shorter side to `scale_size`, the other in
/// proportion; refused when that image would be over [`limits::RESIZE_AREA_FACTOR`] squares.
fn resize_target(width: u32, height: u32, scale_size: u32) -> Result<(u32, u32)> {
    let (w, h) = (width as f64, height as f64);
    let long = |ratio: f64| (ratio * scale_size as f64).round();
    let (rw, rh) = if w <= h {
        (scale_size as f64, long(h / w))
    } else {
        (long(w / h), scale_size as f64)
    };
    let budget = limits::RESIZE_AREA_FACTOR * scale_size as u64 * scale_size as u64;
    if rw * rh > budget as f64 {
        return Err(input_error(
            "image",
            format!(
                "{width}x{height} has an aspect ratio over {}:1: resizing it to {rw}x{rh} for a \
                 {scale_size}-pixel short side is over the {budget}-pixel budget",
                limits::RESIZE_AREA_FACTOR
            ),
        ));
    }
    Ok((rw as u32, rh as u32))
}

/// One image as `pixel_values` [1, 3, size, size].
pub fn imagenet_preprocess(img: &DynamicImage, size: usize) -> Result<HostTensor> {
    if size == 0 || img.width() == 0 || img.height() == 0 {
        return Err(input_error("image", "empty image or size".into()));
    }
    let max = limits::MAX_IMAGE_SIDE as usize;
    if size > max {
        return Err(input_error(
            "size",
            format!("{size} is over the maximum side of {max}"),
        ));
    }
    let scale_size = (size as f64 / crop_pct(size)).floor() as u32;
    let (rw, rh) = resize_target(img.width(), img.height(), scale_size)?;
    let resized = image::imageops::resize(
        &img.to_rgb8(),
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
