//! A merchant's webhook endpoints: their health, a form to add one, and buttons that
//! switch one off or on, delete it, or send it a signed test event (the operator's check
//! of the merchant's verification code). Every change goes through the admin API's own
//! functions ([`crate::admin::endpoint_records`]), checked the same way.

use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::Form;
use maud::{html, Markup};
use serde::Deserialize;

use paygate_common::domain::{EndpointId, MerchantId};

use super::error::{ConsoleError, Result};
use super::layout::{self, status_tag, Section};
use super::session::Operator;
use super::{redirect, CsrfOnly};
use crate::admin::endpoint_ping::ping;
use crate::admin::endpoint_records::{self as records, EndpointChange};
use crate::admin::endpoints::{check_new, EndpointRequest};
use crate::http::error::ApiError;
use crate::AppState;

/// What the page says after a test event: which endpoint, and what came of it.
#[derive(Deserialize)]
pub struct Tested {
    tested: Option<String>,
    outcome: Option<String>,
}

/// The add form.
#[derive(Deserialize)]
pub struct AddForm {
    #[serde(default)]
    csrf: String,
    url: String,
    /// Comma-separated; empty: every type.
    #[serde(default)]
    event_types: String,
    /// Empty: no limit.
    #[serde(default)]
    rate_limit: String,
}

/// The on/off switch.
#[derive(Deserialize)]
pub struct SwitchForm {
    #[serde(default)]
    csrf: String,
    enabled: bool,
}

fn ids(id: &str, endpoint: &str) -> Result<(MerchantId, EndpointId)> {
    Ok((
        id.parse().map_err(|_| ConsoleError::NotFound("merchant"))?,
        endpoint
            .parse()
            .map_err(|_| ConsoleError::NotFound("endpoint"))?,
    ))
}

fn page_of(merchant: &MerchantId) -> String {
    format!("/console/merchants/{merchant}/endpoints")
}

/// The console's answer to a refusal of the admin API's checks.
fn refused(error: ApiError) -> ConsoleError {
    match error {
        ApiError::Invalid { message, field, .. } => ConsoleError::Invalid(match field {
            Some(field) => format!("{field}: {message}"),
            None => message,
        }),
        ApiError::NotFound(what) => ConsoleError::NotFound(what),
        other => ConsoleError::Internal(anyhow::anyhow!("{other}")),
    }
}

