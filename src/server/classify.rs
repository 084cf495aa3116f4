//! The sequence-classification routes: `/predict` (a text, a pair, or a batch of both; each
//! answered with every label's score, best first) and `/rerank` (a query against texts).
//! Scores are the sigmoid of a one-label head and the softmax of a wider one, unless
//! `raw_scores` asks for the logits, as TEI computes them.

use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use serde_json::Value;

use super::batcher::Row;
use super::inputs::{CHARS_PER_TOKEN_CAP, bool_of, cap_chars, texts_of, truncate_of};
use super::reply::{ApiError, Reply, backend, empty, validation};
use super::state::{Body, Shared};
use crate::encoder::{TextEncoder, TextKind, Truncate};
use crate::models::text;

/// One `/predict` input: a text, or a pair read together.
#[derive(Debug, Clone)]
enum Sequence {
    Single(String),
    Pair(String, String),
}

fn sequence_of(v: &[Value]) -> Result<Sequence, ApiError> {
    let text = |x: &Value| x.as_str().map(str::to_string);
    match v {
        [a] => text(a).map(Sequence::Single),
        [a, b] => text(a).zip(text(b)).map(|(a, b)| Sequence::Pair(a, b)),
        _ => None,
    }
    .ok_or_else(|| {
        validation(
            "`inputs` must be a string, a pair of strings [string, string] or a batch of mixed \
             strings and pairs [[string], [string, string], ...]",
        )
    })
}

/// TEI's `PredictInput`: (the sequences, whether it was a batch).
fn predict_inputs(v: Option<&Value>) -> Result<(Vec<Sequence>, bool), ApiError> {
    match v {
        Some(Value::String(s)) => Ok((vec![Sequence::Single(s.clone())], false)),
        Some(Value::Array(a)) if a.is_empty() => Err(empty("inputs")),
        Some(Value::Array(a)) if a.first().is_some_and(Value::is_array) => {
            let batch = a
                .iter()
                .map(|x| match x {
                    Value::Array(seq) => sequence_of(seq),
                    _ => sequence_of(&[]),
                })
                .collect::<Result<_, _>>()?;
            Ok((batch, true))
        }
        Some(Value::Array(a)) => Ok((vec![sequence_of(a)?], false)),
        _ => sequence_of(&[]).map(|s| (vec![s], false)),
    }
}

/// 424 unless the model has a classification head of the kind the route needs.
fn needs_head(s: &Shared, reranker: bool) -> Result<(), ApiError> {
    match (s.model.info().kind, reranker) {
        (TextKind::Reranker, _) | (TextKind::Classifier, false) => Ok(()),
        (TextKind::Classifier, true) => Err(backend(
            "the model is not a re-ranker (its classification head has more than one label): \
             use /predict",
        )),
        (TextKind::Embedding, _) => Err(backend(
            "the model is not a sequence-classification model (no classification head)",
        )),
    }
}

/// Rows of single texts and pairs, in order, each capped at TEI's character limit first.
fn sequence_rows(
    model: &TextEncoder,
    sequences: Vec<Sequence>,
    truncate: Truncate,
) -> Result<Vec<Row>, ApiError> {
    let limit = model.info().max_length * CHARS_PER_TOKEN_CAP;
    let mut rows = Vec::with_capacity(sequences.len());
    for sequence in sequences {
        let input = match sequence {
            Sequence::Single(mut t) => {
                cap_chars(&mut t, limit, truncate)?;
                model.tokenize(&[t.as_str()], None, None, truncate)?
            }
            Sequence::Pair(mut a, mut b) => {
                cap_pair(&mut a, &mut b, limit, truncate)?;
                model.tokenize_pairs(&a, &[b.as_str()], truncate)?
            }
        };
        rows.extend(TextEncoder::rows(&input));
    }
    Ok(rows)
}

/// The character cap over a pair's two texts together (TEI counts both); when truncating,
/// the first keeps up to the whole limit and the second what is left.
fn cap_pair(
    a: &mut String,
    b: &mut String,
    limit: usize,
    truncate: Truncate,
) -> Result<(), ApiError> {
    let a_chars = a.chars().count();
    let b_chars = b.chars().count();
    if a_chars + b_chars <= limit {
        return Ok(());
    }
    if truncate == Truncate::No {
        return Err(validation(format!(
            "`inputs` must have less than {limit} characters. Given: {}",
            a_chars + b_chars
        )));
    }
    cap_chars(a, limit, truncate)?;
    cap_chars(b, limit.saturating_sub(a_chars.min(limit)), truncate)
}

