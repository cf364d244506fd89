//! What a merchant can read: its transactions (newest first, cursor-paginated), one
//! transaction's history, and its webhook deliveries with every attempt, plus a manual
//! re-send of a delivery. Every read is scoped to the calling merchant: another
//! merchant's id is 404, and no list shows another merchant's rows.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use paygate_common::domain::{Kind, Status, TransactionId};
use paygate_common::events::{timestamp, TransactionView};
use paygate_common::transactions::{self, TransactionRecord};

use crate::error::{ApiError, Result};
use crate::extract::Merchant;
use crate::format::Format;
use crate::AppState;

/// A page of a list: `{"data": [...], "has_more": …}`; `starting_after` takes the last
/// id seen.
#[derive(Debug, Serialize)]
pub struct Page<T> {
    pub data: Vec<T>,
    pub has_more: bool,
}

/// Filters and the cursor of `GET /v1/transactions`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransactionFilter {
    pub status: Option<String>,
    pub kind: Option<String>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
    pub limit: Option<i64>,
    pub starting_after: Option<String>,
}

const DEFAULT_LIMIT: i64 = 20;
const MAX_LIMIT: i64 = 100;

/// `GET /v1/transactions`: one range scan of `transaction_merchant_newest`, never an
/// OFFSET or a count.
pub async fn list_transactions(
    State(state): State<AppState>,
    merchant: Merchant,
    headers: HeaderMap,
    query: std::result::Result<Query<TransactionFilter>, axum::extract::rejection::QueryRejection>,
) -> Result<Response> {
    let Query(filter) = query.map_err(|e| ApiError::Invalid {
        message: e.body_text(),
        field: None,
    })?;
    let limit = filter.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::invalid(
            "limit",
            format!("must be 1 to {MAX_LIMIT}"),
        ));
    }
    let status = filter
        .status
        .map(|s| s.parse::<Status>())
        .transpose()
        .map_err(|e| ApiError::invalid("status", e))?;
    let kind = filter
        .kind
        .map(|k| k.parse::<Kind>())
        .transpose()
        .map_err(|e| ApiError::invalid("kind", e))?;
    let cursor = match filter.starting_after {
        None => None,
        Some(id) => {
            let record = owned(&state, &merchant, &id)
                .await
                .map_err(|_| ApiError::invalid("starting_after", "no such transaction"))?;
            Some((record.created_at, record.id.to_string()))
        }
    };
    let rows: Vec<TransactionRecord> = transactions::page(
        &state.pool,
        &transactions::PageQuery {
            merchant: &merchant.id,
            status,
            kind,
            created_after: filter.created_after,
            created_before: filter.created_before,
            before: cursor,
            limit: limit + 1,
        },
    )
    .await?;
    let has_more = rows.len() > usize::try_from(limit).unwrap_or(usize::MAX);
    let data: Vec<TransactionView> = rows
        .iter()
        .take(usize::try_from(limit).unwrap_or(usize::MAX))
        .map(|r| TransactionView::from(&r.to_proto()))
        .collect();
    Ok(Format::wanted(&headers).render(StatusCode::OK, "transactions", &Page { data, has_more }))
}

/// One entry of a transaction's history.
#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct EventView {
    pub id: String,
    pub version: i32,
    #[serde(rename = "type")]
    #[sqlx(rename = "event_type")]
    pub kind: String,
    pub status: Option<String>,
    #[serde(serialize_with = "rfc3339")]
    pub created_at: DateTime<Utc>,
}

fn rfc3339<S: serde::Serializer>(at: &DateTime<Utc>, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&timestamp(*at))
}

