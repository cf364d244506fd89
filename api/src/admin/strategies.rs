//! Routing policies (`/routing`): per route set — a country's routes, or the default
//! routes `*` — the strategy that orders its candidates and the rules that pick them
//! (see `paygate_common::gateway::policy`). A policy is checked whole before it is
//! stored, every change is recorded with who made it (`/routing/changes`), and the
//! payment-processors reload on the change notification.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

use paygate_common::gateway::policy::{
    self, PolicyChange, PolicyError, RoutingPolicy, StoredPolicy,
};

use super::interventions::Actor;
use super::{body, Admin};
use crate::http::error::responses::{AdminChangeErrors, NotFound};
use crate::http::error::{ApiError, Result};
use crate::http::extract::PathParam;
use crate::http::format::RawBody;
use crate::merchant::queries::Page;
use crate::AppState;

/// How many recorded changes `GET /routing/changes` shows.
const CHANGES_SHOWN: i64 = 100;

/// `GET /routing`: every route set's policy (a set without one routes by priority).
#[utoipa::path(
    get,
    path = "/routing",
    summary = "List routing policies",
    responses(
        (status = 200, description = "By route set.", body = Page<StoredPolicy>),
    )
)]
pub(super) async fn list_policies(
    _: Admin,
    State(state): State<AppState>,
) -> Result<Json<Page<StoredPolicy>>> {
    Ok(Json(Page::whole(policy::all_policies(&state.pool).await?)))
}

/// `PUT /routing/{route_set}`: replaces a route set's policy.
#[utoipa::path(
    put,
    path = "/routing/{route_set}",
    summary = "Set a route set's strategy and rules",
    description = "Replaces the policy of a route set (`*` for the default routes, or a \
                   country code). Checked whole: every gateway named exists, a \
                   `volume_split`'s percentages sum to 100, no rule is without gateways, \
                   amounts and currencies are valid. The body may also carry `operator` \
                   (who is changing it, recorded in `/routing/changes`). Every \
                   payment-processor applies it at once (the change notification).",
    params(("route_set" = String, Path, description = "`*` (the default routes) or an ISO 3166-1 alpha-2 code.")),
    request_body(content((RoutingPolicy = "application/json", example = json!({
        "strategy": "success_rate", "exploration_percent": 10, "min_sample": 20, "window_size": 200,
        "rules": [{"method": "card", "gateways": ["simcard"]},
                  {"min_amount": "1000.00", "gateways": ["simsoap", "simjson"]}],
        "operator": "Ada"})))),
    responses(
        (status = 200, description = "Stored; the policy as stored.", body = StoredPolicy),
        AdminChangeErrors,
    )
)]
pub(super) async fn put_policy(
    _: Admin,
    State(state): State<AppState>,
    PathParam(route_set): PathParam<String>,
    raw: RawBody,
) -> Result<Json<StoredPolicy>> {
    let mut request: serde_json::Value = body(&raw)?;
    // `operator` is the request's, not the policy's: taken out before the policy (which
    // refuses unknown fields) is read.
    let operator = match request.as_object_mut().and_then(|o| o.remove("operator")) {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(name)) => Some(name),
        Some(_) => return Err(ApiError::invalid("operator", "a name, as a string")),
    };
    let actor = Actor::admin_api(operator.as_deref())?;
    let policy: RoutingPolicy =
        serde_json::from_value(request).map_err(|e| ApiError::invalid("body", e.to_string()))?;
    policy::check_route_set(&route_set).map_err(refused)?;
    let gateways = paygate_common::gateway::all(&state.pool).await?;
    policy
        .check(&|code| gateways.iter().any(|g| g.code == code))
        .map_err(refused)?;
    let mut tx = state.pool.begin().await?;
    policy::store_policy(&mut tx, &route_set, &policy, actor.as_str()).await?;
    tx.commit().await?;
    tracing::info!(
        route_set,
        actor = actor.as_str(),
        strategy = policy.strategy.as_str(),
        "routing policy changed"
    );
    let stored = policy::all_policies(&state.pool)
        .await?
        .into_iter()
        .find(|p| p.route_set == route_set)
        .ok_or(ApiError::NotFound("routing policy"))?;
    Ok(Json(stored))
}

/// `DELETE /routing/{route_set}`: the set routes by priority again.
#[utoipa::path(
    delete,
    path = "/routing/{route_set}",
    summary = "Remove a route set's policy",
    params(("route_set" = String, Path, description = "`*` or a country code.")),
    responses(
        (status = 204, description = "Removed; the set routes by priority."),
        (status = 404, response = NotFound),
    )
)]
pub(super) async fn delete_policy(
    _: Admin,
    State(state): State<AppState>,
    PathParam(route_set): PathParam<String>,
) -> Result<StatusCode> {
    let actor = Actor::admin_api(None)?;
    let mut tx = state.pool.begin().await?;
    if !policy::delete_policy(&mut tx, &route_set, actor.as_str()).await? {
        return Err(ApiError::NotFound("routing policy"));
    }
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /routing/changes`: the latest changes of every policy, newest first.
#[utoipa::path(
    get,
    path = "/routing/changes",
    summary = "List changes of routing policies",
    responses(
        (status = 200, description = "The latest 100, newest first: who, when, and what the policy became (`null`: removed).", body = Page<PolicyChange>),
    )
)]
pub(super) async fn list_changes(
    _: Admin,
    State(state): State<AppState>,
) -> Result<Json<Page<PolicyChange>>> {
    Ok(Json(Page::whole(
        policy::changes(&state.pool, CHANGES_SHOWN).await?,
    )))
}

/// A policy that breaks a rule: `422 validation_failed` naming the input at fault.
fn refused(error: PolicyError) -> ApiError {
    ApiError::invalid(&error.field, error.message)
}
