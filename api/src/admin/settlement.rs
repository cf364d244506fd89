//! `/admin/v1/settlement/…`: reconciliation against the gateways' settlement reports
//! (the payment-processor's `settlement` runs). An operator asks for a run of a
//! gateway's day (a command on `paygate.settlement.commands`: the api writes nothing
//! else, the payment-processor records and runs it), lists runs and the differences
//! they found, resolves a difference with a note (who and when are recorded), and reads
//! each gateway's books per day. The console's reconciliation page reads the same
//! queries.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Days, NaiveDate, Utc};
use prost::Message as _;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use paygate_common::events::proto;
use paygate_common::kafka::Envelope;

use super::interventions::{self, Actor};
use super::{body, Admin};
use crate::http::error::responses::{AdminChangeErrors, NotFound, UnprocessableEntity};
use crate::http::error::{ApiError, Result};
use crate::http::extract::PathParam;
use crate::http::format::RawBody;
use crate::merchant::queries::Page;
use crate::AppState;

/// The event type of a settlement command.
pub const SETTLEMENT_REQUESTED: &str = "settlement.run_requested";

/// The kinds of difference a run records.
pub const KINDS: [&str; 6] = [
    "missing_at_gateway",
    "missing_in_paygate",
    "amount_mismatch",
    "status_mismatch",
    "duplicate_charge",
    "duplicate_refund",
];

/// `POST /settlement/runs`'s body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// The gateway whose report to reconcile, by code.
    #[schema(example = "simjson")]
    pub gateway: String,
    /// The UTC day, `YYYY-MM-DD`; not in the future.
    #[schema(example = "2026-12-04", format = Date)]
    pub date: String,
    /// Who asks; absent: "admin token holder".
    #[schema(example = "Ada", min_length = 1, max_length = 100)]
    pub operator: Option<String>,
}

/// A run asked for.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunRequested {
    pub gateway: String,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    /// Always `requested`: the payment-processor takes it up from the command topic.
    pub status: &'static str,
}

/// A reconciliation run.
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct RunView {
    pub id: i64,
    pub gateway: String,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    /// `requested`, `fetching`, `matching`, `completed` or `failed`.
    pub status: String,
    pub requested_by: String,
    pub requested_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Fetches of the report tried.
    pub fetch_attempts: i32,
    /// Lines in the report.
    pub rows_read: i64,
    /// References that matched Paygate's books exactly.
    pub matched: i64,
    /// Differences this period's runs found.
    pub differences: i64,
    /// Of them, still open (for a human).
    pub open_differences: i64,
    /// Why it failed.
    pub error: Option<String>,
}

/// A difference between a gateway's report and Paygate's books.
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct DifferenceView {
    pub id: i64,
    pub run_id: i64,
    pub gateway: String,
    /// `charge` or `refund`.
    pub operation: String,
    /// Our reference: a `txn_…` or `rfd_…` id, or what the gateway listed.
    pub reference: String,
    /// `missing_at_gateway`, `missing_in_paygate`, `amount_mismatch`, `status_mismatch`,
    /// `duplicate_charge` or `duplicate_refund`.
    pub kind: String,
    pub detail: String,
    /// Paygate's side: the payment or refund as Paygate had it; `null` when it has none.
    #[schema(value_type = Option<Object>)]
    pub paygate: Option<serde_json::Value>,
    /// The gateway's side: its report's lines for the reference; `null` when it lists none.
    #[schema(value_type = Option<Object>)]
    pub gateway_report: Option<serde_json::Value>,
    pub found_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
    /// Who: `paygate` when the report settled the payment itself.
    pub resolved_by: Option<String>,
    pub resolution_note: Option<String>,
}

/// One gateway's books for one UTC day and currency, from its reports.
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct DayView {
    pub gateway: String,
    pub day: NaiveDate,
    pub currency: String,
    #[schema(value_type = String, example = "1200.00")]
    pub charged: Decimal,
    #[schema(value_type = String, example = "50.00")]
    pub refunded: Decimal,
    #[schema(value_type = String, example = "24.00")]
    pub fees: Decimal,
    /// Charged less refunded less fees.
    #[schema(value_type = String, example = "1126.00")]
    pub net: Decimal,
    /// References matched over all the day's run examined (matched + differences); `null`
    /// before a run completed.
    pub matched_rate: Option<f64>,
    pub open_differences: i64,
}

/// `GET /settlement/runs`'s query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RunFilter {
    /// Only this gateway's runs.
    pub gateway: Option<String>,
    /// How many at most, 1 to 100; 20 when absent.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
}

