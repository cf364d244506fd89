//! The reconciliation page: each gateway's books per day from its settlement reports
//! (charged, refunded, fees, net, matched rate, open differences), the runs, the open
//! differences with both sides' evidence, a form to ask for a run of a gateway's day and
//! one per difference to resolve it with a note. It reads and steers through
//! [`crate::admin::settlement`], as the admin API does.

use axum::extract::{Path, State};
use axum::response::Response;
use axum::Form;
use maud::{html, Markup};
use serde::Deserialize;

use super::error::{ConsoleError, Result};
use super::layout::{self, at, Section};
use super::redirect;
use super::session::Operator;
use crate::admin::interventions::{self, Actor};
use crate::admin::settlement::{
    day_list, difference_list, request_run, resolve_difference, run_list,
};
use crate::http::error::ApiError;
use crate::AppState;

/// An admin-API refusal, as the console shows it.
fn shown(error: ApiError) -> ConsoleError {
    match error {
        ApiError::NotFound(what) => ConsoleError::NotFound(what),
        ApiError::Invalid { message, field } => {
            ConsoleError::Invalid(format!("{}: {message}", field.unwrap_or_default()))
        }
        ApiError::Refused { message, .. } => ConsoleError::Invalid(message),
        other => ConsoleError::Internal(anyhow::anyhow!("{other}")),
    }
}

/// `GET /console/settlement`.
pub async fn show(State(state): State<AppState>, operator: Operator) -> Result<Markup> {
    let days = day_list(&state.pool, None, 60).await?;
    let runs = run_list(&state.pool, None, 30).await?;
    let open = difference_list(&state.pool, "open", None, None, None, 200).await?;
    let gateways: Vec<String> = sqlx::query_scalar("SELECT code FROM gateway ORDER BY code")
        .fetch_all(&state.pool)
        .await?;
    let today = chrono::Utc::now().date_naive().to_string();
    let body = html! {
        h1 { "Reconciliation" }
        p.muted { "Each gateway's settlement report matched with Paygate's payments and refunds, per UTC day. A payment the report says was charged while Paygate still waited on it is settled from the report; every other difference waits here for a human." }

        form.action method="post" action="/console/settlement/runs" {
            input type="hidden" name="csrf" value=(operator.csrf);
            label { "Gateway " select name="gateway" { @for g in &gateways { option value=(g) { (g) } } } }
            label { " Day " input type="date" name="date" value=(today) required; }
            button type="submit" { "Run reconciliation" }
        }

        h2 id="books" { "Books per gateway and day" }
        @if days.is_empty() { p.muted { "No report matched yet." } } @else {
            table { thead { tr { th { "gateway" } th { "day" } th { "currency" } th { "charged" } th { "refunded" } th { "fees" } th { "net" } th { "matched" } th { "open differences" } } }
                tbody { @for d in &days { tr {
                    td { (d.gateway) } td { (d.day) } td { (d.currency) }
                    td { (d.charged) } td { (d.refunded) } td { (d.fees) } td { (d.net) }
                    td { @if let Some(rate) = d.matched_rate { (format!("{:.1} %", rate * 100.0)) } @else { "—" } }
                    td { (d.open_differences) }
                } } }
            }
        }

        h2 id="differences" { "Open differences (" (open.len()) ")" }
        @if open.is_empty() { p.ok { "None." } } @else {
            table { thead { tr { th { "gateway" } th { "reference" } th { "kind" } th { "detail" } th { "Paygate" } th { "report" } th { "" } } }
                tbody { @for d in &open { tr {
                    td { (d.gateway) }
                    td { code { (d.reference) } " " span.muted { (d.operation) } }
                    td { code { (d.kind) } }
                    td { (d.detail) }
                    td { code { (d.paygate.as_ref().map(|v| v.to_string()).unwrap_or_else(|| "—".to_owned())) } }
                    td { code { (d.gateway_report.as_ref().map(|v| v.to_string()).unwrap_or_else(|| "—".to_owned())) } }
                    td {
                        form.inline method="post" action={ "/console/settlement/differences/" (d.id) "/resolve" } {
                            input type="hidden" name="csrf" value=(operator.csrf);
                            input type="text" name="note" required maxlength="1000" size="20" placeholder="what was done";
                            button type="submit" { "Resolve" }
                        }
                    }
                } } }
            }
        }

        h2 id="runs" { "Runs" }
        @if runs.is_empty() { p.muted { "None yet." } } @else {
            table { thead { tr { th { "gateway" } th { "day" } th { "status" } th { "lines" } th { "matched" } th { "differences" } th { "asked by" } th { "finished" } th { "error" } } }
                tbody { @for r in &runs { tr {
                    td { (r.gateway) } td { (r.period_start.date_naive()) } td { (r.status) }
                    td { (r.rows_read) } td { (r.matched) } td { (r.differences) " (" (r.open_differences) " open)" }
                    td { (r.requested_by) }
                    td { @if let Some(f) = r.finished_at { (at(f)) } }
                    td { (r.error.as_deref().unwrap_or("")) }
                } } }
            }
        }
    };
    Ok(layout::page(
        &operator,
        Section::Settlement,
        "Reconciliation",
        body,
    ))
}

#[derive(Debug, Deserialize)]
pub struct RunForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    gateway: String,
    #[serde(default)]
    date: String,
}

/// `POST /console/settlement/runs`.
pub async fn run(
    State(state): State<AppState>,
    operator: Operator,
    Form(form): Form<RunForm>,
) -> Result<Response> {
    operator.check_csrf(&form.csrf)?;
    let actor = Actor::console(&operator.name)?;
    request_run(&state, form.gateway.trim(), &form.date, &actor)
        .await
        .map_err(shown)?;
    Ok(redirect("/console/settlement#runs"))
}

#[derive(Debug, Deserialize)]
pub struct ResolveForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    note: String,
}

/// `POST /console/settlement/differences/{id}/resolve`.
pub async fn resolve(
    State(state): State<AppState>,
    operator: Operator,
    Path(id): Path<String>,
    Form(form): Form<ResolveForm>,
) -> Result<Response> {
    operator.check_csrf(&form.csrf)?;
    let id: i64 = id
        .parse()
        .map_err(|_| ConsoleError::NotFound("difference"))?;
    let actor = Actor::console(&operator.name)?;
    let note = interventions::note("note", &form.note)?;
    resolve_difference(&state.pool, id, &actor, note)
        .await
        .map_err(shown)?;
    Ok(redirect("/console/settlement#differences"))
}
