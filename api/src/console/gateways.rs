//! Gateways and routes: each gateway's circuit (as the payment-processor recorded it
//! in `gateway_circuit`), its recent success rate and latency, a switch to enable or
//! disable it, and the routing table by country.
//!
//! Success rate and latency come from the attempts recorded in transactions' histories:
//! every `gateway.attempted` event and the version after it (accepted → `processing`,
//! declined → `failed`, proven not taken → the next gateway or a retry, nothing yet →
//! waiting). Latency is the time between those two commits, so it includes the
//! payment-processor's own write; it reads the last [`WINDOW_MINUTES`] of attempts
//! (at most [`MAX_ATTEMPTS`]) through the partial index `transaction_event_attempts`.
//! Enabling or disabling goes through the same function as the admin API, and the
//! table's trigger tells every payment-processor to reload its routes.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::response::Response;
use axum::Form;
use chrono::{DateTime, Utc};
use maud::{html, Markup};
use prost::Message as _;
use serde::Deserialize;

use paygate_common::events::proto;
use paygate_common::gateway;

use super::error::{ConsoleError, Result};
use super::layout::{self, ago, status_tag, Section};
use super::redirect;
use super::session::Operator;
use crate::admin::{gateway_views, route_views};
use crate::AppState;

/// How far back "recent" reaches.
pub const WINDOW_MINUTES: i64 = 15;
/// At most this many attempts are read for the statistics.
pub const MAX_ATTEMPTS: i64 = 2000;

/// What came of offering a payment to a gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It took the payment (`processing`, or straight to `completed`).
    Accepted,
    /// It answered with a business decline.
    Declined,
    /// It proved it did not take the payment (refused, 503, open circuit).
    NotTaken,
    /// No later step yet: the answer is awaited, or was ambiguous.
    Waiting,
}

impl Outcome {
    /// From the type of the event that followed the attempt.
    pub fn of(next: Option<&str>) -> Self {
        match next {
            Some("transaction.processing" | "transaction.completed") => Outcome::Accepted,
            Some("transaction.failed") => Outcome::Declined,
            Some(_) => Outcome::NotTaken,
            None => Outcome::Waiting,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Declined => "declined",
            Outcome::NotTaken => "not taken",
            Outcome::Waiting => "no answer yet",
        }
    }

    /// The CSS class it is shown with.
    pub fn class(self) -> &'static str {
        match self {
            Outcome::Accepted => "completed",
            Outcome::Declined => "failed",
            Outcome::NotTaken => "open",
            Outcome::Waiting => "pending",
        }
    }
}

/// One gateway's recent attempts.
#[derive(Debug, Default)]
pub struct Stats {
    pub accepted: u32,
    pub declined: u32,
    pub not_taken: u32,
    pub waiting: u32,
    /// Milliseconds to an answer, of the attempts that got one.
    pub latencies: Vec<i64>,
}

impl Stats {
    /// Answered (accepted or declined) out of those that ended either way: how often the
    /// gateway did its job, whatever the customer's bank said.
    pub fn success_rate(&self) -> Option<f64> {
        let ended = self.accepted + self.declined + self.not_taken;
        (ended > 0).then(|| f64::from(self.accepted + self.declined) / f64::from(ended))
    }

    pub fn percentile(&self, p: f64) -> Option<i64> {
        if self.latencies.is_empty() {
            return None;
        }
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        let at = ((sorted.len() - 1) as f64 * p).round() as usize;
        sorted.get(at).copied()
    }

    pub fn total(&self) -> u32 {
        self.accepted + self.declined + self.not_taken + self.waiting
    }
}

/// An attempt's snapshot and time, and the type and time of the step that followed.
type AttemptRow = (
    Vec<u8>,
    DateTime<Utc>,
    Option<String>,
    Option<DateTime<Utc>>,
);

/// Recent attempts per gateway.
pub async fn recent_stats(pool: &sqlx::PgPool) -> sqlx::Result<BTreeMap<String, Stats>> {
    let rows: Vec<AttemptRow> = sqlx::query_as(
        // The attempts first (a range of the partial index), then one probe per
        // attempt of the unique (transaction_id, version) index for what followed:
        // the cost follows the attempts read, never the size of the history.
        "SELECT a.payload, a.created_at, n.event_type, n.created_at
               FROM (SELECT transaction_id, version, payload, created_at
                       FROM transaction_event
                      WHERE event_type = 'gateway.attempted'
                        AND created_at > now() - make_interval(mins => $1)
                      ORDER BY created_at DESC
                      LIMIT $2) a
               LEFT JOIN LATERAL (
                    SELECT event_type, created_at FROM transaction_event n
                     WHERE n.transaction_id = a.transaction_id AND n.version = a.version + 1
                     LIMIT 1) n ON true",
    )
    .bind(WINDOW_MINUTES as i32)
    .bind(MAX_ATTEMPTS)
    .fetch_all(pool)
    .await?;
    let mut stats: BTreeMap<String, Stats> = BTreeMap::new();
    for (payload, asked_at, next, answered_at) in rows {
        let Some(gateway) = proto::StatusChanged::decode(payload.as_slice())
            .ok()
            .and_then(|e| e.transaction)
            .and_then(|t| t.gateway)
        else {
            continue;
        };
        let entry = stats.entry(gateway).or_default();
        match Outcome::of(next.as_deref()) {
            Outcome::Accepted => entry.accepted += 1,
            Outcome::Declined => entry.declined += 1,
            Outcome::NotTaken => entry.not_taken += 1,
            Outcome::Waiting => entry.waiting += 1,
        }
        if let Some(answered_at) = answered_at {
            entry
                .latencies
                .push((answered_at - asked_at).num_milliseconds());
        }
    }
    Ok(stats)
}

