//! Transactions: the list with the merchant API's filters and cursor (across
//! merchants, or one), and one transaction's whole life: its event timeline (with who
//! did what and why, and any event the outbox set aside), the gateways it was offered
//! to, the callbacks received about it and what became of them, and every webhook
//! attempt, with a button that sends a webhook again and the operators' actions its
//! state allows (see [`super::actions`]).
//!
//! The list is one range scan of an index that starts with its order: across
//! merchants `transaction_newest (created_at DESC, id DESC)`, for one merchant the
//! merchant API's `transaction_merchant_newest`; the cursor is a row comparison on the
//! same columns, so every page costs the same however deep it is.

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Form;
use chrono::{DateTime, NaiveDateTime, Utc};
use maud::{html, Markup};
use prost::Message as _;
use rust_decimal::Decimal;
use serde::Deserialize;

use paygate_common::domain::{Kind, MerchantId, Status, TransactionId};
use paygate_common::events::proto;
use paygate_common::transactions;

use super::actions;
use super::error::{ConsoleError, Result};
use super::gateways::Outcome;
use super::layout::{self, at, status_tag, Section};
use super::redirect;
use super::session::Operator;
use crate::merchant::queries::{deliveries_of, requeue_delivery};
use crate::AppState;

const DEFAULT_LIMIT: i64 = 50;
const MAX_LIMIT: i64 = 200;

/// The list's query: the merchant API's filters, a merchant, and a search box.
#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub merchant: String,
    /// RFC 3339, or `YYYY-MM-DDTHH:MM` in UTC as a browser's date-time field sends it.
    #[serde(default)]
    pub created_after: String,
    #[serde(default)]
    pub created_before: String,
    pub limit: Option<i64>,
    #[serde(default)]
    pub starting_after: String,
    /// A transaction id to open directly.
    #[serde(default)]
    pub q: String,
}

/// A row of the list.
#[derive(Debug, sqlx::FromRow)]
struct Row {
    id: String,
    merchant_id: String,
    kind: String,
    status: String,
    amount: Decimal,
    currency: String,
    country: Option<String>,
    gateway: Option<String>,
    unresolved_since: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
}

fn instant(field: &str, value: &str) -> Result<Option<DateTime<Utc>>> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    if let Ok(at) = DateTime::parse_from_rfc3339(value) {
        return Ok(Some(at.with_timezone(&Utc)));
    }
    ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(value, f).ok())
        .map(|naive| Some(naive.and_utc()))
        .ok_or_else(|| ConsoleError::Invalid(format!("{field}: not a date and time")))
}

fn blank_to_none(value: &str) -> Option<&str> {
    Some(value.trim()).filter(|v| !v.is_empty())
}

