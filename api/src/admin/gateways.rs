//! Gateways as operators steer them: the list with each circuit's state (the console's
//! too), creating or replacing one (its URL held to the payment-processor's egress
//! policy, its callback secret sealed), and switching one on or off.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use secrecy::ExposeSecret as _;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use paygate_common::gateway::{self, GatewayConfig, GatewayError};

use super::{body, demo, optional_rfc3339, Admin};
use crate::http::error::responses::{AdminChangeErrors, NotFound};
use crate::http::error::{ApiError, Result};
use crate::http::extract::PathParam;
use crate::http::format::RawBody;
use crate::merchant::queries::Page;
use crate::AppState;

/// A gateway as operators see it: its configuration (never its callback secret) and
/// its circuit's state.
#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
pub struct GatewayView {
    pub code: String,
    pub protocol: String,
    pub base_url: String,
    pub timeout_ms: i32,
    pub max_concurrency: i32,
    pub enabled: bool,
    /// `closed`, `open` or `half_open`, as the payment-processor last reported it.
    #[schema(example = "closed")]
    pub circuit: String,
    #[serde(serialize_with = "optional_rfc3339")]
    pub circuit_changed_at: Option<DateTime<Utc>>,
}

/// `GET /gateways`.
#[utoipa::path(
    get,
    path = "/gateways",
    summary = "List gateways",
    responses(
        (status = 200, description = "Every gateway, with its circuit's state.", body = Page<GatewayView>),
    )
)]
pub(super) async fn list_gateways(
    _: Admin,
    State(state): State<AppState>,
) -> Result<Json<Page<GatewayView>>> {
    Ok(Json(Page::whole(gateway_views(&state.pool).await?)))
}

/// Every gateway with its circuit's state, by code (the admin API and the console).
pub async fn gateway_views(pool: &sqlx::PgPool) -> sqlx::Result<Vec<GatewayView>> {
    sqlx::query_as(
        "SELECT g.code, g.protocol, g.base_url, g.timeout_ms, g.max_concurrency, g.enabled,
                COALESCE(c.state, 'closed') AS circuit, c.changed_at AS circuit_changed_at
           FROM gateway g LEFT JOIN gateway_circuit c ON c.gateway_code = g.code
          ORDER BY g.code",
    )
    .fetch_all(pool)
    .await
}

/// `PUT /gateways/{code}`'s body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GatewayRequest {
    /// The adapter that speaks to it: `json`, `soap` or `card`.
    #[schema(example = "json")]
    pub protocol: String,
    /// An https URL (http, loopback and private addresses only where
    /// `payment_processor.allow_*` allow them), with no user name or password.
    #[schema(example = "https://gateway.example/json", format = "uri")]
    pub base_url: String,
    /// What its callbacks are signed with, at least 16 characters; stored sealed and
    /// never shown again.
    #[schema(value_type = String, min_length = 16)]
    pub callback_secret: secrecy::SecretString,
    #[schema(minimum = 1, maximum = 120000, example = 5000)]
    pub timeout_ms: i32,
    /// Calls in flight at most; 32 when absent.
    #[schema(minimum = 1, maximum = 10000, example = 32)]
    pub max_concurrency: Option<i32>,
    pub enabled: bool,
    /// After an ambiguous attempt (a timeout, a 5xx), how long the gateway's "unknown
    /// reference" is not yet taken as an answer: only then is the same request sent
    /// again, never to another gateway. 600000 (10 min) when absent.
    #[schema(minimum = 1000, maximum = 86400000, example = 600000)]
    pub settle_window_ms: Option<i32>,
    /// How long a `processing` payment waits for the gateway's callback before Paygate
    /// asks for its status. 300000 (5 min) when absent.
    #[schema(minimum = 1000, maximum = 86400000, example = 300000)]
    pub callback_deadline_ms: Option<i32>,
    /// How long a `processing` payment may stay unsettled before it is flagged
    /// `no_callback` for a human. 86400000 (a day) when absent.
    #[schema(minimum = 1000, maximum = 2147483647, example = 86400000)]
    pub review_after_ms: Option<i32>,
}

