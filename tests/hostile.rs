//! Hostile and careless input through the `backbone` binary: every case ends in a clear error
//! (exit status 1, the words of the message checked), quickly and within bounded memory, and
//! no file is lost. These run on the CPU path or fail before any device is opened.

mod common;

use backbone::reference::HostTensor;
use common::fixture;
use common::hostile::*;

#[test]
fn extreme_aspect_images_are_refused_before_resizing() {
    let dir = scratch("aspect");
    let model = fixture("cswin-micro-224");
    // 1x10000: a 100-byte file whose resize target would be 248 x 2,480,000.
    let thin = dir.join("thin.png");
    write_png(&thin, 1, 10_000);
    let r = backbone(&[
        "classify",
        "--device",
        "cpu",
        "--model",
        p(&model),
        p(&thin),
    ]);
    assert_fails(
        "1x10000 PNG",
        r,
        &["thin.png", "aspect ratio", "budget"],
        10,
    );
    // 20,000,000 x 1: refused from the header, before the decoder allocates its pixels.
    let wide = dir.join("wide.png");
    write_png(&wide, 20_000_000, 1);
    let size = std::fs::metadata(&wide).expect("wide").len();
    assert!(size < 1 << 20, "the test PNG is small ({size} bytes)");
    let r = backbone(&[
        "classify",
        "--device",
        "cpu",
        "--model",
        p(&model),
        p(&wide),
    ]);
    assert_fails("20000000x1 PNG", r, &["wide.png", "limits", "16384"], 10);
}