/// `GET /console/merchants/{id}/endpoints`.
pub async fn show(
    State(state): State<AppState>,
    operator: Operator,
    Path(id): Path<String>,
    Query(tested): Query<Tested>,
) -> Result<Markup> {
    let merchant: MerchantId = id.parse().map_err(|_| ConsoleError::NotFound("merchant"))?;
    if !records::merchant_exists(&state.pool, &merchant).await? {
        return Err(ConsoleError::NotFound("merchant"));
    }
    let endpoints = records::list(&state.pool, &merchant).await?;
    let base = page_of(&merchant);
    let body = html! {
        h1 { "Webhook endpoints of " code { (merchant) } }
        @if let (Some(endpoint), Some(outcome)) = (&tested.tested, &tested.outcome) {
            p.notice id="tested" { "Test event to " code { (endpoint) } ": " strong { (outcome) } }
        }
        table.endpoints {
            thead { tr { th { "endpoint" } th { "takes" } th { "rate limit" } th { "health" } th { "pending" } th {} } }
            tbody {
                @for endpoint in &endpoints {
                    tr id={ "endpoint-" (endpoint.id) } {
                        td { code { (endpoint.url) } br; span.muted { (endpoint.id) @if endpoint.primary { " · first" } } }
                        td { @if endpoint.event_types.is_empty() { "every type" } @else { (endpoint.event_types.join(", ")) } }
                        td { @match endpoint.rate_limit { Some(n) => { (n) " / s" } None => { "none" } } }
                        td {
                            @if endpoint.enabled { (status_tag(&endpoint.health)) } @else { (status_tag("off")) }
                            @if let Some(reason) = &endpoint.disabled_reason { br; span.muted { (reason) } }
                        }
                        td { (endpoint.pending_deliveries) }
                        td {
                            form.inline method="post" action={ (base) "/" (endpoint.id) "/test" } {
                                input type="hidden" name="csrf" value=(operator.csrf);
                                button type="submit" { "Send a test event" }
                            }
                            form.inline method="post" action={ (base) "/" (endpoint.id) "/switch" } {
                                input type="hidden" name="csrf" value=(operator.csrf);
                                input type="hidden" name="enabled" value=(!endpoint.enabled);
                                button type="submit" { @if endpoint.enabled { "Switch off" } @else { "Switch on" } }
                            }
                            form.inline method="post" action={ (base) "/" (endpoint.id) "/delete" } {
                                input type="hidden" name="csrf" value=(operator.csrf);
                                button.danger type="submit" { "Delete" }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Add an endpoint" }
        form method="post" action=(base) {
            input type="hidden" name="csrf" value=(operator.csrf);
            label { "URL " input type="url" name="url" required; }
            label { "Event types (comma-separated; empty: all) " input type="text" name="event_types" placeholder="transaction.completed, refund.*"; }
            label { "Requests a second (empty: no limit) " input type="number" name="rate_limit" min="1" max="10000"; }
            button type="submit" { "Add" }
        }
        p.muted { "A new endpoint's secret is shown once, by the admin API; here it is never shown." }
    };
    Ok(layout::page(
        &operator,
        Section::Merchants,
        "Webhook endpoints",
        body,
    ))
}

/// `POST /console/merchants/{id}/endpoints`: adds one, checked as the admin API checks.
pub async fn add(
    State(state): State<AppState>,
    operator: Operator,
    Path(id): Path<String>,
    Form(form): Form<AddForm>,
) -> Result<Response> {
    operator.check_csrf(&form.csrf)?;
    let merchant: MerchantId = id.parse().map_err(|_| ConsoleError::NotFound("merchant"))?;
    let rate_limit = match form.rate_limit.trim() {
        "" => None,
        n => Some(
            n.parse()
                .map_err(|_| ConsoleError::Invalid("rate_limit: not a number".to_owned()))?,
        ),
    };
    let request = EndpointRequest {
        url: form.url.trim().to_owned(),
        event_types: form
            .event_types
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect(),
        rate_limit,
        enabled: None,
    };
    let new = check_new(&state, request).await.map_err(refused)?;
    let (endpoint, _secret) = records::create(&state.pool, &state.secrets, &merchant, &new)
        .await
        .map_err(ConsoleError::Internal)?
        .ok_or(ConsoleError::NotFound("merchant"))?;
    tracing::info!(merchant_id = %merchant, endpoint_id = %endpoint.id, operator = %operator.name, "webhook endpoint added from the console");
    Ok(redirect(&page_of(&merchant)))
}

/// `POST /console/merchants/{id}/endpoints/{endpoint_id}/test`.
pub async fn test(
    State(state): State<AppState>,
    operator: Operator,
    Path((id, endpoint)): Path<(String, String)>,
    Form(form): Form<CsrfOnly>,
) -> Result<Response> {
    operator.check_csrf(&form.csrf)?;
    let (merchant, endpoint) = ids(&id, &endpoint)?;
    let result = ping(&state, &merchant, &endpoint)
        .await
        .map_err(refused)?
        .ok_or(ConsoleError::NotFound("endpoint"))?;
    let outcome = match (result.status_code, &result.error) {
        (Some(code), _) if result.delivered => format!("delivered ({code})"),
        (Some(code), _) => format!("answered {code}"),
        (None, Some(error)) => error.clone(),
        (None, None) => "no answer".to_owned(),
    };
    tracing::info!(merchant_id = %merchant, endpoint_id = %endpoint.as_str(), operator = %operator.name, %outcome, "webhook endpoint tested from the console");
    let query =
        serde_urlencoded::to_string([("tested", endpoint.as_str()), ("outcome", outcome.as_str())])
            .map_err(|e| ConsoleError::Internal(e.into()))?;
    Ok(redirect(&format!("{}?{query}#tested", page_of(&merchant))))
}

/// `POST /console/merchants/{id}/endpoints/{endpoint_id}/switch`.
pub async fn switch(
    State(state): State<AppState>,
    operator: Operator,
    Path((id, endpoint)): Path<(String, String)>,
    Form(form): Form<SwitchForm>,
) -> Result<Response> {
    operator.check_csrf(&form.csrf)?;
    let (merchant, endpoint) = ids(&id, &endpoint)?;
    let change = EndpointChange {
        enabled: Some(form.enabled),
        ..EndpointChange::default()
    };
    records::update(&state.pool, &merchant, &endpoint, &change)
        .await?
        .ok_or(ConsoleError::NotFound("endpoint"))?;
    tracing::info!(merchant_id = %merchant, endpoint_id = %endpoint.as_str(), enabled = form.enabled, operator = %operator.name, "webhook endpoint switched from the console");
    Ok(redirect(&page_of(&merchant)))
}

/// `POST /console/merchants/{id}/endpoints/{endpoint_id}/delete`.
pub async fn delete(
    State(state): State<AppState>,
    operator: Operator,
    Path((id, endpoint)): Path<(String, String)>,
    Form(form): Form<CsrfOnly>,
) -> Result<Response> {
    operator.check_csrf(&form.csrf)?;
    let (merchant, endpoint) = ids(&id, &endpoint)?;
    if !records::delete(&state.pool, &merchant, &endpoint).await? {
        return Err(ConsoleError::NotFound("endpoint"));
    }
    tracing::info!(merchant_id = %merchant, endpoint_id = %endpoint.as_str(), operator = %operator.name, "webhook endpoint deleted from the console");
    Ok(redirect(&page_of(&merchant)))
}
