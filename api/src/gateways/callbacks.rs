//! `POST /v1/callbacks/{gateway}`: a gateway tells us how a payment (or a refund, by
//! its `rfd_…` reference) ended.
//!
//! The signature is checked before the body is read for meaning; an unsigned or
//! mis-signed callback is 401 and leaves no trace. An accepted one is stored raw in the
//! inbox (`gateway_callback`, deduplicated by the gateway's event id) together with an
//! outbox event for the callback-processor, in one database transaction, and answered
//! in the gateway's own format. The same callback twice gets the same answer and is
//! processed once.

use secrecy::ExposeSecret as _;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use paygate_common::domain::{RefundId, TransactionId};
use paygate_common::gateway;
use paygate_common::refunds;
use paygate_common::signature::callback;
use paygate_common::transactions::{self, CallbackStored, NewCallback};

use crate::http::error::responses::{
    BadRequest, NotFound, PayloadTooLarge, ServiceUnavailable, Unauthorized,
};
use crate::http::error::{ApiError, Result};
use crate::http::extract::{is_json, read_body, PathParam};
use crate::AppState;

/// A gateway's callback: verified, stored once, acknowledged in the gateway's format.
#[utoipa::path(
    post,
    path = "/v1/callbacks/{gateway}",
    operation_id = "receive_callback",
    tag = "gateways",
    summary = "Receive a gateway's callback",
    description = "For gateways, not merchants. The body is the gateway's own (JSON or a SOAP \
                   envelope), signed in `X-Paygate-Signature`; it is verified before it is read, \
                   stored raw, and processed once however often it arrives.",
    params(
        ("gateway" = String, Path, description = "The gateway's code, e.g. `simjson`."),
        ("X-Paygate-Signature" = String, Header,
            description = "`t=<unix seconds>,v1=<hex HMAC-SHA256(secret, \"<t>.<body>\")>`, within 300 s."),
    ),
    request_body(description = "The gateway's callback, in its own format.", content(
        ("application/json"),
        ("text/xml"),
    )),
    responses(
        (status = 200, description = "Stored (or a repeat of one stored): the gateway's own acknowledgement.", content(
            (inline(CallbackAck) = "application/json"),
            (String = "text/xml"),
        )),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 413, response = PayloadTooLarge),
        (status = 503, response = ServiceUnavailable),
    )
)]
pub async fn receive(
    State(state): State<AppState>,
    PathParam(code): PathParam<String>,
    request: Request,
) -> Result<Response> {
    let content_type = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_owned();
    let (gateway, adapter, body) =
        verified(&state, &code, request, "any content type", |_| true).await?;

    let identity = adapter
        .callback_identity(&body)
        .map_err(|e| ApiError::Malformed {
            message: e.to_string(),
            field: None,
        })?;
    // A refund's callback names the refund (`rfd_…`): it is kept under its payment, and
    // only the gateway asked for the refund may speak of it.
    let (transaction_id, refund_id) = match identity.reference.parse::<RefundId>() {
        Ok(refund_id) => {
            let refund = refunds::find(&state.pool, &refund_id)
                .await?
                .filter(|r| r.gateway == gateway.code)
                .ok_or(ApiError::NotFound("refund"))?;
            (refund.transaction_id, Some(refund_id))
        }
        Err(_) => (
            identity
                .reference
                .parse::<TransactionId>()
                .map_err(|_| ApiError::NotFound("transaction"))?,
            None,
        ),
    };
    paygate_common::trace::record_transaction(transaction_id.as_str());

    store(
        &state,
        &gateway.code,
        (&transaction_id, refund_id.as_ref()),
        &identity.event_id,
        &content_type,
        &body,
    )
    .await?;
    let (content_type, ack) = adapter.callback_ack();
    Ok((StatusCode::OK, [(CONTENT_TYPE, content_type)], ack).into_response())
}

/// The answer to every callback we cannot trust: an unknown gateway, an unknown
/// transaction and a bad signature look alike, so an unauthenticated caller learns
/// nothing about which codes or ids exist.
fn refused() -> ApiError {
    ApiError::Unauthenticated("the callback signature is missing, stale or wrong")
}

/// Finds gateway `code` (from the cached table), reads the body (if `accepts` its
/// content type) and checks its signature with that gateway's adapter, before anything
/// reads the body. No query is made for a made-up code.
async fn verified(
    state: &AppState,
    code: &str,
    request: Request,
    wanted: &'static str,
    accepts: fn(&str) -> bool,
) -> Result<(gateway::GatewayRecord, &'static dyn gateway::Gateway, Bytes)> {
    let gateway = state
        .gateways
        .find(&state.pool, code)
        .await?
        .ok_or_else(refused)?;
    let adapter = gateway.adapter().ok_or_else(refused)?;
    let (signature, body) = signed_body(state, request, wanted, accepts).await?;
    let secret = state
        .secrets
        .open_secret(&gateway.callback_secret)
        .map_err(ApiError::Internal)?;
    let now = chrono::Utc::now().timestamp();
    if let Err(error) =
        adapter.verify_callback(secret.expose_secret(), signature.as_deref(), &body, now)
    {
        tracing::warn!(gateway = code, %error, "callback refused");
        return Err(refused());
    }
    Ok((gateway, adapter, body))
}