/// TEI's `Prediction` (the score written as the f32 it is).
#[derive(serde::Serialize)]
struct Prediction {
    score: f32,
    label: String,
}

/// TEI's `Rank`.
#[derive(serde::Serialize)]
struct Rank {
    index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    score: f32,
}

/// Every label's score for one row of logits, best first.
fn predictions(logits: &[f32], labels: &[String], raw: bool) -> Result<Vec<Prediction>, ApiError> {
    let scores: Vec<f32> = match (raw, logits.len()) {
        (true, _) => logits.to_vec(),
        (false, 1) => vec![text::cross_encoder_score(logits[0])],
        (false, _) => {
            let max = logits.iter().fold(f32::MIN, |m, &v| m.max(v));
            let exp: Vec<f32> = logits.iter().map(|&v| (v - max).exp()).collect();
            let sum: f32 = exp.iter().sum();
            exp.iter().map(|e| e / sum).collect()
        }
    };
    if scores.iter().any(|s| s.is_nan()) {
        return Err(backend("score is NaN"));
    }
    let mut ranked: Vec<(usize, f32)> = scores.into_iter().enumerate().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok(ranked
        .into_iter()
        .map(|(i, score)| {
            let label = labels
                .get(i)
                .cloned()
                .unwrap_or_else(|| format!("LABEL_{i}"));
            Prediction { score, label }
        })
        .collect())
}

pub(super) async fn predict(State(s): State<Shared>, Body(body): Body) -> Reply {
    let (sequences, batched) = predict_inputs(body.get("inputs"))?;
    let truncate = truncate_of(&body, s.options.auto_truncate)?;
    let raw = bool_of(&body, "raw_scores", false)?;
    needs_head(&s, false)?;
    let _permit = s.admit(sequences.len())?;
    let rows = s
        .blocking(move |model| sequence_rows(model, sequences, truncate))
        .await?;
    let out = s.run(rows, 0, false).await?;
    let labels = &s.model.info().labels;
    let mut answers = out
        .into_iter()
        .map(|r| predictions(r.logits.as_deref().unwrap_or_default(), labels, raw))
        .collect::<Result<Vec<_>, _>>()?;
    match (batched, answers.pop()) {
        (false, Some(one)) => Ok(Json(one).into_response()),
        (_, last) => {
            answers.extend(last);
            Ok(Json(answers).into_response())
        }
    }
}

pub(super) async fn rerank(State(s): State<Shared>, Body(body): Body) -> Reply {
    let query = body
        .get("query")
        .and_then(Value::as_str)
        .ok_or_else(|| validation("`query` must be a string"))?
        .to_string();
    let texts = texts_of(body.get("texts"), "texts")?;
    let raw = bool_of(&body, "raw_scores", false)?;
    let return_text = bool_of(&body, "return_text", false)?;
    let truncate = truncate_of(&body, s.options.auto_truncate)?;
    needs_head(&s, true)?;
    let _permit = s.admit(texts.len())?;
    let sequences: Vec<Sequence> = texts
        .iter()
        .map(|t| Sequence::Pair(query.clone(), t.clone()))
        .collect();
    let rows = s
        .blocking(move |model| sequence_rows(model, sequences, truncate))
        .await?;
    let out = s.run(rows, 0, false).await?;
    let mut ranked = Vec::with_capacity(out.len());
    for (index, r) in out.into_iter().enumerate() {
        let logit = r
            .logits
            .as_ref()
            .and_then(|l| l.first().copied())
            .unwrap_or(f32::NAN);
        let score = if raw {
            logit
        } else {
            text::cross_encoder_score(logit)
        };
        if score.is_nan() {
            return Err(backend("score is NaN"));
        }
        ranked.push(Rank {
            index,
            text: return_text.then(|| texts[index].clone()),
            score,
        });
    }
    ranked.sort_by(|a, b| b.score.total_cmp(&a.score));
    Ok(Json(ranked).into_response())
}
