//! The admin API under `/admin/v1`, for operators, behind `Authorization: Bearer <admin
//! token>` (from `admin.token`; compared in constant time; missing or wrong is 401, and
//! with no token configured every call is 401). It creates merchants, rotates their API
//! keys, points their webhooks, sets customers' countries, steers gateways and routes,
//! and lists what needs a human: rejected callbacks and payments left unresolved or
//! failed by their retries. The demo seed calls the same functions.

use axum::extract::{FromRef, FromRequestParts, Path, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use secrecy::ExposeSecret as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use paygate_common::domain::{Country, MerchantId};
use paygate_common::events::timestamp;
use paygate_common::gateway::{self, GatewayConfig, GatewayError, Route};

use crate::error::{ApiError, Result};
use crate::extract::parse_json;
use crate::format::RawBody;
use crate::merchants::{self, NewMerchant};
use crate::queries::Page;
use crate::AppState;

/// The admin routes, mounted under `/admin/v1`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/merchants", post(create_merchant))
        .route("/merchants/{id}/api-keys", post(rotate_api_key))
        .route("/merchants/{id}/webhook", put(set_webhook))
        .route("/customers", put(put_customer))
        .route("/gateways", get(list_gateways))
        .route("/gateways/{code}", put(upsert_gateway))
        .route("/gateways/{code}/enable", post(enable_gateway))
        .route("/gateways/{code}/disable", post(disable_gateway))
        .route("/routes", get(list_routes).put(upsert_route))
        .route("/routes/{id}", axum::routing::delete(delete_route))
        .route("/callbacks/rejected", get(rejected_callbacks))
        .route("/payments/dead-lettered", get(dead_lettered_payments))
}

/// A request that carried the admin token.
pub struct Admin;

impl<S> FromRequestParts<S> for Admin
where
    S: Send + Sync,
    AppState: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let state = AppState::from_ref(state);
        let expected = state.settings.admin.token.expose_secret();
        let given = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .unwrap_or_default();
        if expected.is_empty() || !same_secret(given, expected) {
            return Err(ApiError::Unauthorized);
        }
        Ok(Admin)
    }
}

/// Compares two secrets in time that does not depend on where they differ: their
/// SHA-256 digests (fixed length) are compared byte by byte, all of them.
fn same_secret(given: &str, expected: &str) -> bool {
    let given = Sha256::digest(given.as_bytes());
    let expected = Sha256::digest(expected.as_bytes());
    given
        .iter()
        .zip(expected.iter())
        .fold(0u8, |diff, (a, b)| diff | (a ^ b))
        == 0
}

/// Admin bodies are JSON.
fn body<T: serde::de::DeserializeOwned>(raw: &RawBody) -> Result<T> {
    if raw.format != crate::format::Format::Json {
        return Err(ApiError::UnsupportedMediaType(
            "Content-Type: application/json",
        ));
    }
    parse_json(&raw.bytes)
}

fn merchant_id(id: &str) -> Result<MerchantId> {
    id.parse().map_err(|_| ApiError::NotFound("merchant"))
}

