//! A merchant's webhook endpoints (`/merchants/{id}/endpoints`): any number of them, each
//! with its URL (checked against the egress policy, as the dispatcher checks it again at
//! every send), the event types it takes, its rate limit, its own secret, and a switch;
//! and a signed `ping` an operator sends one to check the merchant's verification code
//! ([`super::endpoint_ping`]).
//! Every event goes to each enabled endpoint that takes its type.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

use paygate_common::domain::EndpointId;
use paygate_common::events::{event_type, timestamp};

use super::endpoint_ping::{ping, PingResult};
use super::endpoint_records::{self as records, EndpointChange, EndpointView, NewEndpoint};
use super::{body, check_egress, merchant_id, Admin};
use crate::http::error::responses::{AdminChangeErrors, NotFound};
use crate::http::error::{ApiError, Result};
use crate::http::extract::PathParam;
use crate::http::format::RawBody;
use crate::merchant::queries::Page;
use crate::AppState;

/// The most event types one endpoint may name.
const MAX_EVENT_TYPES: usize = 20;
/// The highest rate limit, requests a second.
const MAX_RATE_LIMIT: i32 = 10_000;

/// `POST /merchants/{id}/endpoints`'s body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointRequest {
    /// An absolute http(s) URL the egress policy allows.
    #[schema(example = "https://merchant.example/webhooks", format = "uri")]
    pub url: String,
    /// Event types (`transaction.completed`) or families (`refund.*`); empty or absent:
    /// every type.
    #[serde(default)]
    #[schema(example = json!(["transaction.completed", "refund.*"]))]
    pub event_types: Vec<String>,
    /// At most this many requests a second (1 to 10000); absent: no limit.
    #[schema(example = 10, minimum = 1, maximum = 10000)]
    pub rate_limit: Option<i32>,
    /// Absent: `true`.
    pub enabled: Option<bool>,
}

/// `PATCH /merchants/{id}/endpoints/{endpoint_id}`'s body: only what it names changes.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointPatch {
    #[schema(example = "https://merchant.example/webhooks", format = "uri")]
    pub url: Option<String>,
    pub event_types: Option<Vec<String>>,
    /// `null` removes the limit.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i32>, minimum = 1, maximum = 10000)]
    pub rate_limit: Option<Option<i32>>,
    /// `false` switches it off: it takes no new events, and what it has pending waits.
    pub enabled: Option<bool>,
}

/// A field given (even as `null`) is `Some`; an absent one stays `None` (`default`).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> std::result::Result<Option<T>, D::Error> {
    T::deserialize(deserializer).map(Some)
}

/// A new endpoint and its secret, shown this once.
#[derive(Serialize, ToSchema)]
pub struct CreatedEndpoint {
    #[serde(flatten)]
    pub endpoint: EndpointView,
    /// What its webhooks are signed with (Standard Webhooks, `whsec_<base64>`).
    #[schema(example = "whsec_…")]
    pub secret: String,
}

/// A new endpoint secret, shown this once.
#[derive(Serialize, ToSchema)]
pub struct RotatedEndpointSecret {
    #[schema(example = "whsec_…")]
    pub secret: String,
    /// Until then (RFC 3339) every webhook carries a second `v1,` signature made with
    /// the previous secret.
    pub previous_secret_expires_at: String,
}

fn endpoint_id(id: &str) -> Result<EndpointId> {
    id.parse().map_err(|_| ApiError::NotFound("endpoint"))
}

fn check_event_types(types: &[String]) -> Result<Vec<String>> {
    if types.len() > MAX_EVENT_TYPES {
        return Err(ApiError::invalid(
            "event_types",
            format!("at most {MAX_EVENT_TYPES} entries"),
        ));
    }
    if let Some(unknown) = types.iter().find(|t| !event_type::is_webhook_filter(t)) {
        return Err(ApiError::invalid(
            "event_types",
            format!(
                "`{unknown}` is not a webhook type or family; one of {} or a family such as `refund.*`",
                event_type::WEBHOOK_TYPES.join(", ")
            ),
        ));
    }
    let mut types = types.to_vec();
    types.sort();
    types.dedup();
    Ok(types)
}

fn check_rate_limit(limit: Option<i32>) -> Result<Option<i32>> {
    match limit {
        Some(n) if !(1..=MAX_RATE_LIMIT).contains(&n) => Err(ApiError::invalid(
            "rate_limit",
            format!("must be 1 to {MAX_RATE_LIMIT} requests a second"),
        )),
        other => Ok(other),
    }
}

