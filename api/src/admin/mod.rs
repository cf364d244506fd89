//! The admin API under `/admin/v1`, for operators, behind `Authorization: Bearer <admin
//! token>` (from `admin.token`; compared in constant time; missing or wrong is 401, and
//! with no token configured every call is 401). It creates merchants, rotates their API
//! keys, points their webhooks, sets customers' countries, steers gateways and routes,
//! and lists what needs a human: rejected callbacks and payments left unresolved or
//! failed by their retries. The demo seed calls the same functions.
//!
//! Its newer routes live in a module each under `admin/`: operators' actions on
//! payments ([`payments`]), the outbox's set-aside events ([`outbox`]), merchants'
//! payout limits ([`limits`]) and their webhook signing keys ([`webhook_keys`]).
//! Beside them, what only operators (and the demo seed) reach: creating merchants and
//! their credentials ([`merchants`]), interventions on payments Paygate cannot settle
//! alone ([`interventions`], the console's too) and the demo seed ([`demo`]).

pub mod demo;
pub mod interventions;
pub mod merchants;

mod limits;
mod outbox;
mod payments;
mod webhook_keys;

use axum::extract::{FromRef, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use secrecy::ExposeSecret as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use paygate_common::domain::{Country, MerchantId};
use paygate_common::events::timestamp;
use paygate_common::gateway::{self, GatewayConfig, GatewayError, Route};

use crate::http::error::responses::{
    BadRequest, NotFound, PayloadTooLarge, ServiceUnavailable, Unauthorized, UnprocessableEntity,
    UnsupportedMediaType,
};
use crate::http::error::{ApiError, Result};
pub(crate) use crate::http::extract::merchant_id;
use crate::http::extract::{parse_json, PathParam};
use crate::http::format::RawBody;
use crate::merchant::queries::Page;
use crate::AppState;
use merchants::NewMerchant;

/// The admin routes, mounted under `/admin/v1`; each handler's `#[utoipa::path]` gives
/// its path and method, so a route here is a documented route.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_merchant))
        .routes(routes!(rotate_api_key, list_api_keys))
        .routes(routes!(revoke_api_key))
        .routes(routes!(set_webhook, webhook_endpoint))
        .routes(routes!(rotate_webhook_secret))
        .routes(routes!(webhook_keys::rotate_signing_key))
        .routes(routes!(put_customer))
        .routes(routes!(list_gateways))
        .routes(routes!(upsert_gateway))
        .routes(routes!(enable_gateway))
        .routes(routes!(disable_gateway))
        .routes(routes!(list_routes, upsert_route))
        .routes(routes!(delete_route))
        .routes(routes!(rejected_callbacks))
        .routes(routes!(dead_lettered_payments))
        .routes(routes!(payments_under_review))
        .routes(routes!(payments::redrive))
        .routes(routes!(payments::release))
        .routes(routes!(payments::resolve_review))
        .routes(routes!(outbox::set_aside))
        .routes(routes!(outbox::resend))
        .routes(routes!(limits::set_limits, limits::limits))
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
        let given = crate::http::extract::bearer(parts).unwrap_or_default();
        if expected.is_empty() || !same_secret(given, expected) {
            return Err(ApiError::Unauthorized);
        }
        Ok(Admin)
    }
}

/// Compares two secrets in time that does not depend on where they differ: their
/// SHA-256 digests (fixed length) are compared byte by byte, all of them.
pub(crate) fn same_secret(given: &str, expected: &str) -> bool {
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
    if raw.format != crate::http::format::Format::Json {
        return Err(ApiError::UnsupportedMediaType(
            "Content-Type: application/json",
        ));
    }
    parse_json(&raw.bytes)
}

/// A webhook URL an operator may set: https (or http where configuration allows it) to
/// an address the egress policy allows, judged by what its host resolves to now. The
/// dispatcher checks again at every send, after resolving.
async fn check_webhook_url(state: &AppState, url: &str) -> Result<()> {
    state
        .settings
        .callback_dispatcher
        .egress_policy()
        .check_url_resolved(url)
        .await
        .map(drop)
        .map_err(|refusal| ApiError::invalid("webhook_url", refusal.to_string()))
}

/// `POST /merchants`'s body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewMerchantRequest {
    #[schema(example = "Acme Ltd", min_length = 1, max_length = 255)]
    pub name: String,
    /// An absolute http(s) URL; absent: no webhooks.
    #[schema(example = "https://merchant.example/webhooks", format = "uri")]
    pub webhook_url: Option<String>,
}

