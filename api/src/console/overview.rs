//! The overview: is money flowing, and what needs me? Payments per minute by final
//! status over the last hour (an SVG drawn here), the backlog per topic, and counts of
//! what needs a human.
//!
//! Every number is an aggregate over an index, never a pass over every transaction:
//! the chart reads the last hour of `transaction_final_recent` (only payments that
//! reached a final state, by when they did), the backlog reads the outbox's
//! `transaction_event_unpublished` and the dispatcher's pending deliveries
//! (`webhook_delivery_due_by_endpoint`, which holds only those), and the
//! counts read their partial indexes (`transaction_unresolved`, `transaction_review`,
//! `webhook_delivery_failed`, `gateway_callback_rejected`). The backlog is the
//! outbox's (events committed, not yet on their topic) and the webhook queue's, read
//! from PostgreSQL: it needs no broker connection, and it is where a stalled relay or
//! dispatcher shows first. Consumer lag inside the broker is `scripts/soak`'s report.

use axum::extract::State;
use chrono::{DateTime, Duration, DurationRound as _, Utc};
use maud::{html, Markup};

use paygate_common::events::Destination;

use super::error::Result;
use super::layout::{self, ago, Section};
use super::session::Operator;
use crate::AppState;

/// Minutes the chart covers.
const MINUTES: i64 = 60;

/// Completed and failed payments in one minute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Minute {
    pub completed: i64,
    pub failed: i64,
}

/// The last [`MINUTES`] minutes, oldest first, ending with the current one.
pub async fn per_minute(
    pool: &sqlx::PgPool,
    now: DateTime<Utc>,
) -> sqlx::Result<(DateTime<Utc>, Vec<Minute>)> {
    let this_minute = now.duration_trunc(Duration::minutes(1)).unwrap_or(now);
    let start = this_minute - Duration::minutes(MINUTES - 1);
    let rows: Vec<(DateTime<Utc>, String, i64)> = sqlx::query_as(
        "SELECT date_trunc('minute', updated_at) AS minute, status, count(*)
           FROM transaction
          WHERE status IN ('completed', 'failed') AND updated_at >= $1
          GROUP BY 1, 2",
    )
    .bind(start)
    .fetch_all(pool)
    .await?;
    let mut minutes = vec![Minute::default(); MINUTES as usize];
    for (minute, status, count) in rows {
        let Ok(slot) = usize::try_from((minute - start).num_minutes()) else {
            continue;
        };
        if let Some(m) = minutes.get_mut(slot) {
            match status.as_str() {
                "completed" => m.completed += count,
                _ => m.failed += count,
            }
        }
    }
    Ok((start, minutes))
}

/// The smallest of 1, 2, 5 × 10ⁿ at or above `n` (at least 5), for the chart's axis.
fn axis_top(n: i64) -> i64 {
    let mut scale = 1;
    loop {
        for step in [1, 2, 5] {
            if step * scale >= n.max(5) {
                return step * scale;
            }
        }
        scale *= 10;
    }
}

/// Stacked bars, one per minute: completed below, failed above. Colours are classes
/// (`console.css`), so the CSP needs no inline style.
pub fn chart(start: DateTime<Utc>, minutes: &[Minute]) -> Markup {
    const WIDTH: f64 = 1180.0;
    const HEIGHT: f64 = 240.0;
    const LEFT: f64 = 48.0;
    const TOP: f64 = 10.0;
    const BOTTOM: f64 = 26.0;
    let plot_w = WIDTH - LEFT - 8.0;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let top = axis_top(
        minutes
            .iter()
            .map(|m| m.completed + m.failed)
            .max()
            .unwrap_or(0),
    );
    let slot = plot_w / minutes.len().max(1) as f64;
    let y = |value: i64| TOP + plot_h - plot_h * value as f64 / top as f64;
    let h = |value: i64| plot_h * value as f64 / top as f64;
    html! {
        svg.chart viewBox={ "0 0 " (WIDTH) " " (HEIGHT) } role="img"
            aria-label="Payments per minute by final status, last hour" {
            @for tick in [0, top / 2, top] {
                line.grid x1=(LEFT) x2=(WIDTH - 8.0) y1=(y(tick)) y2=(y(tick)) {}
                text.axis x=(LEFT - 6.0) y=(y(tick) + 4.0) text-anchor="end" { (tick) }
            }
            @for (i, m) in minutes.iter().enumerate() {
                @let x = LEFT + slot * i as f64 + 1.0;
                @let when = start + Duration::minutes(i as i64);
                g {
                    title { (when.format("%H:%M")) " UTC: " (m.completed) " completed, " (m.failed) " failed" }
                    @if m.completed > 0 {
                        rect.ok x=(x) y=(y(m.completed)) width=(slot - 2.0) height=(h(m.completed)) {}
                    }
                    @if m.failed > 0 {
                        rect.bad x=(x) y=(y(m.completed + m.failed)) width=(slot - 2.0) height=(h(m.failed)) {}
                    }
                }
                @if i % 10 == 0 || i + 1 == minutes.len() {
                    text.axis x=(x + slot / 2.0) y=(HEIGHT - 8.0) text-anchor="middle" {
                        (when.format("%H:%M"))
                    }
                }
            }
        }
    }
}

