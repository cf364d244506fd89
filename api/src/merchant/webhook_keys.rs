//! Optional Ed25519 webhook signatures: an operator gives a merchant a signing key, every
//! webhook then carries a `v1a,` signature beside the `v1,` ones, and the public keys
//! are published as a JWKS at a well-known URL, so receivers verify without a shared
//! secret and pick up a rotated key by fetching the set again. The key before a
//! rotation keeps signing, and stays published, for
//! `callback_dispatcher.secret_rotation_overlap_ms`.

use axum::extract::State;
use axum::Json;
use secrecy::ExposeSecret as _;
use serde_json::{json, Value};

use paygate_common::secrets::Sealed;
use paygate_common::signature::ed25519;

use crate::http::error::responses::{ServiceUnavailable, TooManyRequests};
use crate::http::error::{ApiError, Result};
use crate::http::extract::{merchant_id, PathParam, UnauthenticatedLookup};
use crate::AppState;

/// Where a merchant's webhook public keys are published.
pub fn jwks_path(merchant: &str) -> String {
    format!("/.well-known/paygate/webhooks/{merchant}/jwks.json")
}

/// `GET /.well-known/paygate/webhooks/{merchant_id}/jwks.json`: the public keys that
/// sign the merchant's webhooks (RFC 7517, Ed25519 as RFC 8037); public, like any JWKS.
/// A merchant that does not exist answers exactly like one with no keys (`{"keys": []}`),
/// so the route tells nobody which merchant ids exist.
#[utoipa::path(
    get,
    path = "/.well-known/paygate/webhooks/{merchant_id}/jwks.json",
    tag = "webhooks",
    summary = "The public keys of a merchant's webhook signatures",
    params(("merchant_id" = String, Path, description = "The merchant, `mer_…`.")),
    responses(
        (status = 200, description = "`{\"keys\": [JWK, …]}`, newest first; empty when the merchant signs with HMAC only, and for a merchant that does not exist."),
        (status = 429, response = TooManyRequests),
        (status = 503, response = ServiceUnavailable),
    )
)]
pub async fn jwks(
    _: UnauthenticatedLookup,
    State(state): State<AppState>,
    PathParam(merchant): PathParam<String>,
) -> Result<Json<Value>> {
    let Ok(id) = merchant_id(&merchant) else {
        return Ok(Json(json!({ "keys": [] })));
    };
    let row: Option<(Option<Sealed>, Option<Sealed>)> = sqlx::query_as(
        "SELECT webhook_signing_key,
                CASE WHEN webhook_signing_key_previous_until > now() THEN webhook_signing_key_previous END
           FROM merchant WHERE id = $1",
    )
    .bind(id.as_str())
    .fetch_optional(&state.pool)
    .await?;
    let (current, previous) = row.unwrap_or_default();
    let mut keys = Vec::new();
    for sealed in current.iter().chain(previous.iter()) {
        let key = state
            .secrets
            .open_secret(sealed)
            .map_err(ApiError::Internal)?;
        keys.extend(ed25519::jwk(key.expose_secret()));
    }
    Ok(Json(json!({ "keys": keys })))
}