/// `POST /merchants` → 201 `{id, api_key, webhook_secret}`; the key is shown this once.
#[utoipa::path(
    post,
    path = "/merchants",
    tag = "admin",
    summary = "Create a merchant",
    security(("admin_token" = [])),
    request_body(content((NewMerchantRequest = "application/json"))),
    responses(
        (status = 201, description = "Created. The API key is shown this once; only its hash is kept.", body = NewMerchant),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = UnprocessableEntity),
        (status = 503, response = ServiceUnavailable),
    )
)]
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
        check_webhook_url(&state, url).await?;
    }
    let merchant = merchants::create(
        &state.pool,
        &state.secrets,
        name,
        request.webhook_url.as_deref(),
        None,
    )
    .await
    .map_err(ApiError::Internal)?;
    tracing::info!(merchant_id = %merchant.id, "merchant created");
    Ok((StatusCode::CREATED, Json(merchant)))
}

/// A new API key, shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct RotatedKey {
    #[schema(example = "pgk_…")]
    pub api_key: String,
    /// When the keys it replaces stop working (RFC 3339).
    pub previous_keys_expire_at: String,
}

/// `POST /merchants/{id}/api-keys`: a new key; the old ones keep working for
/// `admin.key_rotation_overlap_ms`, then stop.
#[utoipa::path(
    post,
    path = "/merchants/{id}/api-keys",
    tag = "admin",
    summary = "Rotate a merchant's API key",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "The merchant, `mer_…`.")),
    responses(
        (status = 201, description = "A new key; the old ones keep working until `previous_keys_expire_at`.", body = RotatedKey),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 503, response = ServiceUnavailable),
    )
)]
async fn rotate_api_key(
    _: Admin,
    State(state): State<AppState>,
    PathParam(id): PathParam<String>,
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

/// `GET /merchants/{id}/api-keys`: the merchant's keys (ids and prefixes, never the
/// keys), newest first, with their state.
#[utoipa::path(
    get,
    path = "/merchants/{id}/api-keys",
    tag = "admin",
    summary = "A merchant's API keys",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "The merchant, `mer_…`.")),
    responses(
        (status = 200, description = "`{\"data\": [key, …], \"has_more\": false}`, newest first.", body = Page<merchants::ApiKeyView>),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 503, response = ServiceUnavailable),
    )
)]
async fn list_api_keys(
    _: Admin,
    State(state): State<AppState>,
    PathParam(id): PathParam<String>,
) -> Result<Json<Page<merchants::ApiKeyView>>> {
    let id = merchant_id(&id)?;
    let keys = merchants::api_keys(&state.pool, &id)
        .await?
        .ok_or(ApiError::NotFound("merchant"))?;
    Ok(Json(Page {
        data: keys,
        has_more: false,
    }))
}

/// A revoked key.
#[derive(Debug, Serialize, ToSchema)]
pub struct RevokedKey {
    pub id: String,
    /// When it stopped working (RFC 3339); the first revocation's time when repeated.
    pub revoked_at: String,
}

/// `POST /merchants/{id}/api-keys/{key_id}/revoke`: the key stops working now, on
/// every api replica (a leaked key is not left its rotation overlap).
#[utoipa::path(
    post,
    path = "/merchants/{id}/api-keys/{key_id}/revoke",
    tag = "admin",
    summary = "Revoke a merchant's API key at once",
    security(("admin_token" = [])),
    params(
        ("id" = String, Path, description = "The merchant, `mer_…`."),
        ("key_id" = String, Path, description = "The key, `key_…` (from `GET /merchants/{id}/api-keys`)."),
    ),
    responses(
        (status = 200, description = "Revoked (or already revoked).", body = RevokedKey),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 503, response = ServiceUnavailable),
    )
)]
async fn revoke_api_key(
    _: Admin,
    State(state): State<AppState>,
    PathParam((id, key_id)): PathParam<(String, String)>,
) -> Result<Json<RevokedKey>> {
    let id = merchant_id(&id)?;
    let revoked_at = merchants::revoke_api_key(&state.pool, &id, &key_id)
        .await?
        .ok_or(ApiError::NotFound("API key"))?;
    tracing::info!(merchant_id = %id, key_id, "API key revoked");
    Ok(Json(RevokedKey {
        id: key_id,
        revoked_at: timestamp(revoked_at),
    }))
}

/// `PUT /merchants/{id}/webhook`'s body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookRequest {
    /// An absolute http(s) URL; `null`: no webhooks.
    #[schema(example = "https://merchant.example/webhooks", format = "uri")]
    pub webhook_url: Option<String>,
}

