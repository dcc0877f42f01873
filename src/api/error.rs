//! The one place that maps errors to HTTP.
//!
//! Body shape, always: `{"error": {"code": "...", "message": "..."}}`. Client errors return
//! their message; internal errors are logged once here and answered with a generic message,
//! so no internal detail (paths, SQL, peer addresses) leaks to clients. 503 and 504 answers
//! are logged as one WARN line per 10 s, which says how many were left out: a failing
//! dependency (the database, a member) must not flood the log exactly when operators read it.

use std::sync::Mutex;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::limits::LogEvery;
use crate::error::Error;

/// Seconds a client should wait before retrying a 503.
pub const RETRY_AFTER_SECS: u64 = 1;

/// An error as the HTTP API reports it.
#[derive(Debug)]
pub enum ApiError {
    /// A domain error from the service.
    Service(Error),
    /// The request itself is malformed: bad JSON, bad id, bad header. 400.
    BadRequest(String),
    /// A JSON body that parsed but has the wrong shape (type, unknown or read-only member). 422.
    Unprocessable(String),
    /// Missing or wrong bearer token. 401.
    Unauthorized,
    /// Missing or wrong bearer token from an address that sent too many of them lately: still
    /// 401 (the request is unauthenticated, whatever the rate), with `Retry-After` seconds.
    UnauthorizedBackOff {
        /// The `Retry-After` seconds.
        retry_after: u64,
    },
    /// Body over the size limit. 413.
    PayloadTooLarge(usize),
    /// Wrong `Content-Type`. 415.
    UnsupportedMediaType(String),
    /// No such route. 404.
    RouteNotFound,
    /// Route exists, method does not. 405.
    MethodNotAllowed,
    /// This client holds or asked for too much; retry after this many seconds. 429.
    TooManyRequests {
        /// What it holds or asked for too much of.
        message: String,
        /// The `Retry-After` seconds.
        retry_after: u64,
    },
}

/// The JSON error body.
#[derive(Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// Code and message of an error.
#[derive(Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `not_found`.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
}

impl From<Error> for ApiError {
    fn from(err: Error) -> Self {
        Self::Service(err)
    }
}

impl ApiError {
    /// Status, code and client-facing message.
    pub fn parts(&self) -> (StatusCode, &'static str, String) {
        match self {
            Self::Service(err) => {
                let status = match err {
                    Error::NotFound(_) => StatusCode::NOT_FOUND,
                    Error::InvalidInput(_) => StatusCode::UNPROCESSABLE_ENTITY,
                    Error::Conflict(_) | Error::VersionConflict { .. } => StatusCode::CONFLICT,
                    Error::PreconditionFailed { .. } => StatusCode::PRECONDITION_FAILED,
                    Error::Unavailable(_) | Error::NotHolder { .. } => {
                        StatusCode::SERVICE_UNAVAILABLE
                    }
                    Error::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
                    Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
                };
                let message = match err {
                    Error::Internal(_) => "internal error; see the node's log".to_owned(),
                    other => other.to_string(),
                };
                (status, err.code(), message)
            }
            Self::BadRequest(m) => (StatusCode::BAD_REQUEST, "bad_request", m.clone()),
            Self::Unprocessable(m) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "invalid_input", m.clone())
            }
            Self::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or invalid bearer token".into(),
            ),
            Self::UnauthorizedBackOff { retry_after } => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                format!(
                    "missing or invalid bearer token; too many from this address lately: retry after {retry_after} s"
                ),
            ),
            Self::PayloadTooLarge(limit) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("request body exceeds {limit} bytes"),
            ),
            Self::UnsupportedMediaType(m) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                m.clone(),
            ),
            Self::RouteNotFound => (StatusCode::NOT_FOUND, "not_found", "no such route".into()),
            Self::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this route".into(),
            ),
            Self::TooManyRequests { message, .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_requests",
                message.clone(),
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message) = self.parts();
        // Messages may carry client-supplied text (a node name, an id): `?` (Debug) escapes
        // control characters, so no request can forge a log line.
        match &self {
            Self::Service(Error::Internal(detail)) => {
                tracing::error!(error = ?detail, "internal error answering a request");
            }
            Self::Service(
                err @ (Error::Unavailable(_) | Error::Timeout(_) | Error::NotHolder { .. }),
            ) => {
                static BUDGET: Mutex<LogEvery> = Mutex::new(LogEvery::new());
                if let Some(left_out) = LogEvery::admit_shared(&BUDGET) {
                    tracing::warn!(
                        error = ?err.to_string(),
                        status = status.as_u16(),
                        similar_failures_not_logged = left_out,
                        "request failed"
                    );
                }
            }
            _ => {}
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: code.to_owned(),
                message,
            },
        };
        let mut response = (status, Json(body)).into_response();
        let headers = response.headers_mut();
        match self {
            Self::Service(Error::Unavailable(_) | Error::NotHolder { .. }) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
            }
            Self::Unauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::UnauthorizedBackOff { retry_after } => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            }
            Self::TooManyRequests { retry_after, .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_service_error_has_its_status() {
        let cases = [
            (Error::NotFound("x".into()), 404),
            (Error::InvalidInput("x".into()), 422),
            (Error::Conflict("x".into()), 409),
            (
                Error::VersionConflict {
                    expected: 1,
                    current: 2,
                },
                409,
            ),
            (
                Error::PreconditionFailed {
                    expected: 1,
                    current: 2,
                },
                412,
            ),
            (Error::Unavailable("x".into()), 503),
            (Error::Timeout("x".into()), 504),
            (
                Error::NotHolder {
                    holder: Some("n2".into()),
                    token: 3,
                },
                503,
            ),
            (Error::Internal("x".into()), 500),
        ];
        for (err, status) in cases {
            assert_eq!(ApiError::Service(err).parts().0.as_u16(), status);
        }
    }

    #[test]
    fn internal_details_are_not_shown_to_clients() {
        let (_, _, message) =
            ApiError::Service(Error::Internal("sqlite: /secret/path".into())).parts();
        assert!(!message.contains("secret"));
    }

    #[test]
    fn client_text_in_a_logged_error_cannot_start_a_new_log_line() {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Buffer(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let forged = "node x\n[s1] INFO node s9 is up";
            let _ = ApiError::Service(Error::Unavailable(forged.into())).into_response();
            let _ = ApiError::Service(Error::Internal(forged.into())).into_response();
        });
        let log = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        assert_eq!(log.lines().count(), 2, "{log}");
        assert!(!log.lines().any(|l| l.starts_with("[s1]")), "{log}");
        assert!(log.contains("node x\\n[s1]"), "{log}");
    }

    #[test]
    fn unavailable_carries_retry_after() {
        let r = ApiError::Service(Error::Unavailable("db".into())).into_response();
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
    }
}
