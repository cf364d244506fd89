//! Payment gateways: what Paygate asks of one, and an adapter per protocol that speaks
//! it. Each adapter — one module here — submits a payment, asks for the status of our
//! reference, refunds a payment it charged and asks for the status of that refund,
//! fetches the gateway's settlement report for a period ([`settlement`]),
//! verifies and reads the gateway's callbacks, and acknowledges them in the
//! gateway's own format. Everything else (the payment-processor, the api's callback
//! intake, the callback-processor) speaks only to the [`Gateway`] trait, through the
//! registry [`ADAPTERS`]: adding a gateway is one module, one line there and a
//! `gateway` row.
//!
//! Every answer is classified once, here, into an [`Outcome`]. Only an answer that
//! proves the gateway did not take the payment is [`Outcome::Unavailable`] (the
//! connection was refused, a `503`, a fault saying so); anything else without a definite
//! answer — a timeout after sending, a `500`/`502`/`504`, a body that does not parse —
//! is [`Outcome::Ambiguous`], because a proxy's 504 can come after the gateway charged.

mod cache;
mod card;
mod http;
mod json;
pub mod legacy;
pub mod policy;
pub mod settlement;
mod soap;
mod store;

use std::future::Future;
use std::pin::Pin;

use rust_decimal::Decimal;
use secrecy::SecretString;
use serde::Serialize;

use crate::domain::Kind;
use crate::signature::callback::{self, SignatureError};

pub use cache::{GatewayCache, GATEWAY_CACHE_TTL, GATEWAY_MISS_RELOAD};
pub use card::CardAcquirer;
pub use json::JsonGateway;
pub use soap::SoapGateway;
pub use store::{
    all, all_routes, find, set_enabled, upsert, upsert_route, GatewayConfig, GatewayError,
    GatewayRecord, Route, Timings,
};

/// Every adapter this build speaks, by [`Gateway::protocol`].
pub const ADAPTERS: &[&dyn Gateway] = &[&JsonGateway, &SoapGateway, &CardAcquirer];

/// The adapter for a `gateway.protocol` value.
pub fn adapter(protocol: &str) -> Option<&'static dyn Gateway> {
    ADAPTERS.iter().copied().find(|a| a.protocol() == protocol)
}

/// A future an adapter returns (boxed, so adapters can sit behind `dyn Gateway`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One gateway's protocol.
pub trait Gateway: Send + Sync {
    /// The `gateway.protocol` value it serves.
    fn protocol(&self) -> &'static str;

    /// Whether it takes payments of `method`: a card goes only to a card acquirer, a
    /// plain payment never to one.
    fn takes(&self, method: PaymentMethod) -> bool;

    /// Asks the gateway to take `order`, with our reference as its idempotency key.
    fn submit<'a>(&'a self, call: Call<'a>, order: &'a PaymentOrder) -> BoxFuture<'a, Outcome>;

    /// Asks the gateway what became of our `reference`.
    fn query<'a>(&'a self, call: Call<'a>, reference: &'a str) -> BoxFuture<'a, Outcome>;

    /// Asks the gateway to refund part or all of a payment it charged, with the
    /// refund's id as its idempotency key. Its answer is classified like a payment's:
    /// [`Outcome::Completed`] refunded, [`Outcome::Accepted`] taken and pending there,
    /// [`Outcome::Declined`] refused, and the rest as for a payment.
    fn refund<'a>(&'a self, call: Call<'a>, order: &'a RefundOrder) -> BoxFuture<'a, Outcome>;

    /// Asks the gateway what became of the refund `reference`.
    fn query_refund<'a>(&'a self, call: Call<'a>, reference: &'a str) -> BoxFuture<'a, Outcome>;

    /// Fetches the gateway's settlement report for `period` and sends its lines into
    /// `lines` as they are read (see [`settlement`]); returns how many it sent. A report
    /// that breaks off is an error after some lines were sent: the reader must treat a
    /// failed report as nothing.
    fn settlement_report<'a>(
        &'a self,
        call: Call<'a>,
        period: settlement::Period,
        lines: &'a tokio::sync::mpsc::Sender<settlement::ReportLine>,
    ) -> BoxFuture<'a, Result<u64, settlement::ReportError>>;

    /// Checks a callback's signature before anything in it is read. Every gateway
    /// Paygate speaks to signs with `X-Paygate-Signature`; an adapter whose gateway signs
    /// otherwise overrides this.
    fn verify_callback(
        &self,
        secret: &str,
        signature: Option<&str>,
        body: &[u8],
        now: i64,
    ) -> Result<(), SignatureError> {
        callback::verify(secret, signature, body, now)
    }

    /// Reads only whose callback it is (a verified body), so that the raw body is stored
    /// even when the rest is something [`Gateway::parse_callback`] will refuse.
    fn callback_identity(&self, body: &[u8]) -> Result<CallbackIdentity, CallbackParseError>;

    /// Reads a verified callback body.
    fn parse_callback(&self, body: &[u8]) -> Result<CallbackNotice, CallbackParseError>;

    /// The acknowledgement the gateway expects for a callback: content type and body.
    fn callback_ack(&self) -> (&'static str, &'static str);
}

