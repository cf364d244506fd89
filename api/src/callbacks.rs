//! `POST /v1/callbacks/{gateway}`: a gateway tells us how a payment ended.
//!
//! The signature is checked before the body is read for meaning; an unsigned or
//! mis-signed callback is 401 and leaves no trace. An accepted one is stored raw in the
//! inbox (`gateway_callback`, deduplicated by the gateway's event id) together with an
//! outbox event for the callback-processor, in one database transaction, and answered
//! in the gateway's own format. The same callback twice gets the same answer and is
//! processed once.

use axum::extract::{Path, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use paygate_common::domain::{CallbackId, TransactionId};
use paygate_common::gateway;
use paygate_common::signature::callback;
use paygate_common::transactions::announce_callback;

use crate::error::{ApiError, Result};
use crate::extract::read_body;
use crate::AppState;

pub async fn receive(
    State(state): State<AppState>,
    Path(code): Path<String>,
    request: Request,
) -> Result<Response> {
    let gateway = gateway::find(&state.pool, &code)
        .await?
        .ok_or(ApiError::NotFound("gateway"))?;
    let adapter = gateway.adapter().ok_or(ApiError::NotFound("gateway"))?;
    let signature = request
        .headers()
        .get(callback::HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let content_type = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_owned();
    let body = read_body(request, &state, "any content type", |_| true).await?;

    let now = chrono::Utc::now().timestamp();
    if let Err(error) =
        adapter.verify_callback(&gateway.callback_secret, signature.as_deref(), &body, now)
    {
        tracing::warn!(gateway = %code, %error, "callback refused");
        return Err(ApiError::Unauthenticated(
            "the callback signature is missing, stale or wrong",
        ));
    }

    let identity = adapter
        .callback_identity(&body)
        .map_err(|e| ApiError::Malformed {
            message: e.to_string(),
            field: None,
        })?;
    let transaction_id: TransactionId = identity
        .reference
        .parse()
        .map_err(|_| ApiError::NotFound("transaction"))?;

    let mut tx = state.pool.begin().await?;
    let known: Option<String> = sqlx::query_scalar("SELECT id FROM transaction WHERE id = $1")
        .bind(transaction_id.as_str())
        .fetch_optional(&mut *tx)
        .await?;
    if known.is_none() {
        return Err(ApiError::NotFound("transaction"));
    }
    let callback_id = CallbackId::new();
    let inserted: Option<String> = sqlx::query_scalar(
        "INSERT INTO gateway_callback (id, gateway, transaction_id, dedup_key, content_type, body)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT ON CONSTRAINT gateway_callback_dedup DO NOTHING
         RETURNING id",
    )
    .bind(callback_id.as_str())
    .bind(&gateway.code)
    .bind(transaction_id.as_str())
    .bind(&identity.event_id)
    .bind(&content_type)
    .bind(body.as_ref())
    .fetch_optional(&mut *tx)
    .await?;

    if inserted.is_some() {
        announce_callback(&mut tx, &callback_id, &gateway.code, &transaction_id).await?;
        tracing::info!(gateway = %gateway.code, %transaction_id, %callback_id, "callback stored");
    } else {
        tracing::info!(gateway = %gateway.code, %transaction_id, "duplicate callback acknowledged");
    }
    tx.commit().await?;

    let (content_type, ack) = adapter.callback_ack();
    Ok((StatusCode::OK, [(CONTENT_TYPE, content_type)], ack).into_response())
}
