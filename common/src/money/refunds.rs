//! The refund record and the only ways it changes, as [`crate::transactions`] is for a
//! payment: created with its first event, moved along the status machine by a
//! version-checked update that appends the matching event in the same database
//! transaction (the outbox), so a change and its announcement commit together or not
//! at all.
//!
//! How "never more than was charged" is kept: a refund is created in the database
//! transaction that locks its payment's row (`FOR UPDATE`) and adds its amount to the
//! payment's `refund_held`; the constraint `refund_within_amount` refuses a hold past
//! the payment's amount, so racing requests queue on the row lock and exactly those
//! that fit are written. A refund that fails gives its hold back in the database
//! transaction that fails it; one that completes adds to `amount_refunded`.
//!
//! Each refund change is also a version of its payment (the payment's view changes):
//! its event carries the payment's new version, so webhooks about a payment and its
//! refunds reach the merchant in one order. The event names the refund (`refund_id`).

use chrono::{DateTime, Utc};
use prost::Message;
use rust_decimal::Decimal;
use sqlx::{PgConnection, PgExecutor};

use crate::domain::{EventId, Kind, MerchantId, RefundId, Status, TransactionId};
use crate::events::{event_type, proto, timestamp, Destination};
use crate::metadata::Metadata;
use crate::transactions::{self, TransactionRecord};

/// A row of `refund`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RefundRecord {
    #[sqlx(try_from = "String")]
    pub id: RefundId,
    #[sqlx(try_from = "String")]
    pub transaction_id: TransactionId,
    #[sqlx(try_from = "String")]
    pub merchant_id: MerchantId,
    #[sqlx(try_from = "String")]
    pub status: Status,
    pub amount: Decimal,
    pub currency: String,
    pub reason: Option<String>,
    #[sqlx(try_from = "String")]
    pub metadata: Metadata,
    /// The gateway that charged the payment: the only one ever asked.
    pub gateway: String,
    pub gateway_refund_id: Option<String>,
    pub failure_reason: Option<String>,
    pub version: i32,
    /// When the gateway was first asked; from then on it may hold the refund.
    pub attempted_at: Option<DateTime<Utc>>,
    pub unresolved_since: Option<DateTime<Utc>>,
    pub unresolved_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str =
    "id, transaction_id, merchant_id, status, amount, trim(currency) AS currency, \
     reason, metadata::text AS metadata, gateway, gateway_refund_id, failure_reason, version, \
     attempted_at, unresolved_since, unresolved_reason, created_at, updated_at";

impl RefundRecord {
    /// The snapshot carried by events and shown to merchants.
    pub fn to_proto(&self) -> proto::Refund {
        proto::Refund {
            id: self.id.to_string(),
            transaction_id: self.transaction_id.to_string(),
            merchant_id: self.merchant_id.to_string(),
            status: self.status.to_string(),
            amount: self.amount.to_string(),
            currency: self.currency.clone(),
            reason: self.reason.clone(),
            metadata: self.metadata.entries().clone(),
            gateway: self.gateway.clone(),
            gateway_refund_id: self.gateway_refund_id.clone(),
            failure_reason: self.failure_reason.clone(),
            version: self.version,
            created_at: timestamp(self.created_at),
            updated_at: timestamp(self.updated_at),
        }
    }
}

/// What a merchant asked for, already parsed.
#[derive(Debug, Clone)]
pub struct NewRefund {
    pub merchant_id: MerchantId,
    pub transaction_id: TransactionId,
    /// `None`: the rest of what can be refunded. Already checked against the payment's
    /// currency (positive, its minor units).
    pub amount: Option<Decimal>,
    pub reason: Option<String>,
    pub metadata: Metadata,
}

/// Why a refund was not created. Nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum RefundError {
    /// No such payment, or another merchant's.
    #[error("transaction not found")]
    NoPayment,
    /// Only a `completed` deposit can be refunded.
    #[error("{0}")]
    NotRefundable(String),
    /// It would take the refunds past what was charged.
    #[error("the refund exceeds what is left to refund ({remaining} {currency})")]
    ExceedsAmount {
        remaining: Decimal,
        currency: String,
    },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// The name of the constraint that keeps refunds within the payment's amount.
