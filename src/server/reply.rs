//! Error answers as text-embeddings-inference gives them: its error types, the status each
//! maps to (TEI's `From<&ErrorType> for StatusCode`), its native shape `{error, error_type}`,
//! and on the OpenAI routes its OpenAI-compatible shape, which also carries OpenAI's own
//! `{error: {message, type, code}}` so OpenAI's clients read the message.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::error::Error;

/// TEI's error types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// 503: the device was lost, or the server is shutting down.
    Unhealthy,
    /// 424: the forward failed, or the model cannot answer this route.
    Backend,
    /// 429: past `--max-concurrent-requests`.
    Overloaded,
    /// 422: a request TEI's validation refuses (batch size, length, fields).
    Validation,
    /// 422: the tokenizer failed.
    Tokenizer,
    /// 400: an empty batch.
    Empty,
    /// 413: a body over `--payload-limit` (axum's limit in TEI, with this shape here).
    PayloadTooLarge,
    /// 401: no or a wrong API key.
    Unauthorized,
    /// 408: a request body that did not arrive within `--read-timeout`.
    Timeout,
}

impl Kind {
    fn status(self) -> StatusCode {
        match self {
            Kind::Unhealthy => StatusCode::SERVICE_UNAVAILABLE,
            Kind::Backend => StatusCode::FAILED_DEPENDENCY,
            Kind::Overloaded => StatusCode::TOO_MANY_REQUESTS,
            Kind::Validation | Kind::Tokenizer => StatusCode::UNPROCESSABLE_ENTITY,
            Kind::Empty => StatusCode::BAD_REQUEST,
            Kind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Kind::Unauthorized => StatusCode::UNAUTHORIZED,
            Kind::Timeout => StatusCode::REQUEST_TIMEOUT,
        }
    }

    /// The `error_type` TEI writes (its `ErrorType` serialized).
    fn name(self) -> &'static str {
        match self {
            Kind::Unhealthy => "Unhealthy",
            Kind::Backend => "Backend",
            Kind::Overloaded => "Overloaded",
            Kind::Validation | Kind::PayloadTooLarge | Kind::Timeout => "Validation",
            Kind::Tokenizer => "Tokenizer",
            Kind::Empty => "Empty",
            Kind::Unauthorized => "Unauthorized",
        }
    }
}

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    pub kind: Kind,
    pub message: String,
    /// The OpenAI-compatible shape (the `/v1/embeddings` and `/embeddings` routes).
    pub openai: bool,
}

impl ApiError {
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            openai: false,
        }
    }

    /// The same error in the OpenAI-compatible shape.
    pub fn openai(self) -> Self {
        Self {
            openai: true,
            ..self
        }
    }

    pub fn status(&self) -> StatusCode {
        self.kind.status()
    }
}

/// 422 Validation.
pub fn validation(message: impl Into<String>) -> ApiError {
    ApiError::new(Kind::Validation, message)
}

/// 400 Empty: `what` holds nothing.
pub fn empty(what: &str) -> ApiError {
    ApiError::new(Kind::Empty, format!("`{what}` cannot be empty"))
}

/// 424 Backend.
pub fn backend(message: impl Into<String>) -> ApiError {
    ApiError::new(Kind::Backend, message)
}

impl From<Error> for ApiError {
    /// A library error from tokenizing a request: the tokenizer's own failures are `Tokenizer`,
    /// everything else (too long, a bad prompt name) `Validation`, both 422 as in TEI.
    fn from(e: Error) -> Self {
        match e {
            Error::Tokenizer(_) => ApiError::new(Kind::Tokenizer, e.to_string()),
            e => validation(e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let kind = self.kind.name();
        let body = if self.openai {
            json!({
                "message": self.message,
                "code": status.as_u16(),
                "type": kind,
                "error_type": kind,
                "error": { "message": self.message, "type": kind, "code": status.as_u16() },
            })
        } else {
            json!({ "error": self.message, "error_type": kind })
        };
        (status, Json(body)).into_response()
    }
}

/// A handler's answer.
pub type Reply = std::result::Result<Response, ApiError>;
