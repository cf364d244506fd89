//! `POST /merchants`: a new merchant and its credentials, made by the same function
//! the demo seed calls ([`super::merchants::create`]).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use utoipa::ToSchema;

use super::merchants::{self, NewMerchant};
use super::{body, check_webhook_url, Admin};
use crate::http::error::responses::{
    BadRequest, PayloadTooLarge, UnprocessableEntity, UnsupportedMediaType,
};
use crate::http::error::{ApiError, Result};
use crate::http::format::RawBody;
use crate::AppState;

/// `POST /merchants`'s body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewMerchantRequest {
    #[schema(example = "Acme Ltd", min_length = 1, max_length = 255)]
    pub name: String,
    /// An absolute http(s) URL; absent: no webhooks.
    #[schema(example = "https://merchant.example/webhooks", format = "uri")]
    pub webhook_url: Option<String>,
}

/// `POST /merchants` → 201 `{id, api_key, webhook_secret}`; the key is shown this once.
#[utoipa::path(
    post,
    path = "/merchants",
    summary = "Create a merchant",
    request_body(content((NewMerchantRequest = "application/json"))),
    responses(
        (status = 201, description = "Created. The API key is shown this once; only its hash is kept.", body = NewMerchant),
        (status = 400, response = BadRequest),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = UnprocessableEntity),
    )
)]
pub(super) async fn create_merchant(
    _: Admin,
    State(state): State<AppState>,
    raw: RawBody,
) -> Result<(StatusCode, Json<NewMerchant>)> {
    let request: NewMerchantRequest = body(&raw)?;
    let name = request.name.trim();
    if name.is_empty() || name.len() > 255 {
        return Err(ApiError::invalid("name", "must be 1 to 255 characters"));
    }
    if let Some(url) = &request.webhook_url {
        check_webhook_url(&state, url).await?;
    }
    let merchant = merchants::create(
        &state.pool,
        &state.secrets,
        name,
        request.webhook_url.as_deref(),
        None,
    )
    .await
    .map_err(ApiError::Internal)?;
    tracing::info!(merchant_id = %merchant.id, "merchant created");
    Ok((StatusCode::CREATED, Json(merchant)))
}
