//! The routing table (`/routes`): which gateways a payment is offered to, by country,
//! currency and kind, in priority order (the console's too).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use paygate_common::domain::Country;
use paygate_common::gateway::{self, Route};

use super::{body, Admin};
use crate::http::error::responses::{
    BadRequest, NotFound, PayloadTooLarge, UnprocessableEntity, UnsupportedMediaType,
};
use crate::http::error::{ApiError, Result};
use crate::http::extract::PathParam;
use crate::http::format::RawBody;
use crate::merchant::queries::Page;
use crate::AppState;

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
    summary = "List routes",
    responses(
        (status = 200, description = "By country (default routes last), then priority.", body = Page<RouteView>),
    )
)]
pub(super) async fn list_routes(
    _: Admin,
    State(state): State<AppState>,
) -> Result<Json<Page<RouteView>>> {
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
    summary = "Create a route or change its priority",
    request_body(content((Route = "application/json"))),
    responses(
        (status = 200, description = "Stored."),
        (status = 400, response = BadRequest),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = UnprocessableEntity),
    )
)]
pub(super) async fn upsert_route(
    _: Admin,
    State(state): State<AppState>,
    raw: RawBody,
) -> Result<StatusCode> {
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
    summary = "Delete a route",
    params(("id" = i64, Path, description = "The route's id.")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 404, response = NotFound),
    )
)]
pub(super) async fn delete_route(
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
