//! What a merchant can read: its transactions (newest first, cursor-paginated), one
//! transaction's history, and its webhook deliveries with every attempt, plus a manual
//! re-send of a delivery. Every read is scoped to the calling merchant: another
//! merchant's id is 404, and no list shows another merchant's rows.

use axum::extract::{Query, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use paygate_common::domain::{Kind, Status, TransactionId};
use paygate_common::events::{kind_schema, status_schema, timestamp, TransactionView};
use paygate_common::transactions::{self, TransactionRecord};

use crate::http::error::responses::{
    NotFound, ServiceUnavailable, TooManyRequests, Unauthorized, UnprocessableEntity,
};
use crate::http::error::{ApiError, Result};
use crate::http::extract::{Merchant, PathParam};
use crate::http::format::Format;
use crate::AppState;

/// A page of a list: `{"data": [...], "has_more": …}`; `starting_after` takes the last
/// id seen.
#[derive(Debug, Serialize, ToSchema)]
pub struct Page<T> {
    pub data: Vec<T>,
    /// Whether there are more after the last one here.
    pub has_more: bool,
}

impl<T> Page<T> {
    /// A list that is never paginated: everything there is, in one page.
    pub fn whole(data: Vec<T>) -> Self {
        Page {
            data,
            has_more: false,
        }
    }

    /// A page of at most `limit` from `rows` read with `limit + 1`: the extra row, when
    /// there is one, only says that more follow.
    pub fn of_one_extra(mut rows: Vec<T>, limit: i64) -> Self {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let has_more = rows.len() > limit;
        rows.truncate(limit);
        Page {
            data: rows,
            has_more,
        }
    }
}

/// Filters and the cursor of `GET /v1/transactions`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TransactionFilter {
    /// Only transactions in this status.
    #[param(schema_with = status_schema)]
    pub status: Option<String>,
    /// Only deposits or only withdrawals.
    #[param(schema_with = kind_schema)]
    pub kind: Option<String>,
    /// Only those created at or after this instant (RFC 3339).
    pub created_after: Option<DateTime<Utc>>,
    /// Only those created before this instant (RFC 3339).
    pub created_before: Option<DateTime<Utc>>,
    /// How many at most, 1 to 100; 20 when absent.
    #[param(minimum = 1, maximum = 100, example = 20)]
    pub limit: Option<i64>,
    /// The last id of the previous page: the page goes on after it.
    #[param(example = "txn_0198c9b2a4e07c3f9d2a61b5e8f4c0d1")]
    pub starting_after: Option<String>,
}

/// The metadata filter of a list, `metadata[<key>]=<value>` (one pair), taken out of the
/// query string before the rest is read into [`TransactionFilter`], which refuses
/// anything it does not know.
fn split_metadata_filter(query: &str) -> Result<(Option<(String, String)>, String)> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(query).map_err(|e| ApiError::Invalid {
            message: format!("the query string does not read: {e}"),
            field: None,
        })?;
    let mut wanted = None;
    let mut rest = Vec::with_capacity(pairs.len());
    for (name, value) in pairs {
        let Some(key) = name
            .strip_prefix("metadata[")
            .and_then(|k| k.strip_suffix(']'))
        else {
            rest.push((name, value));
            continue;
        };
        if wanted.is_some() {
            return Err(ApiError::invalid(
                "metadata",
                "filter by one metadata key and value at most",
            ));
        }
        if key.is_empty() || key.chars().count() > paygate_common::metadata::MAX_KEY_LEN {
            return Err(ApiError::invalid(
                "metadata",
                "metadata[<key>]: a key of 1 to 40 characters",
            ));
        }
        wanted = Some((key.to_owned(), value));
    }
    let rest = serde_urlencoded::to_string(&rest).map_err(|e| ApiError::Internal(e.into()))?;
    Ok((wanted, rest))
}

const DEFAULT_LIMIT: i64 = 20;
const MAX_LIMIT: i64 = 100;