/// `GET /settlement/differences`'s query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DifferenceFilter {
    /// `open` (the default), `resolved` or `all`.
    pub status: Option<String>,
    pub gateway: Option<String>,
    pub kind: Option<String>,
    pub run_id: Option<i64>,
    /// How many at most, 1 to 500; 100 when absent.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
}

/// `POST /settlement/differences/{id}/resolve`'s body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResolveDifference {
    /// What was found and done: 1 to 1000 characters.
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

fn limit(given: Option<i64>, default: i64, max: i64) -> Result<i64> {
    match given {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::invalid("limit", format!("must be 1 to {max}"))),
    }
}

fn query<T>(query: std::result::Result<Query<T>, QueryRejection>) -> Result<T> {
    query
        .map(|Query(q)| q)
        .map_err(|rejection| ApiError::invalid("query", rejection.body_text()))
}

/// Asks for a run of `gateway`'s UTC day `date`: checks it, then produces the command.
/// Nothing else is written, so a refused request changed nothing.
pub async fn request_run(
    state: &AppState,
    gateway: &str,
    date: &str,
    actor: &Actor,
) -> Result<RunRequested> {
    let day = NaiveDate::parse_from_str(date.trim(), "%Y-%m-%d")
        .map_err(|_| ApiError::invalid("date", "must be a day, YYYY-MM-DD"))?;
    if day > Utc::now().date_naive() {
        return Err(ApiError::invalid("date", "must not be in the future"));
    }
    let known: Option<i32> = sqlx::query_scalar("SELECT 1 FROM gateway WHERE code = $1")
        .bind(gateway)
        .fetch_optional(&state.pool)
        .await?;
    if known.is_none() {
        return Err(ApiError::invalid("gateway", "no such gateway"));
    }
    let start = day.and_time(chrono::NaiveTime::MIN).and_utc();
    let end = day
        .checked_add_days(Days::new(1))
        .ok_or_else(|| ApiError::invalid("date", "out of range"))?
        .and_time(chrono::NaiveTime::MIN)
        .and_utc();
    let event_id = paygate_common::domain::EventId::new().as_str().to_owned();
    let command = proto::SettlementRunRequested {
        event_id: event_id.clone(),
        gateway: gateway.to_owned(),
        period_start: start.timestamp_millis(),
        period_end: end.timestamp_millis(),
        requested_by: actor.as_str().to_owned(),
    };
    let payload = command.encode_to_vec();
    state
        .producer
        .send(&Envelope {
            topic: &state.settings.kafka.topics.settlement_commands,
            key: gateway,
            event_id: &event_id,
            event_type: SETTLEMENT_REQUESTED,
            payload: &payload,
        })
        .await
        .map_err(ApiError::Unavailable)?;
    tracing::info!(%gateway, %day, by = actor.as_str(), "settlement run requested");
    Ok(RunRequested {
        gateway: gateway.to_owned(),
        period_start: start,
        period_end: end,
        status: "requested",
    })
}

/// `POST /settlement/runs {gateway, date, operator?}`.
#[utoipa::path(
    post,
    path = "/settlement/runs",
    summary = "Ask for a reconciliation run of a gateway's day",
    description = "Produces a command on `paygate.settlement.commands`; the payment-processor fetches \
                   the gateway's settlement report for the UTC day and matches it with Paygate's \
                   payments and refunds. A day already run is run again to the same result (nothing \
                   is found twice); a run under way is left to finish. `422` for an unknown gateway \
                   (`field: gateway`) or a day that is not one or is in the future (`field: date`).",
    request_body(content((RunRequest = "application/json"))),
    responses(
        (status = 202, description = "Asked for; list runs to follow it.", body = RunRequested),
        AdminChangeErrors,
    )
)]
pub(super) async fn create_run(
    _: Admin,
    State(state): State<AppState>,
    raw: RawBody,
) -> Result<(StatusCode, Json<RunRequested>)> {
    let request: RunRequest = body(&raw)?;
    let actor = Actor::admin_api(request.operator.as_deref())?;
    let requested = request_run(&state, &request.gateway, &request.date, &actor).await?;
    Ok((StatusCode::ACCEPTED, Json(requested)))
}

