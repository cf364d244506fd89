//! What needs a human, as lists (the console's "Needs a human" page reads the same):
//! callbacks kept but not applied, payments whose retries ran out, and payments under
//! review.

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use super::{optional_rfc3339, Admin};
use crate::http::error::Result;
use crate::merchant::queries::Page;
use crate::AppState;

/// A callback kept but not applied, and why.
#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
pub struct RejectedCallback {
    pub id: String,
    pub gateway: String,
    pub transaction_id: Option<String>,
    pub reason: Option<String>,
    #[serde(serialize_with = "optional_rfc3339")]
    pub received_at: Option<DateTime<Utc>>,
}

/// `GET /callbacks/rejected`: the latest 100 callbacks kept but not applied because
/// they could not be read or disagreed with their transaction.
#[utoipa::path(
    get,
    path = "/callbacks/rejected",
    summary = "Rejected callbacks",
    responses(
        (status = 200, description = "The latest 100 callbacks kept but not applied.", body = Page<RejectedCallback>),
    )
)]
pub(super) async fn rejected_callbacks(
    _: Admin,
    State(state): State<AppState>,
) -> Result<Json<Page<RejectedCallback>>> {
    Ok(Json(Page::whole(
        rejected_callback_list(&state.pool).await?,
    )))
}

/// The latest 100 rejected callbacks, newest first.
pub async fn rejected_callback_list(pool: &sqlx::PgPool) -> sqlx::Result<Vec<RejectedCallback>> {
    sqlx::query_as(
        "SELECT id, gateway, transaction_id, outcome_reason AS reason, received_at
           FROM gateway_callback WHERE outcome = 'rejected'
          ORDER BY received_at DESC LIMIT 100",
    )
    .fetch_all(pool)
    .await
}

/// A payment whose automatic retries ran out.
#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
pub struct DeadLettered {
    pub id: String,
    pub merchant_id: String,
    pub status: String,
    pub gateway: Option<String>,
    pub reason: Option<String>,
    #[serde(serialize_with = "optional_rfc3339")]
    pub unresolved_since: Option<DateTime<Utc>>,
}

/// `GET /payments/dead-lettered`: payments whose automatic retries ran out (the same
/// ones the payment-processor copied to its dead-letter topic): pending and unresolved
/// at a gateway that may hold the money, or failed because every gateway stayed down.
#[utoipa::path(
    get,
    path = "/payments/dead-lettered",
    summary = "Payments whose retries ran out",
    responses(
        (status = 200, description = "Pending and unresolved at a gateway, or failed because every gateway stayed down.", body = Page<DeadLettered>),
    )
)]
pub(super) async fn dead_lettered_payments(
    _: Admin,
    State(state): State<AppState>,
) -> Result<Json<Page<DeadLettered>>> {
    Ok(Json(Page::whole(dead_lettered_list(&state.pool).await?)))
}

/// Payments whose retries ran out: unresolved (oldest first), then failed because every
/// gateway stayed down (newest first), at most 100 of each.
pub async fn dead_lettered_list(pool: &sqlx::PgPool) -> sqlx::Result<Vec<DeadLettered>> {
    sqlx::query_as(
        "(SELECT id, merchant_id, status, gateway,
                 COALESCE(unresolved_reason, failure_reason) AS reason, unresolved_since
            FROM transaction WHERE status = 'pending' AND unresolved_since IS NOT NULL
           ORDER BY unresolved_since LIMIT 100)
         UNION ALL
         (SELECT id, merchant_id, status, gateway, failure_reason AS reason, unresolved_since
            FROM transaction WHERE status = 'failed' AND failure_reason LIKE 'failed after %'
           ORDER BY updated_at DESC LIMIT 100)",
    )
    .fetch_all(pool)
    .await
}

/// A payment under review: a contradiction, or one nothing settles.
#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
pub struct UnderReview {
    pub id: String,
    pub merchant_id: String,
    pub status: String,
    pub gateway: Option<String>,
    /// `charged_but_failed`, `contradicting_answer`, `no_callback`, …
    pub review_reason: String,
    #[serde(serialize_with = "optional_rfc3339")]
    pub review_since: Option<DateTime<Utc>>,
    /// The evidence, in words.
    pub review_detail: Option<String>,
}

/// `GET /payments/under-review`: payments flagged for a human, newest first.
#[utoipa::path(
    get,
    path = "/payments/under-review",
    summary = "Payments under review",
    description = "Payments Paygate flagged for a human: a gateway's word contradicts their \
                   status (`charged_but_failed`, `contradicting_answer`) or nothing settles them \
                   (`no_callback`). Their status never changed for it; resolve a review with \
                   `POST /transactions/{id}/review/resolve`.",
    responses(
        (status = 200, description = "The latest 100 payments under review.", body = Page<UnderReview>),
    )
)]
pub(super) async fn payments_under_review(
    _: Admin,
    State(state): State<AppState>,
) -> Result<Json<Page<UnderReview>>> {
    Ok(Json(Page::whole(under_review_list(&state.pool).await?)))
}

/// The latest 100 payments under review, newest first (through `transaction_review`).
pub async fn under_review_list(pool: &sqlx::PgPool) -> sqlx::Result<Vec<UnderReview>> {
    sqlx::query_as(
        "SELECT id, merchant_id, status, gateway, review_reason, review_since, review_detail
           FROM transaction WHERE review_reason IS NOT NULL
          ORDER BY review_since DESC LIMIT 100",
    )
    .fetch_all(pool)
    .await
}
