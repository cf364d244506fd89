//! `/admin/v1/outbox/…`: the events the outbox relay set aside for good (an unknown
//! topic, an authorization failure, a message too large), with their transaction, and
//! re-sending one once the cause is fixed (see [`crate::admin::interventions::resend`]).

use axum::extract::{FromRequest as _, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::Json;
use serde::Deserialize;
use utoipa::ToSchema;

use super::{body, Admin};
use crate::admin::interventions::{self, Actor, Resent, SetAsideEvent};
use crate::http::error::responses::AdminChangeErrors;
use crate::http::error::{ApiError, Result};
use crate::http::extract::PathParam;
use crate::http::format::RawBody;
use crate::merchant::queries::Page;
use crate::AppState;

/// `GET /outbox/set-aside`.
#[utoipa::path(
    get,
    path = "/outbox/set-aside",
    summary = "Events the outbox set aside",
    description = "The latest 100 events the broker refused for good, newest first, each with its \
                   transaction and the reason. They are never published until re-sent.",
    responses(
        (status = 200, description = "Newest first.", body = Page<SetAsideEvent>),
    )
)]
pub(super) async fn set_aside(
    _: Admin,
    State(state): State<AppState>,
) -> Result<Json<Page<SetAsideEvent>>> {
    Ok(Json(Page::whole(
        interventions::set_aside(&state.pool).await?,
    )))
}

/// `POST /outbox/{event_id}/resend`'s body, optional.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResendRequest {
    /// Why (what was fixed), kept in the payment's history.
    #[schema(example = "topic created", min_length = 1, max_length = 1000)]
    pub reason: Option<String>,
    /// Who; absent: "admin token holder".
    #[schema(example = "Ada", min_length = 1, max_length = 100)]
    pub operator: Option<String>,
}

/// `POST /outbox/{event_id}/resend`.
#[utoipa::path(
    post,
    path = "/outbox/{event_id}/resend",
    summary = "Re-send an event the outbox set aside",
    description = "Puts the event back in the outbox queue once the cause is fixed; the relay \
                   publishes it like any other, in its transaction's order. Recorded in the \
                   payment's history as `event.resent` with who and why. An event that is not set \
                   aside (already re-sent, or published) is left as it is (`changed: false`).",
    params(("event_id" = String, Path, description = "The event, `evt_…`.")),
    request_body(content((ResendRequest = "application/json")), description = "Optional."),
    responses(
        (status = 200, description = "Queued again, or already (`changed: false`).", body = Resent),
        AdminChangeErrors,
    )
)]
pub(super) async fn resend(
    _: Admin,
    State(state): State<AppState>,
    PathParam(event_id): PathParam<String>,
    request: Request,
) -> Result<Json<Resent>> {
    // No body (and so no Content-Type) is a resend with no reason given.
    let request: ResendRequest = if request.headers().contains_key(CONTENT_TYPE) {
        body(&RawBody::from_request(request, &state).await?)?
    } else {
        ResendRequest::default()
    };
    let actor = Actor::admin_api(request.operator.as_deref())?;
    let reason = request
        .reason
        .as_deref()
        .map(|r| interventions::note("reason", r))
        .transpose()?;
    if !event_id.starts_with("evt_") {
        return Err(ApiError::NotFound("event"));
    }
    Ok(Json(
        interventions::resend(&state.pool, &event_id, &actor, reason).await?,
    ))
}
