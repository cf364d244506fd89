//! The transaction record and the only ways it changes: created with its first event,
//! and moved along the status machine by a version-checked update that appends the
//! matching event in the same database transaction. The event table is the outbox, so
//! a change and its announcement are committed together or not at all.

use chrono::{DateTime, Utc};
use prost::Message;
use rust_decimal::Decimal;
use sqlx::{PgConnection, PgExecutor};

use crate::domain::{CallbackId, Country, EventId, Kind, MerchantId, Money, Status, TransactionId};
use crate::events::{event_type, proto, timestamp, Destination};

/// A row of `transaction`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TransactionRecord {
    #[sqlx(try_from = "String")]
    pub id: TransactionId,
    #[sqlx(try_from = "String")]
    pub merchant_id: MerchantId,
    #[sqlx(try_from = "String")]
    pub kind: Kind,
    #[sqlx(try_from = "String")]
    pub status: Status,
    pub amount: Decimal,
    pub currency: String,
    pub user_id: String,
    pub country: Option<String>,
    pub reference: Option<String>,
    pub gateway: Option<String>,
    pub gateway_txn_id: Option<String>,
    pub failure_reason: Option<String>,
    pub version: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, merchant_id, kind, status, amount, currency, user_id, country, \
     reference, gateway, gateway_txn_id, failure_reason, version, created_at, updated_at";

impl TransactionRecord {
    /// The snapshot carried by events and shown to merchants.
    pub fn to_proto(&self) -> proto::Transaction {
        proto::Transaction {
            id: self.id.to_string(),
            merchant_id: self.merchant_id.to_string(),
            kind: self.kind.to_string(),
            status: self.status.to_string(),
            amount: self.amount.to_string(),
            currency: self.currency.clone(),
            user_id: self.user_id.clone(),
            country: self.country.clone(),
            reference: self.reference.clone(),
            gateway: self.gateway.clone(),
            gateway_txn_id: self.gateway_txn_id.clone(),
            failure_reason: self.failure_reason.clone(),
            created_at: timestamp(self.created_at),
            updated_at: timestamp(self.updated_at),
            version: self.version,
        }
    }
}

/// What a merchant asked for, already parsed into domain types.
#[derive(Debug, Clone)]
pub struct NewTransaction {
    pub merchant_id: MerchantId,
    pub kind: Kind,
    pub money: Money,
    pub user_id: String,
    pub country: Option<Country>,
    pub reference: Option<String>,
}

/// Inserts a `pending` transaction and its first event (to `payments_requested`).
/// Run it inside the caller's database transaction.
pub async fn create(
    conn: &mut PgConnection,
    new: NewTransaction,
) -> sqlx::Result<TransactionRecord> {
    let id = TransactionId::new();
    let record: TransactionRecord = sqlx::query_as(&format!(
        "INSERT INTO transaction (id, merchant_id, kind, status, amount, currency, user_id, country, reference)
         VALUES ($1, $2, $3, 'pending', $4, $5, $6, $7, $8)
         RETURNING {COLUMNS}"
    ))
    .bind(id.as_str())
    .bind(new.merchant_id.as_str())
    .bind(new.kind.as_str())
    .bind(new.money.amount())
    .bind(new.money.currency().code())
    .bind(&new.user_id)
    .bind(new.country.map(|c| c.code()))
    .bind(&new.reference)
    .fetch_one(&mut *conn)
    .await?;

    record_version(
        conn,
        &record,
        event_type::CREATED,
        Destination::PaymentsRequested,
        |event_id, transaction| {
            proto::PaymentRequested {
                event_id,
                transaction,
            }
            .encode_to_vec()
        },
    )
    .await?;
    Ok(record)
}

/// Reads one transaction.
pub async fn find<'e>(
    executor: impl PgExecutor<'e>,
    id: &TransactionId,
) -> sqlx::Result<Option<TransactionRecord>> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM transaction WHERE id = $1"))
        .bind(id.as_str())
        .fetch_optional(executor)
        .await
}

/// A status change and what comes with it.
#[derive(Debug, Clone, Default)]
pub struct Change {
    pub gateway: Option<String>,
    pub gateway_txn_id: Option<String>,
    pub failure_reason: Option<String>,
}

