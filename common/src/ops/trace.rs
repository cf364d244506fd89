//! W3C trace context (`traceparent`) for one payment across the four services.
//!
//! A payment's trace id is its transaction id's 128 bits (`txn_<32 hex>` is a UUIDv7):
//! every service, every Kafka hop and every retry arrives at the same id without the
//! outbox storing anything, and an operator can go from a transaction id to its trace
//! and back. Each hop gets a span id of its own. Kafka messages carry `traceparent` in
//! their headers (see `kafka::producer`); a consumer continues the trace of the message
//! it handles ([`scope`]), and outgoing HTTP (gateway calls, webhooks) carries it on.
//!
//! Log lines of a payment carry `transaction_id` and `trace_id` as span fields, so one
//! search of the logs finds the payment in every service.

use std::fmt;
use std::future::Future;

use rand::RngCore as _;

/// The header name, in Kafka and HTTP alike.
pub const TRACEPARENT: &str = "traceparent";

/// One hop of a trace: the trace it belongs to and this hop's span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: [u8; 16],
    span_id: [u8; 8],
}

tokio::task_local! {
    static CURRENT: TraceContext;
}

impl TraceContext {
    /// The trace of the payment `transaction_id` (`txn_<32 hex>`), at a new span.
    /// `None` for anything that is not a transaction id.
    pub fn for_transaction(transaction_id: &str) -> Option<Self> {
        let hex_id = transaction_id.strip_prefix("txn_")?;
        let mut trace_id = [0u8; 16];
        hex::decode_to_slice(hex_id, &mut trace_id).ok()?;
        (trace_id != [0; 16]).then(|| TraceContext {
            trace_id,
            span_id: new_span_id(),
        })
    }

    /// Reads a `traceparent` value (version 00, or a later one read as 00).
    pub fn parse(header: &str) -> Option<Self> {
        let mut parts = header.trim().split('-');
        let version = parts.next()?;
        let (trace, span, _flags) = (parts.next()?, parts.next()?, parts.next()?);
        if version.len() != 2 || version == "ff" || trace.len() != 32 || span.len() != 16 {
            return None;
        }
        let mut context = TraceContext {
            trace_id: [0; 16],
            span_id: [0; 8],
        };
        hex::decode_to_slice(trace, &mut context.trace_id).ok()?;
        hex::decode_to_slice(span, &mut context.span_id).ok()?;
        (context.trace_id != [0; 16] && context.span_id != [0; 8]).then_some(context)
    }

    /// The same trace at a new span: what a hop hands to the next one.
    pub fn child(&self) -> Self {
        TraceContext {
            trace_id: self.trace_id,
            span_id: new_span_id(),
        }
    }

    /// The trace id as 32 lowercase hex digits, as logs and trace backends show it.
    pub fn trace_id(&self) -> String {
        hex::encode(self.trace_id)
    }

    /// The `traceparent` value of this hop, sampled.
    pub fn header(&self) -> String {
        format!(
            "00-{}-{}-01",
            hex::encode(self.trace_id),
            hex::encode(self.span_id)
        )
    }

    /// What the task running `work` continues: outgoing calls inside it carry
    /// [`outgoing`].
    pub async fn scope<F: Future>(self, work: F) -> F::Output {
        CURRENT.scope(self, work).await
    }

    /// The trace the current task works in, if it was started inside [`scope`].
    pub fn current() -> Option<Self> {
        CURRENT.try_with(|context| *context).ok()
    }
}

impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.header())
    }
}

/// The `traceparent` for a call made now: the current exported span when spans are
/// exported (so the receiver's span is its child in the trace backend), else a child of
/// the current trace, if any.
pub fn outgoing() -> Option<String> {
    export::current().or_else(|| TraceContext::current().map(|context| context.child().header()))
}

