//! The console's buttons for operators' actions on a payment — re-drive, release to
//! other gateways, resolve a review, re-send a set-aside event — each a form carrying
//! the session's CSRF token and a reason, recorded under the name the operator signed in
//! with. The rules are [`crate::admin::interventions`]'s, the same the admin API applies; the
//! operator is taken back to the payment's page. What each button shows on that page is
//! [`forms`].

use axum::extract::{Path, State};
use axum::response::Response;
use axum::Form;
use maud::{html, Markup};
use serde::Deserialize;

use paygate_common::domain::{Status, TransactionId};
use paygate_common::transactions::TransactionRecord;

use super::error::{ConsoleError, Result};
use super::redirect;
use super::session::Operator;
use crate::admin::interventions::{self, Actor};
use crate::AppState;

/// An action's form: the CSRF token and why (and, to release, from which gateway).
#[derive(Debug, Deserialize)]
pub struct ActionForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    gateway: String,
}

/// A payment action's form, checked: the session's CSRF token, the payment, who (the
/// signed-in operator) and why (the form's text, as `field`).
fn checked<'a>(
    operator: &Operator,
    id: &str,
    form: &'a ActionForm,
    field: &'static str,
) -> Result<(TransactionId, Actor, &'a str)> {
    operator.check_csrf(&form.csrf)?;
    let id = id
        .parse()
        .map_err(|_| ConsoleError::NotFound("transaction"))?;
    let why = interventions::note(field, &form.reason)?;
    Ok((id, Actor::console(&operator.name)?, why))
}

fn back_to(id: &TransactionId) -> Response {
    redirect(&format!("/console/transactions/{id}#actions"))
}

/// `POST /console/transactions/{id}/redrive`.
pub async fn redrive(
    State(state): State<AppState>,
    operator: Operator,
    Path(id): Path<String>,
    Form(form): Form<ActionForm>,
) -> Result<Response> {
    let (id, actor, reason) = checked(&operator, &id, &form, "reason")?;
    interventions::redrive(&state.pool, &id, &actor, reason).await?;
    Ok(back_to(&id))
}

/// `POST /console/transactions/{id}/release`.
pub async fn release(
    State(state): State<AppState>,
    operator: Operator,
    Path(id): Path<String>,
    Form(form): Form<ActionForm>,
) -> Result<Response> {
    let (id, actor, reason) = checked(&operator, &id, &form, "reason")?;
    interventions::release(&state.pool, &id, form.gateway.trim(), &actor, reason).await?;
    Ok(back_to(&id))
}

/// `POST /console/transactions/{id}/review/resolve`.
pub async fn resolve_review(
    State(state): State<AppState>,
    operator: Operator,
    Path(id): Path<String>,
    Form(form): Form<ActionForm>,
) -> Result<Response> {
    let (id, actor, note) = checked(&operator, &id, &form, "note")?;
    interventions::resolve_review(&state.pool, &id, &actor, note).await?;
    Ok(back_to(&id))
}

/// `POST /console/events/{id}/resend`.
pub async fn resend(
    State(state): State<AppState>,
    operator: Operator,
    Path(event_id): Path<String>,
    Form(form): Form<ActionForm>,
) -> Result<Response> {
    operator.check_csrf(&form.csrf)?;
    let reason = match form.reason.trim() {
        "" => None,
        given => Some(interventions::note("reason", given)?),
    };
    let resent = interventions::resend(
        &state.pool,
        &event_id,
        &Actor::console(&operator.name)?,
        reason,
    )
    .await?;
    Ok(redirect(&format!(
        "/console/transactions/{}#timeline",
        resent.transaction_id
    )))
}

/// The action buttons a payment's page shows, for what its state allows: re-drive and
/// release while pending (release only when it names a gateway), resolve while under
/// review. Set-aside events get their button in the timeline ([`resend_form`]).
pub fn forms(operator: &Operator, record: &TransactionRecord) -> Markup {
    let id = &record.id;
    let under_review = record.review_reason.is_some();
    let pending = record.status == Status::Pending;
    html! {
        @if pending {
            form.action method="post" action={ "/console/transactions/" (id) "/redrive" } {
                input type="hidden" name="csrf" value=(operator.csrf);
                label { "Reason " input type="text" name="reason" required maxlength="1000" size="40"; }
                button.redrive type="submit" { "Re-drive" }
                span.muted { " Asks for the payment again with fresh attempts: at the gateway it names, else by its routes." }
            }
            @if let Some(gateway) = &record.gateway {
                form.action method="post" action={ "/console/transactions/" (id) "/release" } {
                    input type="hidden" name="csrf" value=(operator.csrf);
                    input type="hidden" name="gateway" value=(gateway);
                    label { "Reason " input type="text" name="reason" required maxlength="1000" size="40" placeholder={ "confirmed with " (gateway) " that it holds nothing" }; }
                    button.release type="submit" { "Release from " (gateway) }
                    span.warning { " Only once " (gateway) " has confirmed it holds nothing for this payment: it is then offered to other gateways." }
                }
            }
        }
        @if under_review {
            form.action method="post" action={ "/console/transactions/" (id) "/review/resolve" } {
                input type="hidden" name="csrf" value=(operator.csrf);
                label { "Note " input type="text" name="reason" required maxlength="1000" size="40"; }
                button.resolve type="submit" { "Resolve review" }
            }
        }
        @if !pending && !under_review {
            p.muted { "No action: the payment is " (record.status) " and under no review." }
        }
    }
}

/// The button that re-sends a set-aside event.
pub fn resend_form(operator: &Operator, event_id: &str) -> Markup {
    html! {
        form.inline method="post" action={ "/console/events/" (event_id) "/resend" } {
            input type="hidden" name="csrf" value=(operator.csrf);
            input type="text" name="reason" maxlength="1000" size="16" placeholder="what was fixed";
            button.resend type="submit" data-event=(event_id) { "Re-send" }
        }
    }
}