/// A topic's backlog: events committed to the outbox and not yet published.
struct Backlog {
    topic: String,
    events: i64,
    oldest: Option<DateTime<Utc>>,
}

/// The counts on the overview.
struct Counts {
    unresolved: i64,
    /// Payments under review: a contradiction, or nothing settles them (`no_callback`).
    under_review: i64,
    failed_deliveries: i64,
    rejected_callbacks_24h: i64,
    webhooks_pending: i64,
    webhooks_due: i64,
}

async fn counts(pool: &sqlx::PgPool) -> sqlx::Result<Counts> {
    let (
        unresolved,
        under_review,
        failed_deliveries,
        rejected_callbacks_24h,
        webhooks_pending,
        webhooks_due,
    ): (i64, i64, i64, i64, i64, i64) = sqlx::query_as(
        "SELECT
           (SELECT count(*) FROM transaction WHERE status = 'pending' AND unresolved_since IS NOT NULL),
           (SELECT count(*) FROM transaction WHERE review_reason IS NOT NULL),
           (SELECT count(*) FROM webhook_delivery WHERE status = 'failed'),
           (SELECT count(*) FROM gateway_callback
             WHERE outcome = 'rejected' AND received_at > now() - interval '24 hours'),
           (SELECT count(*) FROM webhook_delivery WHERE status = 'pending'),
           (SELECT count(*) FROM webhook_delivery WHERE status = 'pending' AND next_attempt_at <= now()
                AND (leased_until IS NULL OR leased_until < now()))",
    )
    .fetch_one(pool)
    .await?;
    Ok(Counts {
        unresolved,
        under_review,
        failed_deliveries,
        rejected_callbacks_24h,
        webhooks_pending,
        webhooks_due,
    })
}

async fn backlog(state: &AppState) -> sqlx::Result<Vec<Backlog>> {
    let rows: Vec<(String, i64, Option<DateTime<Utc>>)> = sqlx::query_as(
        "SELECT destination, count(*), min(created_at) FROM transaction_event
          WHERE published_at IS NULL GROUP BY destination",
    )
    .fetch_all(&state.pool)
    .await?;
    let topics = &state.settings.kafka.topics;
    Ok([
        Destination::PaymentsRequested,
        Destination::GatewayCallbacks,
        Destination::TransactionsStatus,
    ]
    .into_iter()
    .filter_map(|d| {
        let topic = d.topic(topics)?.to_owned();
        let (events, oldest) = rows
            .iter()
            .find(|r| r.0 == d.as_str())
            .map(|r| (r.1, r.2))
            .unwrap_or((0, None));
        Some(Backlog {
            topic,
            events,
            oldest,
        })
    })
    .collect())
}

