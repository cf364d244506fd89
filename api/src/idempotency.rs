//! `Idempotency-Key` with Stripe's semantics: the same key and the same request within
//! 24 hours get the first response again, byte for byte, with `Idempotent-Replayed:
//! true`; the same key with another request is 422; a repeat while the first is still
//! in flight is 409. Keys are per merchant.
//!
//! The key's row is claimed first, in its own statement: the primary key decides
//! between racing requests. The response is stored in the same database transaction
//! that creates the payment, so a payment and the answer that announced it are committed
//! together or not at all. A claim whose request died before committing (a crash) is
//! taken over once it is older than [`IN_FLIGHT_TIMEOUT`].

use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};

use paygate_common::domain::MerchantId;

use crate::error::{ApiError, Result};

pub const HEADER: &str = "Idempotency-Key";
pub const REPLAYED: &str = "Idempotent-Replayed";

/// The `Idempotency-Key` request header, as the OpenAPI document shows it ([`key_of`]
/// reads it).
#[derive(utoipa::IntoParams)]
#[into_params(names("Idempotency-Key"), parameter_in = Header)]
pub struct IdempotencyKeyHeader(
    /// 1 to 255 visible ASCII characters, per merchant. The same key and body within 24
    /// hours get the first answer again, byte for byte, with `Idempotent-Replayed: true`;
    /// the same key with another body is 422; while the first is in flight, 409.
    #[param(
        value_type = String,
        required = false,
        min_length = 1,
        max_length = 255,
        pattern = "^[!-~]+$",
        example = "order-7-attempt-1"
    )]
    pub Option<String>,
);

/// How long a key is remembered.
const RETENTION: Duration = Duration::from_secs(24 * 3600);
/// A claim older than this whose request never finished is taken over.
const IN_FLIGHT_TIMEOUT: Duration = Duration::from_secs(60);

/// A request's key, checked.
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    merchant: MerchantId,
    key: String,
    hash: Vec<u8>,
}

/// What to do with a request that carries a key.
pub enum Claim {
    /// First of its key: do the work and [`IdempotencyKey::complete`] it.
    Fresh(IdempotencyKey),
    /// Answered before: send this again.
    Replay(Response),
}

/// Reads the key from `headers`, if any; `route` and `body` identify the request.
pub fn key_of(
    headers: &HeaderMap,
    merchant: &MerchantId,
    route: &str,
    body: &[u8],
) -> Result<Option<IdempotencyKey>> {
    let Some(value) = headers.get(HEADER) else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= 255 && k.chars().all(|c| c.is_ascii_graphic()))
        .ok_or_else(|| ApiError::invalid(HEADER, "must be 1 to 255 visible ASCII characters"))?;
    let mut hash = Sha256::new();
    hash.update(route.as_bytes());
    hash.update(b"\n");
    hash.update(body);
    Ok(Some(IdempotencyKey {
        merchant: merchant.clone(),
        key: key.to_owned(),
        hash: hash.finalize().to_vec(),
    }))
}

#[derive(sqlx::FromRow)]
struct Stored {
    request_hash: Vec<u8>,
    status_code: Option<i32>,
    response_headers: Option<serde_json::Value>,
    response_body: Option<Vec<u8>>,
    locked_at: chrono::DateTime<chrono::Utc>,
    created_at: chrono::DateTime<chrono::Utc>,
}

