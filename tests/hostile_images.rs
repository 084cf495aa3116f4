//! Images that decode into a picture although they are broken, refused as PIL refuses them: a
//! PNG whose zlib stream fails its Adler-32 checksum (the chunk CRC made right, so only the
//! deflate data is corrupt), and a JPEG without its end marker. Their intact twins decode.

mod common;

use backbone::models::image::decode;
use common::hostile::crc32;

fn encoded(format: image::ImageFormat) -> Vec<u8> {
    let img = image::RgbImage::from_fn(48, 40, |x, y| {
        image::Rgb([(x * 5) as u8, (y * 6) as u8, 77])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, format).expect("encode");
    out.into_inner()
}

#[test]
fn a_png_whose_deflate_checksum_fails_is_refused() {
    let good = encoded(image::ImageFormat::Png);
    decode(&good, "good.png").expect("the intact PNG decodes");
    let mut bad = good.clone();
    let at = bad.windows(4).position(|w| w == b"IDAT").expect("IDAT") - 4;
    let len = u32::from_be_bytes([bad[at], bad[at + 1], bad[at + 2], bad[at + 3]]) as usize;
    let data_end = at + 8 + len;
    // The last byte of the zlib stream is the Adler-32's; the chunk's CRC is recomputed.
    bad[data_end - 1] ^= 0x55;
    let crc = crc32(&bad[at + 4..data_end]);
    bad[data_end..data_end + 4].copy_from_slice(&crc.to_be_bytes());
    let err = decode(&bad, "bad.png").expect_err("refused");
    assert!(err.to_string().contains("corrupt PNG"), "{err}");
    assert!(err.to_string().contains("bad.png"), "{err}");
}

#[test]
fn a_jpeg_without_its_end_marker_is_refused() {
    let good = encoded(image::ImageFormat::Jpeg);
    decode(&good, "good.jpg").expect("the intact JPEG decodes");
    assert_eq!(&good[good.len() - 2..], [0xFF, 0xD9]);
    let cut = &good[..good.len() - 2];
    let err = decode(cut, "cut.jpg").expect_err("refused");
    assert!(err.to_string().contains("end marker"), "{err}");
}