/// `GET /v1/transactions`: one range scan of `transaction_merchant_newest`, never an
/// OFFSET or a count.
#[utoipa::path(
    get,
    path = "/v1/transactions",
    tag = "transactions",
    summary = "List transactions",
    description = "Newest first, cursor-paginated: pass the last id seen as `starting_after`.",
    security(("merchant_key" = [])),
    params(
        TransactionFilter,
        ("metadata" = Option<std::collections::BTreeMap<String, String>>, Query, style = DeepObject, explode,
         description = "Only those whose metadata holds this key with this value, one pair: `metadata[order]=A-17`."),
    ),
    responses(
        (status = 200, description = "A page of transactions.", content(
            (Page<TransactionView> = "application/json"),
            (Page<TransactionView> = "application/xml"),
        )),
        (status = 401, response = Unauthorized),
        (status = 422, response = UnprocessableEntity),
        (status = 429, response = TooManyRequests),
        (status = 503, response = ServiceUnavailable),
    )
)]
pub async fn list_transactions(
    State(state): State<AppState>,
    merchant: Merchant,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response> {
    let (metadata, rest) = split_metadata_filter(query.as_deref().unwrap_or_default())?;
    let filter: TransactionFilter =
        serde_urlencoded::from_str(&rest).map_err(|e| ApiError::Invalid {
            message: format!("Failed to deserialize query string: {e}"),
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
            merchant: Some(&merchant.id),
            status,
            kind,
            created_after: filter.created_after,
            created_before: filter.created_before,
            metadata: metadata.as_ref().map(|(k, v)| (k.as_str(), v.as_str())),
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
#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
pub struct EventView {
    /// `evt_…`.
    pub id: String,
    /// Counts changes from 1.
    #[schema(minimum = 1)]
    pub version: i32,
    /// `transaction.created`, `transaction.processing`, `transaction.completed`,
    /// `transaction.failed`, `callback.received`, history-only events about gateways
    /// (`gateway.attempted`, …) and operators' actions (`payment.redriven`,
    /// `gateway.released`, `review.resolved`, `event.resent`), …
    #[serde(rename = "type")]
    #[sqlx(rename = "event_type")]
    #[schema(example = "transaction.created")]
    pub kind: String,
    /// The status it moved the transaction to, if it did.
    #[schema(example = "pending")]
    pub status: Option<String>,
    #[serde(serialize_with = "rfc3339")]
    pub created_at: DateTime<Utc>,
    /// Who took the action, on an operator's event (`payment.redriven`,
    /// `gateway.released`, `review.resolved`, `event.resent`): `console: Ada`, `admin
    /// API: Ada`. Absent on the events Paygate writes by itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "admin API: Ada")]
    pub actor: Option<String>,
    /// The refund (`rfd_…`) a `refund.*` event is about; absent on the others.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refund_id: Option<String>,
    /// Why, on an operator's event.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "gateway confirmed it holds nothing for this reference")]
    pub note: Option<String>,
}

fn rfc3339<S: serde::Serializer>(at: &DateTime<Utc>, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&timestamp(*at))
}

/// `GET /v1/transactions/{id}/events`: every versioned change, from version 1, in order.
#[utoipa::path(
    get,
    path = "/v1/transactions/{id}/events",
    tag = "transactions",
    summary = "A transaction's history",
    security(("merchant_key" = [])),
    params(("id" = String, Path, pattern = "^txn_[0-9a-fA-F]{32}$", description = "`txn_…`.")),
    responses(
        (status = 200, description = "Every versioned change, from version 1, in order.", content(
            (Page<EventView> = "application/json"),
            (Page<EventView> = "application/xml"),
        )),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 429, response = TooManyRequests),
        (status = 503, response = ServiceUnavailable),
    )
)]
pub async fn transaction_events(
    State(state): State<AppState>,
    merchant: Merchant,
    headers: HeaderMap,
    PathParam(id): PathParam<String>,
) -> Result<Response> {
    let record = owned(&state, &merchant, &id).await?;
    let data: Vec<EventView> = sqlx::query_as(
        "SELECT id, version, event_type, status, created_at, actor, note, refund_id FROM transaction_event
          WHERE transaction_id = $1 AND version IS NOT NULL
          ORDER BY version",
    )
    .bind(record.id.as_str())
    .fetch_all(&state.pool)
    .await?;
    Ok(Format::wanted(&headers).render(StatusCode::OK, "events", &Page::whole(data)))
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
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryView {
    pub id: String,
    /// `evt_…`, also the `webhook-id` header of every attempt.
    pub event_id: String,
    pub transaction_id: String,
    /// The merchant's endpoint it goes to (`whe_…`); `null` for the payment's own
    /// `notification_url`.
    pub endpoint_id: Option<String>,
    /// Where it goes.
    pub url: String,
    #[serde(rename = "type")]
    #[schema(example = "transaction.completed")]
    pub kind: String,
    pub version: i32,
    /// `pending`, `delivered` or `failed`.
    #[schema(example = "delivered")]
    pub status: String,
    pub attempts: Vec<AttemptView>,
    /// RFC 3339, while pending.
    pub next_attempt_at: Option<String>,
}

/// One try at delivering a webhook.
#[derive(Debug, Serialize, ToSchema)]
pub struct AttemptView {
    /// RFC 3339.
    pub attempted_at: String,
    /// The merchant's answer; absent when none came.
    pub status_code: Option<i32>,
    /// Why it failed, when it did without an answer.
    pub error: Option<String>,
    pub duration_ms: i32,
}

/// `GET /v1/webhook-deliveries`'s query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeliveryFilter {
    /// The transaction whose deliveries to list (`txn_…`).
    pub transaction_id: String,
}

#[derive(sqlx::FromRow)]
struct DeliveryRow {
    id: String,
    event_id: String,
    transaction_id: String,
    endpoint_id: Option<String>,
    url: String,
    kind: String,
    version: i32,
    status: String,
    next_attempt_at: Option<DateTime<Utc>>,
}
type AttemptRow = (String, DateTime<Utc>, Option<i32>, Option<String>, i32);