/// The signature header and the body (if `accepts` its content type).
async fn signed_body(
    state: &AppState,
    request: Request,
    wanted: &'static str,
    accepts: fn(&str) -> bool,
) -> Result<(Option<String>, Bytes)> {
    let signature = request
        .headers()
        .get(callback::HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = read_body(request, state, wanted, accepts).await?;
    Ok((signature, body))
}

/// The gateways (from the cached table) whose secret signed a legacy callback about
/// `transaction_id`, over `"<t>.<transaction id>.<body>"` (see [`gateway::legacy`]):
/// checked before the transaction is looked up, so an unsigned flood costs no query.
async fn legacy_signers(
    state: &AppState,
    transaction_id: &TransactionId,
    signature: Option<&str>,
    body: &[u8],
) -> Result<Vec<gateway::GatewayRecord>> {
    let payload = gateway::legacy::signed_payload(transaction_id.as_str(), body);
    let now = chrono::Utc::now().timestamp();
    let mut signers = Vec::new();
    for gateway in state.gateways.all(&state.pool).await?.iter() {
        if gateway.adapter().is_none() {
            continue;
        }
        let secret = state
            .secrets
            .open_secret(&gateway.callback_secret)
            .map_err(ApiError::Internal)?;
        if callback::verify(secret.expose_secret(), signature, &payload, now).is_ok() {
            signers.push(gateway.clone());
        }
    }
    Ok(signers)
}

/// Stores a verified callback once per (gateway, `dedup_key`) with its announcement to
/// the callback-processor, in one statement; a repeat is acknowledged and changes
/// nothing.
async fn store(
    state: &AppState,
    gateway: &str,
    (transaction_id, refund_id): (&TransactionId, Option<&RefundId>),
    dedup_key: &str,
    content_type: &str,
    body: &[u8],
) -> Result<()> {
    let callback = NewCallback {
        gateway: gateway.to_owned(),
        transaction_id: transaction_id.clone(),
        refund_id: refund_id.cloned(),
        dedup_key: dedup_key.to_owned(),
        content_type: content_type.to_owned(),
        body: body.to_vec(),
    };
    // Committed with the other callbacks of this moment (one flush for them all).
    match state.callbacks.write(callback).await? {
        CallbackStored::UnknownTransaction => return Err(ApiError::NotFound("transaction")),
        CallbackStored::Stored(callback_id) => {
            tracing::info!(gateway, %transaction_id, %callback_id, "callback stored");
        }
        CallbackStored::Duplicate => {
            tracing::info!(gateway, %transaction_id, "duplicate callback acknowledged");
        }
    }
    Ok(())
}

/// The first take-home's callback: `{"gateway_txn_id", "status", "amount",
/// "currency"?}` posted to the transaction's own URL, signed with the secret of the
/// gateway the transaction names over the transaction id and the body together, and
/// deduplicated per transaction (see [`gateway::legacy`]). The signature is checked
/// against the gateways' secrets before the transaction is looked up; then the
/// transaction must exist and name a gateway that signed. Anything unknown
/// (transaction, gateway) is refused like a bad signature.
#[utoipa::path(
    post,
    path = "/callback/{id}",
    operation_id = "receive_legacy_callback",
    tag = "gateways",
    summary = "Receive a callback in the original shape",
    description = "For gateways: `{\"gateway_txn_id\": \"…\", \"status\": \"completed\" | \"failed\", \
                   \"amount\": \"33.00\", \"currency\"?: \"USD\"}` about transaction `id`, signed in \
                   `X-Paygate-Signature` with the secret of the gateway the transaction names, over the \
                   transaction id and the body together. `amount` is required and checked against the \
                   transaction (a mismatch is kept, rejected); `currency` left out is the transaction's. \
                   The same body twice to one transaction is one callback; to two transactions, two.",
    params(
        ("id" = String, Path, description = "The transaction id, `txn_…`."),
        ("X-Paygate-Signature" = String, Header,
            description = "`t=<unix seconds>,v1=<hex HMAC-SHA256(secret, \"<t>.<id>.<body>\")>` with `<id>` the transaction id in the path, within 300 s."),
    ),
    request_body(description = "The original callback.", content(("application/json"))),
    responses(
        (status = 200, description = "Stored (or a repeat of one stored).", body = inline(CallbackAck)),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 413, response = PayloadTooLarge),
        (status = 503, response = ServiceUnavailable),
    )
)]
pub async fn receive_legacy(
    State(state): State<AppState>,
    PathParam(id): PathParam<String>,
    request: Request,
) -> Result<Response> {
    let transaction_id: TransactionId = id.parse().map_err(|_| refused())?;
    paygate_common::trace::record_transaction(transaction_id.as_str());
    let (signature, body) =
        signed_body(&state, request, "Content-Type: application/json", is_json).await?;
    let signers = legacy_signers(&state, &transaction_id, signature.as_deref(), &body).await?;
    if signers.is_empty() {
        tracing::warn!(%transaction_id, "legacy callback refused: no gateway signed it");
        return Err(refused());
    }
    let transaction = transactions::find(&state.pool, &transaction_id)
        .await?
        .ok_or_else(refused)?;
    let named = transaction.gateway.as_deref().ok_or_else(refused)?;
    let gateway = signers
        .into_iter()
        .find(|signer| signer.code == named)
        .ok_or_else(refused)?;
    store(
        &state,
        &gateway.code,
        (&transaction_id, None),
        &gateway::legacy::dedup_key(transaction_id.as_str(), &body),
        gateway::legacy::CONTENT_TYPE,
        &body,
    )
    .await?;
    Ok((
        StatusCode::OK,
        [(CONTENT_TYPE, "application/json")],
        r#"{"received":true}"#,
    )
        .into_response())
}

/// The acknowledgement of the JSON and card gateways, `{"received": true}`, as the
/// document shows it (the adapters answer with fixed bytes).
#[derive(utoipa::ToSchema)]
#[schema(description = "The JSON and card gateways' acknowledgement.")]
pub struct CallbackAck {
    pub received: bool,
}