/// `GET /console`.
pub async fn show(State(state): State<AppState>, operator: Operator) -> Result<Markup> {
    let now = Utc::now();
    // Independent reads, each on its own pooled connection, at once.
    let circuits = sqlx::query_as::<_, (String, String, DateTime<Utc>)>(
        "SELECT gateway_code, state, changed_at FROM gateway_circuit
          WHERE state <> 'closed' ORDER BY gateway_code",
    )
    .fetch_all(&state.pool);
    let ((start, minutes), counts, backlog, circuits) = tokio::try_join!(
        per_minute(&state.pool, now),
        counts(&state.pool),
        backlog(&state),
        circuits,
    )?;
    let completed: i64 = minutes.iter().map(|m| m.completed).sum();
    let failed: i64 = minutes.iter().map(|m| m.failed).sum();
    let last = minutes.last().copied().unwrap_or_default();
    let body = html! {
        div id="overview" hx-get="/console" hx-trigger="every 10s" hx-select="#overview" hx-swap="outerHTML" {
            h1 { "Overview" }
            section.cards {
                a.card.alert[counts.unresolved > 0] href="/console/attention#unresolved" {
                    span.number { (counts.unresolved) } span.label { "unresolved payments" }
                }
                a.card.alert[counts.under_review > 0] href="/console/attention#review" {
                    span.number { (counts.under_review) } span.label { "payments under review" }
                }
                a.card.alert[counts.failed_deliveries > 0] href="/console/attention#webhooks" {
                    span.number { (counts.failed_deliveries) } span.label { "failed webhook deliveries" }
                }
                a.card.alert[!circuits.is_empty()] href="/console/gateways" {
                    span.number { (circuits.len()) } span.label { "open circuits" }
                }
                a.card.warn[counts.rejected_callbacks_24h > 0] href="/console/attention#callbacks" {
                    span.number { (counts.rejected_callbacks_24h) } span.label { "rejected callbacks (24 h)" }
                }
            }
            section {
                h2 { "Payments per minute, last hour" }
                p.legend {
                    span.key.ok {} "completed " strong { (completed) }
                    span.key.bad {} "failed " strong { (failed) }
                    span.muted { " · this minute: " (last.completed) " completed, " (last.failed) " failed · "
                        "by the minute each reached its final status, UTC" }
                }
                (chart(start, &minutes))
            }
            section.split {
                div {
                    h2 { "Backlog" }
                    table {
                        thead { tr { th { "topic" } th.num { "unpublished events" } th { "oldest" } } }
                        tbody {
                            @for b in &backlog {
                                tr class=[(b.events > 0).then_some("warn")] {
                                    td { code { (b.topic) } }
                                    td.num { (b.events) }
                                    td { @if let Some(at) = b.oldest { (ago(at)) } @else { "—" } }
                                }
                            }
                            tr {
                                td { "merchant webhooks (dispatcher queue)" }
                                td.num { (counts.webhooks_pending) }
                                td { (counts.webhooks_due) " due now" }
                            }
                        }
                    }
                    p.muted { "From PostgreSQL: events committed to the outbox and not yet produced to their topic, and webhook deliveries waiting for the dispatcher." }
                }
                div {
                    h2 { "Circuits not closed" }
                    @if circuits.is_empty() {
                        p.muted { "Every gateway's circuit is closed." }
                    } @else {
                        table {
                            thead { tr { th { "gateway" } th { "state" } th { "since" } } }
                            tbody {
                                @for (code, circuit, since) in &circuits {
                                    tr { td { (code) } td { (layout::status_tag(circuit)) } td { (ago(*since)) } }
                                }
                            }
                        }
                    }
                }
            }
            p.muted.updated { "Updated " (layout::at(now)) " UTC" }
        }
    };
    Ok(layout::page(&operator, Section::Overview, "Overview", body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_axis_rounds_up_to_one_two_or_five() {
        assert_eq!(axis_top(0), 5);
        assert_eq!(axis_top(6), 10);
        assert_eq!(axis_top(11), 20);
        assert_eq!(axis_top(21), 50);
        assert_eq!(axis_top(4999), 5000);
    }

    #[test]
    fn the_chart_draws_a_bar_per_status_and_minute_and_nothing_for_zero() {
        let start = Utc::now();
        let svg = chart(
            start,
            &[
                Minute {
                    completed: 3,
                    failed: 1,
                },
                Minute::default(),
            ],
        )
        .into_string();
        assert_eq!(svg.matches("<rect class=\"ok\"").count(), 1);
        assert_eq!(svg.matches("<rect class=\"bad\"").count(), 1);
        assert!(!svg.contains("style="), "no inline style: {svg}");
    }
}