/// The runs, newest period first.
pub async fn run_list(
    pool: &sqlx::PgPool,
    gateway: Option<&str>,
    limit: i64,
) -> sqlx::Result<Vec<RunView>> {
    sqlx::query_as(
        "SELECT r.id, r.gateway, r.period_start, r.period_end, r.status, r.requested_by, r.requested_at,
                r.started_at, r.finished_at, r.fetch_attempts, r.rows_read, r.matched, r.error,
                (SELECT count(*) FROM settlement_difference d WHERE d.run_id = r.id) AS differences,
                (SELECT count(*) FROM settlement_difference d WHERE d.run_id = r.id AND d.resolved_at IS NULL) AS open_differences
           FROM settlement_run r
          WHERE $1::text IS NULL OR r.gateway = $1
          ORDER BY r.period_start DESC, r.id DESC
          LIMIT $2",
    )
    .bind(gateway)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// `GET /settlement/runs?gateway=&limit=`.
#[utoipa::path(
    get,
    path = "/settlement/runs",
    summary = "Reconciliation runs",
    description = "Newest period first, each with what it read, matched and found.",
    params(RunFilter),
    responses(
        (status = 200, description = "The runs.", body = Page<RunView>),
        (status = 422, response = UnprocessableEntity),
    )
)]
pub(super) async fn list_runs(
    _: Admin,
    State(state): State<AppState>,
    filter: std::result::Result<Query<RunFilter>, QueryRejection>,
) -> Result<Json<Page<RunView>>> {
    let filter = query(filter)?;
    let limit = limit(filter.limit, 20, 100)?;
    let rows = run_list(&state.pool, filter.gateway.as_deref(), limit + 1).await?;
    Ok(Json(Page::of_one_extra(rows, limit)))
}

const DIFFERENCE_COLUMNS: &str = "id, run_id, gateway, operation, reference, kind, detail, paygate, gateway_report, found_at, resolved_at, resolved_by, resolution_note";

/// Differences by status (`open`, `resolved`, `all`), oldest first.
pub async fn difference_list(
    pool: &sqlx::PgPool,
    status: &str,
    gateway: Option<&str>,
    kind: Option<&str>,
    run_id: Option<i64>,
    limit: i64,
) -> sqlx::Result<Vec<DifferenceView>> {
    sqlx::query_as(&format!(
        "SELECT {DIFFERENCE_COLUMNS} FROM settlement_difference
          WHERE ($1 = 'all' OR ($1 = 'open') = (resolved_at IS NULL))
            AND ($2::text IS NULL OR gateway = $2)
            AND ($3::text IS NULL OR kind = $3)
            AND ($4::bigint IS NULL OR run_id = $4)
          ORDER BY found_at, id
          LIMIT $5"
    ))
    .bind(status)
    .bind(gateway)
    .bind(kind)
    .bind(run_id)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// `GET /settlement/differences?status=&gateway=&kind=&run_id=&limit=`.
#[utoipa::path(
    get,
    path = "/settlement/differences",
    summary = "Differences between the gateways' reports and Paygate's books",
    description = "Open ones by default (they need a human): each with both sides' evidence. \
                   `status=resolved` lists those resolved, by an operator's note or by the report \
                   itself (`resolved_by: paygate`: it settled an unresolved payment).",
    params(DifferenceFilter),
    responses(
        (status = 200, description = "Oldest first.", body = Page<DifferenceView>),
        (status = 422, response = UnprocessableEntity),
    )
)]
pub(super) async fn list_differences(
    _: Admin,
    State(state): State<AppState>,
    filter: std::result::Result<Query<DifferenceFilter>, QueryRejection>,
) -> Result<Json<Page<DifferenceView>>> {
    let filter = query(filter)?;
    let status = filter.status.as_deref().unwrap_or("open");
    if !["open", "resolved", "all"].contains(&status) {
        return Err(ApiError::invalid("status", "must be open, resolved or all"));
    }
    if filter.kind.as_deref().is_some_and(|k| !KINDS.contains(&k)) {
        return Err(ApiError::invalid(
            "kind",
            format!("must be one of {}", KINDS.join(", ")),
        ));
    }
    let limit = limit(filter.limit, 100, 500)?;
    let rows = difference_list(
        &state.pool,
        status,
        filter.gateway.as_deref(),
        filter.kind.as_deref(),
        filter.run_id,
        limit + 1,
    )
    .await?;
    Ok(Json(Page::of_one_extra(rows, limit)))
}

