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
//!
//! A request is recognised by its fingerprint: an HMAC-SHA256, under a key of its own
//! (`api.idempotency.fingerprint_keys`), of the route and the body with the card's CVV
//! left out. Unkeyed, a hash of a body that holds a card number would give the number
//! up to a search of ~10^10 guesses to whoever holds a copy of the database; keyed, it
//! gives nothing without the key, and no CVV ever goes into it. Keys past
//! `api.idempotency.retention_ms` are purged (see [`crate::purge`]).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use sqlx::{PgConnection, PgPool};

use paygate_common::config::IdempotencySettings;
use paygate_common::domain::MerchantId;
use paygate_common::transactions::KeptAnswer;

use crate::http::error::{ApiError, Result};

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

/// A claim older than this whose request never finished is taken over.
const IN_FLIGHT_TIMEOUT: Duration = Duration::from_secs(60);

/// How requests are fingerprinted and how long keys are remembered.
#[derive(Clone)]
pub struct Fingerprints {
    /// HMAC keys, newest first: the first fingerprints, every one recognises.
    keys: Arc<Vec<Vec<u8>>>,
    retention: Duration,
}

impl std::fmt::Debug for Fingerprints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fingerprints")
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl Fingerprints {
    pub fn from_settings(settings: &IdempotencySettings) -> anyhow::Result<Self> {
        let keys = paygate_common::environment::fingerprint_keys(&settings.fingerprint_keys)?
            .into_iter()
            .map(|(_, key)| key)
            .collect();
        Ok(Fingerprints {
            keys: Arc::new(keys),
            retention: settings.retention(),
        })
    }

    /// The fingerprint of `route` and `body` under each key, newest first.
    fn of(&self, route: &str, body: &[u8]) -> Vec<Vec<u8>> {
        let body = without_cvv(body);
        self.keys
            .iter()
            .filter_map(|key| {
                let mut mac = Hmac::<Sha256>::new_from_slice(key).ok()?;
                mac.update(route.as_bytes());
                mac.update(b"\n");
                mac.update(&body);
                Some(mac.finalize().into_bytes().to_vec())
            })
            .collect()
    }
}

/// `body` with the card's CVV left out (`payment_method.card.cvv` in JSON, the text of
/// every `<cvv>` in XML), and otherwise as it came: a request differs from another in
/// everything but its CVV. A body that does not parse is returned as it is (intake has
/// refused it already).
fn without_cvv(body: &[u8]) -> Cow<'_, [u8]> {
    let xml = body
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'<');
    let stripped = if xml {
        xml_without_cvv(body)
    } else {
        json_without_cvv(body)
    };
    stripped.map_or(Cow::Borrowed(body), Cow::Owned)
}

fn json_without_cvv(body: &[u8]) -> Option<Vec<u8>> {
    let mut value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value
        .pointer_mut("/payment_method/card")?
        .as_object_mut()?
        .remove("cvv")?;
    serde_json::to_vec(&value).ok()
}

fn xml_without_cvv(body: &[u8]) -> Option<Vec<u8>> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_reader(body);
    let mut writer = quick_xml::Writer::new(Vec::with_capacity(body.len()));
    let mut in_cvv = 0usize;
    let mut removed = false;
    loop {
        let event = reader.read_event().ok()?;
        match &event {
            Event::Eof => break,
            Event::Start(start) if start.local_name().as_ref() == b"cvv" => in_cvv += 1,
            Event::End(end) if end.local_name().as_ref() == b"cvv" => {
                in_cvv = in_cvv.saturating_sub(1)
            }
            Event::Text(_) | Event::CData(_) | Event::GeneralRef(_) if in_cvv > 0 => {
                removed = true;
                continue;
            }
            _ => {}
        }
        writer.write_event(event).ok()?;
    }
    removed.then(|| writer.into_inner())
}

