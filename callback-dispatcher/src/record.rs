//! The consumer half: one delivery per status event and endpoint that wants it (and one
//! to the payment's own `notification_url`), recorded with the exact body that will be
//! signed: the transaction, or for a `refund.*` event the refund (delivered in order with
//! its payment's, by the payment's version). The event id is the `webhook-id` at every
//! endpoint, so a redelivered message adds nothing. The events a consumer holds at one
//! moment are recorded together, in one statement (`kafka::batch`).

use std::sync::Arc;

use prost::Message;
use serde::Serialize;
use sqlx::PgPool;
use tokio::sync::Notify;

use paygate_common::domain::Status;
use paygate_common::events::{event_type, proto, RefundView, TransactionView};
use paygate_common::kafka::{headers, BatchHandler, HandlerError, Inbound};

/// The body merchants receive.
#[derive(Serialize)]
struct WebhookBody<'a, T> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    created_at: &'a str,
    data: T,
}

/// Records a delivery for each status event.
pub struct StatusHandler {
    pub(crate) pool: PgPool,
    /// Wakes the sender as soon as a delivery is recorded.
    pub(crate) wake: Arc<Notify>,
}

impl StatusHandler {
    /// Records on `pool` and wakes the sender through `wake`.
    pub fn new(pool: PgPool, wake: Arc<Notify>) -> Self {
        StatusHandler { pool, wake }
    }
}

/// One status event's deliveries to record.
pub struct Scheduled {
    event_id: String,
    merchant_id: String,
    transaction_id: String,
    version: i32,
    kind: String,
    body: String,
    /// The message's span: what is logged of this event in its batch carries its trace.
    span: tracing::Span,
}

impl BatchHandler for StatusHandler {
    type Item = Scheduled;

    async fn prepare(&self, message: &Inbound) -> Result<Option<Scheduled>, HandlerError> {
        let event = proto::StatusChanged::decode(message.payload.as_slice())
            .map_err(HandlerError::permanent)?;
        let transaction = event.transaction.as_ref().ok_or_else(|| {
            HandlerError::permanent(anyhow::anyhow!(
                "status event {} has no transaction",
                event.event_id
            ))
        })?;
        let status: Status = transaction
            .status
            .parse()
            .map_err(HandlerError::permanent)?;
        // A refund's change carries the refund: `refund.<its status>`, about it. A review
        // is news whatever the status; otherwise only a move out of `pending`.
        let kind = match (message.header(headers::EVENT_TYPE), &event.refund) {
            (Some(kind), Some(refund)) if kind.starts_with(event_type::REFUND_PREFIX) => {
                let refund_status: Status =
                    refund.status.parse().map_err(HandlerError::permanent)?;
                event_type::for_refund_status(refund_status)
            }
            (Some(event_type::REVIEW_REQUIRED), _) => event_type::REVIEW_REQUIRED.to_owned(),
            _ if status == Status::Pending => return Ok(None),
            _ => event_type::for_status(status),
        };
        let body = match &event.refund {
            Some(refund) if kind.starts_with(event_type::REFUND_PREFIX) => {
                serde_json::to_string(&WebhookBody {
                    id: &event.event_id,
                    kind: &kind,
                    created_at: &refund.updated_at,
                    data: RefundView::from(refund),
                })
            }
            _ => serde_json::to_string(&WebhookBody {
                id: &event.event_id,
                kind: &kind,
                created_at: &transaction.updated_at,
                data: TransactionView::from(transaction),
            }),
        }
        .map_err(HandlerError::permanent)?;
        Ok(Some(Scheduled {
            merchant_id: transaction.merchant_id.clone(),
            transaction_id: transaction.id.clone(),
            version: transaction.version,
            event_id: event.event_id,
            kind,
            body,
            span: tracing::Span::current(),
        }))
    }

    /// Every event's deliveries, in one statement: one to each enabled endpoint of the
    /// merchant that wants its type (no types: all; `refund.*`: a family), and one to
    /// the payment's own notification_url. The ids are random rather than time-ordered
    /// (they are made here, one per row): only a tie-break on equal due times uses them.
    /// The payment is found by its id alone (`OFFSET 0` keeps the merchant check out of
    /// the look-up): given both, the planner read the merchant's whole index of
    /// payments for each event.
    async fn apply(&self, batch: &[Scheduled]) -> Result<(), HandlerError> {
        let column = |f: fn(&Scheduled) -> &str| batch.iter().map(f).collect::<Vec<_>>();
        let inserted: Vec<String> = sqlx::query_scalar(
            "INSERT INTO webhook_delivery
                 (id, event_id, merchant_id, endpoint_id, notification, transaction_id, version,
                  event_type, url, body, status, next_attempt_at)
             SELECT 'whd_' || replace(gen_random_uuid()::text, '-', ''), e.event_id, e.merchant_id,
                    target.endpoint_id, target.endpoint_id IS NULL, e.transaction_id, e.version,
                    e.kind, target.url, e.body, 'pending', now()
               FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::text[], $6::text[])
                    AS e(event_id, merchant_id, transaction_id, version, kind, body)
              CROSS JOIN LATERAL (
                     SELECT w.id AS endpoint_id, w.url
                       FROM webhook_endpoint w
                      WHERE w.merchant_id = e.merchant_id AND w.enabled
                        AND (cardinality(w.event_types) = 0
                             OR EXISTS (SELECT 1 FROM unnest(w.event_types) AS wanted(t)
                                         WHERE wanted.t = e.kind
                                            OR (right(wanted.t, 2) = '.*' AND starts_with(e.kind, left(wanted.t, -1)))))
                     UNION ALL
                     SELECT NULL, n.url
                       FROM (SELECT t.notification_url AS url, t.merchant_id
                               FROM transaction t
                              WHERE t.id = e.transaction_id
                             OFFSET 0) AS n
                      WHERE n.merchant_id = e.merchant_id AND n.url IS NOT NULL) AS target
             ON CONFLICT DO NOTHING
             RETURNING event_id",
        )
        .bind(column(|s| &s.event_id))
        .bind(column(|s| &s.merchant_id))
        .bind(column(|s| &s.transaction_id))
        .bind(batch.iter().map(|s| s.version).collect::<Vec<_>>())
        .bind(column(|s| &s.kind))
        .bind(column(|s| &s.body))
        .fetch_all(&self.pool)
        .await
        .map_err(HandlerError::transient)?;
        if !inserted.is_empty() {
            for scheduled in batch.iter().filter(|s| inserted.contains(&s.event_id)) {
                let _in_its_span = scheduled.span.enter();
                tracing::info!(transaction_id = %scheduled.transaction_id, event_id = %scheduled.event_id, kind = %scheduled.kind, "webhook scheduled");
            }
            self.wake.notify_one();
        }
        Ok(())
    }
}
