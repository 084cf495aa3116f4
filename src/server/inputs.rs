//! Request fields as text-embeddings-inference reads them: `inputs` as a string, an array of
//! token ids, or a list of either; `truncate` with `truncation_direction`; `prompt_name`,
//! `normalize`, `dimensions`; and TEI's character cap, applied before anything is tokenized.

use serde_json::Value;

use super::reply::{ApiError, empty, validation};
use crate::encoder::Truncate;

/// TEI's `InputType`: a text, or token ids taken as given (no special tokens added).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Text(String),
    Ids(Vec<u32>),
}

/// TEI caps an input at `max_input_length × 250` characters before tokenizing it.
pub const CHARS_PER_TOKEN_CAP: usize = 250;

fn ids_of(v: &[Value]) -> Option<Vec<u32>> {
    v.iter()
        .map(|x| x.as_u64().and_then(|i| u32::try_from(i).ok()))
        .collect()
}

/// `inputs` (TEI's `Input`): a string, one array of token ids, or a list of strings and id
/// arrays. An empty list is 400 (`Empty`), anything else malformed 422.
pub fn inputs_of(v: Option<&Value>, key: &str) -> Result<Vec<Input>, ApiError> {
    let malformed = || {
        validation(format!(
            "`{key}` must be a string, an array of token ids, or a list of strings and token-id \
             arrays"
        ))
    };
    match v {
        Some(Value::String(s)) => Ok(vec![Input::Text(s.clone())]),
        Some(Value::Array(a)) if a.is_empty() => Err(empty(key)),
        Some(Value::Array(a)) if a.iter().all(Value::is_number) => {
            Ok(vec![Input::Ids(ids_of(a).ok_or_else(malformed)?)])
        }
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| match x {
                Value::String(s) => Ok(Input::Text(s.clone())),
                Value::Array(ids) => Ok(Input::Ids(ids_of(ids).ok_or_else(malformed)?)),
                _ => Err(malformed()),
            })
            .collect(),
        _ => Err(malformed()),
    }
}

/// A list of strings (or one string): `/rerank`'s `texts`, `/tokenize`'s `inputs`.
pub fn texts_of(v: Option<&Value>, key: &str) -> Result<Vec<String>, ApiError> {
    match v {
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(a)) if a.is_empty() => Err(empty(key)),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_str().map(str::to_string).ok_or_else(|| {
                    validation(format!("`{key}` must be a string or a list of strings"))
                })
            })
            .collect(),
        _ => Err(validation(format!(
            "`{key}` must be a string or a list of strings"
        ))),
    }
}

pub fn bool_of(body: &Value, key: &str, default: bool) -> Result<bool, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(validation(format!("`{key}` must be a boolean"))),
    }
}

pub fn string_of(body: &Value, key: &str) -> Result<Option<String>, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(validation(format!("`{key}` must be a string"))),
    }
}

/// `truncate` (else the server's `--auto-truncate`) and `truncation_direction` (`Right`, the
/// default, or `Left`; TEI also takes them in lower case).
pub fn truncate_of(body: &Value, auto_truncate: bool) -> Result<Truncate, ApiError> {
    let truncate = bool_of(body, "truncate", auto_truncate)?;
    let left = match body.get("truncation_direction") {
        None | Some(Value::Null) => false,
        Some(Value::String(d)) if d == "Right" || d == "right" => false,
        Some(Value::String(d)) if d == "Left" || d == "left" => true,
        Some(_) => {
            return Err(validation(
                "`truncation_direction` must be \"Left\" or \"Right\"",
            ));
        }
    };
    Ok(match (truncate, left) {
        (false, _) => Truncate::No,
        (true, false) => Truncate::Right,
        (true, true) => Truncate::Left,
    })
}

/// `dimensions`: absent, or a positive integer.
pub fn dimensions_of(body: &Value) -> Result<Option<usize>, ApiError> {
    match body.get("dimensions") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64().and_then(|d| usize::try_from(d).ok()) {
            Some(d) if d > 0 => Ok(Some(d)),
            _ => Err(validation("`dimensions` must be a positive integer")),
        },
    }
}

/// TEI's character cap, checked before tokenizing: a text over `limit` characters is refused
/// (422) unless it is to be truncated, when it is cut to `limit` characters (its tokens are
/// then truncated as asked).
pub fn cap_chars(text: &mut String, limit: usize, truncate: Truncate) -> Result<(), ApiError> {
    // Bytes bound characters: most texts never need counting.
    if text.len() <= limit {
        return Ok(());
    }
    let Some((cut, _)) = text.char_indices().nth(limit) else {
        return Ok(());
    };
    if truncate == Truncate::No {
        let given = text.chars().count();
        return Err(validation(format!(
            "`inputs` must have less than {limit} characters. Given: {given}"
        )));
    }
    text.truncate(cut);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn inputs_take_strings_ids_and_mixed_lists() {
        let of = |v: Value| inputs_of(Some(&v), "inputs");
        assert_eq!(of(json!("a")).unwrap(), vec![Input::Text("a".into())]);
        assert_eq!(of(json!([1, 2])).unwrap(), vec![Input::Ids(vec![1, 2])]);
        assert_eq!(
            of(json!(["a", [3]])).unwrap(),
            vec![Input::Text("a".into()), Input::Ids(vec![3])]
        );
        assert_eq!(of(json!([])).unwrap_err().status(), 400);
        assert_eq!(of(json!([-1])).unwrap_err().status(), 422);
        assert_eq!(of(json!([1.5])).unwrap_err().status(), 422);
        assert_eq!(of(json!({"a": 1})).unwrap_err().status(), 422);
        assert_eq!(of(json!(["a", 1])).unwrap_err().status(), 422);
    }

    #[test]
    fn the_character_cap_refuses_or_cuts() {
        let mut s = "é".repeat(10);
        cap_chars(&mut s, 10, Truncate::No).expect("10 characters fit");
        let mut s = "é".repeat(11);
        assert_eq!(
            cap_chars(&mut s, 10, Truncate::No).unwrap_err().status(),
            422
        );
        cap_chars(&mut s, 10, Truncate::Right).expect("cut");
        assert_eq!(s, "é".repeat(10));
    }
}