/// Checks a new endpoint as the admin API and the console take it: a 422 on the field
/// at fault.
pub(crate) async fn check_new(state: &AppState, request: EndpointRequest) -> Result<NewEndpoint> {
    let new = NewEndpoint {
        event_types: check_event_types(&request.event_types)?,
        rate_limit: check_rate_limit(request.rate_limit)?,
        enabled: request.enabled.unwrap_or(true),
        url: request.url,
    };
    check_egress(state, "url", &new.url).await?;
    Ok(new)
}

/// `POST /merchants/{id}/endpoints`.
#[utoipa::path(
    post,
    path = "/merchants/{id}/endpoints",
    summary = "Add a webhook endpoint to a merchant",
    params(("id" = String, Path, description = "The merchant, `mer_…`.")),
    request_body(content((EndpointRequest = "application/json"))),
    responses(
        (status = 201, description = "The endpoint and its secret, shown this once.", body = CreatedEndpoint),
        AdminChangeErrors,
    )
)]
pub(super) async fn create_endpoint(
    _: Admin,
    State(state): State<AppState>,
    PathParam(id): PathParam<String>,
    raw: RawBody,
) -> Result<(StatusCode, Json<CreatedEndpoint>)> {
    let merchant = merchant_id(&id)?;
    let new = check_new(&state, body(&raw)?).await?;
    let (endpoint, secret) = records::create(&state.pool, &state.secrets, &merchant, &new)
        .await
        .map_err(ApiError::Internal)?
        .ok_or(ApiError::NotFound("merchant"))?;
    tracing::info!(merchant_id = %merchant, endpoint_id = %endpoint.id, "webhook endpoint added");
    Ok((
        StatusCode::CREATED,
        Json(CreatedEndpoint { endpoint, secret }),
    ))
}

/// `GET /merchants/{id}/endpoints`, oldest first.
#[utoipa::path(
    get,
    path = "/merchants/{id}/endpoints",
    summary = "A merchant's webhook endpoints and their health",
    params(("id" = String, Path, description = "The merchant, `mer_…`.")),
    responses(
        (status = 200, description = "Oldest first.", body = Page<EndpointView>),
        (status = 404, response = NotFound),
    )
)]
pub(super) async fn list_endpoints(
    _: Admin,
    State(state): State<AppState>,
    PathParam(id): PathParam<String>,
) -> Result<Json<Page<EndpointView>>> {
    let merchant = merchant_id(&id)?;
    if !records::merchant_exists(&state.pool, &merchant).await? {
        return Err(ApiError::NotFound("merchant"));
    }
    Ok(Json(Page::whole(
        records::list(&state.pool, &merchant).await?,
    )))
}

/// `GET /merchants/{id}/endpoints/{endpoint_id}`.
#[utoipa::path(
    get,
    path = "/merchants/{id}/endpoints/{endpoint_id}",
    summary = "A webhook endpoint and its health",
    params(
        ("id" = String, Path, description = "The merchant, `mer_…`."),
        ("endpoint_id" = String, Path, description = "The endpoint, `whe_…`."),
    ),
    responses(
        (status = 200, description = "The endpoint.", body = EndpointView),
        (status = 404, response = NotFound),
    )
)]
pub(super) async fn endpoint(
    _: Admin,
    State(state): State<AppState>,
    PathParam((id, endpoint)): PathParam<(String, String)>,
) -> Result<Json<EndpointView>> {
    let (merchant, endpoint) = (merchant_id(&id)?, endpoint_id(&endpoint)?);
    records::find(&state.pool, &merchant, &endpoint)
        .await?
        .map(Json)
        .ok_or(ApiError::NotFound("endpoint"))
}

/// `PATCH /merchants/{id}/endpoints/{endpoint_id}`: changes what the body names; a new
/// URL starts healthy, and a new URL or switching it on sends what waits at once.
#[utoipa::path(
    patch,
    path = "/merchants/{id}/endpoints/{endpoint_id}",
    summary = "Change a webhook endpoint, or switch it off or on",
    params(
        ("id" = String, Path, description = "The merchant, `mer_…`."),
        ("endpoint_id" = String, Path, description = "The endpoint, `whe_…`."),
    ),
    request_body(content((EndpointPatch = "application/json"))),
    responses(
        (status = 200, description = "The endpoint as it is now.", body = EndpointView),
        AdminChangeErrors,
    )
)]
pub(super) async fn update_endpoint(
    _: Admin,
    State(state): State<AppState>,
    PathParam((id, endpoint)): PathParam<(String, String)>,
    raw: RawBody,
) -> Result<Json<EndpointView>> {
    let (merchant, endpoint) = (merchant_id(&id)?, endpoint_id(&endpoint)?);
    let patch: EndpointPatch = body(&raw)?;
    let change = EndpointChange {
        event_types: patch
            .event_types
            .as_deref()
            .map(check_event_types)
            .transpose()?,
        rate_limit: patch.rate_limit.map(check_rate_limit).transpose()?,
        enabled: patch.enabled,
        url: patch.url,
    };
    if let Some(url) = &change.url {
        check_egress(&state, "url", url).await?;
    }
    let view = records::update(&state.pool, &merchant, &endpoint, &change)
        .await?
        .ok_or(ApiError::NotFound("endpoint"))?;
    tracing::info!(merchant_id = %merchant, endpoint_id = %endpoint.as_str(), "webhook endpoint changed");
    Ok(Json(view))
}

