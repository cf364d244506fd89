//! The test event an operator sends a webhook endpoint: a signed `ping`, sent at once
//! with the headers, secrets and egress guard of any webhook, and what came of it.
//! Nothing is recorded or retried: it checks the merchant's verification code, not the
//! delivery pipeline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use secrecy::ExposeSecret as _;
use serde::Serialize;
use utoipa::ToSchema;

use paygate_common::domain::{EndpointId, EventId, MerchantId};
use paygate_common::egress::{self, GuardedResolver};
use paygate_common::events::{event_type, timestamp};
use paygate_common::signature::{ed25519, webhook};

use super::endpoint_records as records;
use crate::http::error::{ApiError, Result};
use crate::AppState;

/// What the test webhook came to.
#[derive(Serialize, ToSchema)]
pub struct PingResult {
    /// The `webhook-id` it was sent under (`evt_…`).
    pub webhook_id: String,
    /// Whether the endpoint answered 2xx.
    pub delivered: bool,
    /// The endpoint's answer; `null` when none came.
    pub status_code: Option<u16>,
    /// Why no answer came (`refused: …` when the egress policy stopped it).
    pub error: Option<String>,
    pub duration_ms: u64,
}

/// Sends `endpoint` a signed `ping`; `None` when there is no such endpoint.
pub(crate) async fn ping(
    state: &AppState,
    merchant: &MerchantId,
    endpoint: &EndpointId,
) -> Result<Option<PingResult>> {
    let Some(target) = records::ping_target(&state.pool, &state.secrets, merchant, endpoint)
        .await
        .map_err(ApiError::Internal)?
    else {
        return Ok(None);
    };
    let webhook_id = EventId::new();
    let now = chrono::Utc::now();
    let body = serde_json::json!({
        "id": webhook_id.as_str(),
        "type": event_type::PING,
        "created_at": timestamp(now),
        "data": {"merchant_id": merchant.as_str(), "endpoint_id": endpoint.as_str()},
    })
    .to_string();
    let signature = target
        .secrets
        .iter()
        .map(|secret| {
            webhook::sign(
                secret.expose_secret(),
                webhook_id.as_str(),
                now.timestamp(),
                body.as_bytes(),
            )
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .context("signing a test webhook")
        .map_err(ApiError::Internal)?;
    let mut signature = signature;
    for key in &target.signing_keys {
        signature.push(
            ed25519::sign(
                key.expose_secret(),
                webhook_id.as_str(),
                now.timestamp(),
                body.as_bytes(),
            )
            .context("an Ed25519 signing key that does not sign")
            .map_err(ApiError::Internal)?,
        );
    }
    let signature = signature.join(" ");
    let dispatcher = &state.settings.callback_dispatcher;
    let policy = dispatcher.egress_policy();
    let started = Instant::now();
    let answer = |status_code: Option<u16>, error: Option<String>| PingResult {
        webhook_id: webhook_id.as_str().to_owned(),
        delivered: status_code.is_some_and(|c| (200..300).contains(&c)),
        status_code,
        error,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    };
    if let Err(refusal) = policy.check_url(&target.url) {
        return Ok(Some(answer(None, Some(format!("refused: {refusal}")))));
    }
    let http = egress::client_builder(&state.settings.tls)
        .map_err(ApiError::Internal)?
        .dns_resolver(Arc::new(GuardedResolver::system(policy)))
        .timeout(Duration::from_millis(dispatcher.request_timeout_ms))
        .user_agent("Paygate-Webhooks/1")
        .build()
        .context("building the test webhook's client")
        .map_err(ApiError::Internal)?;
    let sent = http
        .post(&target.url)
        .header("content-type", "application/json")
        .header(webhook::ID, webhook_id.as_str())
        .header(webhook::TIMESTAMP, now.timestamp().to_string())
        .header(webhook::SIGNATURE, signature)
        .body(body)
        .send()
        .await;
    Ok(Some(match sent {
        Ok(response) => answer(Some(response.status().as_u16()), None),
        Err(error) if error.is_timeout() => answer(None, Some("timed out".to_owned())),
        Err(error) if error.is_connect() => answer(None, Some("connection failed".to_owned())),
        Err(_) => answer(None, Some("request failed".to_owned())),
    }))
}