/// `PUT /merchants/{id}/webhook {webhook_url}` (null: no webhooks).
#[utoipa::path(
    put,
    path = "/merchants/{id}/webhook",
    tag = "admin",
    summary = "Point a merchant's webhooks",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "The merchant, `mer_…`.")),
    request_body(content((WebhookRequest = "application/json"))),
    responses(
        (status = 200, description = "Set."),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = UnprocessableEntity),
        (status = 503, response = ServiceUnavailable),
    )
)]
async fn set_webhook(
    _: Admin,
    State(state): State<AppState>,
    PathParam(id): PathParam<String>,
    raw: RawBody,
) -> Result<StatusCode> {
    let id = merchant_id(&id)?;
    let request: WebhookRequest = body(&raw)?;
    if let Some(url) = &request.webhook_url {
        check_webhook_url(&state, url).await?;
    }
    if !merchants::set_webhook_url(&state.pool, &id, request.webhook_url.as_deref())
        .await
        .map_err(ApiError::Internal)?
    {
        return Err(ApiError::NotFound("merchant"));
    }
    Ok(StatusCode::OK)
}

/// `GET /merchants/{id}/webhook`: where the merchant's webhooks go and how that endpoint
/// is doing — enabled, failing, or disabled with its reason and next probe.
#[utoipa::path(
    get,
    path = "/merchants/{id}/webhook",
    tag = "admin",
    summary = "A merchant's webhook endpoint and its health",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "The merchant, `mer_…`.")),
    responses(
        (status = 200, description = "The endpoint.", body = merchants::WebhookEndpoint),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 503, response = ServiceUnavailable),
    )
)]
async fn webhook_endpoint(
    _: Admin,
    State(state): State<AppState>,
    PathParam(id): PathParam<String>,
) -> Result<Json<merchants::WebhookEndpoint>> {
    let id = merchant_id(&id)?;
    merchants::webhook_endpoint(&state.pool, &id)
        .await?
        .map(Json)
        .ok_or(ApiError::NotFound("merchant"))
}

/// A new webhook signing secret, shown this once.
#[derive(Serialize, ToSchema)]
pub struct RotatedWebhookSecret {
    #[schema(example = "whsec_…")]
    pub webhook_secret: String,
    /// Until then (RFC 3339) every webhook carries a second `v1,` signature made with
    /// the previous secret, so receivers can switch at their own pace.
    pub previous_secret_expires_at: String,
}

/// `POST /merchants/{id}/webhook-secret`: rotates the signing secret; the previous one
/// keeps signing beside it for `callback_dispatcher.secret_rotation_overlap_ms`.
#[utoipa::path(
    post,
    path = "/merchants/{id}/webhook-secret",
    tag = "admin",
    summary = "Rotate a merchant's webhook signing secret",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "The merchant, `mer_…`.")),
    responses(
        (status = 201, description = "A new secret; the previous one signs too until `previous_secret_expires_at`.", body = RotatedWebhookSecret),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 503, response = ServiceUnavailable),
    )
)]
async fn rotate_webhook_secret(
    _: Admin,
    State(state): State<AppState>,
    PathParam(id): PathParam<String>,
) -> Result<(StatusCode, Json<RotatedWebhookSecret>)> {
    let id = merchant_id(&id)?;
    let overlap = std::time::Duration::from_millis(
        state
            .settings
            .callback_dispatcher
            .secret_rotation_overlap_ms,
    );
    let (webhook_secret, until) =
        merchants::rotate_webhook_secret(&state.pool, &state.secrets, &id, overlap)
            .await
            .map_err(ApiError::Internal)?
            .ok_or(ApiError::NotFound("merchant"))?;
    tracing::info!(merchant_id = %id, "webhook secret rotated");
    Ok((
        StatusCode::CREATED,
        Json(RotatedWebhookSecret {
            webhook_secret,
            previous_secret_expires_at: timestamp(until),
        }),
    ))
}

/// `PUT /customers`'s body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomerRequest {
    /// `mer_…`.
    #[schema(pattern = "^mer_[0-9a-fA-F]{32}$")]
    pub merchant_id: String,
    #[schema(example = "u-1", min_length = 1, max_length = 255)]
    pub user_id: String,
    /// ISO 3166-1 alpha-2.
    #[schema(example = "DE", pattern = "^[A-Z]{2}$")]
    pub country: String,
}