/// `DELETE /merchants/{id}/endpoints/{endpoint_id}`: what it still had pending fails.
#[utoipa::path(
    delete,
    path = "/merchants/{id}/endpoints/{endpoint_id}",
    summary = "Delete a webhook endpoint",
    params(
        ("id" = String, Path, description = "The merchant, `mer_…`."),
        ("endpoint_id" = String, Path, description = "The endpoint, `whe_…`."),
    ),
    responses(
        (status = 204, description = "Deleted; its pending deliveries are failed."),
        (status = 404, response = NotFound),
    )
)]
pub(super) async fn delete_endpoint(
    _: Admin,
    State(state): State<AppState>,
    PathParam((id, endpoint)): PathParam<(String, String)>,
) -> Result<StatusCode> {
    let (merchant, endpoint) = (merchant_id(&id)?, endpoint_id(&endpoint)?);
    if !records::delete(&state.pool, &merchant, &endpoint).await? {
        return Err(ApiError::NotFound("endpoint"));
    }
    tracing::info!(merchant_id = %merchant, endpoint_id = %endpoint.as_str(), "webhook endpoint deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /merchants/{id}/endpoints/{endpoint_id}/secret`: the endpoint gets a secret of
/// its own; the one it signed with keeps signing beside it for
/// `callback_dispatcher.secret_rotation_overlap_ms`.
#[utoipa::path(
    post,
    path = "/merchants/{id}/endpoints/{endpoint_id}/secret",
    summary = "Rotate a webhook endpoint's signing secret",
    params(
        ("id" = String, Path, description = "The merchant, `mer_…`."),
        ("endpoint_id" = String, Path, description = "The endpoint, `whe_…`."),
    ),
    responses(
        (status = 201, description = "A new secret; the previous one signs too until `previous_secret_expires_at`.", body = RotatedEndpointSecret),
        (status = 404, response = NotFound),
    )
)]
pub(super) async fn rotate_endpoint_secret(
    _: Admin,
    State(state): State<AppState>,
    PathParam((id, endpoint)): PathParam<(String, String)>,
) -> Result<(StatusCode, Json<RotatedEndpointSecret>)> {
    let (merchant, endpoint) = (merchant_id(&id)?, endpoint_id(&endpoint)?);
    let overlap = Duration::from_millis(
        state
            .settings
            .callback_dispatcher
            .secret_rotation_overlap_ms,
    );
    let (secret, until) =
        records::rotate_secret(&state.pool, &state.secrets, &merchant, &endpoint, overlap)
            .await
            .map_err(ApiError::Internal)?
            .ok_or(ApiError::NotFound("endpoint"))?;
    tracing::info!(merchant_id = %merchant, endpoint_id = %endpoint.as_str(), "webhook endpoint secret rotated");
    Ok((
        StatusCode::CREATED,
        Json(RotatedEndpointSecret {
            secret,
            previous_secret_expires_at: timestamp(until),
        }),
    ))
}

/// `POST /merchants/{id}/endpoints/{endpoint_id}/test`: sends the endpoint a signed
/// `ping` now, as the dispatcher would send a webhook (same headers, secrets and egress
/// guard), and answers what came of it. Nothing is recorded or retried.
#[utoipa::path(
    post,
    path = "/merchants/{id}/endpoints/{endpoint_id}/test",
    summary = "Send a webhook endpoint a signed test event",
    params(
        ("id" = String, Path, description = "The merchant, `mer_…`."),
        ("endpoint_id" = String, Path, description = "The endpoint, `whe_…`."),
    ),
    responses(
        (status = 200, description = "Sent (or refused by the egress policy); what the endpoint answered.", body = PingResult),
        (status = 404, response = NotFound),
    )
)]
pub(super) async fn test_endpoint(
    _: Admin,
    State(state): State<AppState>,
    PathParam((id, endpoint)): PathParam<(String, String)>,
) -> Result<Json<PingResult>> {
    let (merchant, endpoint) = (merchant_id(&id)?, endpoint_id(&endpoint)?);
    let result = ping(&state, &merchant, &endpoint)
        .await?
        .ok_or(ApiError::NotFound("endpoint"))?;
    tracing::info!(merchant_id = %merchant, endpoint_id = %endpoint.as_str(), status_code = result.status_code, "webhook endpoint tested");
    Ok(Json(result))
}