pub const WITHIN_AMOUNT: &str = "refund_within_amount";

/// Creates a `pending` refund of `new.transaction_id`, holding its amount on the
/// payment, and appends its first event (to `payments_requested`). Run it inside the
/// caller's database transaction: on an error, roll it back.
pub async fn create(
    conn: &mut PgConnection,
    new: NewRefund,
) -> Result<(RefundRecord, TransactionRecord), RefundError> {
    // The row lock queues racing refunds of the same payment behind one another.
    let payment = transactions::find_for_update(conn, &new.transaction_id)
        .await?
        .filter(|p| p.merchant_id == new.merchant_id)
        .ok_or(RefundError::NoPayment)?;
    if payment.kind != Kind::Deposit {
        return Err(RefundError::NotRefundable(
            "only a deposit can be refunded".into(),
        ));
    }
    if payment.status != Status::Completed {
        return Err(RefundError::NotRefundable(format!(
            "only a completed deposit can be refunded; this one is {}",
            payment.status
        )));
    }
    let Some(gateway) = payment.gateway.clone() else {
        return Err(RefundError::NotRefundable(
            "the payment names no gateway to refund it".into(),
        ));
    };
    let remaining = payment.amount - payment.refund_held;
    let amount = new.amount.unwrap_or(remaining);
    let exceeds = || RefundError::ExceedsAmount {
        remaining,
        currency: payment.currency.trim().to_owned(),
    };
    if amount <= Decimal::ZERO || amount > remaining {
        return Err(exceeds());
    }
    let held: Option<TransactionRecord> = sqlx::query_as(&format!(
        "UPDATE transaction SET refund_held = refund_held + $2, version = version + 1
          WHERE id = $1
      RETURNING {}",
        transactions::COLUMNS
    ))
    .bind(payment.id.as_str())
    .bind(amount)
    .fetch_optional(&mut *conn)
    .await
    .map_err(|e| match &e {
        // The database's word is final, whatever was read above.
        sqlx::Error::Database(db) if db.constraint() == Some(WITHIN_AMOUNT) => exceeds(),
        _ => RefundError::Database(e),
    })?;
    let payment = held.ok_or(RefundError::NoPayment)?;
    let refund: RefundRecord = sqlx::query_as(&format!(
        "INSERT INTO refund (id, transaction_id, merchant_id, amount, currency, reason, metadata, gateway)
         VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8)
         RETURNING {COLUMNS}"
    ))
    .bind(RefundId::new().as_str())
    .bind(payment.id.as_str())
    .bind(payment.merchant_id.as_str())
    .bind(amount)
    .bind(payment.currency.trim())
    .bind(&new.reason)
    .bind(new.metadata.to_json())
    .bind(&gateway)
    .fetch_one(&mut *conn)
    .await?;
    append(
        conn,
        &refund,
        Some(&payment),
        event_type::REFUND_CREATED,
        Destination::PaymentsRequested,
    )
    .await?;
    Ok((refund, payment))
}

/// Reads one refund.
pub async fn find<'e>(
    executor: impl PgExecutor<'e>,
    id: &RefundId,
) -> sqlx::Result<Option<RefundRecord>> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM refund WHERE id = $1"))
        .bind(id.as_str())
        .fetch_optional(executor)
        .await
}

/// A payment's refunds, oldest first.
pub async fn of_transaction<'e>(
    executor: impl PgExecutor<'e>,
    id: &TransactionId,
) -> sqlx::Result<Vec<RefundRecord>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM refund WHERE transaction_id = $1 ORDER BY created_at, id"
    ))
    .bind(id.as_str())
    .fetch_all(executor)
    .await
}

/// What comes with a refund's status change.
#[derive(Debug, Clone, Default)]
pub struct RefundChange {
    pub gateway_refund_id: Option<String>,
    pub failure_reason: Option<String>,
}