/// Records `transaction_id` and its trace id on the current span (declared with those
/// fields empty, as the api's request span is), so every later line of the request
/// carries them; an exported span joins the payment's trace.
pub fn record_transaction(transaction_id: &str) {
    let span = tracing::Span::current();
    span.record("transaction_id", transaction_id);
    if let Some(context) = TraceContext::for_transaction(transaction_id) {
        span.record("trace_id", context.trace_id());
        attach(&span, &context);
    }
}

/// Makes `parent` (a hop received from elsewhere) the parent of `span` in the trace
/// backend, when spans are exported; nothing otherwise. Call it before `span` is used.
pub fn attach(span: &tracing::Span, parent: &TraceContext) {
    export::attach(span, parent);
}

#[cfg(feature = "otlp")]
mod export {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
    };
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;

    use super::TraceContext;

    pub(super) fn attach(span: &tracing::Span, parent: &TraceContext) {
        let remote = SpanContext::new(
            TraceId::from_bytes(parent.trace_id),
            SpanId::from_bytes(parent.span_id),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        // Refused when no exporter is installed or the span already started: then it
        // keeps the trace it has, and the logs still carry the payment's trace id.
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
    }

    pub(super) fn current() -> Option<String> {
        let context = tracing::Span::current().context();
        let span = context.span();
        let span = span.span_context();
        span.is_valid()
            .then(|| format!("00-{}-{}-01", span.trace_id(), span.span_id()))
    }
}

#[cfg(not(feature = "otlp"))]
mod export {
    use super::TraceContext;

    pub(super) fn attach(_span: &tracing::Span, _parent: &TraceContext) {}

    pub(super) fn current() -> Option<String> {
        None
    }
}

fn new_span_id() -> [u8; 8] {
    let mut span_id = [0u8; 8];
    while span_id == [0; 8] {
        rand::rng().fill_bytes(&mut span_id);
    }
    span_id
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "txn_0190f3a1b2c37d4e8f9a0b1c2d3e4f50";

    #[test]
    fn a_payment_trace_is_its_transaction_id_and_each_hop_has_its_own_span() {
        let first = TraceContext::for_transaction(ID).unwrap();
        let second = TraceContext::for_transaction(ID).unwrap();
        assert_eq!(first.trace_id(), "0190f3a1b2c37d4e8f9a0b1c2d3e4f50");
        assert_eq!(first.trace_id(), second.trace_id());
        assert_ne!(first.header(), second.header(), "span ids differ");
        assert_eq!(first.child().trace_id(), first.trace_id());
        assert!(TraceContext::for_transaction("mer_0190f3a1b2c37d4e8f9a0b1c2d3e4f50").is_none());
        assert!(TraceContext::for_transaction("txn_00000000000000000000000000000000").is_none());
    }

    #[test]
    fn a_traceparent_reads_back_and_malformed_ones_are_refused() {
        let context = TraceContext::for_transaction(ID).unwrap();
        assert_eq!(TraceContext::parse(&context.header()), Some(context));
        let header = context.header();
        assert!(
            header.starts_with("00-0190f3a1b2c37d4e8f9a0b1c2d3e4f50-") && header.ends_with("-01")
        );
        for bad in [
            "",
            "00-0190f3a1b2c37d4e8f9a0b1c2d3e4f50-00f067aa0ba902b7",
            "ff-0190f3a1b2c37d4e8f9a0b1c2d3e4f50-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-0190f3a1b2c37d4e8f9a0b1c2d3e4f50-0000000000000000-01",
            "00-0190f3a1b2c37d4e8f9a0b1c2d3e4f5z-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn calls_made_inside_a_scope_carry_its_trace() {
        assert_eq!(outgoing(), None);
        let context = TraceContext::for_transaction(ID).unwrap();
        let header = context.scope(async { outgoing() }).await.unwrap();
        let carried = TraceContext::parse(&header).unwrap();
        assert_eq!(carried.trace_id(), context.trace_id());
        assert_ne!(carried, context, "a child span");
    }
}
