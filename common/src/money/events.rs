//! The messages Paygate puts on Kafka (protobuf, from `common/proto`), the logical
//! streams they go to, and the JSON view of a transaction that merchants see in API
//! answers and webhooks alike.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use crate::config::Topics;

/// The generated protobuf types of `paygate.v1`.
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/paygate.v1.rs"));
}

/// The version of the schemas in `common/proto`, sent as the `schema-version` header.
pub const SCHEMA_VERSION: &str = "1";

/// A logical stream of events; configuration maps it to a topic name when the outbox
/// relay publishes, so renaming a topic never strands an unpublished event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    PaymentsRequested,
    GatewayCallbacks,
    TransactionsStatus,
    /// Kept in the transaction's history only, never published.
    History,
}

impl Destination {
    /// The value stored in `transaction_event.destination`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Destination::PaymentsRequested => "payments_requested",
            Destination::GatewayCallbacks => "gateway_callbacks",
            Destination::TransactionsStatus => "transactions_status",
            Destination::History => "history",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Destination::PaymentsRequested,
            Destination::GatewayCallbacks,
            Destination::TransactionsStatus,
            Destination::History,
        ]
        .into_iter()
        .find(|d| d.as_str() == s)
    }

    /// The topic it is published to; `None` for history-only events.
    pub fn topic<'a>(&self, topics: &'a Topics) -> Option<&'a str> {
        match self {
            Destination::PaymentsRequested => Some(&topics.payments_requested),
            Destination::GatewayCallbacks => Some(&topics.gateway_callbacks),
            Destination::TransactionsStatus => Some(&topics.transactions_status),
            Destination::History => None,
        }
    }
}

/// Event types, as stored and sent in the `event-type` header and webhook `type`.
pub mod event_type {
    pub const CREATED: &str = "transaction.created";
    pub const CALLBACK_RECEIVED: &str = "callback.received";
    /// A gateway is about to be asked to take the payment (history only).
    pub const GATEWAY_ATTEMPTED: &str = "gateway.attempted";
    /// Every gateway asked proved it did not take the payment; it waits for a retry
    /// (history only).
    pub const GATEWAYS_UNAVAILABLE: &str = "gateway.unavailable";
    /// A gateway's definite answer that arrived after the payment had moved on (a
    /// fenced-out worker's, or a late one): kept, never dropped (history only).
    pub const GATEWAY_ANSWER_RECORDED: &str = "gateway.answer_recorded";
    /// Paygate found a contradiction, or a payment it cannot settle alone: the merchant
    /// is told and operators see it in "needs a human". The status is unchanged.
    pub const REVIEW_REQUIRED: &str = "transaction.review_required";
    /// A refund was asked for: it goes to the payment-processor.
    pub const REFUND_CREATED: &str = "refund.created";
    /// The gateway that charged is about to be asked for a refund (history only).
    pub const REFUND_ATTEMPTED: &str = "refund.attempted";
    /// The prefix of every refund event type: `refund.<status>` and the above.
    pub const REFUND_PREFIX: &str = "refund.";

    /// A signed test webhook an operator sends an endpoint (`POST …/endpoints/{id}/test`).
    pub const PING: &str = "ping";

    /// Every type a merchant's webhook carries about payments and refunds: what an
    /// endpoint's event-type filter may name (or a family: `refund.*`).
    pub const WEBHOOK_TYPES: [&str; 7] = [
        "transaction.processing",
        "transaction.completed",
        "transaction.failed",
        REVIEW_REQUIRED,
        "refund.processing",
        "refund.completed",
        "refund.failed",
    ];

    /// Whether an endpoint may filter on `entry`: one of [`WEBHOOK_TYPES`], or a family
    /// of them (`transaction.*`, `refund.*`).
    pub fn is_webhook_filter(entry: &str) -> bool {
        match entry.strip_suffix('*') {
            Some(family) => {
                family.ends_with('.') && WEBHOOK_TYPES.iter().any(|t| t.starts_with(family))
            }
            None => WEBHOOK_TYPES.contains(&entry),
        }
    }

