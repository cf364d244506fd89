//! `/admin/v1/transactions/{id}/…`: an operator re-drives a pending payment, releases an
//! ambiguous one from its gateway, or resolves a review. The rules (fenced, idempotent,
//! recorded with who and why) are [`crate::admin::interventions`]'s; these routes read the
//! request and answer `{transaction, changed}`.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use paygate_common::domain::TransactionId;
use paygate_common::events::TransactionView;

use super::{body, Admin};
use crate::admin::interventions::{self, Actor, Intervention};
use crate::http::error::responses::AdminChangeErrors;
use crate::http::error::{ApiError, Result};
use crate::http::extract::PathParam;
use crate::http::format::RawBody;
use crate::AppState;

/// Why an operator acts, and who.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActionRequest {
    /// Why, kept in the payment's history: 1 to 1000 characters.
    #[schema(
        example = "gateway confirmed by phone it holds nothing for this reference",
        min_length = 1,
        max_length = 1000
    )]
    pub reason: String,
    /// Who, kept in the payment's history: the operator's name (the admin token itself
    /// names nobody). Absent: "admin token holder".
    #[schema(example = "Ada", min_length = 1, max_length = 100)]
    pub operator: Option<String>,
}

/// `POST /transactions/{id}/release`'s body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseRequest {
    /// The gateway the payment names, which the operator confirmed holds nothing for it.
    /// If the payment names another one by now, nothing is released (`422
    /// gateway_changed`).
    #[schema(example = "simjson")]
    pub gateway: String,
    /// Why, kept in the payment's history: 1 to 1000 characters.
    #[schema(
        example = "simjson support confirmed it holds nothing for this reference",
        min_length = 1,
        max_length = 1000
    )]
    pub reason: String,
    /// Who; absent: "admin token holder".
    #[schema(example = "Ada", min_length = 1, max_length = 100)]
    pub operator: Option<String>,
}

/// `POST /transactions/{id}/review/resolve`'s body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResolveRequest {
    /// What was found and done, kept in the payment's history: 1 to 1000 characters.
    #[schema(
        example = "refunded the customer at the gateway, ticket 4711",
        min_length = 1,
        max_length = 1000
    )]
    pub note: String,
    /// Who; absent: "admin token holder".
    #[schema(example = "Ada", min_length = 1, max_length = 100)]
    pub operator: Option<String>,
}

/// What an operator's action left.
#[derive(Debug, Serialize, ToSchema)]
pub struct ActionResult {
    /// The payment as it is now.
    pub transaction: TransactionView,
    /// Whether this call changed it; `false`: a repeat of an action already taken, or
    /// nothing left to do.
    pub changed: bool,
}

impl From<Intervention> for ActionResult {
    fn from(done: Intervention) -> Self {
        ActionResult {
            transaction: TransactionView::from(&done.transaction.to_proto()),
            changed: done.changed,
        }
    }
}

/// The transaction a path names; an unreadable id is one that does not exist.
fn transaction_id(id: &str) -> Result<TransactionId> {
    id.parse().map_err(|_| ApiError::NotFound("transaction"))
}

/// Who acts (the `operator` a call names) and why (`text`, the input `field`), checked.
fn who_and_why<'a>(
    operator: Option<&str>,
    field: &'static str,
    text: &'a str,
) -> Result<(Actor, &'a str)> {
    Ok((
        Actor::admin_api(operator)?,
        interventions::note(field, text)?,
    ))
}

/// `POST /transactions/{id}/redrive {reason, operator?}`.
#[utoipa::path(
    post,
    path = "/transactions/{id}/redrive",
    summary = "Re-drive a pending payment",
    description = "Asks for the payment again on `paygate.payments.requested` with a fresh budget of \
                   attempts (a dead-lettered, unresolved or stuck payment): one naming a gateway is \
                   asked about at that gateway only, one naming none is routed. Clears its unresolved \
                   mark. Fenced (a version bump) and recorded as `payment.redriven` with who and why. \
                   Only a pending payment (`422 not_pending`); a repeat before anything else happened \
                   to the payment changes nothing (`changed: false`).",
    params(("id" = String, Path, description = "The transaction, `txn_…`.")),
    request_body(content((ActionRequest = "application/json"))),
    responses(
        (status = 200, description = "Re-driven, or already (`changed: false`).", body = ActionResult),
        AdminChangeErrors,
    )
)]
pub(super) async fn redrive(
    _: Admin,
    State(state): State<AppState>,
    PathParam(id): PathParam<String>,
    raw: RawBody,
) -> Result<Json<ActionResult>> {
    let request: ActionRequest = body(&raw)?;
    let (actor, reason) = who_and_why(request.operator.as_deref(), "reason", &request.reason)?;
    let done = interventions::redrive(&state.pool, &transaction_id(&id)?, &actor, reason).await?;
    Ok(Json(done.into()))
}

/// `POST /transactions/{id}/release {gateway, reason, operator?}`.
#[utoipa::path(
    post,
    path = "/transactions/{id}/release",
    summary = "Release an ambiguous payment to other gateways",
    description = "**Only after confirming with the gateway the payment names that it holds nothing \
                   for this reference** (its status query, its support): the gateway may hold the \
                   money, which is why Paygate never moves such a payment on by itself; `gateway` \
                   names the one confirmed with. Clears the gateway (a fenced version bump), records \
                   `gateway.released` with who and why, and re-drives the payment, which is then \
                   routed from the top of its routes. Only a pending payment that names that gateway \
                   (`422 not_pending`, `422 no_gateway`, `422 gateway_changed` when it names another \
                   by now); a repeat right after a release changes nothing (`changed: false`).",
    params(("id" = String, Path, description = "The transaction, `txn_…`.")),
    request_body(content((ReleaseRequest = "application/json"))),
    responses(
        (status = 200, description = "Released and re-driven, or already (`changed: false`).", body = ActionResult),
        AdminChangeErrors,
    )
)]
pub(super) async fn release(
    _: Admin,
    State(state): State<AppState>,
    PathParam(id): PathParam<String>,
    raw: RawBody,
) -> Result<Json<ActionResult>> {
    let request: ReleaseRequest = body(&raw)?;
    let (actor, reason) = who_and_why(request.operator.as_deref(), "reason", &request.reason)?;
    let id = transaction_id(&id)?;
    let gateway = request.gateway.trim();
    let done = interventions::release(&state.pool, &id, gateway, &actor, reason).await?;
    Ok(Json(done.into()))
}

/// `POST /transactions/{id}/review/resolve {note, operator?}`.
#[utoipa::path(
    post,
    path = "/transactions/{id}/review/resolve",
    summary = "Resolve a payment's review",
    description = "Closes the payment's `review` (a contradiction, a payment with no callback) with \
                   the operator's note, recorded as `review.resolved` with who. The status never \
                   changes. A payment under no review is left as it is (`changed: false`).",
    params(("id" = String, Path, description = "The transaction, `txn_…`.")),
    request_body(content((ResolveRequest = "application/json"))),
    responses(
        (status = 200, description = "Resolved, or nothing under review (`changed: false`).", body = ActionResult),
        AdminChangeErrors,
    )
)]
pub(super) async fn resolve_review(
    _: Admin,
    State(state): State<AppState>,
    PathParam(id): PathParam<String>,
    raw: RawBody,
) -> Result<Json<ActionResult>> {
    let request: ResolveRequest = body(&raw)?;
    let (actor, note) = who_and_why(request.operator.as_deref(), "note", &request.note)?;
    let id = transaction_id(&id)?;
    let done = interventions::resolve_review(&state.pool, &id, &actor, note).await?;
    Ok(Json(done.into()))
}