/// `PUT /gateways/{code}`: creates or replaces a gateway.
#[utoipa::path(
    put,
    path = "/gateways/{code}",
    summary = "Create or replace a gateway",
    params(("code" = String, Path, description = "The gateway's code.")),
    request_body(content((GatewayRequest = "application/json"))),
    responses(
        (status = 200, description = "Stored."),
        AdminChangeErrors,
    )
)]
pub(super) async fn upsert_gateway(
    _: Admin,
    State(state): State<AppState>,
    PathParam(code): PathParam<String>,
    raw: RawBody,
) -> Result<StatusCode> {
    let request: GatewayRequest = body(&raw)?;
    if code.is_empty()
        || code.len() > 64
        || !code
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(ApiError::invalid(
            "code",
            "must be 1 to 64 letters, digits, _ or -",
        ));
    }
    if !(1..=120_000).contains(&request.timeout_ms) {
        return Err(ApiError::invalid("timeout_ms", "must be 1 to 120000"));
    }
    let max_concurrency = request.max_concurrency.unwrap_or(32);
    if !(1..=10_000).contains(&max_concurrency) {
        return Err(ApiError::invalid("max_concurrency", "must be 1 to 10000"));
    }
    // Gateways are egress like webhooks: the payment-processor's policy, judged by what
    // the host resolves to now (and again by the payment-processor at every connect).
    state
        .settings
        .payment_processor
        .egress_policy()
        .check_url_resolved(&request.base_url)
        .await
        .map_err(|refusal| ApiError::invalid("base_url", refusal.to_string()))?;
    if request.callback_secret.expose_secret().len() < demo::MIN_CALLBACK_SECRET {
        return Err(ApiError::invalid(
            "callback_secret",
            format!("must be at least {} characters", demo::MIN_CALLBACK_SECRET),
        ));
    }
    let defaults = gateway::Timings::default();
    let timing = |field: &'static str, given: Option<i32>, default: i32, max: i32| {
        let value = given.unwrap_or(default);
        if (1_000..=max).contains(&value) {
            Ok(value)
        } else {
            Err(ApiError::invalid(field, format!("must be 1000 to {max}")))
        }
    };
    let timings = gateway::Timings {
        settle_window_ms: timing(
            "settle_window_ms",
            request.settle_window_ms,
            defaults.settle_window_ms,
            86_400_000,
        )?,
        callback_deadline_ms: timing(
            "callback_deadline_ms",
            request.callback_deadline_ms,
            defaults.callback_deadline_ms,
            86_400_000,
        )?,
        review_after_ms: timing(
            "review_after_ms",
            request.review_after_ms,
            defaults.review_after_ms,
            i32::MAX,
        )?,
    };
    if timings.settle_window_ms <= request.timeout_ms {
        return Err(ApiError::invalid(
            "settle_window_ms",
            "must be longer than timeout_ms: a gateway still working on a timed-out request may not have stored it yet",
        ));
    }
    let config = GatewayConfig {
        code,
        protocol: request.protocol,
        base_url: request.base_url,
        callback_secret: request.callback_secret,
        timeout_ms: request.timeout_ms,
        max_concurrency,
        enabled: request.enabled,
        timings,
    };
    match gateway::upsert(&state.pool, &state.secrets, &config).await {
        Ok(()) => Ok(StatusCode::OK),
        Err(GatewayError::UnknownProtocol(p)) => Err(ApiError::invalid(
            "protocol",
            format!("no adapter speaks {p:?}"),
        )),
        Err(GatewayError::Database(error)) => Err(error.into()),
        Err(GatewayError::Seal(error)) => Err(ApiError::Internal(error)),
    }
}

#[utoipa::path(
    post,
    path = "/gateways/{code}/enable",
    summary = "Enable a gateway",
    params(("code" = String, Path, description = "The gateway's code.")),
    responses(
        (status = 200, description = "Enabled."),
        (status = 404, response = NotFound),
    )
)]
pub(super) async fn enable_gateway(
    _: Admin,
    State(state): State<AppState>,
    PathParam(code): PathParam<String>,
) -> Result<StatusCode> {
    set_enabled(&state, &code, true).await
}

#[utoipa::path(
    post,
    path = "/gateways/{code}/disable",
    summary = "Disable a gateway",
    params(("code" = String, Path, description = "The gateway's code.")),
    responses(
        (status = 200, description = "Disabled: no payment is routed to it."),
        (status = 404, response = NotFound),
    )
)]
pub(super) async fn disable_gateway(
    _: Admin,
    State(state): State<AppState>,
    PathParam(code): PathParam<String>,
) -> Result<StatusCode> {
    set_enabled(&state, &code, false).await
}

pub(super) async fn set_enabled(state: &AppState, code: &str, enabled: bool) -> Result<StatusCode> {
    if !gateway::set_enabled(&state.pool, code, enabled).await? {
        return Err(ApiError::NotFound("gateway"));
    }
    tracing::info!(gateway = code, enabled, "gateway switched");
    Ok(StatusCode::OK)
}
