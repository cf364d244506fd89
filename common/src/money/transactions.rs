//! The transaction record and the only ways it changes: created with its first event,
//! and moved along the status machine by a version-checked update that appends the
//! matching event in the same database transaction. The event table is the outbox, so
//! a change and its announcement are committed together or not at all.

use chrono::{DateTime, Timelike, Utc};
use prost::Message;
use rust_decimal::Decimal;
use sqlx::{PgConnection, PgExecutor};

use crate::cards::SealedCard;
use crate::domain::{CallbackId, Country, EventId, Kind, MerchantId, Money, Status, TransactionId};
use crate::events::{event_type, proto, timestamp, Destination};
use crate::gateway::PaymentMethod;
use crate::metadata::Metadata;

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
    /// `plain` or `card`.
    pub payment_method: String,
    /// The card number as people may see it (`424242******4242`).
    pub card_masked: Option<String>,
    /// Set while the payment is pending at a gateway that never gave a definite answer.
    pub unresolved_since: Option<DateTime<Utc>>,
    /// Why it is unresolved, for operators.
    pub unresolved_reason: Option<String>,
    /// When the gateway it names was first asked (kept across re-submits there): the
    /// start of that gateway's settle window.
    pub attempted_at: Option<DateTime<Utc>>,
    /// Every gateway ever offered the payment.
    pub attempted_gateways: Vec<String>,
    /// How often a `processing` payment's overdue callback was chased by status query.
    pub status_checks: i32,
    /// Set when Paygate found a contradiction or cannot settle the payment alone.
    pub review_reason: Option<String>,
    pub review_since: Option<DateTime<Utc>>,
    pub review_detail: Option<String>,
    /// The merchant's own key/value pairs.
    #[sqlx(try_from = "String")]
    pub metadata: Metadata,
    /// The gateways the merchant pinned, in order (`None`: routed as usual).
    pub pinned_gateways: Option<Vec<String>>,
    /// Whether the routed gateways may be tried after the pinned ones.
    pub gateway_fallback: bool,
    /// The sum of its refunds that are not `failed` (never above `amount`).
    pub refund_held: Decimal,
    /// What its completed refunds gave back.
    pub amount_refunded: Decimal,
    /// The payment's own webhook URL (`notification_url`): its events go there too.
    pub notification_url: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

pub(crate) const COLUMNS: &str = "id, merchant_id, kind, status, amount, currency, user_id, country, \
     reference, gateway, gateway_txn_id, failure_reason, version, payment_method, card_masked, \
     unresolved_since, unresolved_reason, attempted_at, attempted_gateways, status_checks, review_reason, \
     review_since, review_detail, metadata::text AS metadata, pinned_gateways, gateway_fallback, refund_held, \
     amount_refunded, notification_url, created_at, updated_at";

impl TransactionRecord {
    /// How it is paid, as routing sees it.
    pub fn payment_method(&self) -> PaymentMethod {
        if self.payment_method == "card" {
            PaymentMethod::Card
        } else {
            PaymentMethod::Plain
        }
    }

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
            card_masked: self.card_masked.clone(),
            review: self.review_reason.as_ref().map(|reason| proto::Review {
                reason: reason.clone(),
                since: self.review_since.map(timestamp).unwrap_or_default(),
                detail: self.review_detail.clone().unwrap_or_default(),
            }),
            metadata: self.metadata.entries().clone(),
            amount_refunded: {
                // In the payment's own minor units: "0.00", never "0".
                let mut refunded = self.amount_refunded;
                refunded.rescale(self.amount.scale());
                refunded.to_string()
            },
        }
    }

    /// Whether `gateway` was ever offered this payment.
    pub fn was_offered_to(&self, gateway: &str) -> bool {
        self.attempted_gateways.iter().any(|g| g == gateway)
            || self.gateway.as_deref() == Some(gateway)
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
    /// A card, already sealed: the number never reaches the database in the clear.
    pub card: Option<SealedCard>,
    pub metadata: Metadata,
}

impl NewTransaction {
    /// The `pending` record this request becomes, exactly as it will be stored: its id
    /// and its times (this clock, to the microsecond PostgreSQL keeps) are chosen here,
    /// so the answer and the first event can be built before the one statement that
    /// writes them ([`create_at_once`]).
    pub fn pending(&self) -> TransactionRecord {
        let now = now_in_database_precision();
        TransactionRecord {
            id: TransactionId::new(),
            merchant_id: self.merchant_id.clone(),
            kind: self.kind,
            status: Status::Pending,
            amount: self.money.amount(),
            currency: self.money.currency().code().to_owned(),
            user_id: self.user_id.clone(),
            country: self.country.map(|c| c.code().to_owned()),
            reference: self.reference.clone(),
            gateway: None,
            gateway_txn_id: None,
            failure_reason: None,
            version: 1,
            payment_method: if self.card.is_some() { "card" } else { "plain" }.to_owned(),
            card_masked: self.card.as_ref().map(|c| c.masked.clone()),
            unresolved_since: None,
            unresolved_reason: None,
            attempted_at: None,
            attempted_gateways: Vec::new(),
            status_checks: 0,
            review_reason: None,
            review_since: None,
            review_detail: None,
            metadata: self.metadata.clone(),
            pinned_gateways: None,
            gateway_fallback: false,
            refund_held: Decimal::ZERO,
            amount_refunded: Decimal::ZERO,
            notification_url: None,
            created_at: now,
            updated_at: now,
        }
    }
}

/// The answer to an `Idempotency-Key` request, stored with the payment it announced.
#[derive(Debug)]
pub struct KeptAnswer {
    pub key: String,
    /// The request's fingerprint.
    pub request_hash: Vec<u8>,
    pub status_code: i32,
    pub headers: serde_json::Value,
    pub body: Vec<u8>,
}

/// What [`create_at_once`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intake {
    /// The payment, its first event and the kept answer are committed.
    Created,
    /// Nothing written: the merchant has limits in this currency, which are checked
    /// under a lock ([`create`] inside the caller's transaction).
    Limited,
    /// Nothing written: the `Idempotency-Key` is already taken (answered, in flight,
    /// or expired), which the idempotency module sorts out.
    KeyTaken,
}

/// Intake in one round trip: one statement, committed on its own, writes the `pending`
/// transaction `record` (from [`NewTransaction::pending`]), its first event (to
/// `payments_requested`) and, with an `Idempotency-Key`, the answer to replay — all or
/// nothing. It writes nothing where the careful path must decide: when the merchant has
/// limits in the currency, or the key is taken.
pub async fn create_at_once<'e>(
    executor: impl PgExecutor<'e>,
    record: &TransactionRecord,
    card: Option<&SealedCard>,
    answer: Option<&KeptAnswer>,
) -> sqlx::Result<Intake> {
    write_pending(executor, record, card, answer, true).await
}

