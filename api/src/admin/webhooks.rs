//! Where a merchant's webhooks go, how that endpoint is doing, and the secret they are
//! signed with (its Ed25519 key is [`super::webhook_keys`]'s).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use paygate_common::events::timestamp;

use super::merchants;
use super::{body, check_webhook_url, merchant_id, Admin};
use crate::http::error::responses::{AdminChangeErrors, NotFound};
use crate::http::error::{ApiError, Result};
use crate::http::extract::PathParam;
use crate::http::format::RawBody;
use crate::AppState;

/// `PUT /merchants/{id}/webhook`'s body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookRequest {
    /// An absolute http(s) URL; `null`: no webhooks.
    #[schema(example = "https://merchant.example/webhooks", format = "uri")]
    pub webhook_url: Option<String>,
}

/// `PUT /merchants/{id}/webhook {webhook_url}` (null: no webhooks).
#[utoipa::path(
    put,
    path = "/merchants/{id}/webhook",
    summary = "Point a merchant's webhooks",
    params(("id" = String, Path, description = "The merchant, `mer_…`.")),
    request_body(content((WebhookRequest = "application/json"))),
    responses(
        (status = 200, description = "Set."),
        AdminChangeErrors,
    )
)]
pub(super) async fn set_webhook(
    _: Admin,
    State(state): State<AppState>,
    PathParam(id): PathParam<String>,
    raw: RawBody,
) -> Result<StatusCode> {
    let id = merchant_id(&id)?;
    let request: WebhookRequest = body(&raw)?;
    if let Some(url) = &request.webhook_url {
        check_webhook_url(&state, url).await?;
    }
    if !merchants::set_webhook_url(&state.pool, &id, request.webhook_url.as_deref())
        .await
        .map_err(ApiError::Internal)?
    {
        return Err(ApiError::NotFound("merchant"));
    }
    Ok(StatusCode::OK)
}

/// `GET /merchants/{id}/webhook`: where the merchant's webhooks go and how that endpoint
/// is doing — enabled, failing, or disabled with its reason and next probe.
#[utoipa::path(
    get,
    path = "/merchants/{id}/webhook",
    summary = "A merchant's webhook endpoint and its health",
    params(("id" = String, Path, description = "The merchant, `mer_…`.")),
    responses(
        (status = 200, description = "The endpoint.", body = merchants::WebhookEndpoint),
        (status = 404, response = NotFound),
    )
)]
pub(super) async fn webhook_endpoint(
    _: Admin,
    State(state): State<AppState>,
    PathParam(id): PathParam<String>,
) -> Result<Json<merchants::WebhookEndpoint>> {
    let id = merchant_id(&id)?;
    merchants::webhook_endpoint(&state.pool, &id)
        .await?
        .map(Json)
        .ok_or(ApiError::NotFound("merchant"))
}

/// A new webhook signing secret, shown this once.
#[derive(Serialize, ToSchema)]
pub struct RotatedWebhookSecret {
    #[schema(example = "whsec_…")]
    pub webhook_secret: String,
    /// Until then (RFC 3339) every webhook carries a second `v1,` signature made with
    /// the previous secret, so receivers can switch at their own pace.
    pub previous_secret_expires_at: String,
}

/// `POST /merchants/{id}/webhook-secret`: rotates the signing secret; the previous one
/// keeps signing beside it for `callback_dispatcher.secret_rotation_overlap_ms`.
#[utoipa::path(
    post,
    path = "/merchants/{id}/webhook-secret",
    summary = "Rotate a merchant's webhook signing secret",
    params(("id" = String, Path, description = "The merchant, `mer_…`.")),
    responses(
        (status = 201, description = "A new secret; the previous one signs too until `previous_secret_expires_at`.", body = RotatedWebhookSecret),
        (status = 404, response = NotFound),
    )
)]
pub(super) async fn rotate_webhook_secret(
    _: Admin,
    State(state): State<AppState>,
    PathParam(id): PathParam<String>,
) -> Result<(StatusCode, Json<RotatedWebhookSecret>)> {
    let id = merchant_id(&id)?;
    let overlap = std::time::Duration::from_millis(
        state
            .settings
            .callback_dispatcher
            .secret_rotation_overlap_ms,
    );
    let (webhook_secret, until) =
        merchants::rotate_webhook_secret(&state.pool, &state.secrets, &id, overlap)
            .await
            .map_err(ApiError::Internal)?
            .ok_or(ApiError::NotFound("merchant"))?;
    tracing::info!(merchant_id = %id, "webhook secret rotated");
    Ok((
        StatusCode::CREATED,
        Json(RotatedWebhookSecret {
            webhook_secret,
            previous_secret_expires_at: timestamp(until),
        }),
    ))
}