/// Resolves an open difference with `note`, recording who and when. A difference
/// resolved already is `422 already_resolved`, and keeps its first resolution.
pub async fn resolve_difference(
    pool: &sqlx::PgPool,
    id: i64,
    actor: &Actor,
    note: &str,
) -> Result<DifferenceView> {
    let resolved: Option<DifferenceView> = sqlx::query_as(&format!(
        "UPDATE settlement_difference
            SET resolved_at = now(), resolved_by = $2, resolution_note = $3
          WHERE id = $1 AND resolved_at IS NULL
          RETURNING {DIFFERENCE_COLUMNS}"
    ))
    .bind(id)
    .bind(actor.as_str())
    .bind(note)
    .fetch_optional(pool)
    .await?;
    if let Some(resolved) = resolved {
        tracing::info!(
            difference_id = id,
            by = actor.as_str(),
            "settlement difference resolved"
        );
        return Ok(resolved);
    }
    let exists: Option<i64> =
        sqlx::query_scalar("SELECT id FROM settlement_difference WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await?;
    match exists {
        None => Err(ApiError::NotFound("difference")),
        Some(_) => Err(ApiError::refused(
            "already_resolved",
            None,
            "this difference is resolved already",
        )),
    }
}

/// `POST /settlement/differences/{id}/resolve {note, operator?}`.
#[utoipa::path(
    post,
    path = "/settlement/differences/{id}/resolve",
    summary = "Resolve a difference with a note",
    description = "Records the note, who (`operator`, or the admin token holder) and when. A \
                   difference resolved already is `422 already_resolved` and keeps its first \
                   resolution.",
    params(("id" = i64, Path, description = "The difference.")),
    request_body(content((ResolveDifference = "application/json"))),
    responses(
        (status = 200, description = "Resolved.", body = DifferenceView),
        (status = 404, response = NotFound),
        AdminChangeErrors,
    )
)]
pub(super) async fn resolve(
    _: Admin,
    State(state): State<AppState>,
    PathParam(id): PathParam<String>,
    raw: RawBody,
) -> Result<Json<DifferenceView>> {
    let id: i64 = id.parse().map_err(|_| ApiError::NotFound("difference"))?;
    let request: ResolveDifference = body(&raw)?;
    let actor = Actor::admin_api(request.operator.as_deref())?;
    let note = interventions::note("note", &request.note)?;
    Ok(Json(
        resolve_difference(&state.pool, id, &actor, note).await?,
    ))
}

/// Each gateway's books per UTC day and currency, newest first.
pub async fn day_list(
    pool: &sqlx::PgPool,
    gateway: Option<&str>,
    limit: i64,
) -> sqlx::Result<Vec<DayView>> {
    sqlx::query_as(
        "WITH books AS (
            SELECT gateway, (settled_at AT TIME ZONE 'UTC')::date AS day, currency::text AS currency,
                   coalesce(sum(amount) FILTER (WHERE operation = 'charge'), 0) AS charged,
                   coalesce(sum(amount) FILTER (WHERE operation = 'refund'), 0) AS refunded,
                   coalesce(sum(fee), 0) AS fees
              FROM settlement_fee
             WHERE $1::text IS NULL OR gateway = $1
             GROUP BY 1, 2, 3),
         runs AS (
            SELECT r.gateway, (r.period_start AT TIME ZONE 'UTC')::date AS day,
                   sum(r.matched) AS matched,
                   sum((SELECT count(*) FROM settlement_difference d WHERE d.run_id = r.id)) AS differences,
                   sum((SELECT count(*) FROM settlement_difference d WHERE d.run_id = r.id AND d.resolved_at IS NULL)) AS open
              FROM settlement_run r
             WHERE r.status = 'completed' AND ($1::text IS NULL OR r.gateway = $1)
             GROUP BY 1, 2)
         SELECT b.gateway, b.day, b.currency, b.charged, b.refunded, b.fees,
                b.charged - b.refunded - b.fees AS net,
                CASE WHEN r.matched + r.differences > 0
                     THEN (r.matched::float8 / (r.matched + r.differences)::float8) END AS matched_rate,
                coalesce(r.open, 0)::bigint AS open_differences
           FROM books b LEFT JOIN runs r ON r.gateway = b.gateway AND r.day = b.day
          ORDER BY b.day DESC, b.gateway, b.currency
          LIMIT $2",
    )
    .bind(gateway)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// `GET /settlement/days?gateway=&limit=`.
#[utoipa::path(
    get,
    path = "/settlement/days",
    summary = "Each gateway's books per day",
    description = "From the settlement reports, per gateway, UTC day and currency: charged, refunded, \
                   fees, net (charged less refunded less fees), the share of references that matched, \
                   and the differences still open.",
    params(RunFilter),
    responses(
        (status = 200, description = "Newest day first.", body = Page<DayView>),
        (status = 422, response = UnprocessableEntity),
    )
)]
pub(super) async fn list_days(
    _: Admin,
    State(state): State<AppState>,
    filter: std::result::Result<Query<RunFilter>, QueryRejection>,
) -> Result<Json<Page<DayView>>> {
    let filter = query(filter)?;
    let limit = limit(filter.limit, 20, 100)?;
    let rows = day_list(&state.pool, filter.gateway.as_deref(), limit + 1).await?;
    Ok(Json(Page::of_one_extra(rows, limit)))
}