/// `GET /v1/webhook-deliveries?transaction_id=`: the deliveries of one transaction,
/// oldest first, each with every attempt.
#[utoipa::path(
    get,
    path = "/v1/webhook-deliveries",
    tag = "webhooks",
    summary = "A transaction's webhook deliveries",
    security(("merchant_key" = [])),
    params(DeliveryFilter),
    responses(
        (status = 200, description = "Oldest first, each with every attempt.", content(
            (Page<DeliveryView> = "application/json"),
            (Page<DeliveryView> = "application/xml"),
        )),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 422, response = UnprocessableEntity),
        (status = 429, response = TooManyRequests),
        (status = 503, response = ServiceUnavailable),
    )
)]
pub async fn list_deliveries(
    State(state): State<AppState>,
    merchant: Merchant,
    headers: HeaderMap,
    query: std::result::Result<Query<DeliveryFilter>, axum::extract::rejection::QueryRejection>,
) -> Result<Response> {
    let Query(filter) = query.map_err(|_| ApiError::invalid("transaction_id", "is required"))?;
    let record = owned(&state, &merchant, &filter.transaction_id).await?;
    let data = deliveries_of(&state.pool, record.id.as_str()).await?;
    Ok(Format::wanted(&headers).render(StatusCode::OK, "webhook_deliveries", &Page::whole(data)))
}

/// The webhook deliveries of one transaction, oldest first, each with every attempt.
/// Callers check first that whoever asks may see the transaction.
pub async fn deliveries_of(
    pool: &sqlx::PgPool,
    transaction_id: &str,
) -> sqlx::Result<Vec<DeliveryView>> {
    let deliveries: Vec<DeliveryRow> = sqlx::query_as(
        "SELECT d.id, d.event_id, d.transaction_id, d.endpoint_id, coalesce(w.url, d.url) AS url,
                d.event_type AS kind, d.version, d.status, d.next_attempt_at
           FROM webhook_delivery d LEFT JOIN webhook_endpoint w ON w.id = d.endpoint_id
          WHERE d.transaction_id = $1
          ORDER BY d.version, d.created_at",
    )
    .bind(transaction_id)
    .fetch_all(pool)
    .await?;
    let ids: Vec<&str> = deliveries.iter().map(|d| d.id.as_str()).collect();
    let attempts: Vec<AttemptRow> = sqlx::query_as(
        "SELECT delivery_id, attempted_at, status_code, error, duration_ms
           FROM webhook_attempt WHERE delivery_id = ANY($1) ORDER BY attempted_at, id",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await?;
    Ok(deliveries
        .into_iter()
        .map(|d| DeliveryView {
            attempts: attempts
                .iter()
                .filter(|a| a.0 == d.id)
                .map(|(_, at, status_code, error, duration_ms)| AttemptView {
                    attempted_at: timestamp(*at),
                    status_code: *status_code,
                    error: error.clone(),
                    duration_ms: *duration_ms,
                })
                .collect(),
            id: d.id,
            event_id: d.event_id,
            transaction_id: d.transaction_id,
            endpoint_id: d.endpoint_id,
            url: d.url,
            kind: d.kind,
            version: d.version,
            status: d.status,
            next_attempt_at: d.next_attempt_at.map(timestamp),
        })
        .collect())
}

/// Queues a delivery to be sent again, as it was, as soon as the dispatcher can: the
/// merchant's own (`merchant` given) or any (an operator). Whether there was one.
pub async fn requeue_delivery(
    pool: &sqlx::PgPool,
    id: &str,
    merchant: Option<&str>,
) -> sqlx::Result<bool> {
    let replayed = sqlx::query(
        "UPDATE webhook_delivery
            SET status = 'pending', next_attempt_at = now(), leased_until = NULL, updated_at = now()
          WHERE id = $1 AND ($2::text IS NULL OR merchant_id = $2)",
    )
    .bind(id)
    .bind(merchant)
    .execute(pool)
    .await?;
    Ok(replayed.rows_affected() > 0)
}

/// `POST /v1/webhook-deliveries/{id}/replay`: sends a delivered or failed delivery
/// again, as it was (the same `webhook-id` and body), as soon as the dispatcher can.
#[utoipa::path(
    post,
    path = "/v1/webhook-deliveries/{id}/replay",
    tag = "webhooks",
    summary = "Send a webhook again",
    security(("merchant_key" = [])),
    params(("id" = String, Path, description = "The delivery's id.")),
    responses(
        (status = 202, description = "Queued: the dispatcher sends it again as soon as it can, with the same `webhook-id` and body."),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 429, response = TooManyRequests),
        (status = 503, response = ServiceUnavailable),
    )
)]
pub async fn replay_delivery(
    State(state): State<AppState>,
    merchant: Merchant,
    PathParam(id): PathParam<String>,
) -> Result<StatusCode> {
    if !requeue_delivery(&state.pool, &id, Some(merchant.id.as_str())).await? {
        return Err(ApiError::NotFound("webhook delivery"));
    }
    tracing::info!(delivery_id = %id, merchant_id = %merchant.id, "webhook delivery replayed");
    Ok(StatusCode::ACCEPTED)
}
