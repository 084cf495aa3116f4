//! A `tokenizer.json` the tokenizers crate panics on (a `Precompiled` normaliser holding
//! garbage, a `TemplateProcessing` that names a special token it does not define): `embed`
//! ends with a clear error naming the file (exit status 1), never a panic's exit status 101.

mod common;

use std::path::Path;

use common::fixture;
use common::hostile::{assert_fails, backbone, p, scratch};
use serde_json::{Value, json};

/// A copy of bert-micro-12l-random whose tokenizer.json is changed by `edit`.
fn model_with(dir: &Path, edit: impl FnOnce(&mut Value)) {
    let from = fixture("bert-micro-12l-random");
    std::fs::create_dir_all(dir).expect("dir");
    for name in ["config.json", "model.safetensors"] {
        std::fs::copy(from.join(name), dir.join(name)).expect("copy");
    }
    let mut tokenizer: Value =
        serde_json::from_slice(&std::fs::read(from.join("tokenizer.json")).expect("read"))
            .expect("json");
    edit(&mut tokenizer);
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).expect("write");
}

/// A change to a tokenizer.json.
type Edit = Box<dyn FnOnce(&mut Value)>;

#[test]
fn a_tokenizer_that_panics_is_a_clear_error() {
    let root = scratch("tokenizer-panics");
    let cases: [(&str, Edit); 2] = [
        (
            "garbage-precompiled",
            Box::new(|t| {
                t["normalizer"] =
                    json!({ "type": "Precompiled", "precompiled_charsmap": "AAAAAP////8=" });
            }),
        ),
        (
            "missing-special-token",
            Box::new(|t| {
                t["post_processor"]["single"] = json!([
                    { "SpecialToken": { "id": "[MISSING]", "type_id": 0 } },
                    { "Sequence": { "id": "A", "type_id": 0 } },
                ]);
            }),
        ),
    ];
    for (name, edit) in cases {
        let dir = root.join(name);
        model_with(&dir, edit);
        let r = backbone(&["embed", "--device", "cpu", "--model", p(&dir), "a text"]);
        let message = assert_fails(name, r, &["tokenizer.json", "the tokenizer failed"], 30);
        assert!(
            !message.contains("panicked"),
            "the panic is an error, not a report: {message}"
        );
    }
}