/// `GET /console/gateways`.
pub async fn show(State(state): State<AppState>, operator: Operator) -> Result<Markup> {
    let (gateways, routes, stats) = tokio::try_join!(
        gateway_views(&state.pool),
        route_views(&state.pool),
        recent_stats(&state.pool),
    )?;
    let none = Stats::default();
    let body = html! {
        h1 { "Gateways and routes" }
        table.gateways {
            thead { tr {
                th { "gateway" } th { "protocol" } th { "circuit" } th { "enabled" }
                th.num { "attempts (" (WINDOW_MINUTES) " min)" } th.num { "success" }
                th.num { "accepted / declined / not taken / waiting" }
                th.num { "p50" } th.num { "p95" } th {}
            } }
            tbody {
                @for g in &gateways {
                    @let s = stats.get(&g.code).unwrap_or(&none);
                    tr id={ "gateway-" (g.code) } {
                        td { strong { (g.code) } br; code.muted { (g.base_url) } }
                        td { (g.protocol) }
                        td {
                            (status_tag(&g.circuit))
                            @if let Some(at) = g.circuit_changed_at { br; span.muted { (ago(at)) } }
                        }
                        td.enabled { @if g.enabled { span.tag.completed { "enabled" } } @else { span.tag.failed { "disabled" } } }
                        td.num { (s.total()) }
                        td.num { @if let Some(rate) = s.success_rate() { (format!("{:.1} %", rate * 100.0)) } @else { "—" } }
                        td.num { (s.accepted) " / " (s.declined) " / " (s.not_taken) " / " (s.waiting) }
                        td.num { @if let Some(ms) = s.percentile(0.5) { (ms) " ms" } @else { "—" } }
                        td.num { @if let Some(ms) = s.percentile(0.95) { (ms) " ms" } @else { "—" } }
                        td {
                            form.inline method="post" action={ "/console/gateways/" (g.code) "/switch" } {
                                input type="hidden" name="csrf" value=(operator.csrf);
                                input type="hidden" name="enabled" value=(if g.enabled { "false" } else { "true" });
                                @if g.enabled {
                                    button.danger type="submit" name="action" value="disable" { "Disable" }
                                } @else {
                                    button type="submit" name="action" value="enable" { "Enable" }
                                }
                            }
                        }
                    }
                }
            }
        }
        p.muted { "Success: answered (accepted or declined) out of attempts that ended; a decline is the customer's bank speaking, not the gateway failing. Latency: from the attempt's record to the next step's." }

        h2 { "Routing table" }
        p.muted { "For a payment's country, currency and kind, its gateways are tried lowest priority first; a blank column matches anything, and a route with no country is the default." }
        table.routes {
            thead { tr { th { "country" } th { "currency" } th { "kind" } th.num { "priority" } th { "gateway" } th { "gateway state" } } }
            tbody {
                @for r in &routes {
                    @let g = gateways.iter().find(|g| g.code == r.gateway_code);
                    tr {
                        td { (r.country.as_deref().unwrap_or("default")) }
                        td { (r.currency.as_deref().unwrap_or("any")) }
                        td { (r.kind.as_deref().unwrap_or("any")) }
                        td.num { (r.priority) }
                        td { (r.gateway_code) }
                        td {
                            @if let Some(g) = g {
                                @if g.enabled { (status_tag(&g.circuit)) } @else { span.tag.failed { "disabled" } }
                            } @else { "?" }
                        }
                    }
                }
            }
        }
    };
    Ok(layout::page(
        &operator,
        Section::Gateways,
        "Gateways and routes",
        body,
    ))
}

/// The enable/disable form.
#[derive(Debug, Deserialize)]
pub struct SwitchForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    enabled: String,
}

/// `POST /console/gateways/{code}/switch`.
pub async fn switch(
    State(state): State<AppState>,
    operator: Operator,
    Path(code): Path<String>,
    Form(form): Form<SwitchForm>,
) -> Result<Response> {
    operator.check_csrf(&form.csrf)?;
    let enabled = match form.enabled.as_str() {
        "true" => true,
        "false" => false,
        _ => return Err(ConsoleError::Invalid("enabled: true or false".into())),
    };
    if !gateway::set_enabled(&state.pool, &code, enabled).await? {
        return Err(ConsoleError::NotFound("gateway"));
    }
    tracing::info!(gateway = %code, enabled, "gateway switched from the console");
    Ok(redirect("/console/gateways"))
}
