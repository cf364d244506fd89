//! `POST /v1/transactions/{id}/refunds`, `GET /v1/transactions/{id}/refunds` and
//! `GET /v1/refunds/{id}`.
//!
//! A refund request is parsed at the edge (JSON, or XML under `<refund>`), its amount in
//! the payment's currency; then one database transaction holds its amount on the
//! payment and writes the `pending` refund, its first event (the outbox row the relay
//! publishes to the payment-processor) and, with an `Idempotency-Key`, the answer to
//! replay. Whether it fits is the database's word (see `paygate_common::refunds`), so
//! racing refunds can never add up to more than was charged; a refused one writes
//! nothing.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use utoipa::ToSchema;

use paygate_common::domain::{Currency, Money, RefundId, TransactionId};
use paygate_common::events::RefundView;
use paygate_common::refunds::{self, NewRefund, RefundError, RefundRecord};
use paygate_common::transactions;

use crate::http::error::responses::{
    BadRequest, Conflict, NotFound, PayloadTooLarge, ServiceUnavailable, TooManyRequests,
    Unauthorized, UnprocessableEntity, UnsupportedMediaType,
};
use crate::http::error::{ApiError, Result};
use crate::http::extract::{Merchant, PathParam};
use crate::http::format::{Format, RawBody};
use crate::merchant::idempotency::IdempotencyKeyHeader;
use crate::merchant::payments::{accept, parse_metadata};
use crate::merchant::queries::Page;
use crate::AppState;

/// The body of a refund (JSON, or XML under `<refund>` with the same names). Unknown
/// fields are refused.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(xml(name = "refund"))]
pub struct RefundRequest {
    /// A decimal string in the payment's currency, more than zero and no more than is
    /// left to refund; absent: all that is left.
    #[schema(example = "10.00", pattern = r"^[0-9]+(\.[0-9]+)?$")]
    pub amount: Option<String>,
    /// Why, in the merchant's words; shown back, never read.
    #[schema(example = "returned goods", max_length = 255)]
    pub reason: Option<String>,
    /// The merchant's own key/value pairs, with the rules of a payment's.
    #[schema(example = json!({"rma": "R-3"}))]
    pub metadata: Option<BTreeMap<String, String>>,
}

const MAX_REASON: usize = 255;

#[utoipa::path(
    post,
    path = "/v1/transactions/{id}/refunds",
    tag = "refunds",
    summary = "Refund a payment",
    description = "Refunds a completed deposit, in part or (without `amount`) all that is left, \
                   through the gateway that charged it. Answers 202 with the `pending` refund; \
                   how it ends follows by `refund.*` webhooks. The refunds of a payment that are \
                   not `failed` never add up to more than its amount, however many race: one \
                   that would is refused with 422 `refund_exceeds_amount`; refunding anything but \
                   a completed deposit is 422 `not_refundable`. JSON, or XML with the root `<refund>`.",
    security(("merchant_key" = [])),
    params(
        ("id" = String, Path, pattern = "^txn_[0-9a-fA-F]{32}$", description = "The payment, `txn_…`; another merchant's is 404."),
        IdempotencyKeyHeader,
    ),
    request_body(content(
        (RefundRequest = "application/json", example = json!({"amount": "10.00", "reason": "returned goods", "metadata": {"rma": "R-3"}})),
        (RefundRequest = "application/xml", example = json!("<refund><amount>10.00</amount><reason>returned goods</reason></refund>")),
    )),
    responses(
        (status = 202, description = "Accepted: the refund is stored `pending`; how it ends follows by webhook.",
         headers(("Location" = String, description = "`/v1/refunds/{id}` of the new refund.")),
         content((RefundView = "application/json"), (RefundView = "application/xml"))),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = UnprocessableEntity),
        (status = 429, response = TooManyRequests),
        (status = 503, response = ServiceUnavailable),
    )
)]
pub async fn create_refund(
    State(state): State<AppState>,
    merchant: Merchant,
    headers: HeaderMap,
    PathParam(id): PathParam<String>,
    body: RawBody,
) -> Result<Response> {
    let request = body.format.parse::<RefundRequest>(&body.bytes, "refund")?;
    let payment = owned_payment(&state, &merchant, &id).await?;
    let currency: Currency = payment
        .currency
        .trim()
        .parse()
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("stored currency: {e}")))?;
    let amount = request
        .amount
        .map(|a| Money::parse(&a, currency).map(|m| m.amount()))
        .transpose()
        .map_err(|e| ApiError::invalid("amount", e))?;
    if request
        .reason
        .as_ref()
        .is_some_and(|r| r.len() > MAX_REASON)
    {
        return Err(ApiError::invalid(
            "reason",
            format!("must be at most {MAX_REASON} characters"),
        ));
    }
    let new = NewRefund {
        merchant_id: merchant.id.clone(),
        transaction_id: payment.id.clone(),
        amount,
        reason: request.reason,
        metadata: parse_metadata(request.metadata)?,
    };
    let route = format!("/v1/transactions/{}/refunds", payment.id);
    accept(&state, &merchant, &headers, &route, &body.bytes, "refund", move |tx| {
        Box::pin(async move {
            let (refund, _) = refunds::create(tx, new).await.map_err(refused)?;
            tracing::info!(refund_id = %refund.id, transaction_id = %refund.transaction_id, amount = %refund.amount, "refund accepted");
            Ok::<_, ApiError>((view(&refund), format!("/v1/refunds/{}", refund.id)))
        })
    })
    .await
}