/// `GET /console/transactions`.
pub async fn list(
    State(state): State<AppState>,
    operator: Operator,
    Query(query): Query<ListQuery>,
) -> Result<Response> {
    if let Some(q) = blank_to_none(&query.q) {
        return match q.parse::<TransactionId>() {
            Ok(id) => Ok(redirect(&format!("/console/transactions/{id}"))),
            Err(_) => Err(ConsoleError::Invalid(format!(
                "{q:?} is not a transaction id (txn_…)"
            ))),
        };
    }
    let status = blank_to_none(&query.status)
        .map(|s| s.parse::<Status>())
        .transpose()
        .map_err(|e| ConsoleError::Invalid(format!("status: {e}")))?;
    let kind = blank_to_none(&query.kind)
        .map(|k| k.parse::<Kind>())
        .transpose()
        .map_err(|e| ConsoleError::Invalid(format!("kind: {e}")))?;
    let created_after = instant("created_after", &query.created_after)?;
    let created_before = instant("created_before", &query.created_before)?;
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let merchant = blank_to_none(&query.merchant);
    let cursor = match blank_to_none(&query.starting_after) {
        None => None,
        Some(id) => {
            let id = id
                .parse::<TransactionId>()
                .map_err(|_| ConsoleError::Invalid("starting_after: no such transaction".into()))?;
            let record = transactions::find(&state.pool, &id).await?.ok_or_else(|| {
                ConsoleError::Invalid("starting_after: no such transaction".into())
            })?;
            Some((record.created_at, record.id.to_string()))
        }
    };

    let merchant = merchant
        .map(|m| m.parse::<MerchantId>())
        .transpose()
        .map_err(|_| ConsoleError::Invalid("merchant: not a merchant id (mer_…)".into()))?;
    let mut sql = sqlx::QueryBuilder::new(
        "SELECT id, merchant_id, kind, status, amount, currency, trim(country) AS country, gateway,
                unresolved_since, created_at
           FROM transaction WHERE true",
    );
    transactions::push_page(
        &mut sql,
        &transactions::PageQuery {
            merchant: merchant.as_ref(),
            status,
            kind,
            created_after,
            created_before,
            metadata: None,
            before: cursor.clone(),
            limit: limit + 1,
        },
    );
    let mut rows: Vec<Row> = sql.build_query_as().fetch_all(&state.pool).await?;
    let has_more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let merchant_ids: Vec<&str> = rows.iter().map(|r| r.merchant_id.as_str()).collect();
    let names: Vec<(String, String)> =
        sqlx::query_as("SELECT id, name FROM merchant WHERE id = ANY($1)")
            .bind(&merchant_ids)
            .fetch_all(&state.pool)
            .await?;
    let name_of = |id: &str| -> String {
        names
            .iter()
            .find(|(m, _)| m == id)
            .map_or_else(|| id.to_owned(), |(_, n)| n.clone())
    };

    let next_page = rows.last().filter(|_| has_more).map(|last| {
        let params = [
            ("status", query.status.as_str()),
            ("kind", query.kind.as_str()),
            ("merchant", query.merchant.as_str()),
            ("created_after", query.created_after.as_str()),
            ("created_before", query.created_before.as_str()),
        ];
        let mut url = format!(
            "/console/transactions?limit={limit}&starting_after={}",
            last.id
        );
        for (name, value) in params {
            if !value.trim().is_empty() {
                url.push_str(&format!("&{name}={}", urlencode(value.trim())));
            }
        }
        url
    });

    let body = html! {
        h1 { "Transactions" }
        form.filters method="get" action="/console/transactions" {
            label { "Open " input type="search" name="q" placeholder="txn_…" size="36"; }
            button type="submit" { "Go" }
        }
        form.filters method="get" action="/console/transactions" {
            label { "Status "
                select name="status" {
                    option value="" { "any" }
                    @for s in Status::ALL {
                        option value=(s.as_str()) selected[status == Some(s)] { (s.as_str()) }
                    }
                }
            }
            label { "Kind "
                select name="kind" {
                    option value="" { "any" }
                    @for k in [Kind::Deposit, Kind::Withdrawal] {
                        option value=(k.as_str()) selected[kind == Some(k)] { (k.as_str()) }
                    }
                }
            }
            label { "Merchant " input type="text" name="merchant" value=(query.merchant) placeholder="mer_…" size="20"; }
            label { "Created after " input type="datetime-local" name="created_after" value=(query.created_after); }
            label { "before " input type="datetime-local" name="created_before" value=(query.created_before); }
            input type="hidden" name="limit" value=(limit);
            button type="submit" { "Filter" }
            a href="/console/transactions" { "clear" }
        }
        table.list {
            thead { tr {
                th { "id" } th { "created (UTC)" } th { "merchant" } th { "kind" }
                th.num { "amount" } th { "country" } th { "gateway" } th { "status" }
            } }
            tbody {
                @for row in &rows {
                    tr {
                        td { a href={ "/console/transactions/" (row.id) } { code { (row.id) } } }
                        td { (at(row.created_at)) }
                        td { (name_of(&row.merchant_id)) }
                        td { (row.kind) }
                        td.num { (row.amount) " " (row.currency) }
                        td { (row.country.as_deref().unwrap_or("—")) }
                        td { (row.gateway.as_deref().unwrap_or("—")) }
                        td {
                            (status_tag(&row.status))
                            @if row.unresolved_since.is_some() { " " span.tag.unresolved { "unresolved" } }
                        }
                    }
                }
                @if rows.is_empty() { tr { td.muted colspan="8" { "No transaction matches." } } }
            }
        }
        p.pager {
            @if cursor.is_some() { a href="/console/transactions" { "« newest" } " " }
            @if let Some(next) = next_page { a.next href=(next) { "older »" } }
        }
    };
    Ok(layout::page(&operator, Section::Transactions, "Transactions", body).into_response())
}