/// A payment's intake, [`create_at_once`], as a write that shares its commit with the
/// others of its moment (`group_commit`).
#[derive(Debug)]
pub struct PendingPayment {
    pub record: TransactionRecord,
    pub card: Option<SealedCard>,
    pub answer: Option<KeptAnswer>,
}

impl crate::group_commit::Write for PendingPayment {
    type Output = Intake;

    async fn write(&self, conn: &mut PgConnection) -> sqlx::Result<Intake> {
        create_at_once(conn, &self.record, self.card.as_ref(), self.answer.as_ref()).await
    }

    /// The batch in one statement ([`create_all_at_once`]), but for a payment whose
    /// `Idempotency-Key` an earlier one of the batch also holds: it is written after, on
    /// its own, so it finds the key taken, as it would in a batch of its own.
    async fn write_all(writes: &[&Self], conn: &mut PgConnection) -> sqlx::Result<Vec<Intake>> {
        let mut keys = std::collections::HashSet::new();
        let (together, after): (Vec<usize>, Vec<usize>) = (0..writes.len()).partition(|&i| {
            writes[i].answer.as_ref().is_none_or(|answer| {
                keys.insert((writes[i].record.merchant_id.as_str(), answer.key.as_str()))
            })
        });
        let mut outputs: Vec<Option<Intake>> = vec![None; writes.len()];
        let chosen: Vec<&PendingPayment> = together.iter().map(|&i| writes[i]).collect();
        for (i, intake) in together
            .iter()
            .zip(create_all_at_once(conn, &chosen).await?)
        {
            outputs[*i] = Some(intake);
        }
        for i in after {
            outputs[i] = Some(writes[i].write(conn).await?);
        }
        // Every payment has its answer: none is made up for one that was left out.
        crate::group_commit::one_each(
            outputs.into_iter().flatten().collect(),
            writes.len(),
            "payments",
        )
    }
}

/// [`create_at_once`] for many payments in one statement (no two with the same
/// `Idempotency-Key`): each is written, or left to the careful path, as it would be
/// alone. What each became, in their order.
async fn create_all_at_once(
    conn: &mut PgConnection,
    payments: &[&PendingPayment],
) -> sqlx::Result<Vec<Intake>> {
    if payments.is_empty() {
        return Ok(Vec::new());
    }
    let records = || payments.iter().map(|p| &p.record);
    let cards = || payments.iter().map(|p| p.card.as_ref());
    let answers = || payments.iter().map(|p| p.answer.as_ref());
    let event_ids: Vec<EventId> = payments.iter().map(|_| EventId::new()).collect();
    let rows: Vec<(bool, bool)> = sqlx::query_as(
        "WITH input AS (
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::numeric[], $5::text[],
                                  $6::text[], $7::text[], $8::text[], $9::text[], $10::text[],
                                  $11::text[], $12::bytea[], $13::bool[], $14::timestamptz[],
                                  $15::bytea[], $16::text[], $17::bytea[], $18::int[], $19::text[],
                                  $20::bytea[], $21::text[], $22::text[], $23::text[], $24::bool[],
                                  $25::text[])
                    WITH ORDINALITY
                    AS i(id, merchant_id, kind, amount, currency, user_id, country, reference,
                         payment_method, card_masked, card_key_id, card_ciphertext, cvv_given,
                         created_at, payload, key, request_hash, status_code, headers, body,
                         event_id, metadata, pinned, gateway_fallback, notification_url, ord)
         ), guarded AS (
             SELECT i.*, NOT EXISTS (SELECT 1 FROM merchant_payout_limit l
                                      WHERE l.merchant_id = i.merchant_id
                                        AND l.currency = i.currency) AS free
               FROM input i
         ), kept AS (
             INSERT INTO idempotency_key (merchant_id, key, request_hash, status_code,
                                          response_headers, response_body)
             SELECT merchant_id, key, request_hash, status_code, headers::jsonb, body
               FROM guarded WHERE key IS NOT NULL AND free
              ORDER BY merchant_id, key
             ON CONFLICT (merchant_id, key) DO NOTHING
             RETURNING merchant_id, key
         ), created AS (
             INSERT INTO transaction (id, merchant_id, kind, status, amount, currency, user_id, country,
                                      reference, payment_method, card_masked, card_key_id, card_ciphertext,
                                      card_cvv_given, created_at, updated_at, metadata, pinned_gateways,
                                      gateway_fallback, notification_url)
             SELECT g.id, g.merchant_id, g.kind, 'pending', g.amount, g.currency, g.user_id, g.country,
                    g.reference, g.payment_method, g.card_masked, g.card_key_id, g.card_ciphertext,
                    COALESCE(g.cvv_given, false), g.created_at, g.created_at, g.metadata::jsonb,
                    CASE WHEN g.pinned IS NOT NULL
                         THEN ARRAY(SELECT jsonb_array_elements_text(g.pinned::jsonb)) END,
                    g.gateway_fallback, g.notification_url
               FROM guarded g
              WHERE g.free AND (g.key IS NULL OR EXISTS (SELECT 1 FROM kept k
                                                          WHERE k.merchant_id = g.merchant_id
                                                            AND k.key = g.key))
             RETURNING id
         ), announced AS (
             INSERT INTO transaction_event (id, transaction_id, version, event_type, status, destination, payload)
             SELECT g.event_id, g.id, 1, $26, 'pending', $27, g.payload
               FROM guarded g JOIN created c ON c.id = g.id
         )
         SELECT g.free, EXISTS (SELECT 1 FROM created c WHERE c.id = g.id)
           FROM guarded g ORDER BY g.ord",
    )
    .bind(records().map(|r| r.id.as_str()).collect::<Vec<_>>())
    .bind(records().map(|r| r.merchant_id.as_str()).collect::<Vec<_>>())
    .bind(records().map(|r| r.kind.as_str()).collect::<Vec<_>>())
    .bind(records().map(|r| r.amount).collect::<Vec<_>>())
    .bind(records().map(|r| r.currency.as_str()).collect::<Vec<_>>())
    .bind(records().map(|r| r.user_id.as_str()).collect::<Vec<_>>())
    .bind(records().map(|r| r.country.as_deref()).collect::<Vec<_>>())
    .bind(records().map(|r| r.reference.as_deref()).collect::<Vec<_>>())
    .bind(records().map(|r| r.payment_method.as_str()).collect::<Vec<_>>())
    .bind(cards().map(|c| c.map(|c| c.masked.as_str())).collect::<Vec<_>>())
    .bind(cards().map(|c| c.map(|c| c.key_id.as_str())).collect::<Vec<_>>())
    .bind(cards().map(|c| c.map(|c| c.ciphertext.as_slice())).collect::<Vec<_>>())
    .bind(cards().map(|c| c.map(|c| c.cvv_given)).collect::<Vec<_>>())
    .bind(records().map(|r| r.created_at).collect::<Vec<_>>())
    .bind(
        records()
            .zip(&event_ids)
            .map(|(r, e)| first_event_payload(e, r))
            .collect::<Vec<_>>(),
    )
    .bind(answers().map(|a| a.map(|a| a.key.as_str())).collect::<Vec<_>>())
    .bind(answers().map(|a| a.map(|a| a.request_hash.as_slice())).collect::<Vec<_>>())
    .bind(answers().map(|a| a.map(|a| a.status_code)).collect::<Vec<_>>())
    .bind(answers().map(|a| a.map(|a| a.headers.to_string())).collect::<Vec<_>>())
    .bind(answers().map(|a| a.map(|a| a.body.as_slice())).collect::<Vec<_>>())
    .bind(event_ids.iter().map(EventId::as_str).collect::<Vec<_>>())
    .bind(records().map(|r| r.metadata.to_json()).collect::<Vec<_>>())
    .bind(
        records()
            .map(|r| r.pinned_gateways.as_ref().map(|p| serde_json::json!(p).to_string()))
            .collect::<Vec<_>>(),
    )
    .bind(records().map(|r| r.gateway_fallback).collect::<Vec<_>>())
    .bind(records().map(|r| r.notification_url.as_deref()).collect::<Vec<_>>())
    .bind(event_type::CREATED)
    .bind(Destination::PaymentsRequested.as_str())
    // Planned for its batch each time, like every set-based statement here: a plan
    // cached while the tables were empty joins them by scanning (see `plans.rs`).
    .persistent(false)
    .fetch_all(conn)
    .await?;
    let rows = crate::group_commit::one_each(rows, payments.len(), "payments")?;
    Ok(rows.into_iter().map(Intake::of).collect())
}