/// A request's key, checked.
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    merchant: MerchantId,
    key: String,
    /// The request's fingerprint under each key, newest (the one stored) first.
    hashes: Vec<Vec<u8>>,
    retention: Duration,
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
    fingerprints: &Fingerprints,
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
    Ok(Some(IdempotencyKey {
        merchant: merchant.clone(),
        key: key.to_owned(),
        hashes: fingerprints.of(route, body),
        retention: fingerprints.retention,
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
            .bind(self.hashes.first())
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
            if now - stored.created_at
                > chrono::Duration::from_std(self.retention).unwrap_or_default()
            {
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
            if !self.hashes.contains(&stored.request_hash) {
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

    /// The answer to store with the payment in intake's one statement
    /// ([`transactions::create_at_once`](paygate_common::transactions::create_at_once)),
    /// which claims the key and completes it at once.
    pub fn kept(
        &self,
        status: StatusCode,
        headers: &[(HeaderName, HeaderValue)],
        body: &[u8],
    ) -> KeptAnswer {
        KeptAnswer {
            key: self.key.clone(),
            request_hash: self.hashes.first().cloned().unwrap_or_default(),
            status_code: i32::from(status.as_u16()),
            headers: stored_headers(headers),
            body: body.to_vec(),
        }
    }

    /// Stores the response, in the database transaction that did the work.
    pub async fn complete(
        &self,
        conn: &mut PgConnection,
        status: StatusCode,
        headers: &[(HeaderName, HeaderValue)],
        body: &[u8],
    ) -> Result<()> {
        sqlx::query(
            "UPDATE idempotency_key
                SET status_code = $3, response_headers = $4, response_body = $5
              WHERE merchant_id = $1 AND key = $2",
        )
        .bind(self.merchant.as_str())
        .bind(&self.key)
        .bind(i32::from(status.as_u16()))
        .bind(stored_headers(headers))
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

/// Response headers as the key's row keeps them.
fn stored_headers(headers: &[(HeaderName, HeaderValue)]) -> serde_json::Value {
    serde_json::Value::Object(
        headers
            .iter()
            .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.into())))
            .collect(),
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    fn fingerprints(keys: &[&str]) -> Fingerprints {
        Fingerprints::from_settings(&IdempotencySettings {
            fingerprint_keys: keys.iter().map(|k| (*k).to_owned().into()).collect(),
            retention_ms: 1000,
        })
        .unwrap()
    }

    const K1: &str = "k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    const K2: &str = "k2:AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";

    #[test]
    fn a_fingerprint_is_keyed_and_never_covers_the_cvv() {
        let body = |cvv: &str| {
            format!(
                r#"{{"amount":"1.00","payment_method":{{"type":"card","card":{{"number":"4242424242424242","cvv":"{cvv}"}}}}}}"#
            )
        };
        let one = fingerprints(&[K1]);
        let [a] = &one.of("/v1/deposits", body("123").as_bytes())[..] else {
            panic!("one key, one fingerprint")
        };
        assert_eq!(
            &one.of("/v1/deposits", body("987").as_bytes())[0],
            a,
            "the CVV is not part of it"
        );
        assert_ne!(&one.of("/v1/deposits", b"{}")[0], a);
        assert_ne!(&one.of("/v1/withdrawals", body("123").as_bytes())[0], a);
        let unkeyed = {
            use sha2::Digest as _;
            let mut hash = Sha256::new();
            hash.update(b"/v1/deposits\n");
            hash.update(body("123").as_bytes());
            hash.finalize().to_vec()
        };
        assert_ne!(*a, unkeyed);
        assert_ne!(
            &fingerprints(&[K2]).of("/v1/deposits", body("123").as_bytes())[0],
            a,
            "another key, another fingerprint"
        );
        let rotated = fingerprints(&[K2, K1]).of("/v1/deposits", body("123").as_bytes());
        assert_eq!(&rotated[1], a, "an older key still recognises");
    }

    #[test]
    fn an_xml_body_loses_only_the_text_of_its_cvv() {
        let xml = |cvv: &str, amount: &str| {
            format!("<deposit><amount>{amount}</amount><payment_method><card><cvv>{cvv}</cvv></card></payment_method></deposit>")
        };
        let stripped = without_cvv(xml("123", "1.00").as_bytes()).into_owned();
        let text = String::from_utf8(stripped).unwrap();
        assert!(
            !text.contains("123") && text.contains("<cvv></cvv>"),
            "{text}"
        );
        let one = fingerprints(&[K1]);
        assert_eq!(
            one.of("/v1/deposits", xml("123", "1.00").as_bytes()),
            one.of("/v1/deposits", xml("987", "1.00").as_bytes())
        );
        assert_ne!(
            one.of("/v1/deposits", xml("123", "1.00").as_bytes()),
            one.of("/v1/deposits", xml("123", "2.00").as_bytes())
        );
    }
}
