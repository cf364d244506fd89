//! `POST /v1/deposits`, `POST /v1/withdrawals` and `GET /v1/transactions/{id}`.
//!
//! Intake is one database transaction: the `pending` transaction and its first event
//! (the outbox row the relay publishes to `paygate.payments.requested`). Once it commits
//! the payment cannot be lost; until it commits nothing happened.

use axum::extract::{Path, State};
use axum::http::header::LOCATION;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use paygate_common::domain::{Country, Currency, Kind, Money, TransactionId};
use paygate_common::events::TransactionView;
use paygate_common::transactions::{self, NewTransaction, TransactionRecord};

use crate::error::{ApiError, Result};
use crate::extract::{JsonBody, Merchant};
use crate::AppState;

/// The body of a deposit or withdrawal, as the merchant sends it. Unknown fields are
/// refused, not ignored: a misspelt `referense` must not silently vanish.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentRequest {
    pub user_id: String,
    /// A decimal string such as "100.50"; numbers are refused (floats lose cents).
    pub amount: String,
    pub currency: String,
    pub country: Option<String>,
    pub reference: Option<String>,
}

const MAX_TEXT: usize = 255;

impl PaymentRequest {
    /// Parses the request into domain types, naming the field at fault.
    fn parse(self, merchant: &Merchant, kind: Kind) -> Result<NewTransaction> {
        let user_id = self.user_id.trim().to_owned();
        if user_id.is_empty() || user_id.len() > MAX_TEXT {
            return Err(ApiError::invalid(
                "user_id",
                format!("must be 1 to {MAX_TEXT} characters"),
            ));
        }
        let currency: Currency = self
            .currency
            .parse()
            .map_err(|e| ApiError::invalid("currency", e))?;
        let money =
            Money::parse(&self.amount, currency).map_err(|e| ApiError::invalid("amount", e))?;
        let country = self
            .country
            .map(|c| c.parse::<Country>())
            .transpose()
            .map_err(|e| ApiError::invalid("country", e))?;
        if self.reference.as_ref().is_some_and(|r| r.len() > MAX_TEXT) {
            return Err(ApiError::invalid(
                "reference",
                format!("must be at most {MAX_TEXT} characters"),
            ));
        }
        Ok(NewTransaction {
            card: None,
            merchant_id: merchant.id.clone(),
            kind,
            money,
            user_id,
            country,
            reference: self.reference,
        })
    }
}

pub async fn create_deposit(
    State(state): State<AppState>,
    merchant: Merchant,
    JsonBody(request): JsonBody<PaymentRequest>,
) -> Result<Response> {
    create(state, merchant, request, Kind::Deposit).await
}

pub async fn create_withdrawal(
    State(state): State<AppState>,
    merchant: Merchant,
    JsonBody(request): JsonBody<PaymentRequest>,
) -> Result<Response> {
    create(state, merchant, request, Kind::Withdrawal).await
}

async fn create(
    state: AppState,
    merchant: Merchant,
    request: PaymentRequest,
    kind: Kind,
) -> Result<Response> {
    let mut new = request.parse(&merchant, kind)?;
    let mut tx = state.pool.begin().await?;
    if new.country.is_none() {
        new.country = customer_country(&mut tx, &merchant, &new.user_id).await?;
    }
    let record = transactions::create(&mut tx, new).await?;
    tx.commit().await?;
    tracing::info!(transaction_id = %record.id, merchant_id = %merchant.id, %kind, "payment accepted");
    let location = format!("/v1/transactions/{}", record.id);
    Ok((
        StatusCode::ACCEPTED,
        [(LOCATION, location)],
        Json(view(&record)),
    )
        .into_response())
}

/// The country on record for the merchant's user, if any.
async fn customer_country(
    conn: &mut sqlx::PgConnection,
    merchant: &Merchant,
    user_id: &str,
) -> Result<Option<Country>> {
    let stored: Option<String> =
        sqlx::query_scalar("SELECT country FROM customer WHERE merchant_id = $1 AND user_id = $2")
            .bind(merchant.id.as_str())
            .bind(user_id)
            .fetch_optional(conn)
            .await?;
    Ok(stored.and_then(|c| c.parse().ok()))
}

pub async fn get_transaction(
    State(state): State<AppState>,
    merchant: Merchant,
    Path(id): Path<String>,
) -> Result<Json<TransactionView>> {
    let not_found = ApiError::NotFound("transaction");
    let Ok(id) = id.parse::<TransactionId>() else {
        return Err(not_found);
    };
    match transactions::find(&state.pool, &id).await? {
        // Another merchant's transaction does not exist, as far as this one can tell.
        Some(record) if record.merchant_id == merchant.id => Ok(Json(view(&record))),
        _ => Err(not_found),
    }
}

fn view(record: &TransactionRecord) -> TransactionView {
    TransactionView::from(&record.to_proto())
}
