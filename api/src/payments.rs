//! `POST /v1/deposits`, `POST /v1/withdrawals`, the original `POST /deposit` and
//! `POST /withdrawal`, and `GET /v1/transactions/{id}`.
//!
//! A request is parsed into domain types at the edge (JSON or XML), then intake is one
//! database transaction: the `pending` transaction, its first event (the outbox row the
//! relay publishes to `paygate.payments.requested`) and, with an `Idempotency-Key`, the
//! response to replay. Once it commits the payment cannot be lost; until it commits
//! nothing happened. A card is sealed before it reaches the database, its CVV is kept
//! only sealed in Redis for the acquirer, and every answer shows the card masked.

use axum::extract::{Path, State};
use axum::http::header::{CONTENT_TYPE, LOCATION};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use secrecy::SecretString;
use serde::Deserialize;

use paygate_common::domain::{Country, Currency, Kind, Money, TransactionId};
use paygate_common::events::TransactionView;
use paygate_common::transactions::{self, NewTransaction, TransactionRecord};

use crate::error::{ApiError, Result};
use crate::extract::{parse_json, Merchant};
use crate::format::{Format, RawBody};
use crate::idempotency::{self, Claim};
use crate::AppState;

/// The body of a deposit or withdrawal, as the merchant sends it (JSON, or XML under
/// `<deposit>`/`<withdrawal>` with the same names). Unknown fields are refused, not
/// ignored: a misspelt `referense` must not silently vanish.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentRequest {
    pub user_id: String,
    /// A decimal string such as "100.50"; numbers are refused (floats lose cents).
    pub amount: String,
    pub currency: String,
    pub country: Option<String>,
    pub reference: Option<String>,
    pub payment_method: Option<PaymentMethodRequest>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentMethodRequest {
    #[serde(rename = "type")]
    pub kind: String,
    pub card: Option<CardRequest>,
}

/// A card as sent. Its `Debug` never shows the number or the CVV.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CardRequest {
    pub number: SecretString,
    pub expiry_month: u32,
    pub expiry_year: u32,
    pub cvv: Option<SecretString>,
    pub holder_name: Option<String>,
}

impl std::fmt::Debug for CardRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CardRequest")
            .field("expiry_month", &self.expiry_month)
            .field("expiry_year", &self.expiry_year)
            .finish_non_exhaustive()
    }
}

/// The first take-home's shape, for `POST /deposit` and `POST /withdrawal`: a numeric
/// `user_id`, a string amount.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LegacyRequest {
    pub user_id: u64,
    pub amount: String,
    pub currency: String,
    pub country: Option<String>,
    pub reference: Option<String>,
}

impl From<LegacyRequest> for PaymentRequest {
    fn from(legacy: LegacyRequest) -> Self {
        PaymentRequest {
            user_id: legacy.user_id.to_string(),
            amount: legacy.amount,
            currency: legacy.currency,
            country: legacy.country,
            reference: legacy.reference,
            payment_method: None,
        }
    }
}

const MAX_TEXT: usize = 255;

/// A request parsed into domain types: the transaction to create and the CVV to keep.
struct Parsed {
    new: NewTransaction,
    cvv: Option<SecretString>,
}

impl PaymentRequest {
    /// Parses the request into domain types, naming the field at fault.
    fn parse(self, state: &AppState, merchant: &Merchant, kind: Kind) -> Result<Parsed> {
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
        let (card, cvv) = match self.payment_method {
            None => (None, None),
            Some(method) => {
                let card = crate::cards::check(method)?;
                let cvv = card.cvv.clone();
                let sealed = state.cards.seal(&card).map_err(ApiError::Internal)?;
                (Some(sealed), cvv)
            }
        };
        Ok(Parsed {
            new: NewTransaction {
                merchant_id: merchant.id.clone(),
                kind,
                money,
                user_id,
                country,
                reference: self.reference,
                card,
            },
            cvv,
        })
    }
}

pub async fn create_deposit(
    State(state): State<AppState>,
    merchant: Merchant,
    headers: HeaderMap,
    body: RawBody,
) -> Result<Response> {
    let request = body
        .format
        .parse::<PaymentRequest>(&body.bytes, "deposit")?;
    create(
        state,
        merchant,
        &headers,
        "/v1/deposits",
        &body.bytes,
        request,
        Kind::Deposit,
    )
    .await
}