/// Enough of `application/x-www-form-urlencoded` for the pager's links.
fn urlencode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One row of a transaction's history.
#[derive(Debug, sqlx::FromRow)]
struct EventRow {
    id: String,
    version: Option<i32>,
    event_type: String,
    status: Option<String>,
    destination: String,
    created_at: DateTime<Utc>,
    published_at: Option<DateTime<Utc>>,
    payload: Vec<u8>,
    /// Set when the outbox gave up on it (never published until re-sent).
    set_aside_at: Option<DateTime<Utc>>,
    set_aside_reason: Option<String>,
    /// Who and why, on an operator's action.
    actor: Option<String>,
    note: Option<String>,
}

impl EventRow {
    /// The transaction snapshot a status or history event carries.
    fn snapshot(&self) -> Option<proto::Transaction> {
        proto::StatusChanged::decode(self.payload.as_slice())
            .ok()
            .and_then(|e| e.transaction)
    }

    /// Why the gateway was chosen, on a `gateway.attempted` event that recorded it.
    fn routing(&self) -> Option<proto::RoutingDecision> {
        proto::StatusChanged::decode(self.payload.as_slice())
            .ok()
            .and_then(|e| e.routing)
    }
}

/// A routing decision as an operator reads it: `success_rate (route set DE) · rule 1:
/// amount ..50 → simsoap · simjson 47/50 counted, simsoap 3/9 too few · explored`.
pub(crate) fn why(decision: &proto::RoutingDecision) -> String {
    let mut parts = vec![if decision.route_set.is_empty() {
        decision.strategy.clone()
    } else {
        format!("{} (route set {})", decision.strategy, decision.route_set)
    }];
    if decision.rule > 0 {
        parts.push(format!("rule {}: {}", decision.rule, decision.rule_summary));
    }
    if !decision.scores.is_empty() {
        let scores: Vec<String> = decision
            .scores
            .iter()
            .map(|s| {
                format!(
                    "{} {}/{} {}",
                    s.gateway,
                    s.successes,
                    s.samples,
                    if s.counted { "counted" } else { "too few" }
                )
            })
            .collect();
        parts.push(format!("scores: {}", scores.join(", ")));
    }
    if decision.explored {
        parts.push("explored".to_owned());
    }
    if decision.strategy == "pinned" {
        parts.push(
            if decision.fallback {
                "fallback allowed"
            } else {
                "no fallback"
            }
            .to_owned(),
        );
    }
    parts.push(format!("order: {}", decision.order.join(" → ")));
    parts.join(" · ")
}

/// A gateway the payment was offered to, and what came of it.
pub(crate) struct Attempt {
    pub gateway: String,
    pub at: DateTime<Utc>,
    pub outcome: Outcome,
    /// Until the next recorded step.
    pub took_ms: Option<i64>,
    pub reason: Option<String>,
    /// Why this gateway: the routing decision the attempt recorded, as text.
    pub why: Option<String>,
}

/// The gateway attempts in a history: each `gateway.attempted` and the version after it.
fn attempts(events: &[EventRow]) -> Vec<Attempt> {
    events
        .iter()
        .filter(|e| e.event_type == paygate_common::events::event_type::GATEWAY_ATTEMPTED)
        .map(|e| {
            let next = e
                .version
                .and_then(|v| events.iter().find(|n| n.version == Some(v + 1)));
            let outcome = Outcome::of(next.map(|n| n.event_type.as_str()));
            Attempt {
                gateway: e
                    .snapshot()
                    .and_then(|t| t.gateway)
                    .unwrap_or_else(|| "?".into()),
                at: e.created_at,
                outcome,
                took_ms: next.map(|n| (n.created_at - e.created_at).num_milliseconds()),
                why: e.routing().as_ref().map(why),
                reason: next
                    .filter(|_| outcome == Outcome::Declined)
                    .and_then(|n| n.snapshot())
                    .and_then(|t| t.failure_reason),
            }
        })
        .collect()
}

