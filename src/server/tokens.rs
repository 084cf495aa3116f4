//! `/tokenize` and `/decode`, as TEI answers them: every token of each input (none cut; the
//! prompt prepended as the folder or `prompt_name` says), with the text each covers and its
//! byte offsets (none for special tokens); and the text of token ids.

use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use serde_json::Value;

use super::inputs::{CHARS_PER_TOKEN_CAP, bool_of, cap_chars, string_of, texts_of};
use super::reply::{ApiError, Reply, empty, validation};
use super::state::{Body, Shared};
use crate::encoder::Truncate;

pub(super) async fn tokenize(State(s): State<Shared>, Body(body): Body) -> Reply {
    let texts = texts_of(body.get("inputs"), "inputs")?;
    let add_special_tokens = bool_of(&body, "add_special_tokens", true)?;
    let prompt_name = string_of(&body, "prompt_name")?;
    s.check_batch(texts.len())?;
    let info = s.model.info();
    let prompt = match prompt_name
        .as_deref()
        .or(info.default_prompt_name.as_deref())
    {
        None => String::new(),
        Some(name) => info.prompts.get(name).cloned().ok_or_else(|| {
            validation(format!(
                "prompt name {name:?} is not one of the model's prompts ({})",
                info.prompts.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })?,
    };
    let limit = s.max_input_length() * CHARS_PER_TOKEN_CAP;
    let tokens = s
        .blocking(move |model| {
            let tokenizer = model.tokenizer()?;
            texts
                .into_iter()
                .map(|t| {
                    let mut full = format!("{prompt}{t}");
                    cap_chars(&mut full, limit, Truncate::No)?;
                    Ok(tokenizer.tokenizer.tokens(&full, add_special_tokens)?)
                })
                .collect::<Result<Vec<_>, ApiError>>()
        })
        .await?;
    Ok(Json(tokens).into_response())
}

/// `ids`: one array of token ids, or a list of them.
fn ids_of(v: Option<&Value>) -> Result<Vec<Vec<u32>>, ApiError> {
    let malformed = || validation("`ids` must be an array of token ids or a list of them");
    let one = |a: &[Value]| -> Result<Vec<u32>, ApiError> {
        a.iter()
            .map(|x| x.as_u64().and_then(|i| u32::try_from(i).ok()))
            .collect::<Option<_>>()
            .ok_or_else(malformed)
    };
    match v {
        Some(Value::Array(a)) if a.first().is_some_and(Value::is_array) => a
            .iter()
            .map(|x| x.as_array().ok_or_else(malformed).and_then(|x| one(x)))
            .collect(),
        Some(Value::Array(a)) if a.is_empty() => Err(empty("ids")),
        Some(Value::Array(a)) => Ok(vec![one(a)?]),
        _ => Err(malformed()),
    }
}

pub(super) async fn decode(State(s): State<Shared>, Body(body): Body) -> Reply {
    let ids = ids_of(body.get("ids"))?;
    let skip_special_tokens = bool_of(&body, "skip_special_tokens", true)?;
    s.check_batch(ids.len())?;
    let texts = s
        .blocking(move |model| {
            let tokenizer = model.tokenizer()?;
            ids.iter()
                .map(|ids| Ok(tokenizer.tokenizer.decode(ids, skip_special_tokens)?))
                .collect::<Result<Vec<String>, ApiError>>()
        })
        .await?;
    Ok(Json(texts).into_response())
}