/// Why a refund's transition did not happen.
#[derive(Debug, thiserror::Error)]
pub enum RefundTransitionError {
    #[error("a {from} refund cannot become {to}")]
    NotAllowed { from: Status, to: Status },
    /// Someone changed the refund since it was read: the version no longer matches.
    #[error("refund {0} changed concurrently (version fence)")]
    Stale(RefundId),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Moves `seen` to `to`, only if it is still at the version it was read at and its
/// status allows the move; settles the payment's hold (a failure gives it back, a
/// completion adds to `amount_refunded`) and appends `refund.<to>` (to
/// `transactions_status`). Run it inside the caller's database transaction.
pub async fn transition(
    conn: &mut PgConnection,
    seen: &RefundRecord,
    to: Status,
    change: RefundChange,
) -> Result<RefundRecord, RefundTransitionError> {
    if !seen.status.can_become(to) {
        return Err(RefundTransitionError::NotAllowed {
            from: seen.status,
            to,
        });
    }
    let allowed: Vec<&str> = Status::allowed_sources(to)
        .iter()
        .map(|s| s.as_str())
        .collect();
    let refund: RefundRecord = sqlx::query_as(&format!(
        "UPDATE refund
            SET status = $1,
                gateway_refund_id = COALESCE($2, gateway_refund_id),
                failure_reason = COALESCE($3, failure_reason),
                unresolved_since = NULL, unresolved_reason = NULL,
                version = version + 1, updated_at = now()
          WHERE id = $4 AND version = $5 AND status = ANY($6)
      RETURNING {COLUMNS}"
    ))
    .bind(to.as_str())
    .bind(&change.gateway_refund_id)
    .bind(&change.failure_reason)
    .bind(seen.id.as_str())
    .bind(seen.version)
    .bind(&allowed)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| RefundTransitionError::Stale(seen.id.clone()))?;
    let payment: TransactionRecord = sqlx::query_as(&format!(
        "UPDATE transaction
            SET refund_held = refund_held - CASE WHEN $2 = 'failed' THEN $3 ELSE 0 END,
                amount_refunded = amount_refunded + CASE WHEN $2 = 'completed' THEN $3 ELSE 0 END,
                version = version + 1
          WHERE id = $1
      RETURNING {}",
        transactions::COLUMNS
    ))
    .bind(refund.transaction_id.as_str())
    .bind(to.as_str())
    .bind(refund.amount)
    .fetch_one(&mut *conn)
    .await?;
    append(
        conn,
        &refund,
        Some(&payment),
        &event_type::for_refund_status(to),
        Destination::TransactionsStatus,
    )
    .await?;
    Ok(refund)
}

/// Moves `seen` to the final status its gateway reported: a `pending` refund completed
/// before it was ever `processing` takes both steps, in order, so the merchant sees the
/// same history whichever way the gateway answered.
pub async fn settle(
    conn: &mut PgConnection,
    seen: &RefundRecord,
    to: Status,
    change: RefundChange,
) -> Result<RefundRecord, RefundTransitionError> {
    if seen.status == Status::Pending && to == Status::Completed {
        let processing = transition(conn, seen, Status::Processing, change.clone()).await?;
        return transition(conn, &processing, to, change).await;
    }
    transition(conn, seen, to, change).await
}

/// Writes down, before the request goes out, that the gateway is about to be asked: a
/// version bump (the fencing token of that call) and a history event. A refund with an
/// attempt may be held by the gateway: it is asked about it before it is sent again.
/// Fails as [`RefundTransitionError::Stale`] when someone else moved it since `seen`:
/// the caller must then ask nobody.
pub async fn record_attempt(
    conn: &mut PgConnection,
    seen: &RefundRecord,
) -> Result<RefundRecord, RefundTransitionError> {
    fenced_attempt(conn, seen, true).await
}

/// The gateway proved it took nothing (a `503`, a refused connection): the refund no
/// longer has an attempt there, so the next one is a first attempt. Fenced like
/// [`record_attempt`].
pub async fn release_attempt(
    conn: &mut PgConnection,
    seen: &RefundRecord,
) -> Result<RefundRecord, RefundTransitionError> {
    fenced_attempt(conn, seen, false).await
}

