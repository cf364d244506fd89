//! `/admin/v1/merchants/{id}/limits`: the limits an operator sets per merchant and
//! currency — the most one payment may be, and for withdrawals the most one payout and
//! a day's payouts may be — which intake holds every payment to (see
//! [`crate::merchant::payouts`]).

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use utoipa::ToSchema;

use paygate_common::domain::{Currency, Money};

use super::{body, merchant_id, Admin};
use crate::http::error::responses::{AdminChangeErrors, NotFound};
use crate::http::error::{ApiError, Result};
use crate::http::extract::PathParam;
use crate::http::format::RawBody;
use crate::merchant::payouts::{self, PayoutLimits};
use crate::merchant::queries::Page;
use crate::AppState;

/// `PUT /merchants/{id}/limits`'s body: the limits in one currency. A limit left out
/// (or `null`) is no limit; all left out remove the currency's limits.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsRequest {
    /// ISO 4217: the limits hold for payments in this currency.
    #[schema(example = "EUR", pattern = "^[A-Z]{3}$")]
    pub currency: String,
    /// The most one payment, deposit or withdrawal, may be, a decimal string.
    #[schema(example = "10000.00", pattern = r"^[0-9]+(\.[0-9]+)?$")]
    pub max_payment: Option<String>,
    /// The most one withdrawal may pay out, a decimal string.
    #[schema(example = "1000.00", pattern = r"^[0-9]+(\.[0-9]+)?$")]
    pub max_payout: Option<String>,
    /// The most a UTC day's withdrawals may pay out together, a decimal string.
    #[schema(example = "5000.00", pattern = r"^[0-9]+(\.[0-9]+)?$")]
    pub max_daily_payouts: Option<String>,
}

/// `PUT /merchants/{id}/limits {currency, max_payout?, max_daily_payouts?}`.
#[utoipa::path(
    put,
    path = "/merchants/{id}/limits",
    summary = "Set a merchant's payment and payout limits in a currency",
    description = "Payments (deposits and withdrawals) in `currency` over `max_payment`, and \
                   withdrawals over `max_payout`, or that do not fit in what is left \
                   of `max_daily_payouts` today (UTC), are refused at intake with `422 \
                   limit_exceeded` (field `amount`) and nothing is stored; racing withdrawals are \
                   held to the limit exactly. A failed withdrawal keeps counting for its day. A \
                   limit left out is no limit; all left out remove the currency's limits. Takes \
                   effect for the next payment.",
    params(("id" = String, Path, description = "The merchant, `mer_…`.")),
    request_body(content((LimitsRequest = "application/json"))),
    responses(
        (status = 200, description = "Set; the currency's limits as they are now.", body = PayoutLimits),
        AdminChangeErrors,
    )
)]
pub(super) async fn set_limits(
    _: Admin,
    State(state): State<AppState>,
    PathParam(id): PathParam<String>,
    raw: RawBody,
) -> Result<Json<PayoutLimits>> {
    let id = merchant_id(&id)?;
    let request: LimitsRequest = body(&raw)?;
    let currency: Currency = request
        .currency
        .parse()
        .map_err(|e| ApiError::invalid("currency", e))?;
    let amount = |field: &str, value: Option<&str>| {
        value
            .map(|v| Money::parse(v, currency).map(|m| m.amount()))
            .transpose()
            .map_err(|e| ApiError::invalid(field, e))
    };
    let max_payment = amount("max_payment", request.max_payment.as_deref())?;
    let max_payout = amount("max_payout", request.max_payout.as_deref())?;
    let max_daily = amount("max_daily_payouts", request.max_daily_payouts.as_deref())?;
    let limits = payouts::set(
        &state.pool,
        &id,
        currency,
        payouts::Limits {
            max_payment,
            max_payout,
            max_daily,
        },
    )
    .await?
    .ok_or(ApiError::NotFound("merchant"))?;
    tracing::info!(merchant_id = %id, currency = currency.code(), ?max_payment, ?max_payout, ?max_daily, "limits set");
    Ok(Json(limits))
}

/// `GET /merchants/{id}/limits`.
#[utoipa::path(
    get,
    path = "/merchants/{id}/limits",
    summary = "A merchant's payout limits",
    params(("id" = String, Path, description = "The merchant, `mer_…`.")),
    responses(
        (status = 200, description = "By currency, with what today's withdrawals add up to.", body = Page<PayoutLimits>),
        (status = 404, response = NotFound),
    )
)]
pub(super) async fn limits(
    _: Admin,
    State(state): State<AppState>,
    PathParam(id): PathParam<String>,
) -> Result<Json<Page<PayoutLimits>>> {
    let id = merchant_id(&id)?;
    let known: Option<i32> = sqlx::query_scalar("SELECT 1 FROM merchant WHERE id = $1")
        .bind(id.as_str())
        .fetch_optional(&state.pool)
        .await?;
    if known.is_none() {
        return Err(ApiError::NotFound("merchant"));
    }
    Ok(Json(Page::whole(
        payouts::of_merchant(&state.pool, &id).await?,
    )))
}