impl IdempotencyKey {
    /// Claims the key, or says why not.
    pub async fn claim(self, pool: &PgPool) -> Result<Claim> {
        for _ in 0..3 {
            let claimed: Option<i32> = sqlx::query_scalar(
                "INSERT INTO idempotency_key (merchant_id, key, request_hash)
                 VALUES ($1, $2, $3)
                 ON CONFLICT (merchant_id, key) DO NOTHING
                 RETURNING 1",
            )
            .bind(self.merchant.as_str())
            .bind(&self.key)
            .bind(&self.hash)
            .fetch_optional(pool)
            .await?;
            if claimed.is_some() {
                return Ok(Claim::Fresh(self));
            }
            let Some(stored) = sqlx::query_as::<_, Stored>(
                "SELECT request_hash, status_code, response_headers, response_body, locked_at, created_at
                   FROM idempotency_key WHERE merchant_id = $1 AND key = $2",
            )
            .bind(self.merchant.as_str())
            .bind(&self.key)
            .fetch_optional(pool)
            .await?
            else {
                continue; // expired and deleted meanwhile: claim again
            };
            let now = chrono::Utc::now();
            if now - stored.created_at > chrono::Duration::from_std(RETENTION).unwrap_or_default() {
                sqlx::query(
                    "DELETE FROM idempotency_key WHERE merchant_id = $1 AND key = $2 AND created_at = $3",
                )
                .bind(self.merchant.as_str())
                .bind(&self.key)
                .bind(stored.created_at)
                .execute(pool)
                .await?;
                continue;
            }
            if stored.request_hash != self.hash {
                return Err(ApiError::invalid(
                    HEADER,
                    "this key was used with a different request",
                ));
            }
            if let Some(status) = stored.status_code {
                return Ok(Claim::Replay(replay(
                    status,
                    stored.response_headers,
                    stored.response_body,
                )));
            }
            let stale = now - stored.locked_at
                > chrono::Duration::from_std(IN_FLIGHT_TIMEOUT).unwrap_or_default();
            if !stale {
                return Err(ApiError::IdempotencyInFlight);
            }
            let taken = sqlx::query(
                "UPDATE idempotency_key SET locked_at = now()
                  WHERE merchant_id = $1 AND key = $2 AND locked_at = $3 AND status_code IS NULL",
            )
            .bind(self.merchant.as_str())
            .bind(&self.key)
            .bind(stored.locked_at)
            .execute(pool)
            .await?;
            return if taken.rows_affected() == 1 {
                Ok(Claim::Fresh(self))
            } else {
                Err(ApiError::IdempotencyInFlight)
            };
        }
        Err(ApiError::IdempotencyInFlight)
    }

    /// Stores the response, in the database transaction that did the work.
    pub async fn complete(
        &self,
        conn: &mut PgConnection,
        status: StatusCode,
        headers: &[(HeaderName, HeaderValue)],
        body: &[u8],
    ) -> Result<()> {
        let headers: serde_json::Map<String, serde_json::Value> = headers
            .iter()
            .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.into())))
            .collect();
        sqlx::query(
            "UPDATE idempotency_key
                SET status_code = $3, response_headers = $4, response_body = $5
              WHERE merchant_id = $1 AND key = $2",
        )
        .bind(self.merchant.as_str())
        .bind(&self.key)
        .bind(i32::from(status.as_u16()))
        .bind(serde_json::Value::Object(headers))
        .bind(body)
        .execute(conn)
        .await?;
        Ok(())
    }

    /// Gives the key up after the work failed, so a retry of the request can go ahead.
    pub async fn release(&self, pool: &PgPool) {
        let released = sqlx::query(
            "DELETE FROM idempotency_key WHERE merchant_id = $1 AND key = $2 AND status_code IS NULL",
        )
        .bind(self.merchant.as_str())
        .bind(&self.key)
        .execute(pool)
        .await;
        if let Err(error) = released {
            tracing::warn!(%error, "could not release an idempotency key; it is taken over after a minute");
        }
    }
}

fn replay(status: i32, headers: Option<serde_json::Value>, body: Option<Vec<u8>>) -> Response {
    let status = u16::try_from(status)
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    let mut response = (status, Bytes::from(body.unwrap_or_default())).into_response();
    if let Some(serde_json::Value::Object(headers)) = headers {
        for (name, value) in headers {
            if let (Ok(name), Some(Ok(value))) = (
                HeaderName::try_from(name),
                value.as_str().map(HeaderValue::from_str),
            ) {
                response.headers_mut().insert(name, value);
            }
        }
    }
    response
        .headers_mut()
        .insert(REPLAYED, HeaderValue::from_static("true"));
    response
}