impl Intake {
    /// What a payment's intake did, from whether it was free of limits and created.
    fn of((free, created): (bool, bool)) -> Intake {
        match (free, created) {
            (_, true) => Intake::Created,
            (false, false) => Intake::Limited,
            (true, false) => Intake::KeyTaken,
        }
    }
}

/// The one statement of [`create_at_once`]; `check_limits: false` writes whatever the
/// merchant's limits (the careful path has checked them under its lock).
async fn write_pending<'e>(
    executor: impl PgExecutor<'e>,
    record: &TransactionRecord,
    card: Option<&SealedCard>,
    answer: Option<&KeptAnswer>,
    check_limits: bool,
) -> sqlx::Result<Intake> {
    let event_id = EventId::new();
    let (free, created): (bool, bool) = sqlx::query_as(
        "WITH guard AS (
             SELECT NOT $25 OR NOT EXISTS (SELECT 1 FROM merchant_payout_limit
                                            WHERE merchant_id = $2 AND currency = $5) AS free
         ), kept AS (
             INSERT INTO idempotency_key (merchant_id, key, request_hash, status_code,
                                          response_headers, response_body)
             SELECT $2, $16, $17, $18, $19, $20 WHERE $16::text IS NOT NULL AND (SELECT free FROM guard)
             ON CONFLICT (merchant_id, key) DO NOTHING
             RETURNING 1
         ), created AS (
             INSERT INTO transaction (id, merchant_id, kind, status, amount, currency, user_id, country,
                                      reference, payment_method, card_masked, card_key_id, card_ciphertext,
                                      card_cvv_given, created_at, updated_at, metadata, pinned_gateways,
                                      gateway_fallback, notification_url)
             SELECT $1, $2, $3, 'pending', $4, $5, $6, $7, $8, $9, $10, $11, $12, COALESCE($13, false), $14, $14,
                    $24::jsonb, $26, $27, $28
              WHERE (SELECT free FROM guard) AND ($16::text IS NULL OR EXISTS (SELECT 1 FROM kept))
             RETURNING id
         ), announced AS (
             INSERT INTO transaction_event (id, transaction_id, version, event_type, status, destination, payload)
             SELECT $21, id, 1, $22, 'pending', $23, $15 FROM created
         )
         SELECT (SELECT free FROM guard), EXISTS (SELECT 1 FROM created)",
    )
    .bind(record.id.as_str())
    .bind(record.merchant_id.as_str())
    .bind(record.kind.as_str())
    .bind(record.amount)
    .bind(&record.currency)
    .bind(&record.user_id)
    .bind(&record.country)
    .bind(&record.reference)
    .bind(&record.payment_method)
    .bind(card.map(|c| &c.masked))
    .bind(card.map(|c| &c.key_id))
    .bind(card.map(|c| &c.ciphertext))
    .bind(card.map(|c| c.cvv_given))
    .bind(record.created_at)
    .bind(first_event_payload(&event_id, record))
    .bind(answer.map(|a| &a.key))
    .bind(answer.map(|a| &a.request_hash))
    .bind(answer.map(|a| a.status_code))
    .bind(answer.map(|a| &a.headers))
    .bind(answer.map(|a| &a.body))
    .bind(event_id.as_str())
    .bind(event_type::CREATED)
    .bind(Destination::PaymentsRequested.as_str())
    .bind(record.metadata.to_json())
    .bind(check_limits)
    .bind(&record.pinned_gateways)
    .bind(record.gateway_fallback)
    .bind(&record.notification_url)
    .fetch_one(executor)
    .await?;
    Ok(Intake::of((free, created)))
}

fn first_event_payload(event_id: &EventId, record: &TransactionRecord) -> Vec<u8> {
    proto::PaymentRequested {
        event_id: event_id.to_string(),
        transaction: Some(record.to_proto()),
        refund: None,
    }
    .encode_to_vec()
}

/// Inserts a `pending` transaction and its first event (to `payments_requested`).
/// Run it inside the caller's database transaction.
pub async fn create(
    conn: &mut PgConnection,
    new: NewTransaction,
) -> sqlx::Result<TransactionRecord> {
    let record = new.pending();
    insert_pending(conn, &record, new.card.as_ref()).await?;
    Ok(record)
}