async fn fenced_attempt(
    conn: &mut PgConnection,
    seen: &RefundRecord,
    attempted: bool,
) -> Result<RefundRecord, RefundTransitionError> {
    let refund: RefundRecord = sqlx::query_as(&format!(
        "UPDATE refund
            SET attempted_at = CASE WHEN $3 THEN COALESCE(attempted_at, now()) END,
                version = version + 1, updated_at = now()
          WHERE id = $1 AND version = $2 AND status = $4
      RETURNING {COLUMNS}"
    ))
    .bind(seen.id.as_str())
    .bind(seen.version)
    .bind(attempted)
    .bind(Status::Pending.as_str())
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| RefundTransitionError::Stale(seen.id.clone()))?;
    if attempted {
        append(
            conn,
            &refund,
            None,
            event_type::REFUND_ATTEMPTED,
            Destination::History,
        )
        .await?;
    }
    Ok(refund)
}

/// Marks a refund nobody could get a definite answer about, with the reason: it is
/// never failed for it (the gateway may have paid it), and the reconciler keeps asking.
pub async fn mark_unresolved<'e>(
    executor: impl PgExecutor<'e>,
    id: &RefundId,
    reason: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE refund
            SET unresolved_since = COALESCE(unresolved_since, now()), unresolved_reason = $2
          WHERE id = $1 AND status = ANY($3)",
    )
    .bind(id.as_str())
    .bind(reason)
    .bind(vec![Status::Pending.as_str(), Status::Processing.as_str()])
    .execute(executor)
    .await?;
    Ok(())
}

/// Refunds not yet final and unchanged for `stale`, oldest first: the reconciler asks
/// their gateway about them again.
pub async fn open_due<'e>(
    executor: impl PgExecutor<'e>,
    stale: std::time::Duration,
    limit: i64,
) -> sqlx::Result<Vec<RefundId>> {
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM refund
          WHERE status IN ('pending', 'processing') AND updated_at < now() - make_interval(secs => $1)
          ORDER BY updated_at
          LIMIT $2",
    )
    .bind(stale.as_secs_f64())
    .bind(limit)
    .fetch_all(executor)
    .await?;
    ids.into_iter()
        .map(|id| {
            id.parse()
                .map_err(|e: crate::domain::DomainError| sqlx::Error::Decode(e.into()))
        })
        .collect()
}

/// Appends a refund event to its payment's history (the outbox): with the payment's
/// new version when `payment` is given (a change the merchant hears of), else history
/// only.
async fn append(
    conn: &mut PgConnection,
    refund: &RefundRecord,
    payment: Option<&TransactionRecord>,
    event_type: &str,
    destination: Destination,
) -> sqlx::Result<()> {
    let event_id = EventId::new();
    let transaction = payment.map(TransactionRecord::to_proto);
    let payload = match destination {
        Destination::PaymentsRequested => proto::PaymentRequested {
            event_id: event_id.to_string(),
            transaction,
            refund: Some(refund.to_proto()),
        }
        .encode_to_vec(),
        _ => proto::StatusChanged {
            event_id: event_id.to_string(),
            transaction,
            refund: Some(refund.to_proto()),
            routing: None,
        }
        .encode_to_vec(),
    };
    sqlx::query(
        "INSERT INTO transaction_event (id, transaction_id, version, event_type, status, destination,
                                        payload, published_at, refund_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, CASE WHEN $6 = 'history' THEN now() END, $8)",
    )
    .bind(event_id.as_str())
    .bind(refund.transaction_id.as_str())
    .bind(payment.map(|p| p.version))
    .bind(event_type)
    // No payment status: a refund never moves its payment (the refund's own status is
    // in the payload and the event type).
    .bind(None::<&str>)
    .bind(destination.as_str())
    .bind(&payload)
    .bind(refund.id.as_str())
    .execute(conn)
    .await?;
    Ok(())
}
