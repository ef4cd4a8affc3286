//! Request bodies: the media type is checked before a byte is read, the body is read within the body deadline
//! and only once memory is reserved for it, and its JSON is split into events (each parsed on its own) or read
//! as one object (refusing text Postgres cannot store, with the field named).

use std::sync::Arc;

use axum::{
    body::Bytes,
    extract::{FromRequest, Request},
    http::{HeaderMap, StatusCode, header},
};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;
use serde_json::{Value, value::RawValue};
use tokio::{sync::OwnedSemaphorePermit, time::Instant};

use super::{ApiError, MAX_BATCH_EVENTS, limits::HttpGuard};
use crate::metering::{event::Outcome, ingest};

/// What a body says it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Media {
    /// `application/json` (also when `Content-Type` is absent).
    Json,
    /// `application/x-ndjson` or `application/ndjson`: one JSON value per line.
    Ndjson,
}

impl Media {
    /// The media type of a request: the type and subtype exactly (any case), parameters allowed, and a
    /// `charset` only if it is UTF-8. No header: JSON.
    pub fn of(headers: &HeaderMap) -> Result<Self, ApiError> {
        let Some(value) = headers.get(header::CONTENT_TYPE) else {
            return Ok(Self::Json);
        };
        let unsupported = |shown: &str, why: &str| {
            ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!("`{shown}`: {why}; send application/json (an array) or application/x-ndjson"),
            )
        };
        let text = value.to_str().map_err(|_| unsupported("(not ASCII)", "not a media type"))?;
        let mut parts = text.split(';');
        let essence = parts.next().unwrap_or_default().trim();
        let media = if essence.eq_ignore_ascii_case("application/json") {
            Self::Json
        } else if essence.eq_ignore_ascii_case("application/x-ndjson") || essence.eq_ignore_ascii_case("application/ndjson") {
            Self::Ndjson
        } else {
            return Err(unsupported(text, "not a media type the keeper reads"));
        };
        for parameter in parts.map(str::trim).filter(|p| !p.is_empty()) {
            let Some((name, value)) = parameter.split_once('=') else {
                return Err(unsupported(text, "a parameter is not name=value"));
            };
            if name.trim().eq_ignore_ascii_case("charset") && !value.trim().trim_matches('"').eq_ignore_ascii_case("utf-8") {
                return Err(unsupported(text, "the keeper reads UTF-8 only"));
            }
        }
        Ok(media)
    }
}

/// A request body read in full, with its media type. Extract it last: the extractors before it (the operator
/// token) run first, so that a refused request is answered without its body being read. The memory it holds
/// stays reserved until the request is answered.
#[derive(Debug)]
pub struct Payload {
    /// What the body says it is.
    pub media: Media,
    /// The bytes.
    pub bytes: Bytes,
    _reserved: OwnedSemaphorePermit,
}

impl<S: Send + Sync> FromRequest<S> for Payload {
    type Rejection = ApiError;

    async fn from_request(request: Request, _state: &S) -> Result<Self, ApiError> {
        let guard = request.extensions().get::<Arc<HttpGuard>>().cloned().expect("the router installs the HTTP guard");
        let deadline = Instant::now() + guard.limits.body_timeout;
        let media = Media::of(request.headers())?;
        let limit = guard.max_body_bytes;
        let too_large = || ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", format!("the body is over the limit of {limit} bytes"));
        let declared = match request.headers().get(header::CONTENT_LENGTH) {
            Some(value) => Some(value.to_str().ok().and_then(|v| v.parse::<u64>().ok()).ok_or_else(|| {
                ApiError::new(StatusCode::BAD_REQUEST, "bad_body", "Content-Length is not a number of bytes")
            })?),
            None => None,
        };
        if declared.is_some_and(|length| length > limit as u64) {
            return Err(too_large());
        }
        // Reserve memory for the whole body before reading any of it; wait for others to finish, until the deadline.
        let reserve = declared.map_or(limit, |length| length as usize).max(1);
        let permits = u32::try_from(reserve).expect("max_body_memory fits 32 bits (checked at start)");
        let mut reserved = match tokio::time::timeout_at(deadline, guard.body_bytes.clone().acquire_many_owned(permits)).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_closed)) => unreachable!("the body semaphore is never closed"),
            Err(_elapsed) => {
                guard.body_memory_full.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "busy",
                    "the keeper is reading as many request bodies as it holds in memory; retry",
                ));
            }
        };
        let body = Limited::new(request.into_body(), limit);
        let bytes = match tokio::time::timeout_at(deadline, body.collect()).await {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(error)) if error.downcast_ref::<LengthLimitError>().is_some() => return Err(too_large()),
            Ok(Err(error)) => return Err(ApiError::new(StatusCode::BAD_REQUEST, "bad_body", format!("the body could not be read: {error}"))),
            Err(_elapsed) => {
                guard.body_timeouts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "body_timeout",
                    format!("the body did not arrive within {} s", guard.limits.body_timeout.as_secs()),
                ));
            }
        };
        // A body without a length reserved the largest size; keep only what it took.
        if reserve > bytes.len().max(1) {
            drop(reserved.split(reserve - bytes.len().max(1)));
        }
        Ok(Self { media, bytes, _reserved: reserved })
    }
}