/// Inserts `record` (from [`NewTransaction::pending`]) and its first event; the
/// careful path of intake, inside the caller's database transaction.
pub async fn insert_pending(
    conn: &mut PgConnection,
    record: &TransactionRecord,
    card: Option<&SealedCard>,
) -> sqlx::Result<()> {
    match write_pending(conn, record, card, None, false).await? {
        Intake::Created => Ok(()),
        other => Err(sqlx::Error::Protocol(format!(
            "transaction {} was not written: {other:?}",
            record.id
        ))),
    }
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

/// A stored gateway callback with the transaction it is about, as the
/// callback-processor reads them.
#[derive(Debug, sqlx::FromRow)]
pub struct CallbackWithTransaction {
    #[sqlx(rename = "callback_gateway")]
    pub gateway: String,
    #[sqlx(rename = "callback_content_type")]
    pub content_type: String,
    #[sqlx(rename = "callback_body")]
    pub body: Vec<u8>,
    #[sqlx(rename = "callback_processed_at")]
    pub processed_at: Option<DateTime<Utc>>,
    /// Set when the callback is about one of the payment's refunds.
    #[sqlx(rename = "callback_refund_id")]
    pub refund_id: Option<String>,
    #[sqlx(flatten)]
    pub transaction: TransactionRecord,
}

/// Reads a stored callback and its transaction and locks both rows until the caller's
/// database transaction ends (see [`find_for_update`]): one round trip. `NO KEY UPDATE`,
/// the lock an UPDATE takes: it serializes every writer of the rows, but not the
/// foreign-key checks of rows that point at them (an event, a webhook delivery), which a
/// plain `FOR UPDATE` would hold up for as long as the lock is held.
pub async fn callback_for_update(
    conn: &mut PgConnection,
    callback: &CallbackId,
) -> sqlx::Result<Option<CallbackWithTransaction>> {
    let columns = COLUMNS
        .split(", ")
        .map(|column| format!("t.{column}"))
        .collect::<Vec<_>>()
        .join(", ");
    sqlx::query_as(&format!(
        "SELECT c.gateway AS callback_gateway, c.content_type AS callback_content_type,
                c.body AS callback_body, c.processed_at AS callback_processed_at,
                c.refund_id AS callback_refund_id, {columns}
           FROM gateway_callback c JOIN transaction t ON t.id = c.transaction_id
          WHERE c.id = $1
            FOR NO KEY UPDATE OF c, t"
    ))
    .bind(callback.as_str())
    .fetch_optional(conn)
    .await
}

/// Reads one transaction and locks its row until the caller's database transaction
/// ends: a decision taken on what it says (park a callback, or apply it) cannot race a
/// writer, which waits for the lock.
pub async fn find_for_update(
    conn: &mut PgConnection,
    id: &TransactionId,
) -> sqlx::Result<Option<TransactionRecord>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM transaction WHERE id = $1 FOR NO KEY UPDATE"
    ))
    .bind(id.as_str())
    .fetch_optional(conn)
    .await
}

/// A page of transactions, newest first: a merchant's (the merchant API) or, for
/// operators, everyone's.
#[derive(Debug)]
pub struct PageQuery<'a> {
    pub merchant: Option<&'a MerchantId>,
    pub status: Option<Status>,
    pub kind: Option<Kind>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
    /// Only transactions whose metadata holds this key with this value.
    pub metadata: Option<(&'a str, &'a str)>,
    /// Only transactions older than this `(created_at, id)`: the cursor.
    pub before: Option<(DateTime<Utc>, String)>,
    pub limit: i64,
}

/// Reads a page: one range scan of `transaction_merchant_newest (merchant_id,
/// created_at DESC, id DESC)`, starting at the cursor; only the conditions given are
/// written into the statement, so the cursor is an index condition, not a filter.
pub async fn page<'e>(
    executor: impl PgExecutor<'e>,
    query: &PageQuery<'_>,
) -> sqlx::Result<Vec<TransactionRecord>> {
    let mut sql = sqlx::QueryBuilder::new(format!("SELECT {COLUMNS} FROM transaction WHERE true"));
    push_page(&mut sql, query);
    sql.build_query_as().fetch_all(executor).await
}

/// Appends `query`'s conditions, the cursor, the newest-first order and the limit to a
/// list statement that ends in a `WHERE` condition: the merchant API's page and the
/// console's list (its own columns, maybe every merchant) share it.
pub fn push_page(sql: &mut sqlx::QueryBuilder<'_, sqlx::Postgres>, query: &PageQuery<'_>) {
    if let Some(merchant) = query.merchant {
        sql.push(" AND merchant_id = ")
            .push_bind(merchant.as_str().to_owned());
    }
    if let Some(status) = query.status {
        sql.push(" AND status = ").push_bind(status.as_str());
    }
    if let Some(kind) = query.kind {
        sql.push(" AND kind = ").push_bind(kind.as_str());
    }
    if let Some(after) = query.created_after {
        sql.push(" AND created_at > ").push_bind(after);
    }
    if let Some(before) = query.created_before {
        sql.push(" AND created_at < ").push_bind(before);
    }
    if let Some((key, value)) = query.metadata {
        // Containment, so `transaction_metadata` (jsonb_path_ops, payments with
        // metadata only) can answer it; containing a key implies being non-empty.
        let wanted = serde_json::json!({ key: value }).to_string();
        sql.push(" AND metadata <> '{}'::jsonb AND metadata @> ")
            .push_bind(wanted)
            .push("::jsonb");
    }
    if let Some((created_at, id)) = &query.before {
        sql.push(" AND (created_at, id) < (")
            .push_bind(*created_at)
            .push(", ")
            .push_bind(id.clone())
            .push(")");
    }
    sql.push(" ORDER BY created_at DESC, id DESC LIMIT ")
        .push_bind(query.limit);
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
    // What it becomes is known before the write (the fence guarantees the row is still
    // `seen`), so the update and its event are one statement.
    let mut next = seen.clone();
    next.status = to;
    next.gateway = change.gateway.or(next.gateway);
    next.gateway_txn_id = change.gateway_txn_id.or(next.gateway_txn_id);
    next.failure_reason = change.failure_reason.or(next.failure_reason);
    next.unresolved_since = None;
    next.version += 1;
    next.updated_at = now_in_database_precision();
    let event_type = event_type::for_status(to);
    let event = VersionEvent::new(&next, &event_type, Destination::TransactionsStatus);
    let moved = sqlx::query(
        "WITH moved AS (
             UPDATE transaction
                SET status = $3, gateway = $4, gateway_txn_id = $5, failure_reason = $6,
                    unresolved_since = NULL, unresolved_checked_at = NULL,
                    version = $7, updated_at = $8
              WHERE id = $1 AND version = $2 AND status = ANY($9)
          RETURNING id
         )
         INSERT INTO transaction_event (id, transaction_id, version, event_type, status, destination, payload, published_at)
         SELECT $10, id, $7, $11, $3, $12, $13, CASE WHEN $12 = 'history' THEN now() END FROM moved",
    )
    .bind(seen.id.as_str())
    .bind(seen.version)
    .bind(next.status.as_str())
    .bind(&next.gateway)
    .bind(&next.gateway_txn_id)
    .bind(&next.failure_reason)
    .bind(next.version)
    .bind(next.updated_at)
    .bind(&allowed)
    .bind(event.id.as_str())
    .bind(event.event_type)
    .bind(event.destination.as_str())
    .bind(&event.payload)
    .execute(&mut *conn)
    .await?;
    if moved.rows_affected() != 1 {
        return Err(TransitionError::Stale(seen.id.clone()));
    }
    Ok(next)
}