pub async fn create_withdrawal(
    State(state): State<AppState>,
    merchant: Merchant,
    headers: HeaderMap,
    body: RawBody,
) -> Result<Response> {
    let request = body
        .format
        .parse::<PaymentRequest>(&body.bytes, "withdrawal")?;
    create(
        state,
        merchant,
        &headers,
        "/v1/withdrawals",
        &body.bytes,
        request,
        Kind::Withdrawal,
    )
    .await
}

pub async fn create_legacy_deposit(
    State(state): State<AppState>,
    merchant: Merchant,
    headers: HeaderMap,
    body: RawBody,
) -> Result<Response> {
    let request = legacy(&body)?;
    create(
        state,
        merchant,
        &headers,
        "/deposit",
        &body.bytes,
        request,
        Kind::Deposit,
    )
    .await
}

pub async fn create_legacy_withdrawal(
    State(state): State<AppState>,
    merchant: Merchant,
    headers: HeaderMap,
    body: RawBody,
) -> Result<Response> {
    let request = legacy(&body)?;
    create(
        state,
        merchant,
        &headers,
        "/withdrawal",
        &body.bytes,
        request,
        Kind::Withdrawal,
    )
    .await
}

/// The original routes take JSON only.
fn legacy(body: &RawBody) -> Result<PaymentRequest> {
    if body.format != Format::Json {
        return Err(ApiError::UnsupportedMediaType(
            "Content-Type: application/json",
        ));
    }
    Ok(parse_json::<LegacyRequest>(&body.bytes)?.into())
}

async fn create(
    state: AppState,
    merchant: Merchant,
    headers: &HeaderMap,
    route: &str,
    body: &[u8],
    request: PaymentRequest,
    kind: Kind,
) -> Result<Response> {
    let Parsed { mut new, cvv } = request.parse(&state, &merchant, kind)?;
    let key = match idempotency::key_of(headers, &merchant.id, route, body)? {
        None => None,
        Some(key) => match key.claim(&state.pool).await? {
            Claim::Replay(response) => return Ok(response),
            Claim::Fresh(key) => Some(key),
        },
    };
    let format = Format::wanted(headers);
    let result = async {
        let mut tx = state.pool.begin().await?;
        if new.country.is_none() {
            new.country = customer_country(&mut tx, &merchant, &new.user_id).await?;
        }
        let record = transactions::create(&mut tx, new).await?;
        if let Some(cvv) = &cvv {
            // Kept before the commit: a commit that fails leaves it to expire.
            state.cvvs.put(&record.id, cvv).await.map_err(ApiError::Unavailable)?;
        }
        let response = format.render(StatusCode::ACCEPTED, "transaction", &view(&record));
        let (parts, response_body) = response.into_parts();
        let bytes = axum::body::to_bytes(response_body, usize::MAX)
            .await
            .map_err(|e| ApiError::Internal(e.into()))?;
        let location = HeaderValue::from_str(&format!("/v1/transactions/{}", record.id))
            .map_err(|e| ApiError::Internal(e.into()))?;
        let mut kept: Vec<(HeaderName, HeaderValue)> = vec![(LOCATION, location)];
        if let Some(content_type) = parts.headers.get(CONTENT_TYPE) {
            kept.push((CONTENT_TYPE, content_type.clone()));
        }
        if let Some(key) = &key {
            key.complete(&mut tx, parts.status, &kept, &bytes).await?;
        }
        tx.commit().await?;
        tracing::info!(transaction_id = %record.id, merchant_id = %merchant.id, %kind, "payment accepted");
        let mut response = (parts.status, bytes).into_response();
        response.headers_mut().extend(kept);
        Ok::<_, ApiError>(response)
    }
    .await;
    if result.is_err() {
        if let Some(key) = &key {
            key.release(&state.pool).await;
        }
    }
    result
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
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response> {
    let not_found = ApiError::NotFound("transaction");
    let Ok(id) = id.parse::<TransactionId>() else {
        return Err(not_found);
    };
    match transactions::find(&state.pool, &id).await? {
        // Another merchant's transaction does not exist, as far as this one can tell.
        Some(record) if record.merchant_id == merchant.id => {
            Ok(Format::wanted(&headers).render(StatusCode::OK, "transaction", &view(&record)))
        }
        _ => Err(not_found),
    }
}

fn view(record: &TransactionRecord) -> TransactionView {
    TransactionView::from(&record.to_proto())
}