/// A webhook URL an operator may set: absolute http(s).
fn check_webhook_url(url: &str) -> Result<()> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|_| ApiError::invalid("webhook_url", "must be an absolute URL"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(ApiError::invalid(
            "webhook_url",
            "must be an http(s) URL with a host",
        ));
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewMerchantRequest {
    pub name: String,
    pub webhook_url: Option<String>,
}

/// `POST /merchants` → 201 `{id, api_key, webhook_secret}`; the key is shown this once.
async fn create_merchant(
    _: Admin,
    State(state): State<AppState>,
    raw: RawBody,
) -> Result<(StatusCode, Json<NewMerchant>)> {
    let request: NewMerchantRequest = body(&raw)?;
    let name = request.name.trim();
    if name.is_empty() || name.len() > 255 {
        return Err(ApiError::invalid("name", "must be 1 to 255 characters"));
    }
    if let Some(url) = &request.webhook_url {
        check_webhook_url(url)?;
    }
    let merchant = merchants::create(&state.pool, name, request.webhook_url.as_deref(), None)
        .await
        .map_err(ApiError::Internal)?;
    tracing::info!(merchant_id = %merchant.id, "merchant created");
    Ok((StatusCode::CREATED, Json(merchant)))
}

#[derive(Debug, Serialize)]
pub struct RotatedKey {
    pub api_key: String,
    /// When the keys it replaces stop working.
    pub previous_keys_expire_at: String,
}

/// `POST /merchants/{id}/api-keys`: a new key; the old ones keep working for
/// `admin.key_rotation_overlap_ms`, then stop.
async fn rotate_api_key(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<RotatedKey>)> {
    let id = merchant_id(&id)?;
    let overlap = std::time::Duration::from_millis(state.settings.admin.key_rotation_overlap_ms);
    let (api_key, expires_at) = merchants::rotate_api_key(&state.pool, &id, overlap)
        .await?
        .ok_or(ApiError::NotFound("merchant"))?;
    tracing::info!(merchant_id = %id, "API key rotated");
    Ok((
        StatusCode::CREATED,
        Json(RotatedKey {
            api_key,
            previous_keys_expire_at: timestamp(expires_at),
        }),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookRequest {
    pub webhook_url: Option<String>,
}

/// `PUT /merchants/{id}/webhook {webhook_url}` (null: no webhooks).
async fn set_webhook(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
    raw: RawBody,
) -> Result<StatusCode> {
    let id = merchant_id(&id)?;
    let request: WebhookRequest = body(&raw)?;
    if let Some(url) = &request.webhook_url {
        check_webhook_url(url)?;
    }
    if !merchants::set_webhook_url(&state.pool, &id, request.webhook_url.as_deref())
        .await
        .map_err(ApiError::Internal)?
    {
        return Err(ApiError::NotFound("merchant"));
    }
    Ok(StatusCode::OK)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomerRequest {
    pub merchant_id: String,
    pub user_id: String,
    pub country: String,
}

/// `PUT /customers {merchant_id, user_id, country}`: the country a user's payments are
/// routed by when they name none.
async fn put_customer(_: Admin, State(state): State<AppState>, raw: RawBody) -> Result<StatusCode> {
    let request: CustomerRequest = body(&raw)?;
    let merchant = request
        .merchant_id
        .parse::<MerchantId>()
        .map_err(|e| ApiError::invalid("merchant_id", e))?;
    let country: Country = request
        .country
        .parse()
        .map_err(|e| ApiError::invalid("country", e))?;
    let user_id = request.user_id.trim();
    if user_id.is_empty() || user_id.len() > 255 {
        return Err(ApiError::invalid("user_id", "must be 1 to 255 characters"));
    }
    if !merchants::put_customer(&state.pool, &merchant, user_id, &country).await? {
        return Err(ApiError::NotFound("merchant"));
    }
    Ok(StatusCode::OK)
}

/// A gateway as operators see it: its configuration (never its callback secret) and
/// its circuit's state.
#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct GatewayView {
    pub code: String,
    pub protocol: String,
    pub base_url: String,
    pub timeout_ms: i32,
    pub max_concurrency: i32,
    pub enabled: bool,
    /// `closed`, `open` or `half_open`, as the payment-processor last reported it.
    pub circuit: String,
    #[serde(serialize_with = "optional_rfc3339")]
    pub circuit_changed_at: Option<DateTime<Utc>>,
}

fn optional_rfc3339<S: serde::Serializer>(
    at: &Option<DateTime<Utc>>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    match at {
        Some(at) => s.serialize_some(&timestamp(*at)),
        None => s.serialize_none(),
    }
}

/// `GET /gateways`.
async fn list_gateways(_: Admin, State(state): State<AppState>) -> Result<Json<Page<GatewayView>>> {
    let data = sqlx::query_as(
        "SELECT g.code, g.protocol, g.base_url, g.timeout_ms, g.max_concurrency, g.enabled,
                COALESCE(c.state, 'closed') AS circuit, c.changed_at AS circuit_changed_at
           FROM gateway g LEFT JOIN gateway_circuit c ON c.gateway_code = g.code
          ORDER BY g.code",
    )
    .fetch_all(&state.pool)
    .await?;
    Ok(Json(Page {
        data,
        has_more: false,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayRequest {
    pub protocol: String,
    pub base_url: String,
    pub callback_secret: String,
    pub timeout_ms: i32,
    pub max_concurrency: Option<i32>,
    pub enabled: bool,
}

/// `PUT /gateways/{code}`: creates or replaces a gateway.
async fn upsert_gateway(
    _: Admin,
    State(state): State<AppState>,
    Path(code): Path<String>,
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
    reqwest::Url::parse(&request.base_url)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"))
        .ok_or_else(|| ApiError::invalid("base_url", "must be an http(s) URL"))?;
    let config = GatewayConfig {
        code,
        protocol: request.protocol,
        base_url: request.base_url,
        callback_secret: request.callback_secret,
        timeout_ms: request.timeout_ms,
        max_concurrency,
        enabled: request.enabled,
    };
    match gateway::upsert(&state.pool, &config).await {
        Ok(()) => Ok(StatusCode::OK),
        Err(GatewayError::UnknownProtocol(p)) => Err(ApiError::invalid(
            "protocol",
            format!("no adapter speaks {p:?}"),
        )),
        Err(GatewayError::Database(error)) => Err(error.into()),
    }
}

async fn enable_gateway(
    _: Admin,
    State(state): State<AppState>,
    Path(code): Path<String>,
) -> Result<StatusCode> {
    set_enabled(&state, &code, true).await
}

async fn disable_gateway(
    _: Admin,
    State(state): State<AppState>,
    Path(code): Path<String>,
) -> Result<StatusCode> {
    set_enabled(&state, &code, false).await
}

async fn set_enabled(state: &AppState, code: &str, enabled: bool) -> Result<StatusCode> {
    if !gateway::set_enabled(&state.pool, code, enabled).await? {
        return Err(ApiError::NotFound("gateway"));
    }
    tracing::info!(gateway = code, enabled, "gateway switched");
    Ok(StatusCode::OK)
}

#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct RouteView {
    pub id: i64,
    pub country: Option<String>,
    pub currency: Option<String>,
    pub kind: Option<String>,
    pub priority: i32,
    pub gateway_code: String,
}

/// `GET /routes`, by country (default routes last), then priority.
async fn list_routes(_: Admin, State(state): State<AppState>) -> Result<Json<Page<RouteView>>> {
    let data = sqlx::query_as(
        "SELECT id, trim(country) AS country, trim(currency) AS currency, kind, priority, gateway_code
           FROM gateway_route ORDER BY country NULLS LAST, priority, id",
    )
    .fetch_all(&state.pool)
    .await?;
    Ok(Json(Page {
        data,
        has_more: false,
    }))
}

/// `PUT /routes {country?, currency?, kind?, priority, gateway_code}`: creates a route or
/// changes its priority.
async fn upsert_route(_: Admin, State(state): State<AppState>, raw: RawBody) -> Result<StatusCode> {
    let route: Route = body(&raw)?;
    if let Some(country) = &route.country {
        country
            .parse::<Country>()
            .map_err(|e| ApiError::invalid("country", e))?;
    }
    if let Some(currency) = &route.currency {
        currency
            .parse::<paygate_common::domain::Currency>()
            .map_err(|e| ApiError::invalid("currency", e))?;
    }
    if gateway::find(&state.pool, &route.gateway_code)
        .await?
        .is_none()
    {
        return Err(ApiError::invalid("gateway_code", "no such gateway"));
    }
    gateway::upsert_route(&state.pool, &route).await?;
    Ok(StatusCode::OK)
}

async fn delete_route(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<StatusCode> {
    let deleted = sqlx::query("DELETE FROM gateway_route WHERE id = $1")
        .bind(id)
        .execute(&state.pool)
        .await?;
    if deleted.rows_affected() == 0 {
        return Err(ApiError::NotFound("route"));
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize, sqlx::FromRow)]
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
async fn rejected_callbacks(
    _: Admin,
    State(state): State<AppState>,
) -> Result<Json<Page<RejectedCallback>>> {
    let data = sqlx::query_as(
        "SELECT id, gateway, transaction_id, outcome_reason AS reason, received_at
           FROM gateway_callback WHERE outcome = 'rejected'
          ORDER BY received_at DESC LIMIT 100",
    )
    .fetch_all(&state.pool)
    .await?;
    Ok(Json(Page {
        data,
        has_more: false,
    }))
}

#[derive(Debug, Serialize, sqlx::FromRow)]
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
async fn dead_lettered_payments(
    _: Admin,
    State(state): State<AppState>,
) -> Result<Json<Page<DeadLettered>>> {
    let data = sqlx::query_as(
        "(SELECT id, merchant_id, status, gateway, failure_reason AS reason, unresolved_since
            FROM transaction WHERE status = 'pending' AND unresolved_since IS NOT NULL
           ORDER BY unresolved_since LIMIT 100)
         UNION ALL
         (SELECT id, merchant_id, status, gateway, failure_reason AS reason, unresolved_since
            FROM transaction WHERE status = 'failed' AND failure_reason LIKE 'failed after %'
           ORDER BY updated_at DESC LIMIT 100)",
    )
    .fetch_all(&state.pool)
    .await?;
    Ok(Json(Page {
        data,
        has_more: false,
    }))
}