/// Now, to the microsecond PostgreSQL keeps, so a record built here reads back equal.
fn now_in_database_precision() -> DateTime<Utc> {
    let now = Utc::now();
    now.with_nanosecond(now.nanosecond() / 1_000 * 1_000)
        .unwrap_or(now)
}

/// The event announcing a record's version, built before the statement that writes both.
struct VersionEvent<'a> {
    id: EventId,
    event_type: &'a str,
    destination: Destination,
    payload: Vec<u8>,
}

impl<'a> VersionEvent<'a> {
    fn new(record: &TransactionRecord, event_type: &'a str, destination: Destination) -> Self {
        let id = EventId::new();
        let payload = status_changed(id.to_string(), Some(record.to_proto()));
        VersionEvent {
            id,
            event_type,
            destination,
            payload,
        }
    }
}

/// Moves `seen` to the final status a gateway reported (`to`): a `pending` payment
/// settled as `completed` before it was ever `processing` takes both steps, in order,
/// so the merchant sees the same history as when the callback settles it; anything
/// else is one [`transition`]. Run it inside the caller's database transaction.
pub async fn settle(
    conn: &mut PgConnection,
    seen: &TransactionRecord,
    to: Status,
    change: Change,
) -> Result<TransactionRecord, TransitionError> {
    if seen.status == Status::Pending && to == Status::Completed {
        let processing = transition(conn, seen, Status::Processing, change.clone()).await?;
        return transition(conn, &processing, to, change).await;
    }
    transition(conn, seen, to, change).await
}

/// Writes down, before the request goes out, which gateway is about to be asked: a
/// version bump (the fencing token of that choice) and a history event, which says why
/// this gateway was chosen when `routing` is given (the strategy, the rule that matched,
/// the scores seen). A pending transaction that names a gateway has an unresolved
/// attempt there. Fails as [`TransitionError::Stale`] when someone else moved it since
/// `seen`: the caller must then ask nobody.
pub async fn record_attempt(
    conn: &mut PgConnection,
    seen: &TransactionRecord,
    gateway: &str,
    routing: Option<proto::RoutingDecision>,
) -> Result<TransactionRecord, TransitionError> {
    fenced_pending_update(
        conn,
        seen,
        Some(gateway),
        event_type::GATEWAY_ATTEMPTED,
        routing,
    )
    .await
}

/// [`record_attempt`] as a write that shares its commit with the others of its moment
/// (`group_commit`): the attempt is still committed before the gateway is asked.
/// A fence that refuses it is an output (`Err` inside), not a failed write.
#[derive(Debug)]
pub struct Attempt {
    pub seen: TransactionRecord,
    pub gateway: String,
    pub routing: Option<proto::RoutingDecision>,
}

impl crate::group_commit::Write for Attempt {
    type Output = Result<TransactionRecord, TransitionError>;

    fn lock_order(&self) -> Option<&str> {
        Some(self.seen.id.as_str())
    }

    async fn write(&self, conn: &mut PgConnection) -> sqlx::Result<Self::Output> {
        match record_attempt(conn, &self.seen, &self.gateway, self.routing.clone()).await {
            Err(TransitionError::Database(error)) => Err(error),
            fenced => Ok(fenced),
        }
    }
}

/// Every gateway asked proved it did not take the payment: the transaction no longer
/// names one, so its retry starts from the top of its routes. Fenced like
/// [`record_attempt`].
pub async fn release_attempt(
    conn: &mut PgConnection,
    seen: &TransactionRecord,
) -> Result<TransactionRecord, TransitionError> {
    fenced_pending_update(conn, seen, None, event_type::GATEWAYS_UNAVAILABLE, None).await
}

async fn fenced_pending_update(
    conn: &mut PgConnection,
    seen: &TransactionRecord,
    gateway: Option<&str>,
    event_type: &str,
    routing: Option<proto::RoutingDecision>,
) -> Result<TransactionRecord, TransitionError> {
    // Naming a gateway starts its settle window, unless it is the one already named (a
    // re-submit there keeps the window of the first attempt); forgetting it ends it.
    // Built here, as in [`transition`], so the update and its event are one statement.
    let now = now_in_database_precision();
    let mut next = seen.clone();
    next.attempted_at = match gateway {
        None => None,
        Some(code) if seen.gateway.as_deref() == Some(code) && seen.attempted_at.is_some() => {
            seen.attempted_at
        }
        Some(_) => Some(now),
    };
    if let Some(code) = gateway {
        if !next.attempted_gateways.iter().any(|g| g == code) {
            next.attempted_gateways.push(code.to_owned());
        }
    }
    next.gateway = gateway.map(str::to_owned);
    next.version += 1;
    next.updated_at = now;
    let mut event = VersionEvent::new(&next, event_type, Destination::History);
    if let Some(routing) = routing {
        event.payload = proto::StatusChanged {
            event_id: event.id.to_string(),
            transaction: Some(next.to_proto()),
            refund: None,
            routing: Some(routing),
        }
        .encode_to_vec();
    }
    let moved = sqlx::query(
        "WITH moved AS (
             UPDATE transaction
                SET gateway = $3, attempted_at = $4, attempted_gateways = $5,
                    version = $6, updated_at = $7
              WHERE id = $1 AND version = $2 AND status = $12
          RETURNING id
         )
         INSERT INTO transaction_event (id, transaction_id, version, event_type, status, destination, payload, published_at)
         SELECT $8, id, $6, $9, $12, $10, $11, now() FROM moved",
    )
    .bind(seen.id.as_str())
    .bind(seen.version)
    .bind(&next.gateway)
    .bind(next.attempted_at)
    .bind(&next.attempted_gateways)
    .bind(next.version)
    .bind(next.updated_at)
    .bind(event.id.as_str())
    .bind(event.event_type)
    .bind(event.destination.as_str())
    .bind(&event.payload)
    .bind(Status::Pending.as_str())
    .execute(&mut *conn)
    .await?;
    if moved.rows_affected() != 1 {
        return Err(TransitionError::Stale(seen.id.clone()));
    }
    Ok(next)
}

/// The sealed card of a card payment: `(key id, ciphertext, whether a CVV was given)`.
pub async fn sealed_card<'e>(
    executor: impl PgExecutor<'e>,
    id: &TransactionId,
) -> sqlx::Result<Option<(String, Vec<u8>, bool)>> {
    sqlx::query_as(
        "SELECT card_key_id, card_ciphertext, card_cvv_given FROM transaction
          WHERE id = $1 AND card_key_id IS NOT NULL AND card_ciphertext IS NOT NULL",
    )
    .bind(id.as_str())
    .fetch_optional(executor)
    .await
}

