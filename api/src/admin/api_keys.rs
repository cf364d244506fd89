//! A merchant's API keys: rotation (the old keys keep working for
//! `admin.key_rotation_overlap_ms`), the list (prefixes and states, never a key) and
//! revocation at once, on every api replica.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use paygate_common::events::timestamp;

use super::merchants;
use super::{merchant_id, Admin};
use crate::http::error::responses::NotFound;
use crate::http::error::{ApiError, Result};
use crate::http::extract::PathParam;
use crate::merchant::queries::Page;
use crate::AppState;

/// A new API key, shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct RotatedKey {
    #[schema(example = "pgk_…")]
    pub api_key: String,
    /// When the keys it replaces stop working (RFC 3339).
    pub previous_keys_expire_at: String,
}

/// `POST /merchants/{id}/api-keys`: a new key; the old ones keep working for
/// `admin.key_rotation_overlap_ms`, then stop.
#[utoipa::path(
    post,
    path = "/merchants/{id}/api-keys",
    summary = "Rotate a merchant's API key",
    params(("id" = String, Path, description = "The merchant, `mer_…`.")),
    responses(
        (status = 201, description = "A new key; the old ones keep working until `previous_keys_expire_at`.", body = RotatedKey),
        (status = 404, response = NotFound),
    )
)]
pub(super) async fn rotate_api_key(
    _: Admin,
    State(state): State<AppState>,
    PathParam(id): PathParam<String>,
) -> Result<(StatusCode, Json<RotatedKey>)> {
    let id = merchant_id(&id)?;
    let overlap = std::time::Duration::from_millis(state.settings.admin.key_rotation_overlap_ms);
    let (api_key, expires_at) = merchants::rotate_api_key(&state.pool, &id, overlap)
        .await?
        .ok_or(ApiError::NotFound("merchant"))?;
    tracing::info!(merchant_id = %id, "API key rotated");
    Ok((
        StatusCode::CREATED,
        Json(RotatedKey {
            api_key,
            previous_keys_expire_at: timestamp(expires_at),
        }),
    ))
}

/// `GET /merchants/{id}/api-keys`: the merchant's keys (ids and prefixes, never the
/// keys), newest first, with their state.
#[utoipa::path(
    get,
    path = "/merchants/{id}/api-keys",
    summary = "A merchant's API keys",
    params(("id" = String, Path, description = "The merchant, `mer_…`.")),
    responses(
        (status = 200, description = "`{\"data\": [key, …], \"has_more\": false}`, newest first.", body = Page<merchants::ApiKeyView>),
        (status = 404, response = NotFound),
    )
)]
pub(super) async fn list_api_keys(
    _: Admin,
    State(state): State<AppState>,
    PathParam(id): PathParam<String>,
) -> Result<Json<Page<merchants::ApiKeyView>>> {
    let id = merchant_id(&id)?;
    let keys = merchants::api_keys(&state.pool, &id)
        .await?
        .ok_or(ApiError::NotFound("merchant"))?;
    Ok(Json(Page {
        data: keys,
        has_more: false,
    }))
}

/// A revoked key.
#[derive(Debug, Serialize, ToSchema)]
pub struct RevokedKey {
    pub id: String,
    /// When it stopped working (RFC 3339); the first revocation's time when repeated.
    pub revoked_at: String,
}

/// `POST /merchants/{id}/api-keys/{key_id}/revoke`: the key stops working now, on
/// every api replica (a leaked key is not left its rotation overlap).
#[utoipa::path(
    post,
    path = "/merchants/{id}/api-keys/{key_id}/revoke",
    summary = "Revoke a merchant's API key at once",
    params(
        ("id" = String, Path, description = "The merchant, `mer_…`."),
        ("key_id" = String, Path, description = "The key, `key_…` (from `GET /merchants/{id}/api-keys`)."),
    ),
    responses(
        (status = 200, description = "Revoked (or already revoked).", body = RevokedKey),
        (status = 404, response = NotFound),
    )
)]
pub(super) async fn revoke_api_key(
    _: Admin,
    State(state): State<AppState>,
    PathParam((id, key_id)): PathParam<(String, String)>,
) -> Result<Json<RevokedKey>> {
    let id = merchant_id(&id)?;
    let revoked_at = merchants::revoke_api_key(&state.pool, &id, &key_id)
        .await?
        .ok_or(ApiError::NotFound("API key"))?;
    tracing::info!(merchant_id = %id, key_id, "API key revoked");
    Ok(Json(RevokedKey {
        id: key_id,
        revoked_at: timestamp(revoked_at),
    }))
}