/// `GET /v1/transactions/{id}/events`: every versioned change, from version 1, in order.
pub async fn transaction_events(
    State(state): State<AppState>,
    merchant: Merchant,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response> {
    let record = owned(&state, &merchant, &id).await?;
    let data: Vec<EventView> = sqlx::query_as(
        "SELECT id, version, event_type, status, created_at FROM transaction_event
          WHERE transaction_id = $1 AND version IS NOT NULL
          ORDER BY version",
    )
    .bind(record.id.as_str())
    .fetch_all(&state.pool)
    .await?;
    Ok(Format::wanted(&headers).render(
        StatusCode::OK,
        "events",
        &Page {
            data,
            has_more: false,
        },
    ))
}

/// The transaction `id` if it is the merchant's; 404 otherwise (another merchant's
/// transaction does not exist, as far as this one can tell).
async fn owned(state: &AppState, merchant: &Merchant, id: &str) -> Result<TransactionRecord> {
    let not_found = ApiError::NotFound("transaction");
    let Ok(id) = id.parse::<TransactionId>() else {
        return Err(not_found);
    };
    match transactions::find(&state.pool, &id).await? {
        Some(record) if record.merchant_id == merchant.id => Ok(record),
        _ => Err(not_found),
    }
}

/// A webhook delivery and its attempts.
#[derive(Debug, Serialize)]
pub struct DeliveryView {
    pub id: String,
    pub event_id: String,
    pub transaction_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub version: i32,
    pub status: String,
    pub attempts: Vec<AttemptView>,
    pub next_attempt_at: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct AttemptView {
    pub attempted_at: String,
    pub status_code: Option<i32>,
    pub error: Option<String>,
    pub duration_ms: i32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryFilter {
    pub transaction_id: String,
}

type DeliveryRow = (
    String,
    String,
    String,
    String,
    i32,
    String,
    Option<DateTime<Utc>>,
);
type AttemptRow = (String, DateTime<Utc>, Option<i32>, Option<String>, i32);

/// `GET /v1/webhook-deliveries?transaction_id=`: the deliveries of one transaction,
/// oldest first, each with every attempt.
pub async fn list_deliveries(
    State(state): State<AppState>,
    merchant: Merchant,
    headers: HeaderMap,
    query: std::result::Result<Query<DeliveryFilter>, axum::extract::rejection::QueryRejection>,
) -> Result<Response> {
    let Query(filter) = query.map_err(|_| ApiError::invalid("transaction_id", "is required"))?;
    let record = owned(&state, &merchant, &filter.transaction_id).await?;
    let deliveries: Vec<DeliveryRow> = sqlx::query_as(
        "SELECT id, event_id, transaction_id, event_type, version, status, next_attempt_at
           FROM webhook_delivery WHERE transaction_id = $1 AND merchant_id = $2
          ORDER BY version, created_at",
    )
    .bind(record.id.as_str())
    .bind(merchant.id.as_str())
    .fetch_all(&state.pool)
    .await?;
    let ids: Vec<&str> = deliveries.iter().map(|d| d.0.as_str()).collect();
    let attempts: Vec<AttemptRow> = sqlx::query_as(
        "SELECT delivery_id, attempted_at, status_code, error, duration_ms
           FROM webhook_attempt WHERE delivery_id = ANY($1) ORDER BY attempted_at, id",
    )
    .bind(&ids)
    .fetch_all(&state.pool)
    .await?;
    let data: Vec<DeliveryView> = deliveries
        .into_iter()
        .map(
            |(id, event_id, transaction_id, kind, version, status, next)| DeliveryView {
                attempts: attempts
                    .iter()
                    .filter(|a| a.0 == id)
                    .map(|(_, at, status_code, error, duration_ms)| AttemptView {
                        attempted_at: timestamp(*at),
                        status_code: *status_code,
                        error: error.clone(),
                        duration_ms: *duration_ms,
                    })
                    .collect(),
                id,
                event_id,
                transaction_id,
                kind,
                version,
                status,
                next_attempt_at: next.map(timestamp),
            },
        )
        .collect();
    Ok(Format::wanted(&headers).render(
        StatusCode::OK,
        "webhook_deliveries",
        &Page {
            data,
            has_more: false,
        },
    ))
}

/// `POST /v1/webhook-deliveries/{id}/replay`: sends a delivered or failed delivery
/// again, as it was (the same `webhook-id` and body), as soon as the dispatcher can.
pub async fn replay_delivery(
    State(state): State<AppState>,
    merchant: Merchant,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    let replayed = sqlx::query(
        "UPDATE webhook_delivery SET status = 'pending', next_attempt_at = now(), updated_at = now()
          WHERE id = $1 AND merchant_id = $2",
    )
    .bind(&id)
    .bind(merchant.id.as_str())
    .execute(&state.pool)
    .await?;
    if replayed.rows_affected() == 0 {
        return Err(ApiError::NotFound("webhook delivery"));
    }
    tracing::info!(delivery_id = %id, merchant_id = %merchant.id, "webhook delivery replayed");
    Ok(StatusCode::ACCEPTED)
}