    /// The webhook type of a refund's status change: `refund.<status>`.
    pub fn for_refund_status(status: crate::domain::Status) -> String {
        format!("refund.{status}")
    }

    /// The webhook type of a status change: `transaction.<status>`.
    pub fn for_status(status: crate::domain::Status) -> String {
        format!("transaction.{status}")
    }
}

/// The OpenAPI schema of a transaction's `status`: the wire names of [`Status::ALL`], so
/// the document cannot drift from the domain.
///
/// [`Status::ALL`]: crate::domain::Status::ALL
pub fn status_schema() -> utoipa::openapi::schema::Object {
    wire_names(crate::domain::Status::ALL.iter().map(|s| s.as_str()))
}

/// The OpenAPI schema of a transaction's `kind`: `deposit` or `withdrawal`.
pub fn kind_schema() -> utoipa::openapi::schema::Object {
    use crate::domain::Kind;
    wire_names([Kind::Deposit, Kind::Withdrawal].iter().map(|k| k.as_str()))
}

fn wire_names<'a>(names: impl Iterator<Item = &'a str>) -> utoipa::openapi::schema::Object {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(names))
        .build()
}

/// Timestamps on the wire: RFC 3339, UTC, milliseconds.
pub fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A transaction as merchants see it, in API answers and in webhook `data`.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[schema(
    xml(name = "transaction"),
    example = json!({
        "id": "txn_0198c9b2a4e07c3f9d2a61b5e8f4c0d1", "kind": "deposit", "status": "pending",
        "amount": "100.50", "currency": "EUR", "user_id": "u-1", "country": "DE",
        "reference": "order-7", "gateway": null, "gateway_txn_id": null,
        "failure_reason": null, "version": 1, "review": null, "metadata": {"order": "A-17"},
        "amount_refunded": "0.00", "created_at": "2026-01-01T12:00:00.000Z", "updated_at": "2026-01-01T12:00:00.000Z"
    })
)]
pub struct TransactionView {
    /// `txn_…`.
    pub id: String,
    #[schema(schema_with = kind_schema)]
    pub kind: String,
    #[schema(schema_with = status_schema)]
    pub status: String,
    /// A decimal string with exactly the currency's minor units, e.g. `"100.50"`.
    pub amount: String,
    /// ISO 4217, e.g. `EUR`.
    pub currency: String,
    pub user_id: String,
    /// ISO 3166-1 alpha-2, the one the payment was routed by.
    pub country: Option<String>,
    pub reference: Option<String>,
    /// The gateway's code, once one took the payment.
    pub gateway: Option<String>,
    /// The gateway's own id for the payment.
    pub gateway_txn_id: Option<String>,
    pub failure_reason: Option<String>,
    /// How it is paid, when the merchant said: a card shows only masked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payment_method: Option<PaymentMethodView>,
    /// Counts changes from 1, so a merchant can order webhooks.
    pub version: i32,
    /// `null`, or why Paygate needs a human to look at this payment (a contradiction
    /// such as `charged_but_failed`, or `no_callback`); its status never changes for it.
    pub review: Option<ReviewView>,
    /// The merchant's own key/value pairs, as sent (`{}` when none): in XML, one child
    /// element per key.
    #[schema(example = json!({"order": "A-17"}))]
    pub metadata: BTreeMap<String, String>,
    /// What its completed refunds gave back, a decimal string like `amount` (`"0.00"`
    /// when none).
    #[schema(example = "0.00")]
    pub amount_refunded: String,
    /// RFC 3339, UTC, milliseconds.
    pub created_at: String,
    /// RFC 3339, UTC, milliseconds.
    pub updated_at: String,
}

/// Why a payment needs a human.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ReviewView {
    /// `charged_but_failed`, `no_callback`, `unresolved_at_gateway`, `contradicting_answer`, …
    #[schema(example = "charged_but_failed")]
    pub reason: String,
    /// RFC 3339, UTC, milliseconds.
    pub since: String,
    /// The evidence, in words.
    pub detail: String,
}

/// A payment method as merchants see it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct PaymentMethodView {
    /// Always `card`.
    #[serde(rename = "type")]
    #[schema(example = "card")]
    pub kind: &'static str,
    pub card: CardView,
}