/// Marks a pending payment as unresolved (its gateway gave no definite answer before
/// its retries ran out, or a permanent error stopped it after a gateway was chosen),
/// with the reason, or notes that it was asked again and still is. Not a status change.
/// When it newly becomes unresolved, callbacks parked while it was pending are
/// announced again: the gateway's definite word now settles it (see the
/// callback-processor).
pub async fn mark_unresolved(
    conn: &mut PgConnection,
    id: &TransactionId,
    reason: &str,
) -> sqlx::Result<()> {
    let newly: Option<bool> = sqlx::query_scalar(
        "UPDATE transaction
            SET unresolved_since = COALESCE(unresolved_since, now()), unresolved_checked_at = now(),
                unresolved_reason = $2
          WHERE id = $1 AND status = $3
      RETURNING unresolved_since = now()",
    )
    .bind(id.as_str())
    .bind(reason)
    .bind(Status::Pending.as_str())
    .fetch_optional(&mut *conn)
    .await?;
    if newly == Some(true) {
        announce_parked_callbacks(conn, id).await?;
    }
    Ok(())
}

/// Review reasons, as stored in `review_reason` and shown to merchants and operators.
pub mod review {
    /// A gateway says it holds the money of a payment Paygate has `failed`.
    pub const CHARGED_BUT_FAILED: &str = "charged_but_failed";
    /// A gateway's definite answer disagrees with a final status in another way (it
    /// declined a payment Paygate has `completed`, or took one now pending elsewhere).
    pub const CONTRADICTING_ANSWER: &str = "contradicting_answer";
    /// Accepted, but no callback came and status queries did not settle it in time.
    pub const NO_CALLBACK: &str = "no_callback";
    /// Every reason, for bounded metric labels.
    pub const ALL: &[&str] = &[CHARGED_BUT_FAILED, CONTRADICTING_ANSWER, NO_CALLBACK];
}

/// Whether a gateway's definite word about a payment that did not wait for it
/// contradicts where the payment stands: `took_payment` says the gateway holds the money
/// (`word` is how it said so). `Some((review reason, evidence))` when it does.
pub fn contradiction(
    current: &TransactionRecord,
    gateway: &str,
    took_payment: bool,
    word: &str,
) -> Option<(&'static str, String)> {
    let here = current.gateway.as_deref() == Some(gateway);
    let standing = format!(
        "Paygate has it {} at {}",
        current.status,
        current.gateway.as_deref().unwrap_or("no gateway")
    );
    match (took_payment, current.status) {
        (true, Status::Failed) => Some((
            review::CHARGED_BUT_FAILED,
            format!(
                "{gateway} says {word}: the customer was charged, but {standing} ({})",
                current.failure_reason.as_deref().unwrap_or("no reason")
            ),
        )),
        (true, _) if !here => Some((
            review::CONTRADICTING_ANSWER,
            format!("{gateway} says {word}: it holds the money, but {standing}"),
        )),
        (false, Status::Completed) if here => Some((
            review::CONTRADICTING_ANSWER,
            format!("{gateway} says {word}, but {standing}"),
        )),
        _ => None,
    }
}

/// Flags a payment for a human with `reason` and its evidence: a version bump and a
/// `transaction.review_required` event, so the merchant is told by webhook in order with
/// the rest. Its status never changes, nor `updated_at` (still when its status last
/// changed: the console's chart and the callback chase read it so). `None` when it is already under review (the
/// first reason stands; the detail of later ones goes to the log).
pub async fn flag_review(
    conn: &mut PgConnection,
    id: &TransactionId,
    reason: &str,
    detail: &str,
) -> sqlx::Result<Option<TransactionRecord>> {
    let flagged: Option<TransactionRecord> = sqlx::query_as(&format!(
        "UPDATE transaction
            SET review_reason = $2, review_since = now(), review_detail = $3,
                version = version + 1
          WHERE id = $1 AND review_reason IS NULL
      RETURNING {COLUMNS}"
    ))
    .bind(id.as_str())
    .bind(reason)
    .bind(detail)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(record) = flagged else {
        tracing::warn!(transaction_id = %id, reason, detail, "already under review");
        return Ok(None);
    };
    record_version(
        conn,
        &record,
        event_type::REVIEW_REQUIRED,
        Destination::TransactionsStatus,
        status_changed,
    )
    .await?;
    crate::metrics::review_required(reason);
    tracing::warn!(transaction_id = %id, reason, detail, "payment flagged for a human");
    Ok(Some(record))
}

/// Records in a payment's history a gateway's definite answer that arrived after the
/// payment had moved on, so it is never dropped: `detail` says what it was.
pub async fn record_late_answer(
    conn: &mut PgConnection,
    record: &TransactionRecord,
    detail: &str,
) -> sqlx::Result<()> {
    let event_id = EventId::new();
    let payload = proto::GatewayAnswerRecorded {
        event_id: event_id.to_string(),
        transaction_id: record.id.to_string(),
        detail: detail.to_owned(),
    }
    .encode_to_vec();
    append_event(
        conn,
        &NewEvent {
            id: &event_id,
            transaction_id: &record.id,
            version: None,
            event_type: event_type::GATEWAY_ANSWER_RECORDED,
            status: Some(record.status),
            destination: Destination::History,
            payload: &payload,
        },
    )
    .await
}

/// Pending payments left unresolved at a gateway and not asked about for `every`, oldest
/// check first.
pub async fn unresolved_due<'e>(
    executor: impl PgExecutor<'e>,
    every: std::time::Duration,
    limit: i64,
) -> sqlx::Result<Vec<TransactionId>> {
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM transaction
          WHERE status = 'pending' AND unresolved_since IS NOT NULL
            AND unresolved_checked_at <= now() - make_interval(secs => $1)
          ORDER BY unresolved_checked_at
          LIMIT $2",
    )
    .bind(every.as_secs_f64())
    .bind(limit)
    .fetch_all(executor)
    .await?;
    parse_ids(ids)
}

/// `processing` payments whose callback is overdue: past their gateway's callback
/// deadline since they became `processing`, or past the next check their last status
/// query set. Oldest first.
pub async fn processing_due<'e>(
    executor: impl PgExecutor<'e>,
    limit: i64,
) -> sqlx::Result<Vec<TransactionId>> {
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT t.id FROM transaction t JOIN gateway g ON g.code = t.gateway
          WHERE t.status = 'processing'
            AND COALESCE(t.status_check_at,
                         t.updated_at + g.callback_deadline_ms * interval '1 millisecond') <= now()
          ORDER BY COALESCE(t.status_check_at, t.updated_at)
          LIMIT $1",
    )
    .bind(limit)
    .fetch_all(executor)
    .await?;
    parse_ids(ids)
}

