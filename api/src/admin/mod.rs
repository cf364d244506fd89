//! The admin API under `/admin/v1`, for operators, behind `Authorization: Bearer <admin
//! token>` (from `admin.token`; compared in constant time; missing or wrong is 401, and
//! with no token configured every call is 401). It creates merchants, rotates their API
//! keys, points their webhooks, sets customers' countries, steers gateways and routes,
//! and lists what needs a human: rejected callbacks and payments left unresolved or
//! failed by their retries. The demo seed calls the same functions.
//!
//! [`router`] is the table of every admin route, and says once what they all share in
//! the OpenAPI document (the `admin` tag, the admin token, the 401 and 503 answers); each
//! handler's `#[utoipa::path]` says only what is its own. One file per resource:
//! [`new_merchant`] (`/merchants`), [`api_keys`], [`webhooks`] and [`webhook_keys`] (a
//! merchant's credentials), [`endpoints`] (a merchant's webhook endpoints, stored by
//! [`endpoint_records`], tested by [`endpoint_ping`]), [`limits`] (payout limits),
//! [`customers`], [`gateways`], [`routing`] (`/routes`), [`strategies`] (`/routing`:
//! strategies and rules per route set), [`attention`] (what needs a human), [`payments`] (operators'
//! actions on payments), [`outbox`] (its set-aside events) and [`settlement`]
//! (reconciliation runs against the gateways' reports, their differences and books). Beside them, what only
//! operators (and the demo seed) reach: creating merchants and their credentials
//! ([`merchants`]), interventions on payments Paygate cannot settle alone
//! ([`interventions`], the console's too) and the demo seed ([`demo`]).

pub mod demo;
pub mod interventions;
pub mod merchants;

mod api_keys;
mod attention;
mod customers;
pub(crate) mod endpoint_ping;
pub(crate) mod endpoint_records;
pub(crate) mod endpoints;
mod gateways;
mod limits;
mod new_merchant;
mod outbox;
mod payments;
mod routing;
pub mod settlement;
mod strategies;
mod webhook_keys;
mod webhooks;

// What the console reads through the admin API's own queries.
pub use attention::{
    dead_lettered_list, rejected_callback_list, under_review_list, DeadLettered, RejectedCallback,
    UnderReview,
};
pub use gateways::{gateway_views, GatewayView};
pub use routing::{route_views, RouteView};

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use chrono::{DateTime, Utc};
use secrecy::ExposeSecret as _;
use sha2::{Digest, Sha256};
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::SecurityRequirement;
use utoipa::openapi::Ref;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use paygate_common::events::timestamp;

use crate::http::error::{ApiError, Result};
pub(crate) use crate::http::extract::merchant_id;
use crate::http::extract::parse_json;
use crate::http::format::RawBody;
use crate::AppState;

/// The admin routes, mounted under `/admin/v1`, one line each; each handler's
/// `#[utoipa::path]` gives its path and method, so a route here is a documented route.
/// What every one of them shares is added to its operation here, once: see
/// [`admin_operation`].
pub fn router() -> OpenApiRouter<AppState> {
    let mut router = OpenApiRouter::new()
        .routes(routes!(new_merchant::create_merchant))
        .routes(routes!(api_keys::rotate_api_key, api_keys::list_api_keys))
        .routes(routes!(api_keys::revoke_api_key))
        .routes(routes!(webhooks::set_webhook, webhooks::webhook_endpoint))
        .routes(routes!(webhooks::rotate_webhook_secret))
        .routes(routes!(webhook_keys::rotate_signing_key))
        .routes(routes!(
            endpoints::create_endpoint,
            endpoints::list_endpoints
        ))
        .routes(routes!(
            endpoints::endpoint,
            endpoints::update_endpoint,
            endpoints::delete_endpoint
        ))
        .routes(routes!(endpoints::rotate_endpoint_secret))
        .routes(routes!(endpoints::test_endpoint))
        .routes(routes!(customers::put_customer))
        .routes(routes!(gateways::list_gateways))
        .routes(routes!(gateways::upsert_gateway))
        .routes(routes!(gateways::enable_gateway))
        .routes(routes!(gateways::disable_gateway))
        .routes(routes!(routing::list_routes, routing::upsert_route))
        .routes(routes!(routing::delete_route))
        .routes(routes!(strategies::list_policies))
        .routes(routes!(strategies::put_policy, strategies::delete_policy))
        .routes(routes!(strategies::list_changes))
        .routes(routes!(attention::rejected_callbacks))
        .routes(routes!(attention::dead_lettered_payments))
        .routes(routes!(attention::payments_under_review))
        .routes(routes!(payments::redrive))
        .routes(routes!(payments::release))
        .routes(routes!(payments::resolve_review))
        .routes(routes!(outbox::set_aside))
        .routes(routes!(outbox::resend))
        .routes(routes!(limits::set_limits, limits::limits))
        .routes(routes!(settlement::create_run, settlement::list_runs))
        .routes(routes!(settlement::list_differences))
        .routes(routes!(settlement::resolve))
        .routes(routes!(settlement::list_days));
    for item in router.get_openapi_mut().paths.paths.values_mut() {
        [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        .for_each(admin_operation);
    }
    router
}

/// What every admin operation shares, said here rather than in each handler's
/// annotation: the `admin` tag, the admin token as its security requirement, and the
/// shared 401 (no or a wrong token: the [`Admin`] extractor every handler takes) and
/// 503 (a dependency down) answers.
fn admin_operation(operation: &mut Operation) {
    operation.tags = Some(vec!["admin".to_owned()]);
    operation.security = Some(vec![SecurityRequirement::new(
        "admin_token",
        Vec::<String>::new(),
    )]);
    for (status, response) in [("401", "Unauthorized"), ("503", "ServiceUnavailable")] {
        operation
            .responses
            .responses
            .entry(status.to_owned())
            .or_insert_with(|| Ref::from_response_name(response).into());
    }
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
    check_egress(state, "webhook_url", url).await
}

/// [`check_webhook_url`] for any input that names where webhooks go (an endpoint's
/// `url`, a payment's `notification_url`): a refusal is a 422 on `field`.
pub(crate) async fn check_egress(state: &AppState, field: &str, url: &str) -> Result<()> {
    state
        .settings
        .callback_dispatcher
        .egress_policy()
        .check_url_resolved(url)
        .await
        .map(drop)
        .map_err(|refusal| ApiError::invalid(field, refusal.to_string()))
}

/// An optional time as RFC 3339 (`serialize_with` of the admin views).
pub(crate) fn optional_rfc3339<S: serde::Serializer>(
    at: &Option<DateTime<Utc>>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    match at {
        Some(at) => s.serialize_some(&timestamp(*at)),
        None => s.serialize_none(),
    }
}