/// What one call to a gateway needs: the HTTP client and the gateway's row.
#[derive(Clone, Copy)]
pub struct Call<'a> {
    pub http: &'a reqwest::Client,
    pub gateway: &'a GatewayRecord,
}

/// How a payment is paid, as far as routing cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentMethod {
    /// No instrument given: the gateway collects it (a bank transfer, a wallet).
    Plain,
    Card,
}

/// A card, decrypted only to be sent to the acquirer.
#[derive(Debug, Clone)]
pub struct CardDetails {
    pub number: SecretString,
    pub expiry_month: u32,
    pub expiry_year: u32,
    pub holder_name: Option<String>,
    /// Only ever in memory and, sealed, briefly in Redis until the acquirer was asked:
    /// never in PostgreSQL, Kafka or a log line.
    pub cvv: Option<SecretString>,
}

/// What we ask a gateway to do.
#[derive(Debug, Clone, Serialize)]
pub struct PaymentOrder {
    /// Our transaction id: the gateway's idempotency reference.
    pub reference: String,
    pub amount: Decimal,
    pub currency: String,
    pub kind: Kind,
    pub country: Option<String>,
    /// Where the gateway posts its callback.
    pub callback_url: String,
    /// For card acquirers only; never serialised as it is.
    #[serde(skip)]
    pub card: Option<CardDetails>,
}

/// A refund we ask a gateway for: of a payment it charged, never of another's.
#[derive(Debug, Clone, Serialize)]
pub struct RefundOrder {
    /// Our refund id: the gateway's idempotency reference for the refund.
    pub reference: String,
    /// Our transaction id, the reference the payment was charged under.
    pub payment_reference: String,
    /// The gateway's own id for the payment, when it gave one.
    pub gateway_txn_id: Option<String>,
    pub amount: Decimal,
    pub currency: String,
    /// Where the gateway posts its callback about the refund (as for a payment).
    pub callback_url: String,
}

/// How a gateway answered a payment or a status query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Taken (charged, or pending at the gateway); the result follows by callback.
    Accepted { gateway_txn_id: String },
    /// Taken and settled: what the callback says (a status query's answer, once the
    /// gateway settled the payment).
    Completed { gateway_txn_id: String },
    /// Refused for a business reason (funds, risk): final, no other gateway is tried.
    Declined { reason: String },
    /// Proven not taken (connection refused, `503`, a fault saying so): the next
    /// gateway may be asked.
    Unavailable { reason: String },
    /// No definite answer: the gateway may have taken it. Only that gateway may be
    /// asked again, by status query.
    Ambiguous { reason: String },
    /// A status query's answer: the gateway has no payment under our reference.
    Unknown,
}

impl Outcome {
    /// Whether it is the gateway's definite word about our reference: taken, settled or
    /// declined. Nothing else (not even "unknown reference") proves where the money is.
    pub fn is_definite(&self) -> bool {
        matches!(
            self,
            Outcome::Accepted { .. } | Outcome::Completed { .. } | Outcome::Declined { .. }
        )
    }

    /// Whether it says the gateway holds the money.
    pub fn took_payment(&self) -> bool {
        matches!(self, Outcome::Accepted { .. } | Outcome::Completed { .. })
    }

    /// Its class, as metrics and history label it.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Accepted { .. } => "accepted",
            Outcome::Completed { .. } => "completed",
            Outcome::Declined { .. } => "declined",
            Outcome::Unavailable { .. } => "unavailable",
            Outcome::Ambiguous { .. } => "ambiguous",
            Outcome::Unknown => "unknown",
        }
    }
}

/// The gateway's result, as its callback tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallbackResult {
    Approved,
    Declined { reason: String },
}

/// A callback, normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackNotice {
    /// The gateway's id for this notification: two deliveries of it are one callback.
    pub event_id: String,
    /// Our transaction id, as we sent it.
    pub reference: String,
    pub gateway_txn_id: Option<String>,
    pub result: CallbackResult,
    pub amount: Decimal,
    pub currency: String,
}

/// What the api needs to store a callback: whose it is and the gateway's id for it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct CallbackIdentity {
    pub event_id: String,
    pub reference: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallbackParseError {
    #[error("the callback body is not what the {0} protocol sends: {1}")]
    Malformed(&'static str, String),
}