/// Pending payments without progress for `stale`: no change and no check for that
/// long, whatever their flags. Oldest first.
pub async fn stale_pending<'e>(
    executor: impl PgExecutor<'e>,
    stale: std::time::Duration,
    limit: i64,
) -> sqlx::Result<Vec<TransactionId>> {
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM transaction
          WHERE status = 'pending' AND updated_at < now() - make_interval(secs => $1)
            AND (unresolved_checked_at IS NULL OR unresolved_checked_at < now() - make_interval(secs => $1))
          ORDER BY updated_at
          LIMIT $2",
    )
    .bind(stale.as_secs_f64())
    .bind(limit)
    .fetch_all(executor)
    .await?;
    parse_ids(ids)
}

/// Notes that a `processing` payment was asked about and is still unsettled: the next
/// status query is due `after` from now.
pub async fn next_status_check<'e>(
    executor: impl PgExecutor<'e>,
    id: &TransactionId,
    after: std::time::Duration,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE transaction
            SET status_checks = status_checks + 1,
                status_check_at = now() + make_interval(secs => $2)
          WHERE id = $1 AND status = $3",
    )
    .bind(id.as_str())
    .bind(after.as_secs_f64())
    .bind(Status::Processing.as_str())
    .execute(executor)
    .await?;
    Ok(())
}

fn parse_ids(ids: Vec<String>) -> sqlx::Result<Vec<TransactionId>> {
    ids.into_iter()
        .map(|id| {
            id.parse()
                .map_err(|e: crate::domain::DomainError| sqlx::Error::Decode(e.into()))
        })
        .collect()
}

/// The payload of a status event (and of a history event): the new snapshot.
pub(crate) fn status_changed(event_id: String, transaction: Option<proto::Transaction>) -> Vec<u8> {
    proto::StatusChanged {
        event_id,
        transaction,
        refund: None,
        routing: None,
    }
    .encode_to_vec()
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
        "INSERT INTO transaction_event (id, transaction_id, version, event_type, status, destination, payload, published_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, CASE WHEN $6 = 'history' THEN now() END)",
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

/// A verified gateway callback to keep.
#[derive(Debug)]
pub struct NewCallback {
    pub gateway: String,
    pub transaction_id: TransactionId,
    /// The refund it is about, when it is about one of the payment's refunds.
    pub refund_id: Option<crate::domain::RefundId>,
    /// What makes two deliveries of one callback the same (per gateway).
    pub dedup_key: String,
    pub content_type: String,
    pub body: Vec<u8>,
}

/// What [`store_callback`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallbackStored {
    /// Kept and announced to the callback-processor, under this id.
    Stored(CallbackId),
    /// The same callback was kept before: nothing written.
    Duplicate,
    /// No such transaction: nothing written.
    UnknownTransaction,
}

/// Keeps a verified callback once per (gateway, `dedup_key`) with its announcement to the
/// callback-processor: one statement, committed on its own, all or nothing.
pub async fn store_callback<'e>(
    executor: impl PgExecutor<'e>,
    callback: &NewCallback,
) -> sqlx::Result<CallbackStored> {
    let callback_id = CallbackId::new();
    let event_id = EventId::new();
    let (known, stored): (bool, bool) = sqlx::query_as(
        "WITH known AS (
             SELECT id FROM transaction WHERE id = $3
         ), stored AS (
             INSERT INTO gateway_callback (id, gateway, transaction_id, dedup_key, content_type, body, refund_id)
             SELECT $1, $2, id, $4, $5, $6, $11 FROM known
             ON CONFLICT ON CONSTRAINT gateway_callback_dedup DO NOTHING
             RETURNING transaction_id
         ), announced AS (
             INSERT INTO transaction_event (id, transaction_id, event_type, destination, payload)
             SELECT $7, transaction_id, $8, $9, $10 FROM stored
         )
         SELECT EXISTS (SELECT 1 FROM known), EXISTS (SELECT 1 FROM stored)",
    )
    .bind(callback_id.as_str())
    .bind(&callback.gateway)
    .bind(callback.transaction_id.as_str())
    .bind(&callback.dedup_key)
    .bind(&callback.content_type)
    .bind(&callback.body)
    .bind(event_id.as_str())
    .bind(event_type::CALLBACK_RECEIVED)
    .bind(Destination::GatewayCallbacks.as_str())
    .bind(callback_announcement(
        &event_id,
        &callback_id,
        &callback.gateway,
        &callback.transaction_id,
    ))
    .bind(callback.refund_id.as_ref().map(crate::domain::RefundId::as_str))
    .fetch_one(executor)
    .await?;
    Ok(CallbackStored::of((known, stored), callback_id))
}

/// A callback's intake, [`store_callback`], as a write that shares its commit with the
/// others of its moment (`group_commit`).
impl crate::group_commit::Write for NewCallback {
    type Output = CallbackStored;

    async fn write(&self, conn: &mut PgConnection) -> sqlx::Result<CallbackStored> {
        store_callback(conn, self).await
    }

    async fn write_all(
        callbacks: &[&Self],
        conn: &mut PgConnection,
    ) -> sqlx::Result<Vec<CallbackStored>> {
        store_callbacks(conn, callbacks).await
    }
}