/// A card as merchants see it: masked (`424242******4242`).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct CardView {
    #[schema(example = "424242******4242")]
    pub number: String,
}

impl From<&proto::Transaction> for TransactionView {
    fn from(t: &proto::Transaction) -> Self {
        TransactionView {
            id: t.id.clone(),
            kind: t.kind.clone(),
            status: t.status.clone(),
            amount: t.amount.clone(),
            currency: t.currency.clone(),
            user_id: t.user_id.clone(),
            country: t.country.clone(),
            reference: t.reference.clone(),
            gateway: t.gateway.clone(),
            gateway_txn_id: t.gateway_txn_id.clone(),
            failure_reason: t.failure_reason.clone(),
            payment_method: t.card_masked.as_ref().map(|masked| PaymentMethodView {
                kind: "card",
                card: CardView {
                    number: masked.clone(),
                },
            }),
            version: t.version,
            review: t.review.as_ref().map(|r| ReviewView {
                reason: r.reason.clone(),
                since: r.since.clone(),
                detail: r.detail.clone(),
            }),
            metadata: t.metadata.clone(),
            amount_refunded: t.amount_refunded.clone(),
            created_at: t.created_at.clone(),
            updated_at: t.updated_at.clone(),
        }
    }
}

/// A refund as merchants see it, in API answers and in `refund.*` webhook `data`.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[schema(
    xml(name = "refund"),
    example = json!({
        "id": "rfd_0198c9b2a4e07c3f9d2a61b5e8f4c0d1",
        "transaction_id": "txn_0198c9b2a4e07c3f9d2a61b5e8f4c0d1", "status": "pending",
        "version": 1, "amount": "10.00", "currency": "EUR", "reason": "returned goods",
        "metadata": {"rma": "R-3"}, "gateway_refund_id": null, "failure_reason": null,
        "created_at": "2026-01-01T12:00:00.000Z", "updated_at": "2026-01-01T12:00:00.000Z"
    })
)]
pub struct RefundView {
    /// `rfd_…`.
    pub id: String,
    /// The payment (`txn_…`) it gives money back from.
    pub transaction_id: String,
    /// `pending → processing → completed | failed`, and `pending → failed`.
    #[schema(schema_with = status_schema)]
    pub status: String,
    /// Counts the refund's own changes from 1.
    pub version: i32,
    /// A decimal string in the payment's currency.
    pub amount: String,
    pub currency: String,
    /// The merchant's reason, as sent.
    pub reason: Option<String>,
    /// The merchant's own key/value pairs (`{}` when none).
    #[schema(example = json!({"rma": "R-3"}))]
    pub metadata: BTreeMap<String, String>,
    /// The gateway's own id for the refund, once it has one.
    pub gateway_refund_id: Option<String>,
    pub failure_reason: Option<String>,
    /// RFC 3339, UTC, milliseconds.
    pub created_at: String,
    /// RFC 3339, UTC, milliseconds.
    pub updated_at: String,
}

impl From<&proto::Refund> for RefundView {
    fn from(r: &proto::Refund) -> Self {
        RefundView {
            id: r.id.clone(),
            transaction_id: r.transaction_id.clone(),
            status: r.status.clone(),
            version: r.version,
            amount: r.amount.clone(),
            currency: r.currency.clone(),
            reason: r.reason.clone(),
            metadata: r.metadata.clone(),
            gateway_refund_id: r.gateway_refund_id.clone(),
            failure_reason: r.failure_reason.clone(),
            created_at: r.created_at.clone(),
            updated_at: r.updated_at.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::event_type::is_webhook_filter;

    #[test]
    fn an_endpoint_filters_on_webhook_types_and_their_families_only() {
        for taken in [
            "transaction.completed",
            "refund.*",
            "transaction.*",
            "transaction.review_required",
        ] {
            assert!(is_webhook_filter(taken), "{taken}");
        }
        for refused in [
            "*",
            "refund.nope",
            "transaction.created",
            "gateway.*",
            "refund",
            "refund*",
            "ping",
            "",
        ] {
            assert!(!is_webhook_filter(refused), "{refused}");
        }
    }
}