/// `PUT /customers {merchant_id, user_id, country}`: the country a user's payments are
/// routed by when they name none.
#[utoipa::path(
    put,
    path = "/customers",
    tag = "admin",
    summary = "Set a customer's country",
    security(("admin_token" = [])),
    request_body(content((CustomerRequest = "application/json"))),
    responses(
        (status = 200, description = "Set."),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = UnprocessableEntity),
        (status = 503, response = ServiceUnavailable),
    )
)]
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
#[utoipa::path(
    get,
    path = "/gateways",
    tag = "admin",
    summary = "List gateways",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Every gateway, with its circuit's state.", body = Page<GatewayView>),
        (status = 401, response = Unauthorized),
        (status = 503, response = ServiceUnavailable),
    )
)]
async fn list_gateways(_: Admin, State(state): State<AppState>) -> Result<Json<Page<GatewayView>>> {
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
    tag = "admin",
    summary = "Create or replace a gateway",
    security(("admin_token" = [])),
    params(("code" = String, Path, description = "The gateway's code.")),
    request_body(content((GatewayRequest = "application/json"))),
    responses(
        (status = 200, description = "Stored."),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = UnprocessableEntity),
        (status = 503, response = ServiceUnavailable),
    )
)]
async fn upsert_gateway(
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
    tag = "admin",
    summary = "Enable a gateway",
    security(("admin_token" = [])),
    params(("code" = String, Path, description = "The gateway's code.")),
    responses(
        (status = 200, description = "Enabled."),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 503, response = ServiceUnavailable),
    )
)]
async fn enable_gateway(
    _: Admin,
    State(state): State<AppState>,
    PathParam(code): PathParam<String>,
) -> Result<StatusCode> {
    set_enabled(&state, &code, true).await
}

#[utoipa::path(
    post,
    path = "/gateways/{code}/disable",
    tag = "admin",
    summary = "Disable a gateway",
    security(("admin_token" = [])),
    params(("code" = String, Path, description = "The gateway's code.")),
    responses(
        (status = 200, description = "Disabled: no payment is routed to it."),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 503, response = ServiceUnavailable),
    )
)]
async fn disable_gateway(
    _: Admin,
    State(state): State<AppState>,
    PathParam(code): PathParam<String>,
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

/// A route as stored.
#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
pub struct RouteView {
    pub id: i64,
    pub country: Option<String>,
    pub currency: Option<String>,
    pub kind: Option<String>,
    pub priority: i32,
    pub gateway_code: String,
}

/// `GET /routes`, by country (default routes last), then priority.
#[utoipa::path(
    get,
    path = "/routes",
    tag = "admin",
    summary = "List routes",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "By country (default routes last), then priority.", body = Page<RouteView>),
        (status = 401, response = Unauthorized),
        (status = 503, response = ServiceUnavailable),
    )
)]
async fn list_routes(_: Admin, State(state): State<AppState>) -> Result<Json<Page<RouteView>>> {
    Ok(Json(Page::whole(route_views(&state.pool).await?)))
}

/// Every route, by country (default routes last), then priority.
pub async fn route_views(pool: &sqlx::PgPool) -> sqlx::Result<Vec<RouteView>> {
    sqlx::query_as(
        "SELECT id, trim(country) AS country, trim(currency) AS currency, kind, priority, gateway_code
           FROM gateway_route ORDER BY country NULLS LAST, priority, id",
    )
    .fetch_all(pool)
    .await
}

/// `PUT /routes {country?, currency?, kind?, priority, gateway_code}`: creates a route or
/// changes its priority.
#[utoipa::path(
    put,
    path = "/routes",
    tag = "admin",
    summary = "Create a route or change its priority",
    security(("admin_token" = [])),
    request_body(content((Route = "application/json"))),
    responses(
        (status = 200, description = "Stored."),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = UnprocessableEntity),
        (status = 503, response = ServiceUnavailable),
    )
)]
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

#[utoipa::path(
    delete,
    path = "/routes/{id}",
    tag = "admin",
    summary = "Delete a route",
    security(("admin_token" = [])),
    params(("id" = i64, Path, description = "The route's id.")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 503, response = ServiceUnavailable),
    )
)]
async fn delete_route(
    _: Admin,
    State(state): State<AppState>,
    PathParam(id): PathParam<i64>,
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
    tag = "admin",
    summary = "Rejected callbacks",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The latest 100 callbacks kept but not applied.", body = Page<RejectedCallback>),
        (status = 401, response = Unauthorized),
        (status = 503, response = ServiceUnavailable),
    )
)]
async fn rejected_callbacks(
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
    tag = "admin",
    summary = "Payments whose retries ran out",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Pending and unresolved at a gateway, or failed because every gateway stayed down.", body = Page<DeadLettered>),
        (status = 401, response = Unauthorized),
        (status = 503, response = ServiceUnavailable),
    )
)]
async fn dead_lettered_payments(
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
    tag = "admin",
    summary = "Payments under review",
    description = "Payments Paygate flagged for a human: a gateway's word contradicts their \
                   status (`charged_but_failed`, `contradicting_answer`) or nothing settles them \
                   (`no_callback`). Their status never changed for it; resolve a review with \
                   `POST /transactions/{id}/review/resolve`.",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The latest 100 payments under review.", body = Page<UnderReview>),
        (status = 401, response = Unauthorized),
        (status = 503, response = ServiceUnavailable),
    )
)]
async fn payments_under_review(
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