/// Why a transition did not happen.
#[derive(Debug, thiserror::Error)]
pub enum TransitionError {
    /// The status machine does not allow it (a final state, or a step skipped).
    #[error("a {from} transaction cannot become {to}")]
    NotAllowed { from: Status, to: Status },
    /// Someone changed the transaction since it was read: the version no longer matches.
    #[error("transaction {0} changed concurrently (version fence)")]
    Stale(TransactionId),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Moves `seen` to `to`, only if it is still at the version it was read at and its status
/// allows the move, and appends the status event (to `transactions_status`). Run it
/// inside the caller's database transaction.
pub async fn transition(
    conn: &mut PgConnection,
    seen: &TransactionRecord,
    to: Status,
    change: Change,
) -> Result<TransactionRecord, TransitionError> {
    if !seen.status.can_become(to) {
        return Err(TransitionError::NotAllowed {
            from: seen.status,
            to,
        });
    }
    let allowed: Vec<&str> = Status::allowed_sources(to)
        .iter()
        .map(|s| s.as_str())
        .collect();
    let updated: Option<TransactionRecord> = sqlx::query_as(&format!(
        "UPDATE transaction
            SET status = $1,
                gateway = COALESCE($2, gateway),
                gateway_txn_id = COALESCE($3, gateway_txn_id),
                failure_reason = COALESCE($4, failure_reason),
                version = version + 1,
                updated_at = now()
          WHERE id = $5 AND version = $6 AND status = ANY($7)
      RETURNING {COLUMNS}"
    ))
    .bind(to.as_str())
    .bind(&change.gateway)
    .bind(&change.gateway_txn_id)
    .bind(&change.failure_reason)
    .bind(seen.id.as_str())
    .bind(seen.version)
    .bind(&allowed)
    .fetch_optional(&mut *conn)
    .await?;
    let record = updated.ok_or_else(|| TransitionError::Stale(seen.id.clone()))?;

    record_version(
        conn,
        &record,
        &event_type::for_status(to),
        Destination::TransactionsStatus,
        |event_id, transaction| {
            proto::StatusChanged {
                event_id,
                transaction,
            }
            .encode_to_vec()
        },
    )
    .await?;
    Ok(record)
}

/// Appends the event announcing `record`'s current version, its payload built by
/// `payload` from the new event id and the transaction snapshot.
async fn record_version(
    conn: &mut PgConnection,
    record: &TransactionRecord,
    event_type: &str,
    destination: Destination,
    payload: impl FnOnce(String, Option<proto::Transaction>) -> Vec<u8>,
) -> sqlx::Result<()> {
    let event_id = EventId::new();
    let payload = payload(event_id.to_string(), Some(record.to_proto()));
    append_event(
        conn,
        &NewEvent {
            id: &event_id,
            transaction_id: &record.id,
            version: Some(record.version),
            event_type,
            status: Some(record.status),
            destination,
            payload: &payload,
        },
    )
    .await
}

/// An event to append to a transaction's history (and so to the outbox).
#[derive(Debug)]
pub struct NewEvent<'a> {
    pub id: &'a EventId,
    pub transaction_id: &'a TransactionId,
    /// The transaction version this event describes; `None` for events that change no status.
    pub version: Option<i32>,
    pub event_type: &'a str,
    pub status: Option<Status>,
    pub destination: Destination,
    pub payload: &'a [u8],
}

pub async fn append_event(conn: &mut PgConnection, event: &NewEvent<'_>) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO transaction_event (id, transaction_id, version, event_type, status, destination, payload)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(event.id.as_str())
    .bind(event.transaction_id.as_str())
    .bind(event.version)
    .bind(event.event_type)
    .bind(event.status.map(|s| s.as_str()))
    .bind(event.destination.as_str())
    .bind(event.payload)
    .execute(conn)
    .await?;
    Ok(())
}

/// Announces a stored gateway callback to the callback-processor (an outbox event to
/// `gateway_callbacks`). Run it in the database transaction that stored the callback.
pub async fn announce_callback(
    conn: &mut PgConnection,
    callback_id: &CallbackId,
    gateway: &str,
    transaction_id: &TransactionId,
) -> sqlx::Result<()> {
    let event_id = EventId::new();
    let payload = proto::CallbackReceived {
        event_id: event_id.to_string(),
        callback_id: callback_id.to_string(),
        gateway: gateway.to_owned(),
        transaction_id: transaction_id.to_string(),
    }
    .encode_to_vec();
    append_event(
        conn,
        &NewEvent {
            id: &event_id,
            transaction_id,
            version: None,
            event_type: event_type::CALLBACK_RECEIVED,
            status: None,
            destination: Destination::GatewayCallbacks,
            payload: &payload,
        },
    )
    .await
}

/// Announces again the callbacks of `transaction_id` that the callback-processor set
/// aside because they overtook the gateway's answer (the transaction was still
/// `pending`). Run it in the database transaction that moves it out of `pending`.
pub async fn announce_parked_callbacks(
    conn: &mut PgConnection,
    transaction_id: &TransactionId,
) -> sqlx::Result<()> {
    let parked: Vec<(String, String)> = sqlx::query_as(
        "SELECT id, gateway FROM gateway_callback WHERE transaction_id = $1 AND processed_at IS NULL",
    )
    .bind(transaction_id.as_str())
    .fetch_all(&mut *conn)
    .await?;
    for (id, gateway) in &parked {
        let id: CallbackId = id
            .parse()
            .map_err(|e: crate::domain::DomainError| sqlx::Error::Decode(e.into()))?;
        announce_callback(conn, &id, gateway, transaction_id).await?;
    }
    Ok(())
}
