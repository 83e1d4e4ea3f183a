//! The one mapping from every failure to an HTTP response: a status and a JSON body
//! `{"error": message, ...}` with machine-readable extras where a client can act on them.

use axum::Json;
use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use crate::journal::JournalError;
use crate::runtime::RuntimeError;

/// A failed request: its status and JSON body.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: Map<String, Value>,
    /// Seconds for a `Retry-After` header: the refusal is temporary.
    retry_after: Option<u64>,
}

impl ApiError {
    /// An error with `status` and the human-readable `message`.
    pub fn new(status: StatusCode, message: impl std::fmt::Display) -> Self {
        let mut body = Map::new();
        body.insert("error".to_owned(), Value::String(message.to_string()));
        Self {
            status,
            body,
            retry_after: None,
        }
    }

    /// 503 with `Retry-After`: the host is busy, try again in `seconds`.
    pub fn busy(message: impl std::fmt::Display, seconds: u64) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message).retry_after(seconds)
    }

    /// Adds a `Retry-After` header of `seconds`.
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// 400: the request itself is malformed.
    pub fn bad_request(message: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 404: the named resource does not exist.
    pub fn not_found(message: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// Adds a field next to `error`.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.body.insert(key.to_owned(), value.into());
        self
    }
}

/// Documents the error body: `{"error": message}`, with extras named where they apply.
impl utoipa::PartialSchema for ApiError {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .property(
                "error",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .description(Some("What went wrong, for a person")),
            )
            .required("error")
            .description(Some(
                "A failed request. Some carry extras a client can act on: `current_version` \
                 (409), `reason` and `index` (422: a plugin refused), `stream`, `position`, \
                 `version` (500: history a plugin cannot fold).",
            ))
            .into()
    }
}

impl utoipa::ToSchema for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = %self.status, error = %self.body["error"], "request failed");
        }
        let mut response = (self.status, Json(Value::Object(self.body))).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<JournalError> for ApiError {
    fn from(error: JournalError) -> Self {
        let status = match &error {
            JournalError::Conflict { current, .. } => {
                return Self::new(StatusCode::CONFLICT, &error).with("current_version", *current);
            }
            JournalError::IdempotencyMismatch { .. } => StatusCode::CONFLICT,
            JournalError::DuplicateEventId {
                position: Some(_), ..
            } => StatusCode::CONFLICT,
            JournalError::DuplicateEventId { position: None, .. }
            | JournalError::NoEvents
            | JournalError::NulCharacter(_)
            | JournalError::InvalidMetadata(_)
            | JournalError::InvalidStreamName(_) => StatusCode::BAD_REQUEST,
            JournalError::EventTooLarge { .. }
            | JournalError::AppendTooLarge { .. }
            | JournalError::TooManyEvents { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            JournalError::StreamDeleted(_) => StatusCode::GONE,
            JournalError::SequenceStopped => StatusCode::CONFLICT,
            JournalError::StreamNotFound(_) => StatusCode::NOT_FOUND,
            JournalError::Unsupported(_) => StatusCode::NOT_IMPLEMENTED,
            JournalError::Overloaded => {
                return Self::new(StatusCode::SERVICE_UNAVAILABLE, &error).retry_after(1);
            }
            JournalError::Unavailable(_) => {
                return Self::new(StatusCode::SERVICE_UNAVAILABLE, &error).retry_after(1);
            }
            // The host is a gateway to the database and never got the commit's answer.
            JournalError::OutcomeUnknown(_) => {
                return Self::new(StatusCode::GATEWAY_TIMEOUT, &error).with("outcome", "unknown");
            }
            JournalError::Rejected(_) => StatusCode::BAD_REQUEST,
            JournalError::Closed | JournalError::NotDurable(_) | JournalError::Faulted(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            JournalError::Storage(_)
            | JournalError::Postgres(_)
            | JournalError::Corrupt { .. }
            | JournalError::UnsupportedFormat { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, error)
    }
}

impl From<RuntimeError> for ApiError {
    fn from(error: RuntimeError) -> Self {
        let status = match error {
            RuntimeError::Journal(journal) => return journal.into(),
            RuntimeError::Rejected { ref reason, .. } => {
                return Self::new(StatusCode::UNPROCESSABLE_ENTITY, &error)
                    .with("reason", reason.clone());
            }
            RuntimeError::Refused {
                ref reason, index, ..
            } => {
                return Self::new(StatusCode::UNPROCESSABLE_ENTITY, &error)
                    .with("reason", reason.clone())
                    .with("index", index);
            }
            // The stream's history cannot be folded by this build: an operator's matter.
            RuntimeError::Unfoldable {
                ref stream,
                position,
                version,
                ref reason,
                ..
            } => {
                return Self::new(StatusCode::INTERNAL_SERVER_ERROR, &error)
                    .with("stream", stream.clone())
                    .with("position", position)
                    .with("version", version)
                    .with("reason", reason.clone());
            }
            // The host failed loading a plugin, through no fault of the plugin: never a 4xx,
            // which would send its author hunting a bug that is not theirs. As KurrentDB
            // (EventStoreDB) answers 503 while it cannot serve for now, and Akka HTTP 503 for a
            // resource that is temporarily unavailable, a fault that may pass by itself (memory,
            // disk, processes ran out; the compiler killed, as the out-of-memory killer does) is
            // 503 with Retry-After, a compilation's worth of seconds; one that needs an operator
            // (a crashed compiler, a missing binary) is 500, as both answer an internal failure.
            RuntimeError::HostFault { ref fault, .. } if fault.transient => {
                return Self::busy(&error, 5);
            }
            RuntimeError::HostFault { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            // The other instances hold the host's plugin memory: like a full write queue, a
            // refusal of this request only, to retry (KurrentDB answers overload with 503).
            RuntimeError::MemoryBudget { .. } => return Self::busy(&error, 1),
            // Queries or past states waited too long for a turn: they pass once others end.
            RuntimeError::Busy => return Self::busy(&error, 1),
            // Truncated or deleted under every rebuild: passes once the operator's changes do.
            RuntimeError::WindowMoved { .. } => return Self::busy(&error, 1),
            RuntimeError::UnknownPlugin(_)
            | RuntimeError::WrongKind { .. }
            | RuntimeError::NoSuchStream(_) => StatusCode::NOT_FOUND,
            RuntimeError::InvalidPlugin { .. } | RuntimeError::InvalidCommand { .. } => {
                StatusCode::BAD_REQUEST
            }
            // The IETF Idempotency-Key draft's answer to a key reused with another payload.
            RuntimeError::KeyReused { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            RuntimeError::TooManyConflicts(_)
            | RuntimeError::KeyOutcomeGone { .. }
            | RuntimeError::NameClash { .. }
            | RuntimeError::NotNow { .. } => StatusCode::CONFLICT,
            RuntimeError::Trap { .. } | RuntimeError::PluginFailed { .. } => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        Self::new(status, error)
    }
}