/// [`store_callback`] for many callbacks in one statement: each is kept, or found a
/// duplicate or about no known payment, as it would be alone, in their order (of two
/// deliveries of one callback in the batch, the first is kept). What each became.
async fn store_callbacks(
    conn: &mut PgConnection,
    callbacks: &[&NewCallback],
) -> sqlx::Result<Vec<CallbackStored>> {
    let callback_ids: Vec<CallbackId> = callbacks.iter().map(|_| CallbackId::new()).collect();
    let event_ids: Vec<EventId> = callbacks.iter().map(|_| EventId::new()).collect();
    let rows: Vec<(bool, bool)> = sqlx::query_as(
        "WITH input AS (
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                                  $6::bytea[], $7::text[], $8::bytea[], $9::text[])
                    WITH ORDINALITY
                    AS i(id, gateway, transaction_id, dedup_key, content_type, body, event_id,
                         payload, refund_id, ord)
         ), known AS (
             SELECT i.* FROM input i
              WHERE EXISTS (SELECT 1 FROM transaction t WHERE t.id = i.transaction_id)
         ), stored AS (
             INSERT INTO gateway_callback (id, gateway, transaction_id, dedup_key, content_type, body, refund_id)
             SELECT id, gateway, transaction_id, dedup_key, content_type, body, refund_id
               FROM known ORDER BY gateway, dedup_key, ord
             ON CONFLICT ON CONSTRAINT gateway_callback_dedup DO NOTHING
             RETURNING id
         ), announced AS (
             INSERT INTO transaction_event (id, transaction_id, event_type, destination, payload)
             SELECT k.event_id, k.transaction_id, $10, $11, k.payload
               FROM known k JOIN stored s ON s.id = k.id ORDER BY k.ord
         )
         SELECT EXISTS (SELECT 1 FROM known k WHERE k.ord = i.ord),
                EXISTS (SELECT 1 FROM stored s WHERE s.id = i.id)
           FROM input i ORDER BY i.ord",
    )
    .bind(callback_ids.iter().map(CallbackId::as_str).collect::<Vec<_>>())
    .bind(callbacks.iter().map(|c| c.gateway.as_str()).collect::<Vec<_>>())
    .bind(callbacks.iter().map(|c| c.transaction_id.as_str()).collect::<Vec<_>>())
    .bind(callbacks.iter().map(|c| c.dedup_key.as_str()).collect::<Vec<_>>())
    .bind(callbacks.iter().map(|c| c.content_type.as_str()).collect::<Vec<_>>())
    .bind(callbacks.iter().map(|c| c.body.as_slice()).collect::<Vec<_>>())
    .bind(event_ids.iter().map(EventId::as_str).collect::<Vec<_>>())
    .bind(
        callbacks
            .iter()
            .zip(&callback_ids)
            .zip(&event_ids)
            .map(|((c, callback_id), event_id)| {
                callback_announcement(event_id, callback_id, &c.gateway, &c.transaction_id)
            })
            .collect::<Vec<_>>(),
    )
    .bind(
        callbacks
            .iter()
            .map(|c| c.refund_id.as_ref().map(crate::domain::RefundId::as_str))
            .collect::<Vec<_>>(),
    )
    .bind(event_type::CALLBACK_RECEIVED)
    .bind(Destination::GatewayCallbacks.as_str())
    // Planned for its batch each time: a plan cached while `transaction` was empty
    // finds the callbacks' payments by scanning it (see `plans.rs`).
    .persistent(false)
    .fetch_all(conn)
    .await?;
    let rows = crate::group_commit::one_each(rows, callbacks.len(), "callbacks")?;
    Ok(rows
        .into_iter()
        .zip(callback_ids)
        .map(|(found, id)| CallbackStored::of(found, id))
        .collect())
}

impl CallbackStored {
    /// What keeping a callback did, from whether its payment is known and it was kept.
    fn of((known, stored): (bool, bool), id: CallbackId) -> CallbackStored {
        match (known, stored) {
            (false, _) => CallbackStored::UnknownTransaction,
            (true, true) => CallbackStored::Stored(id),
            (true, false) => CallbackStored::Duplicate,
        }
    }
}

fn callback_announcement(
    event_id: &EventId,
    callback_id: &CallbackId,
    gateway: &str,
    transaction_id: &TransactionId,
) -> Vec<u8> {
    proto::CallbackReceived {
        event_id: event_id.to_string(),
        callback_id: callback_id.to_string(),
        gateway: gateway.to_owned(),
        transaction_id: transaction_id.to_string(),
    }
    .encode_to_vec()
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
    let payload = callback_announcement(&event_id, callback_id, gateway, transaction_id);
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
    announce_parked_callbacks_of(conn, &[transaction_id]).await
}

/// [`announce_parked_callbacks`] for several transactions, looked up in one statement
/// (a batch of moves asks once, not once a payment: almost always nothing is parked).
pub async fn announce_parked_callbacks_of(
    conn: &mut PgConnection,
    transaction_ids: &[&TransactionId],
) -> sqlx::Result<()> {
    if transaction_ids.is_empty() {
        return Ok(());
    }
    let parked: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT id, gateway, transaction_id FROM gateway_callback
          WHERE transaction_id = ANY($1) AND processed_at IS NULL
          ORDER BY transaction_id, received_at, id",
    )
    // Planned for its ids each time (see `plans.rs`).
    .persistent(false)
    .bind(
        transaction_ids
            .iter()
            .map(|id| id.as_str())
            .collect::<Vec<_>>(),
    )
    .fetch_all(&mut *conn)
    .await?;
    for (id, gateway, transaction_id) in &parked {
        let decode = |e: crate::domain::DomainError| sqlx::Error::Decode(e.into());
        let id: CallbackId = id.parse().map_err(decode)?;
        let transaction_id: TransactionId = transaction_id.parse().map_err(decode)?;
        announce_callback(conn, &id, gateway, &transaction_id).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn at(status: Status, gateway: Option<&str>) -> TransactionRecord {
        TransactionRecord {
            id: TransactionId::new(),
            merchant_id: MerchantId::new(),
            kind: Kind::Deposit,
            status,
            amount: Decimal::ONE_HUNDRED,
            currency: "EUR".into(),
            user_id: "u".into(),
            country: None,
            reference: None,
            gateway: gateway.map(str::to_owned),
            gateway_txn_id: None,
            failure_reason: Some("declined".into()),
            version: 3,
            payment_method: "plain".into(),
            card_masked: None,
            unresolved_since: None,
            unresolved_reason: None,
            attempted_at: None,
            attempted_gateways: gateway.into_iter().map(str::to_owned).collect(),
            status_checks: 0,
            review_reason: None,
            review_since: None,
            review_detail: None,
            metadata: Metadata::default(),
            pinned_gateways: None,
            gateway_fallback: false,
            refund_held: Decimal::ZERO,
            amount_refunded: Decimal::ZERO,
            notification_url: None,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    #[test]
    fn a_charge_on_a_failed_payment_is_charged_but_failed_wherever_it_failed() {
        for gateway in [Some("a"), None] {
            let failed = at(Status::Failed, gateway);
            let (reason, evidence) = contradiction(&failed, "a", true, "approved").unwrap();
            assert_eq!(reason, review::CHARGED_BUT_FAILED);
            assert!(evidence.contains("a says approved"), "{evidence}");
        }
    }

    #[test]
    fn a_charge_at_a_gateway_the_payment_has_left_contradicts_it() {
        for status in [Status::Pending, Status::Processing, Status::Completed] {
            let elsewhere = at(status, Some("b"));
            assert_eq!(
                contradiction(&elsewhere, "a", true, "completed").map(|(r, _)| r),
                Some(review::CONTRADICTING_ANSWER),
                "{status}"
            );
        }
    }

    #[test]
    fn a_decline_of_a_completed_payment_contradicts_it_and_agreement_does_not() {
        let completed = at(Status::Completed, Some("a"));
        assert_eq!(
            contradiction(&completed, "a", false, "declined").map(|(r, _)| r),
            Some(review::CONTRADICTING_ANSWER)
        );
        assert_eq!(contradiction(&completed, "a", true, "completed"), None);
        assert_eq!(
            contradiction(&at(Status::Failed, Some("a")), "a", false, "declined"),
            None
        );
        assert_eq!(
            contradiction(&at(Status::Processing, Some("a")), "a", true, "accepted"),
            None
        );
    }
}
