//! The JSON body extractor: [`JsonBody`] replaces axum's `Json` extractor so that every
//! rejection — wrong content type, body too large, syntax error, wrong shape — comes back in
//! the API's error format.
//!
//! The body types themselves are plain serde types in [`super::model`], free of axum so the
//! CLI client can share them; this module is the axum side only.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;

use super::AppState;
use super::error::ApiError;

/// A JSON request body, with rejections in the API's error format.
pub struct JsonBody<T>(pub T);

/// Media types accepted for JSON bodies (PATCH also accepts merge-patch).
const JSON_TYPES: [&str; 2] = ["application/json", "application/merge-patch+json"];

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            });
        match content_type.as_deref() {
            Some(ct) if JSON_TYPES.contains(&ct) => {}
            other => {
                return Err(ApiError::UnsupportedMediaType(format!(
                    "expected Content-Type: application/json, got {}",
                    other.unwrap_or("none")
                )));
            }
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge(state.max_body_bytes)
            } else {
                ApiError::BadRequest(format!("could not read the request body: {rejection}"))
            }
        })?;
        parse(&bytes).map(JsonBody)
    }
}

/// Parses JSON: syntax errors are 400, shape errors 422. Every body this API takes is an
/// object, and serde would describe an array or a scalar in terms of the struct's first
/// field ("expected a string"), so those get a plainer message.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data if !bytes.trim_ascii_start().starts_with(b"{") => {
            ApiError::Unprocessable("the body must be a JSON object".into())
        }
        serde_json::error::Category::Data => ApiError::Unprocessable(e.to_string()),
        _ => ApiError::BadRequest(format!("malformed JSON: {e}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::model::CustomerInput;

    #[test]
    fn json_syntax_errors_are_400_and_shape_errors_422() {
        assert!(matches!(
            parse::<CustomerInput>(b"{\"name\":"),
            Err(ApiError::BadRequest(_))
        ));
        assert!(matches!(
            parse::<CustomerInput>(b"{\"name\": 5}"),
            Err(ApiError::Unprocessable(_))
        ));
        assert!(matches!(
            parse::<CustomerInput>(b"{\"nmae\": \"x\"}"),
            Err(ApiError::Unprocessable(_))
        ));
        for not_an_object in [&b" [1, 2]"[..], b"\"Ada\"", b"7", b"null"] {
            match parse::<CustomerInput>(not_an_object) {
                Err(ApiError::Unprocessable(m)) => assert_eq!(m, "the body must be a JSON object"),
                other => panic!("{not_an_object:?}: {other:?}"),
            }
        }
    }
}
