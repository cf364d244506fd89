//! An operator gives a merchant an Ed25519 webhook signing key; its public half is
//! published in the merchant's JWKS ([`crate::merchant::webhook_keys`]).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use paygate_common::events::timestamp;
use paygate_common::signature::ed25519;

use super::{merchant_id, Admin};
use crate::http::error::responses::NotFound;
use crate::http::error::{ApiError, Result};
use crate::http::extract::PathParam;
use crate::merchant::webhook_keys::jwks_path;
use crate::AppState;

/// A new Ed25519 signing key's public half.
#[derive(Serialize, ToSchema)]
pub struct SigningKey {
    /// `whpk_<base64>`: what a receiver verifies `v1a,` signatures with.
    #[schema(example = "whpk_…")]
    pub public_key: String,
    /// The key's id in the JWKS.
    pub kid: String,
    /// Where the current (and, during the overlap, the previous) public keys are.
    pub jwks_url: String,
    /// When the key it replaces stops signing and leaves the JWKS (RFC 3339); absent
    /// when there was none.
    pub previous_key_expires_at: Option<String>,
}

/// `POST /merchants/{id}/webhook-signing-key`: gives the merchant a new Ed25519 key; the
/// previous one, if any, keeps signing beside it for the rotation overlap.
#[utoipa::path(
    post,
    path = "/merchants/{id}/webhook-signing-key",
    summary = "Give a merchant a new Ed25519 webhook signing key",
    params(("id" = String, Path, description = "The merchant, `mer_…`.")),
    responses(
        (status = 201, description = "Webhooks now carry a `v1a,` signature too.", body = SigningKey),
        (status = 404, response = NotFound),
    )
)]
pub async fn rotate_signing_key(
    _: Admin,
    State(state): State<AppState>,
    PathParam(id): PathParam<String>,
) -> Result<(StatusCode, Json<SigningKey>)> {
    let id = merchant_id(&id)?;
    let key = ed25519::generate_key();
    let sealed = state
        .secrets
        .seal_secret(&key)
        .map_err(ApiError::Internal)?;
    let overlap = state
        .settings
        .callback_dispatcher
        .secret_rotation_overlap_ms;
    let row: Option<(Option<DateTime<Utc>>,)> = sqlx::query_as(
        "UPDATE merchant
            SET webhook_signing_key_previous = webhook_signing_key,
                webhook_signing_key_previous_until = CASE WHEN webhook_signing_key IS NULL THEN NULL
                    ELSE now() + make_interval(secs => $3::double precision / 1000) END,
                webhook_signing_key = $2
          WHERE id = $1
      RETURNING webhook_signing_key_previous_until",
    )
    .bind(id.as_str())
    .bind(sealed.as_stored())
    .bind(i64::try_from(overlap).unwrap_or(i64::MAX))
    .fetch_optional(&state.pool)
    .await?;
    let (previous_until,) = row.ok_or(ApiError::NotFound("merchant"))?;
    let jwk = ed25519::jwk(&key)
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("a fresh key has no JWK")))?;
    tracing::info!(merchant_id = %id, "webhook signing key rotated");
    Ok((
        StatusCode::CREATED,
        Json(SigningKey {
            public_key: ed25519::public_key(&key).unwrap_or_default(),
            kid: jwk["kid"].as_str().unwrap_or_default().to_owned(),
            jwks_url: format!(
                "{}{}",
                state.settings.api.public_url.trim_end_matches('/'),
                jwks_path(id.as_str())
            ),
            previous_key_expires_at: previous_until.map(timestamp),
        }),
    ))
}