/// A refusal, typed for clients to branch on; nothing was written.
fn refused(error: RefundError) -> ApiError {
    match error {
        RefundError::NoPayment => ApiError::NotFound("transaction"),
        RefundError::NotRefundable(message) => ApiError::refused("not_refundable", None, message),
        error @ RefundError::ExceedsAmount { .. } => {
            ApiError::refused("refund_exceeds_amount", Some("amount"), error)
        }
        RefundError::Database(error) => error.into(),
    }
}

#[utoipa::path(
    get,
    path = "/v1/transactions/{id}/refunds",
    tag = "refunds",
    summary = "List a payment's refunds",
    description = "Oldest first, all of them.",
    security(("merchant_key" = [])),
    params(("id" = String, Path, pattern = "^txn_[0-9a-fA-F]{32}$", description = "The payment, `txn_…`; another merchant's is 404.")),
    responses(
        (status = 200, description = "The payment's refunds.", content(
            (Page<RefundView> = "application/json"),
            (Page<RefundView> = "application/xml"),
        )),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 429, response = TooManyRequests),
        (status = 503, response = ServiceUnavailable),
    )
)]
pub async fn list_refunds(
    State(state): State<AppState>,
    merchant: Merchant,
    headers: HeaderMap,
    PathParam(id): PathParam<String>,
) -> Result<Response> {
    let payment = owned_payment(&state, &merchant, &id).await?;
    let data: Vec<RefundView> = refunds::of_transaction(&state.pool, &payment.id)
        .await?
        .iter()
        .map(view)
        .collect();
    Ok(Format::wanted(&headers).render(StatusCode::OK, "refunds", &Page::whole(data)))
}

#[utoipa::path(
    get,
    path = "/v1/refunds/{id}",
    tag = "refunds",
    summary = "Get a refund",
    security(("merchant_key" = [])),
    params(("id" = String, Path, pattern = "^rfd_[0-9a-fA-F]{32}$", description = "`rfd_…`; another merchant's is 404.")),
    responses(
        (status = 200, description = "The refund.", content(
            (RefundView = "application/json"),
            (RefundView = "application/xml"),
        )),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 429, response = TooManyRequests),
        (status = 503, response = ServiceUnavailable),
    )
)]
pub async fn get_refund(
    State(state): State<AppState>,
    merchant: Merchant,
    headers: HeaderMap,
    PathParam(id): PathParam<String>,
) -> Result<Response> {
    let not_found = ApiError::NotFound("refund");
    let Ok(id) = id.parse::<RefundId>() else {
        return Err(not_found);
    };
    match refunds::find(&state.pool, &id).await? {
        Some(refund) if refund.merchant_id == merchant.id => {
            Ok(Format::wanted(&headers).render(StatusCode::OK, "refund", &view(&refund)))
        }
        _ => Err(not_found),
    }
}

/// The payment `id` if it is the merchant's; 404 otherwise.
async fn owned_payment(
    state: &AppState,
    merchant: &Merchant,
    id: &str,
) -> Result<transactions::TransactionRecord> {
    let not_found = ApiError::NotFound("transaction");
    let Ok(id) = id.parse::<TransactionId>() else {
        return Err(not_found);
    };
    transactions::find(&state.pool, &id)
        .await?
        .filter(|p| p.merchant_id == merchant.id)
        .ok_or(not_found)
}

pub(crate) fn view(refund: &RefundRecord) -> RefundView {
    RefundView::from(&refund.to_proto())
}
