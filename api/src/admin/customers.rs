//! `PUT /customers`: the country a merchant's user's payments are routed by when they
//! name none.

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::ToSchema;

use paygate_common::domain::{Country, MerchantId};

use super::merchants;
use super::{body, Admin};
use crate::http::error::responses::AdminChangeErrors;
use crate::http::error::{ApiError, Result};
use crate::http::format::RawBody;
use crate::AppState;

/// `PUT /customers`'s body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomerRequest {
    /// `mer_…`.
    #[schema(pattern = "^mer_[0-9a-fA-F]{32}$")]
    pub merchant_id: String,
    #[schema(example = "u-1", min_length = 1, max_length = 255)]
    pub user_id: String,
    /// ISO 3166-1 alpha-2.
    #[schema(example = "DE", pattern = "^[A-Z]{2}$")]
    pub country: String,
}

/// `PUT /customers {merchant_id, user_id, country}`: the country a user's payments are
/// routed by when they name none.
#[utoipa::path(
    put,
    path = "/customers",
    summary = "Set a customer's country",
    request_body(content((CustomerRequest = "application/json"))),
    responses(
        (status = 200, description = "Set."),
        AdminChangeErrors,
    )
)]
pub(super) async fn put_customer(
    _: Admin,
    State(state): State<AppState>,
    raw: RawBody,
) -> Result<StatusCode> {
    let request: CustomerRequest = body(&raw)?;
    let merchant = request
        .merchant_id
        .parse::<MerchantId>()
        .map_err(|e| ApiError::invalid("merchant_id", e))?;
    let country: Country = request
        .country
        .parse()
        .map_err(|e| ApiError::invalid("country", e))?;
    let user_id = request.user_id.trim();
    if user_id.is_empty() || user_id.len() > 255 {
        return Err(ApiError::invalid("user_id", "must be 1 to 255 characters"));
    }
    if !merchants::put_customer(&state.pool, &merchant, user_id, &country).await? {
        return Err(ApiError::NotFound("merchant"));
    }
    Ok(StatusCode::OK)
}