impl Payload {
    /// The body as one JSON object of type `T`. Text Postgres cannot store is refused with its field named.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        if self.media != Media::Json {
            return Err(ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", "send application/json"));
        }
        let value: Value = serde_json::from_slice(&self.bytes).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", e.to_string()))?;
        if let Some((field, reason)) = ingest::unstorable(&value, "") {
            let field = if field.is_empty() { "body".to_owned() } else { field };
            return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", format!("{field}: {reason}")));
        }
        serde_json::from_value(value).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", e.to_string()))
    }

    /// The body as a batch of events: a JSON array, or NDJSON (one object per line). Each event is parsed on its
    /// own, so that a value one event holds which cannot be read (a number beyond a 64-bit float, a lone
    /// surrogate) rejects that event alone, naming its field.
    pub fn events(&self) -> Result<Vec<Result<Value, Outcome>>, ApiError> {
        parse_batch(self.media, &self.bytes)
    }
}

/// Splits a body into events (see [`Payload::events`]).
pub fn parse_batch(media: Media, body: &[u8]) -> Result<Vec<Result<Value, Outcome>>, ApiError> {
    let too_many = |count: usize| {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "batch_too_large", format!("{count} events; at most {MAX_BATCH_EVENTS} per batch"))
    };
    let items: Vec<Result<Value, Outcome>> = match media {
        Media::Ndjson => {
            let lines: Vec<(usize, &[u8])> =
                body.split(|b| *b == b'\n').enumerate().filter(|(_, line)| !line.iter().all(u8::is_ascii_whitespace)).collect();
            if lines.len() > MAX_BATCH_EVENTS {
                return Err(too_many(lines.len()));
            }
            lines
                .into_iter()
                .map(|(n, line)| {
                    let place = format!("line {}", n + 1);
                    match std::str::from_utf8(line) {
                        Ok(text) => ingest::parse_event(text, &place),
                        Err(e) => Err(Outcome::rejected(None, &place, format!("not UTF-8: {e}"))),
                    }
                })
                .collect()
        }
        Media::Json => {
            let malformed = |why: String| ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", format!("the body is not a JSON array of events: {why}"));
            let text = std::str::from_utf8(body).map_err(|e| malformed(format!("not UTF-8: {e}")))?;
            // Well-formed JSON first; each element is then parsed on its own.
            let raw: Vec<&RawValue> = serde_json::from_str(text).map_err(|e| malformed(e.to_string()))?;
            if raw.len() > MAX_BATCH_EVENTS {
                return Err(too_many(raw.len()));
            }
            raw.into_iter().map(|event| ingest::parse_event(event.get(), "event")).collect()
        }
    };
    if items.is_empty() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "empty_batch", "the batch has no events"));
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn media(content_type: Option<&str>) -> Result<Media, u16> {
        let mut headers = HeaderMap::new();
        if let Some(value) = content_type {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_str(value).unwrap());
        }
        Media::of(&headers).map_err(|e| e.status.as_u16())
    }

    #[test]
    fn the_media_type_is_matched_exactly() {
        assert_eq!(media(None), Ok(Media::Json));
        assert_eq!(media(Some("application/json")), Ok(Media::Json));
        assert_eq!(media(Some("Application/JSON; charset=UTF-8")), Ok(Media::Json));
        assert_eq!(media(Some("application/json;charset=\"utf-8\"")), Ok(Media::Json));
        assert_eq!(media(Some("application/x-ndjson")), Ok(Media::Ndjson));
        assert_eq!(media(Some("application/ndjson; charset=utf-8")), Ok(Media::Ndjson));
        for refused in [
            "application/jsonfoo",
            "application/json-seq",
            "application/jsonx; charset=utf-8",
            "application/x-ndjsonfoo",
            "text/plain",
            "application/json; charset=latin1",
            "application/json; garbage",
            "",
        ] {
            assert_eq!(media(Some(refused)), Err(415), "{refused}");
        }
    }

    #[test]
    fn one_unreadable_event_in_an_array_is_rejected_alone() {
        let body = br#"[{"event_id": "a"}, {"event_id": "b", "properties": {"n": 1e400000}}, {"event_id": "c"}]"#;
        let items = parse_batch(Media::Json, body).unwrap();
        assert_eq!(items.len(), 3);
        assert!(items[0].is_ok() && items[2].is_ok());
        match &items[1] {
            Err(Outcome::Rejected { event_id, field, .. }) => assert_eq!((event_id.as_deref(), field.as_str()), (Some("b"), "properties.n")),
            // serde_json with `arbitrary_precision` (a workspace build) parses it; the properties check refuses it.
            Ok(value) => assert_eq!(crate::metering::ingest::unstorable(value, "").map(|(field, _)| field).as_deref(), Some("properties.n")),
            other => panic!("{other:?}"),
        }
        let broken = parse_batch(Media::Json, br#"[{"event_id": "a"}, {"#).unwrap_err();
        assert_eq!((broken.status.as_u16(), broken.code), (400, "malformed_json"));
        let latin1 = parse_batch(Media::Json, b"[{\"event_id\": \"caf\xe9\"}]").unwrap_err();
        assert!(latin1.message.contains("not UTF-8"), "{}", latin1.message);
        let lines = parse_batch(Media::Ndjson, b"{\"event_id\": \"a\"}\n\n{\"event_id\": \"caf\xe9\"}\n{\"event_id\": \"c\", \"x\": \"\\ud800\"}\n").unwrap();
        assert_eq!(lines.len(), 3);
        assert!(matches!(&lines[1], Err(Outcome::Rejected { field, .. }) if field == "line 3"));
        assert!(matches!(&lines[2], Err(Outcome::Rejected { field, event_id, .. }) if field == "x" && event_id.as_deref() == Some("c")));
    }
}