#[test]
fn truncated_and_corrupt_images_are_errors() {
    let dir = scratch("truncated");
    let model = fixture("cswin-micro-224");
    let img = image::RgbImage::from_fn(320, 240, |x, y| {
        image::Rgb([
            (x * 7 % 256) as u8,
            (y * 13 % 256) as u8,
            ((x ^ y) % 256) as u8,
        ])
    });
    let jpeg = dir.join("full.jpg");
    img.save(&jpeg).expect("jpeg");
    let bytes = std::fs::read(&jpeg).expect("read jpeg");
    let cut = dir.join("cut.jpg");
    std::fs::write(&cut, &bytes[..600]).expect("cut");
    let r = backbone(&["classify", "--device", "cpu", "--model", p(&model), p(&cut)]);
    assert_fails(
        "JPEG cut to 600 bytes",
        r,
        &["cut.jpg", "truncated JPEG"],
        10,
    );

    let png = dir.join("full.png");
    img.save(&png).expect("png");
    let bytes = std::fs::read(&png).expect("read png");
    let cut = dir.join("cut.png");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).expect("cut");
    let r = backbone(&["classify", "--device", "cpu", "--model", p(&model), p(&cut)]);
    assert_fails("PNG cut in half", r, &["cut.png", "cannot decode"], 10);

    // The whole JPEG still classifies (the strict check refuses only broken files).
    let (out, _) = backbone(&[
        "classify",
        "--device",
        "cpu",
        "--model",
        p(&model),
        p(&jpeg),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn oversized_config_values_name_their_key() {
    let images = scratch("config-images");
    let png = images.join("cat.png");
    write_png(&png, 64, 48);
    let model = model_copy("cswin-micro-224", "img-size");
    set_config(&model, "img_size", serde_json::json!(1_000_000_000u64));
    let r = backbone(&["classify", "--device", "cpu", "--model", p(&model), p(&png)]);
    assert_fails(
        "img_size 1e9",
        r,
        &["config.json", "img_size", "maximum"],
        10,
    );

    let model = model_copy("cswin-micro-224", "split-size");
    set_config(
        &model,
        "split_size",
        serde_json::json!([1_000_000, 2, 7, 7]),
    );
    let input = images.join("in.safetensors");
    pixel_file(&input, &[1, 3, 64, 64], None);
    let out = images.join("out.safetensors");
    for device in ["cpu", "gpu"] {
        let r = run_model(Some(device), &model, &input, &out);
        assert_fails(
            "split_size[0] 1e6",
            r,
            &["config.json", "split_size[0]"],
            10,
        );
    }

    let model = model_copy("bert-micro-12l-random", "bert-config");
    set_config(&model, "num_hidden_layers", serde_json::json!(100_000));
    let r = backbone(&["embed", "--device", "cpu", "--model", p(&model), "hello"]);
    assert_fails(
        "num_hidden_layers 1e5",
        r,
        &["num_hidden_layers", "maximum"],
        10,
    );
}

#[test]
fn non_finite_inputs_and_weights_are_errors() {
    let dir = scratch("nan");
    let model = fixture("cswin-micro-224");
    let out = dir.join("out.safetensors");
    for (value, word) in [(f32::NAN, "NaN"), (f32::INFINITY, "inf")] {
        let input = dir.join("in.safetensors");
        pixel_file(&input, &[1, 3, 32, 32], Some((1234, value)));
        for device in ["cpu", "gpu"] {
            let r = run_model(Some(device), &model, &input, &out);
            assert_fails(
                "non-finite pixel",
                r,
                &["pixel_values", word, "index 1234"],
                10,
            );
        }
    }
    assert!(!out.exists(), "an output was written");

    // One NaN weight: a load error naming the tensor and the file.
    let bert = model_copy("bert-micro-12l-random", "nan-weights");
    let path = bert.join("model.safetensors");
    let bytes = std::fs::read(&path).expect("weights");
    let file = safetensors::SafeTensors::deserialize(&bytes).expect("st");
    let mut tensors: Vec<(String, HostTensor)> = file
        .tensors()
        .into_iter()
        .map(|(name, v)| {
            let t = HostTensor::new(v.shape(), bytemuck::pod_collect_to_vec(v.data()));
            (name, t.expect("tensor"))
        })
        .collect();
    let key = "encoder.layer.3.attention.self.query.weight";
    let (_, t) = tensors
        .iter_mut()
        .find(|(n, _)| n.ends_with(key))
        .expect("query weight");
    t.data[5] = f32::NAN;
    let refs: Vec<(&str, &HostTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let bytes = backbone::models::weights::to_safetensors(&refs).expect("st");
    std::fs::write(&path, bytes).expect("write");
    let r = backbone(&["embed", "--device", "cpu", "--model", p(&bert), "hello"]);
    assert_fails(
        "NaN weight",
        r,
        &["model.safetensors", key, "NaN", "index 5"],
        20,
    );
}

#[test]
fn images_over_the_model_budget_are_refused_before_the_forward() {
    let dir = scratch("budget");
    let model = fixture("cswin-micro-224");
    let out = dir.join("out.safetensors");
    // 3600 > 16 x 224: refused by side, on both paths, before anything runs.
    let input = dir.join("tall.safetensors");
    pixel_file(&input, &[1, 3, 3600, 3], None);
    for device in ["cpu", "gpu"] {
        let r = run_model(Some(device), &model, &input, &out);
        assert_fails("3600x3 image", r, &["pixel_values", "limit", "3584"], 10);
    }
    // 4000x4000 (16 MP) for a 224 model: refused by area without allocating anything.
    let config = backbone::models::cswin::load_config(&model).expect("config");
    let err = backbone::models::cswin::Geometry::new(&config, &[1, 3, 4000, 4000])
        .expect_err("4000x4000 is over the budget");
    let message = err.to_string();
    assert!(
        message.contains("pixel_values") && message.contains("3211264"),
        "{message}"
    );
    // A batch of 300 images at 224 is over the per-forward budget.
    let err = backbone::models::cswin::Geometry::new(&config, &[300, 3, 224, 224])
        .expect_err("batch over the budget");
    assert!(err.to_string().contains("split the batch"), "{err}");
    // A 2048x1536 segmentation-sized input is within it.
    backbone::models::cswin::Geometry::new(&config, &[1, 3, 1536, 2048]).expect("2048x1536");
    assert!(!out.exists(), "an output was written");
}
