//! The operator's bearer token, checked from the request's headers alone: a handler takes [`Operator`] before its
//! body, so a request without the token is answered 401 before a byte of its body is read.

use std::sync::Arc;

use axum::{
    extract::FromRequestParts,
    http::{StatusCode, header, request::Parts},
};

use super::{ApiError, Keeper};

/// Proof that the request carries the operator's token.
#[derive(Debug, Clone, Copy)]
pub struct Operator;

impl FromRequestParts<Arc<Keeper>> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, keeper: &Arc<Keeper>) -> Result<Self, ApiError> {
        let Some(expected) = keeper.settings.api_token.as_deref() else {
            return Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", "this keeper takes no writes over HTTP"));
        };
        let given = parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        match given {
            None => Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "send the operator token as `Authorization: Bearer <token>`")),
            Some(token) if constant_time_eq(token.as_bytes(), expected.as_bytes()) => Ok(Self),
            Some(_) => Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "wrong operator token")),
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
