//! What an operator may do to a payment Paygate cannot settle alone, through the admin
//! API or the console (both call these functions):
//! - **re-drive** a pending payment (dead-lettered, unresolved, or stuck): it is asked
//!   for again on `payments_requested`, with a fresh budget of attempts;
//! - **release** an ambiguous payment from the gateway it names, so that it is routed
//!   from the top — the only way such a payment ever moves to another gateway;
//! - **resolve a review** (a contradiction, a payment without a callback): the flag is
//!   cleared, the status never changes;
//! - **re-send an event the outbox set aside** for good, once its cause is fixed.
//!
//! How each one is kept safe:
//! - **One database transaction, under the payment's row lock.** The payment is read
//!   `FOR UPDATE`, checked, changed with a version-checked `UPDATE … WHERE version = $seen`
//!   that bumps the version, and its history event is appended, all committed together.
//!   The bump is the fencing token: a payment-processor that read the payment before the
//!   action can no longer write on what it saw.
//! - **Refused, not bent.** A state that does not allow the action is a typed refusal
//!   (`not_pending`, `no_gateway`, `gateway_changed`) and changes nothing.
//! - **Idempotent.** A repeat of an action that already took effect — the payment's last
//!   versioned event is that action and nothing has happened since that calls for it
//!   again — changes nothing and says so (`changed: false`); so does resolving a review
//!   that is no longer open, or re-sending an event that is back in the queue.
//! - **Recorded.** Every change is a history event carrying who (the [`Actor`]) and why
//!   (the note), when (`created_at`), visible in `GET /v1/transactions/{id}/events`.

use prost::Message as _;
use sqlx::{PgConnection, PgPool};

use paygate_common::domain::{EventId, Status, TransactionId};
use paygate_common::events::{proto, Destination};
use paygate_common::transactions::{self, TransactionRecord};

/// The event types of operators' actions.
pub mod event_type {
    /// Asked for again on `payments_requested` (the event itself is the request).
    pub const PAYMENT_REDRIVEN: &str = "payment.redriven";
    /// Released from the gateway it named and asked for again, routed from the top (the
    /// event itself is the request).
    pub const GATEWAY_RELEASED: &str = "gateway.released";
    /// A review closed by an operator (history only).
    pub const REVIEW_RESOLVED: &str = "review.resolved";
    /// An event the outbox had set aside is queued again (history only).
    pub const EVENT_RESENT: &str = "event.resent";
}

/// The longest reason or note kept, in characters.
pub const MAX_NOTE_CHARS: usize = 1000;
/// The longest operator name kept, in characters.
pub const MAX_NAME_CHARS: usize = 100;

/// Who took an action, as the history shows it: `console: Ada`, `admin API: Ada`, or
/// `admin API: admin token holder` when a caller of the admin API gives no name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor(String);

impl Actor {
    /// A caller of the admin API, by the name it gives (`operator`), if any.
    pub fn admin_api(name: Option<&str>) -> Result<Self, InterventionError> {
        let name = match name {
            Some(name) => operator_name(name)?,
            None => "admin token holder".to_owned(),
        };
        Ok(Actor(format!("admin API: {name}")))
    }

