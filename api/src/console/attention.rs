//! Needs a human: payments under review (a contradiction, a payment with no callback),
//! payments unresolved at a gateway (it may hold the money; nobody may fail them) with
//! why, payments dead-lettered because every gateway stayed down, events the outbox set
//! aside for good, callbacks kept but rejected, and webhooks that ran out of attempts —
//! each with its reason and a link to the transaction's whole life, where the
//! operator's actions are.
//!
//! These are the rows the services record when they give up (the same ones the admin
//! API lists); the dead-letter topics carry copies of the payments and unreadable
//! callbacks, which is why the console reads the database and not the topics.

use axum::extract::State;
use chrono::{DateTime, Utc};
use maud::{html, Markup};

use super::actions::resend_form;
use super::error::Result;
use super::layout::{self, ago, at, status_tag, Section};
use super::session::Operator;
use crate::admin::{dead_lettered_list, rejected_callback_list, under_review_list};
use crate::AppState;

/// A webhook delivery that ran out of attempts.
#[derive(Debug, sqlx::FromRow)]
struct FailedDelivery {
    id: String,
    transaction_id: String,
    event_type: String,
    attempt_count: i32,
    updated_at: DateTime<Utc>,
    last_error: Option<String>,
}

fn txn_link(id: &str) -> Markup {
    html! { a href={ "/console/transactions/" (id) } { code { (id) } } }
}

/// `GET /console/attention`.
pub async fn show(State(state): State<AppState>, operator: Operator) -> Result<Markup> {
    let dead = dead_lettered_list(&state.pool).await?;
    let (unresolved, failed): (Vec<_>, Vec<_>) = dead.iter().partition(|d| d.status == "pending");
    let rejected = rejected_callback_list(&state.pool).await?;
    let deliveries: Vec<FailedDelivery> = sqlx::query_as(
        "SELECT d.id, d.transaction_id, d.event_type, d.attempt_count, d.updated_at,
                (SELECT COALESCE(a.error, 'HTTP ' || a.status_code) FROM webhook_attempt a
                  WHERE a.delivery_id = d.id ORDER BY a.attempted_at DESC, a.id DESC LIMIT 1) AS last_error
           FROM webhook_delivery d WHERE d.status = 'failed'
          ORDER BY d.updated_at DESC LIMIT 100",
    )
    .fetch_all(&state.pool)
    .await?;
    let reviews = under_review_list(&state.pool).await?;
    let set_aside = crate::admin::interventions::set_aside(&state.pool).await?;
    let body = html! {
        h1 { "Needs a human" }

        h2 id="review" { "Under review (" (reviews.len()) ")" }
        p.muted { "A contradiction (charged, yet failed) or a payment Paygate cannot settle alone. The status never changes; resolve it on the payment's page once handled." }
        @if reviews.is_empty() { p.ok { "None." } } @else {
            table { thead { tr { th { "transaction" } th { "status" } th { "reason" } th { "since" } th { "detail" } } }
                tbody { @for r in &reviews { tr {
                    td { (txn_link(&r.id)) }
                    td { (status_tag(&r.status)) }
                    td { code { (r.review_reason) } }
                    td { @if let Some(since) = r.review_since { (at(since)) " (" (ago(since)) ")" } }
                    td { (r.review_detail.as_deref().unwrap_or("")) }
                } } }
            }
        }

        h2 id="unresolved" { "Unresolved (" (unresolved.len()) ")" }
        p.muted { "Pending with no definite answer (the gateway may hold the money, so it stays pending and is asked about again on a slow schedule until a status answer or a callback settles it), or stopped by a permanent error after a gateway was chosen; the reason says which. Re-drive it, or release it, on its page." }
        @if unresolved.is_empty() { p.ok { "None." } } @else {
            table { thead { tr { th { "transaction" } th { "gateway" } th { "unresolved since" } th { "reason" } } }
                tbody { @for d in &unresolved { tr {
                    td { (txn_link(&d.id)) }
                    td { (d.gateway.as_deref().unwrap_or("—")) }
                    td { @if let Some(since) = d.unresolved_since { (at(since)) " (" (ago(since)) ")" } }
                    td { (d.reason.as_deref().unwrap_or("")) }
                } } }
            }
        }

        h2 id="dead-lettered" { "Dead-lettered: failed after every gateway stayed down (" (failed.len()) ")" }
        @if failed.is_empty() { p.ok { "None." } } @else {
            table { thead { tr { th { "transaction" } th { "status" } th { "reason" } } }
                tbody { @for d in &failed { tr {
                    td { (txn_link(&d.id)) }
                    td { (status_tag(&d.status)) }
                    td { (d.reason.as_deref().unwrap_or("")) }
                } } }
            }
        }

        h2 id="set-aside" { "Events the outbox set aside (" (set_aside.len()) ")" }
        p.muted { "The broker refused them for good (an unknown topic, an authorization failure, too large): never published until re-sent, once the cause is fixed." }
        @if set_aside.is_empty() { p.ok { "None." } } @else {
            table { thead { tr { th { "transaction" } th { "event" } th { "set aside" } th { "reason" } th { "" } } }
                tbody { @for e in &set_aside { tr {
                    td { (txn_link(&e.transaction_id)) " " (status_tag(&e.transaction_status)) }
                    td { code { (e.event_type) } " " code.muted { (e.event_id) } }
                    td { (at(e.set_aside_at)) }
                    td { (e.reason.as_deref().unwrap_or("")) }
                    td { (resend_form(&operator, &e.event_id)) }
                } } }
            }
        }

        h2 id="callbacks" { "Rejected callbacks (" (rejected.len()) ")" }
        p.muted { "Kept, never applied: unreadable, or disagreeing with their transaction on amount, currency or gateway." }
        @if rejected.is_empty() { p.ok { "None." } } @else {
            table { thead { tr { th { "callback" } th { "gateway" } th { "transaction" } th { "received" } th { "reason" } } }
                tbody { @for c in &rejected { tr {
                    td { code { (c.id) } }
                    td { (c.gateway) }
                    td { @if let Some(t) = &c.transaction_id { (txn_link(t)) } @else { "—" } }
                    td { @if let Some(r) = c.received_at { (at(r)) } }
                    td { (c.reason.as_deref().unwrap_or("")) }
                } } }
            }
        }

        h2 id="webhooks" { "Webhooks that ran out of attempts (" (deliveries.len()) ")" }
        @if deliveries.is_empty() { p.ok { "None." } } @else {
            table { thead { tr { th { "transaction" } th { "event" } th.num { "attempts" } th { "last try" } th { "last error" } } }
                tbody { @for d in &deliveries { tr {
                    td { a href={ "/console/transactions/" (d.transaction_id) "#webhooks" } { code { (d.transaction_id) } } }
                    td { code { (d.event_type) } " " code.muted { (d.id) } }
                    td.num { (d.attempt_count) }
                    td { (at(d.updated_at)) }
                    td { (d.last_error.as_deref().unwrap_or("")) }
                } } }
            }
        }
    };
    Ok(layout::page(
        &operator,
        Section::Attention,
        "Needs a human",
        body,
    ))
}