/// A callback received about the transaction.
#[derive(Debug, sqlx::FromRow)]
struct CallbackRow {
    id: String,
    gateway: String,
    content_type: String,
    received_at: DateTime<Utc>,
    processed_at: Option<DateTime<Utc>>,
    outcome: Option<String>,
    outcome_reason: Option<String>,
}

/// `GET /console/transactions/{id}`.
pub async fn detail(
    State(state): State<AppState>,
    operator: Operator,
    Path(id): Path<String>,
) -> Result<Markup> {
    let id = id
        .parse::<TransactionId>()
        .map_err(|_| ConsoleError::NotFound("transaction"))?;
    let record = transactions::find(&state.pool, &id)
        .await?
        .ok_or(ConsoleError::NotFound("transaction"))?;
    let merchant: Option<String> = sqlx::query_scalar("SELECT name FROM merchant WHERE id = $1")
        .bind(record.merchant_id.as_str())
        .fetch_optional(&state.pool)
        .await?;
    let events: Vec<EventRow> = sqlx::query_as(
        "SELECT id, version, event_type, status, destination, created_at, published_at,
                CASE WHEN event_type IN ('gateway.attempted', 'transaction.failed')
                     THEN payload ELSE ''::bytea END AS payload,
                set_aside_at, set_aside_reason, actor, note
           FROM transaction_event WHERE transaction_id = $1 ORDER BY seq",
    )
    .bind(id.as_str())
    .fetch_all(&state.pool)
    .await?;
    let set_aside = events.iter().filter(|e| e.set_aside_at.is_some()).count();
    let callbacks: Vec<CallbackRow> = sqlx::query_as(
        "SELECT id, gateway, content_type, received_at, processed_at, outcome, outcome_reason
           FROM gateway_callback WHERE transaction_id = $1 ORDER BY received_at, id",
    )
    .bind(id.as_str())
    .fetch_all(&state.pool)
    .await?;
    let deliveries = deliveries_of(&state.pool, id.as_str()).await?;
    let refunds = paygate_common::refunds::of_transaction(&state.pool, &id).await?;
    let refund_steps: Vec<(String, String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT refund_id, event_type, created_at FROM transaction_event
          WHERE transaction_id = $1 AND refund_id IS NOT NULL ORDER BY seq",
    )
    .bind(id.as_str())
    .fetch_all(&state.pool)
    .await?;
    let attempts = attempts(&events);
    let created = record.created_at;

    let body = html! {
        p.crumbs { a href="/console/transactions" { "Transactions" } " / " code { (record.id) } }
        h1 { (record.kind) " of " (record.amount) " " (record.currency) " " (status_tag(record.status.as_str()))
            @if record.unresolved_since.is_some() { " " span.tag.unresolved { "unresolved" } }
            @if record.review_reason.is_some() { " " span.tag.review { "under review" } }
            @if set_aside > 0 { " " a.tag.set_aside href="#timeline" { (set_aside) " set-aside event" @if set_aside > 1 { "s" } } } }
        dl.facts {
            dt { "id" } dd { code { (record.id) } }
            dt { "merchant" } dd { (merchant.as_deref().unwrap_or("?")) " " code.muted { (record.merchant_id) } }
            dt { "user" } dd { (record.user_id) }
            dt { "country" } dd { (record.country.as_deref().unwrap_or("—")) }
            dt { "reference" } dd { (record.reference.as_deref().unwrap_or("—")) }
            dt { "payment method" } dd { (record.payment_method) @if let Some(card) = &record.card_masked { " " code { (card) } } }
            dt { "gateway" } dd { (record.gateway.as_deref().unwrap_or("—")) @if let Some(g) = &record.gateway_txn_id { " " code { (g) } } }
            @if let Some(reason) = &record.failure_reason { dt { "failure reason" } dd { (reason) } }
            @if let Some(since) = record.unresolved_since { dt { "unresolved since" } dd { (at(since)) } }
            @if let Some(reason) = &record.unresolved_reason { dt { "unresolved because" } dd { (reason) } }
            @if let Some(reason) = &record.review_reason {
                dt { "under review" }
                dd {
                    code { (reason) }
                    @if let Some(since) = record.review_since { " since " (at(since)) }
                    @if let Some(detail) = &record.review_detail { br; (detail) }
                }
            }
            dt { "refunded" } dd { (record.amount_refunded) " " (record.currency) }
            dt { "version" } dd { (record.version) }
            dt { "created" } dd { (at(record.created_at)) }
            dt { "updated" } dd { (at(record.updated_at)) }
        }

        h2 id="refunds" { "Refunds" }
        @if refunds.is_empty() { p.muted { "No refund." } }
        @for r in &refunds {
            section.refund {
                h3 {
                    code { (r.id) } " · " (r.amount) " " (r.currency) " · " (status_tag(r.status.as_str()))
                    @if r.unresolved_since.is_some() { " " span.tag.unresolved { "unresolved" } }
                }
                dl.facts {
                    @if let Some(reason) = &r.reason { dt { "reason" } dd { (reason) } }
                    dt { "gateway" } dd { (r.gateway) @if let Some(g) = &r.gateway_refund_id { " " code { (g) } } }
                    @if let Some(reason) = &r.failure_reason { dt { "failure reason" } dd { (reason) } }
                    @if let Some(reason) = &r.unresolved_reason { dt { "unresolved because" } dd { (reason) } }
                    dt { "version" } dd { (r.version) }
                }
                table.refund-history {
                    thead { tr { th { "event" } th { "at (UTC)" } } }
                    tbody {
                        @for (_, kind, when) in refund_steps.iter().filter(|(of, _, _)| of == r.id.as_str()) {
                            tr { td { code { (kind) } } td { (at(*when)) } }
                        }
                    }
                }
            }
        }

        h2 id="actions" { "Operator actions" }
        (actions::forms(&operator, &record))

        h2 id="timeline" { "Timeline" }
        table.timeline {
            thead { tr { th.num { "version" } th { "event" } th { "status" } th { "at (UTC)" } th.num { "+ms" } th { "published" } th { "by, why" } } }
            tbody {
                @for e in &events {
                    tr {
                        td.num { @if let Some(v) = e.version { (v) } @else { "—" } }
                        td { code { (e.event_type) } }
                        td { @if let Some(s) = &e.status { (status_tag(s)) } }
                        td { (at(e.created_at)) }
                        td.num { ((e.created_at - created).num_milliseconds()) }
                        td {
                            @if e.destination == "history" { span.muted { "history only" } }
                            @else if let Some(p) = e.published_at { "+" ((p - e.created_at).num_milliseconds()) " ms" }
                            @else if e.set_aside_at.is_some() {
                                span.tag.set_aside { "set aside" } " "
                                span.muted { (e.set_aside_reason.as_deref().unwrap_or("")) }
                                (actions::resend_form(&operator, &e.id))
                            }
                            @else { span.tag.pending { "in the outbox" } }
                        }
                        td {
                            @if let Some(actor) = &e.actor { (actor) }
                            @if let Some(note) = &e.note { br; span.muted { (note) } }
                        }
                    }
                }
            }
        }
        p.muted { (events.len()) " events; event ids: " @for (i, e) in events.iter().enumerate() { @if i > 0 { ", " } code { (e.id) } } }

        h2 id="attempts" { "Gateway attempts" }
        @if attempts.is_empty() { p.muted { "Not offered to a gateway yet." } } @else {
            table {
                thead { tr { th { "gateway" } th { "asked at (UTC)" } th { "outcome" } th.num { "answered after" } th { "reason" } th { "why this gateway" } } }
                tbody {
                    @for a in &attempts {
                        tr {
                            td { (a.gateway) }
                            td { (at(a.at)) }
                            td { span class={ "tag " (a.outcome.class()) } { (a.outcome.label()) } }
                            td.num { @if let Some(ms) = a.took_ms { (ms) " ms" } @else { "—" } }
                            td { (a.reason.as_deref().unwrap_or("")) }
                            td.why { (a.why.as_deref().unwrap_or("")) }
                        }
                    }
                }
            }
        }

        h2 id="callbacks" { "Callbacks received" }
        @if callbacks.is_empty() { p.muted { "No callback about this transaction." } } @else {
            table {
                thead { tr { th { "id" } th { "gateway" } th { "format" } th { "received (UTC)" } th { "outcome" } th { "reason" } } }
                tbody {
                    @for c in &callbacks {
                        tr {
                            td { code { (c.id) } }
                            td { (c.gateway) }
                            td { (c.content_type) }
                            td { (at(c.received_at)) }
                            td {
                                @if let Some(outcome) = &c.outcome { (status_tag(outcome)) }
                                @else { span.tag.pending { "waiting" } }
                                @if let Some(p) = c.processed_at { " " span.muted { "after " ((p - c.received_at).num_milliseconds()) " ms" } }
                            }
                            td { (c.outcome_reason.as_deref().unwrap_or("")) }
                        }
                    }
                }
            }
        }

        h2 id="webhooks" { "Webhooks to the merchant" }
        @if deliveries.is_empty() { p.muted { "No webhook delivery." } }
        @for d in &deliveries {
            section.delivery {
                h3 {
                    code { (d.kind) } " · version " (d.version) " · " (status_tag(&d.status))
                    " · " code.muted { (d.event_id) }
                }
                form.inline method="post" action={ "/console/deliveries/" (d.id) "/replay" } {
                    input type="hidden" name="csrf" value=(operator.csrf);
                    input type="hidden" name="transaction" value=(record.id);
                    button.replay type="submit" data-delivery=(d.id) { "Replay webhook" }
                }
                @if let Some(next) = &d.next_attempt_at { p.muted { "next attempt at " (next) } }
                table.attempts {
                    thead { tr { th { "#" } th { "attempted at" } th { "answer" } th { "error" } th.num { "took" } } }
                    tbody {
                        @for (i, a) in d.attempts.iter().enumerate() {
                            tr.attempt {
                                td { (i + 1) }
                                td { (a.attempted_at) }
                                td { @if let Some(code) = a.status_code { (code) } @else { "—" } }
                                td { (a.error.as_deref().unwrap_or("")) }
                                td.num { (a.duration_ms) " ms" }
                            }
                        }
                        @if d.attempts.is_empty() { tr { td.muted colspan="5" { "Not attempted yet." } } }
                    }
                }
            }
        }
    };
    Ok(layout::page(
        &operator,
        Section::Transactions,
        record.id.as_str(),
        body,
    ))
}

/// The replay form.
#[derive(Debug, Deserialize)]
pub struct ReplayForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    transaction: String,
}

/// `POST /console/deliveries/{id}/replay`: the delivery is sent again, as it was, and
/// the operator is taken back to the transaction's webhooks.
pub async fn replay(
    State(state): State<AppState>,
    operator: Operator,
    Path(id): Path<String>,
    Form(form): Form<ReplayForm>,
) -> Result<Response> {
    operator.check_csrf(&form.csrf)?;
    if !requeue_delivery(&state.pool, &id, None).await? {
        return Err(ConsoleError::NotFound("webhook delivery"));
    }
    tracing::info!(delivery_id = %id, "webhook delivery replayed from the console");
    Ok(match form.transaction.parse::<TransactionId>() {
        Ok(txn) => redirect(&format!("/console/transactions/{txn}#webhooks")),
        Err(_) => redirect("/console/transactions"),
    })
}