    /// An operator signed in to the console, by the name given at sign-in.
    pub fn console(name: &str) -> Result<Self, InterventionError> {
        Ok(Actor(format!("console: {}", operator_name(name)?)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A person's name as it may be recorded: 1 to [`MAX_NAME_CHARS`] characters, no
/// control characters.
pub fn operator_name(name: &str) -> Result<String, InterventionError> {
    let name = name.trim();
    if name.is_empty()
        || name.chars().count() > MAX_NAME_CHARS
        || name.chars().any(char::is_control)
    {
        return Err(InterventionError::Invalid {
            field: "operator",
            message: format!("must be 1 to {MAX_NAME_CHARS} characters, no control characters"),
        });
    }
    Ok(name.to_owned())
}

/// Why, as it is recorded: 1 to [`MAX_NOTE_CHARS`] characters; `field` names the input.
pub fn note<'a>(field: &'static str, text: &'a str) -> Result<&'a str, InterventionError> {
    let text = text.trim();
    if text.is_empty() || text.chars().count() > MAX_NOTE_CHARS {
        return Err(InterventionError::Invalid {
            field,
            message: format!("must be 1 to {MAX_NOTE_CHARS} characters"),
        });
    }
    Ok(text)
}

/// Why an action was not taken.
#[derive(Debug, thiserror::Error)]
pub enum InterventionError {
    #[error("{0} not found")]
    NotFound(&'static str),
    /// An input breaks a rule (a missing reason, a name too long).
    #[error("{message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    /// The payment's state does not allow the action; nothing was changed.
    #[error("{message}")]
    Refused { code: &'static str, message: String },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// What an action did.
#[derive(Debug)]
pub struct Intervention {
    /// The payment as it is now.
    pub transaction: TransactionRecord,
    /// Whether this call changed it; `false`: a repeat, or nothing left to do.
    pub changed: bool,
}

impl Intervention {
    /// Nothing to do: `transaction` stays as it is.
    fn unchanged(transaction: TransactionRecord) -> Result<Self, InterventionError> {
        Ok(Intervention {
            transaction,
            changed: false,
        })
    }
}

/// Records `record`'s new version as the action `event_type` by `actor`, commits, and
/// says so.
async fn commit_action(
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    record: TransactionRecord,
    event_type: &str,
    destination: Destination,
    actor: &Actor,
    note: &str,
) -> Result<Intervention, InterventionError> {
    record_action(&mut tx, &record, event_type, destination, actor, note).await?;
    paygate_common::outbox::commit(tx).await?;
    tracing::info!(transaction_id = %record.id, event_type, actor = actor.as_str(), note, "operator action");
    Ok(Intervention {
        transaction: record,
        changed: true,
    })
}

/// A payment as an action sees it, read under its row lock.
struct Seen {
    record: TransactionRecord,
    /// The type of its latest versioned event.
    last_event: Option<String>,
}

async fn lock(conn: &mut PgConnection, id: &TransactionId) -> Result<Seen, InterventionError> {
    let record = transactions::find_for_update(&mut *conn, id)
        .await?
        .ok_or(InterventionError::NotFound("transaction"))?;
    let last_event: Option<String> = sqlx::query_scalar(
        "SELECT event_type FROM transaction_event
          WHERE transaction_id = $1 AND version IS NOT NULL
          ORDER BY version DESC LIMIT 1",
    )
    .bind(id.as_str())
    .fetch_optional(&mut *conn)
    .await?;
    Ok(Seen { record, last_event })
}

fn not_pending(record: &TransactionRecord, action: &str) -> InterventionError {
    InterventionError::Refused {
        code: "not_pending",
        message: format!(
            "only a pending payment can be {action}; {} is {}",
            record.id, record.status
        ),
    }
}

/// Applies `set` (SQL assignments, each followed by a comma) with a version bump, fenced
/// on the version seen, and reads the payment back.
async fn bump(
    conn: &mut PgConnection,
    seen: &TransactionRecord,
    set: &'static str,
) -> Result<TransactionRecord, InterventionError> {
    let updated = sqlx::query(&format!(
        "UPDATE transaction SET {set} version = version + 1 WHERE id = $1 AND version = $2"
    ))
    .bind(seen.id.as_str())
    .bind(seen.version)
    .execute(&mut *conn)
    .await?;
    if updated.rows_affected() != 1 {
        // Unreachable under the row lock; refused rather than written on a stale read.
        return Err(InterventionError::Refused {
            code: "version_conflict",
            message: format!("{} changed meanwhile; try again", seen.id),
        });
    }
    transactions::find(&mut *conn, &seen.id)
        .await?
        .ok_or(InterventionError::NotFound("transaction"))
}

/// Appends the event of `record`'s current version, with who and why: to
/// `payments_requested` (a request for the payment, which is what a re-drive is) or to
/// the history only.
async fn record_action(
    conn: &mut PgConnection,
    record: &TransactionRecord,
    event_type: &str,
    destination: Destination,
    actor: &Actor,
    note: &str,
) -> sqlx::Result<()> {
    let event_id = EventId::new();
    let transaction = Some(record.to_proto());
    let payload = match destination {
        Destination::PaymentsRequested => proto::PaymentRequested {
            event_id: event_id.to_string(),
            transaction,
            refund: None,
        }
        .encode_to_vec(),
        _ => proto::StatusChanged {
            event_id: event_id.to_string(),
            transaction,
            refund: None,
            routing: None,
        }
        .encode_to_vec(),
    };
    sqlx::query(
        "INSERT INTO transaction_event (id, transaction_id, version, event_type, status, destination,
                                        payload, published_at, actor, note)
         VALUES ($1, $2, $3, $4, $5, $6, $7, CASE WHEN $6 = 'history' THEN now() END, $8, $9)",
    )
    .bind(event_id.as_str())
    .bind(record.id.as_str())
    .bind(record.version)
    .bind(event_type)
    .bind(record.status.as_str())
    .bind(destination.as_str())
    .bind(payload)
    .bind(actor.as_str())
    .bind(note)
    .execute(conn)
    .await?;
    Ok(())
}

/// Re-drives a pending payment: asked for again on `payments_requested` (the
/// payment-processor settles from what the database says, so a second request is safe:
/// a payment naming a gateway is asked about there, one naming none is routed), its
/// unresolved mark cleared. A payment in any other status is refused (`not_pending`).
/// A repeat while the last re-drive is still the latest word on the payment, and it has
/// not been marked unresolved since, changes nothing.
pub async fn redrive(
    pool: &PgPool,
    id: &TransactionId,
    actor: &Actor,
    reason: &str,
) -> Result<Intervention, InterventionError> {
    let mut tx = pool.begin().await?;
    let seen = lock(&mut tx, id).await?;
    if seen.record.status != Status::Pending {
        return Err(not_pending(&seen.record, "re-driven"));
    }
    if seen.last_event.as_deref() == Some(event_type::PAYMENT_REDRIVEN)
        && seen.record.unresolved_since.is_none()
    {
        return Intervention::unchanged(seen.record);
    }
    let record = bump(
        &mut tx,
        &seen.record,
        "unresolved_since = NULL, unresolved_checked_at = NULL, unresolved_reason = NULL,
         updated_at = now(),",
    )
    .await?;
    commit_action(
        tx,
        record,
        event_type::PAYMENT_REDRIVEN,
        Destination::PaymentsRequested,
        actor,
        reason,
    )
    .await
}

/// Releases a pending payment from `gateway`, the one it names, and re-drives it: it no
/// longer names a gateway, so the payment-processor routes it from the top of its
/// routes. The operator must first have confirmed with that gateway that it holds
/// nothing for the payment — which is why they name it: Paygate itself never moves an
/// ambiguous payment on, because the gateway may hold the money. Refused when the
/// payment is not pending (`not_pending`), names no gateway (`no_gateway`), or names
/// another one than the operator confirmed with (`gateway_changed`: it moved on since,
/// and that one may hold the money now); a repeat right after a release changes
/// nothing.
pub async fn release(
    pool: &PgPool,
    id: &TransactionId,
    gateway: &str,
    actor: &Actor,
    reason: &str,
) -> Result<Intervention, InterventionError> {
    let mut tx = pool.begin().await?;
    let seen = lock(&mut tx, id).await?;
    if seen.record.status != Status::Pending {
        return Err(not_pending(&seen.record, "released"));
    }
    if let Some(named) = seen
        .record
        .gateway
        .as_deref()
        .filter(|named| *named != gateway)
    {
        return Err(InterventionError::Refused {
            code: "gateway_changed",
            message: format!(
                "{id} names {named} now, not {gateway}: confirm with {named} before releasing it"
            ),
        });
    }
    let Some(gateway) = seen.record.gateway.clone() else {
        if seen.last_event.as_deref() == Some(event_type::GATEWAY_RELEASED) {
            return Intervention::unchanged(seen.record);
        }
        return Err(InterventionError::Refused {
            code: "no_gateway",
            message: format!("{id} names no gateway: there is nothing to release"),
        });
    };
    let record = bump(
        &mut tx,
        &seen.record,
        "gateway = NULL, attempted_at = NULL, unresolved_since = NULL,
         unresolved_checked_at = NULL, unresolved_reason = NULL, updated_at = now(),",
    )
    .await?;
    commit_action(
        tx,
        record,
        event_type::GATEWAY_RELEASED,
        Destination::PaymentsRequested,
        actor,
        &format!("released from {gateway}: {reason}"),
    )
    .await
}

/// Closes a payment's review with the operator's note. The status never changes (nor
/// `updated_at`, which on a final payment is when it became final). A payment under no
/// review is left as it is.
pub async fn resolve_review(
    pool: &PgPool,
    id: &TransactionId,
    actor: &Actor,
    note: &str,
) -> Result<Intervention, InterventionError> {
    let mut tx = pool.begin().await?;
    let seen = lock(&mut tx, id).await?;
    let Some(reason) = seen.record.review_reason.clone() else {
        return Intervention::unchanged(seen.record);
    };
    let record = bump(
        &mut tx,
        &seen.record,
        "review_reason = NULL, review_since = NULL, review_detail = NULL,",
    )
    .await?;
    commit_action(
        tx,
        record,
        event_type::REVIEW_RESOLVED,
        Destination::History,
        actor,
        &format!("{reason}: {note}"),
    )
    .await
}

/// An outbox row set aside for good, with its transaction.
#[derive(Debug, serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct SetAsideEvent {
    /// `evt_…`.
    pub event_id: String,
    pub transaction_id: String,
    /// The transaction's status now.
    #[schema(example = "completed")]
    pub transaction_status: String,
    #[schema(example = "transaction.completed")]
    pub event_type: String,
    /// The stream it was to go to: `payments_requested`, `gateway_callbacks` or
    /// `transactions_status`.
    pub destination: String,
    pub version: Option<i32>,
    /// Why the broker refused it.
    pub reason: Option<String>,
    pub publish_attempts: i32,
    #[serde(serialize_with = "rfc3339")]
    #[schema(value_type = String)]
    pub created_at: chrono::DateTime<chrono::Utc>,
    #[serde(serialize_with = "rfc3339")]
    #[schema(value_type = String)]
    pub set_aside_at: chrono::DateTime<chrono::Utc>,
}

fn rfc3339<S: serde::Serializer>(
    at: &chrono::DateTime<chrono::Utc>,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_str(&paygate_common::events::timestamp(*at))
}

const SET_ASIDE_COLUMNS: &str =
    "e.id AS event_id, e.transaction_id, t.status AS transaction_status,
     e.event_type, e.destination, e.version, e.set_aside_reason AS reason, e.publish_attempts,
     e.created_at, e.set_aside_at";

/// The latest 100 events set aside (through `transaction_event_set_aside`), newest
/// first.
pub async fn set_aside(pool: &PgPool) -> sqlx::Result<Vec<SetAsideEvent>> {
    sqlx::query_as(&format!(
        "SELECT {SET_ASIDE_COLUMNS}
           FROM transaction_event e JOIN transaction t ON t.id = e.transaction_id
          WHERE e.set_aside_at IS NOT NULL
          ORDER BY e.set_aside_at DESC LIMIT 100"
    ))
    .fetch_all(pool)
    .await
}

/// One transaction's events set aside, oldest first.
pub async fn set_aside_of(pool: &PgPool, id: &TransactionId) -> sqlx::Result<Vec<SetAsideEvent>> {
    sqlx::query_as(&format!(
        "SELECT {SET_ASIDE_COLUMNS}
           FROM transaction_event e JOIN transaction t ON t.id = e.transaction_id
          WHERE e.transaction_id = $1 AND e.set_aside_at IS NOT NULL
          ORDER BY e.seq"
    ))
    .bind(id.as_str())
    .fetch_all(pool)
    .await
}

/// What re-sending an event did.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Resent {
    pub event_id: String,
    pub transaction_id: String,
    /// `queued` (the relay publishes it next), or `published`.
    #[schema(example = "queued")]
    pub state: &'static str,
    /// Whether this call queued it; `false`: it was not set aside (a repeat).
    pub changed: bool,
}

/// Puts an event the outbox set aside back in the queue (its attempts counted afresh),
/// once the cause (an unknown topic, a missing authorization) is fixed; the relay then
/// publishes it like any other, in its transaction's order. Recorded in the payment's
/// history as `event.resent`. An event that is not set aside (already queued again, or
/// published) is left as it is.
pub async fn resend(
    pool: &PgPool,
    event_id: &str,
    actor: &Actor,
    note: Option<&str>,
) -> Result<Resent, InterventionError> {
    let mut tx = pool.begin().await?;
    let found: Option<(String, String, Option<String>, bool, bool)> = sqlx::query_as(
        "SELECT transaction_id, event_type, set_aside_reason, set_aside_at IS NOT NULL,
                published_at IS NOT NULL
           FROM transaction_event WHERE id = $1",
    )
    .bind(event_id)
    .fetch_optional(&mut *tx)
    .await?;
    let (transaction_id, kind, reason, set_aside, published) =
        found.ok_or(InterventionError::NotFound("event"))?;
    let id: TransactionId = transaction_id
        .parse()
        .map_err(|_| InterventionError::NotFound("transaction"))?;
    // The payment first, then the row: the same order as every writer of both.
    let seen = lock(&mut tx, &id).await?;
    let requeued = sqlx::query(
        "UPDATE transaction_event
            SET set_aside_at = NULL, set_aside_reason = NULL, claimed_until = NULL,
                claimed_by = NULL, publish_attempts = 0,
                last_error = 'set aside, then re-sent by an operator: ' || coalesce(set_aside_reason, '')
          WHERE id = $1 AND set_aside_at IS NOT NULL AND published_at IS NULL",
    )
    .bind(event_id)
    .execute(&mut *tx)
    .await?;
    let changed = set_aside && requeued.rows_affected() == 1;
    if changed {
        let record = bump(&mut tx, &seen.record, "").await?;
        let why = match note {
            Some(note) => format!("{kind} {event_id} ({}): {note}", reason.unwrap_or_default()),
            None => format!("{kind} {event_id} ({})", reason.unwrap_or_default()),
        };
        commit_action(
            tx,
            record,
            event_type::EVENT_RESENT,
            Destination::History,
            actor,
            &why,
        )
        .await?;
    }
    Ok(Resent {
        event_id: event_id.to_owned(),
        transaction_id,
        state: if published && !changed {
            "published"
        } else {
            "queued"
        },
        changed,
    })
}

impl From<InterventionError> for crate::http::error::ApiError {
    fn from(error: InterventionError) -> Self {
        use crate::http::error::ApiError;
        match error {
            InterventionError::NotFound(what) => ApiError::NotFound(what),
            InterventionError::Invalid { field, message } => ApiError::invalid(field, message),
            InterventionError::Refused { code, message } => ApiError::refused(code, None, message),
            InterventionError::Database(error) => error.into(),
        }
    }
}
