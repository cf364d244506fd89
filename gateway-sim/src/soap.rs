//! The SOAP 1.1 gateway: `POST /soap` with `SubmitPayment`, `QueryPayment`,
//! `RefundPayment` or `QueryRefund` in the `urn:paygate:sim:payments` namespace, dispatched on the body's element (the
//! `SOAPAction` header is not trusted). Answers are `SubmitPaymentResponse` /
//! `QueryPaymentResponse` with `Status` `accepted`, `declined` or (queries only)
//! `unknown`, all HTTP 200; a malformed request is a `soap:Client` fault (HTTP 500), an
//! unavailable gateway a `soap:Server` fault (HTTP 503), and a `.06` proxy timeout a
//! plain-text 504. The callback is a signed `PaymentNotification` envelope.

mod incoming;
mod outgoing;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use quick_xml::SeError;

use crate::callback::Callback;
use crate::flow::{self, Reply, Submission};
use crate::outcome::{self, Answer, Scenario};
use crate::refunds;
use crate::state::{Gateway, Sim};

use incoming::{Operation, QueryPayment, SubmitPayment};
use outgoing::{Content, FaultCode, Notification, PaymentStatus};

/// The SOAP 1.1 envelope namespace.
pub const SOAP_ENVELOPE_NS: &str = "http://schemas.xmlsoap.org/soap/envelope/";

/// The namespace of the simulated gateway's operations and notifications.
pub const PAYMENTS_NS: &str = "urn:paygate:sim:payments";

const XML: &str = "text/xml; charset=utf-8";

pub(crate) fn routes() -> Router<Sim> {
    Router::new().route("/soap", post(endpoint))
}

async fn endpoint(State(sim): State<Sim>, body: Bytes) -> Response {
    match incoming::parse(&body) {
        Ok(Operation::SubmitPayment(request)) => submit(&sim, request).await,
        Ok(Operation::QueryPayment(request)) => query(&sim, request).await,
        Ok(Operation::RefundPayment(request)) => {
            let request = refunds::RefundRequest {
                gateway: Gateway::Soap,
                reference: request.reference,
                payment_reference: request.payment_reference,
                amount: request.amount,
                currency: request.currency,
                callback: None,
                callback_url: None,
            };
            render(refunds::refund(&sim, request).await, Answering::Refund)
        }
        Ok(Operation::QueryRefund(request)) => {
            match refunds::query(&sim, Gateway::Soap, &request.reference).await {
                Some(reply) => render(reply, Answering::QueryRefund),
                None => respond(
                    StatusCode::OK,
                    Content::QueryRefundResponse(PaymentStatus {
                        status: "unknown",
                        gateway_txn_id: None,
                        reason: None,
                    }),
                ),
            }
        }
        Err(bad) => {
            tracing::info!(reason = bad.message(), "refused a malformed SOAP request");
            respond(
                StatusCode::INTERNAL_SERVER_ERROR,
                Content::fault(FaultCode::Client, bad.message(), "BAD_REQUEST"),
            )
        }
    }
}

async fn submit(sim: &Sim, request: SubmitPayment) -> Response {
    let scenario = Scenario::of(request.amount);
    let answer = Answer::new(Gateway::Soap, scenario.verdict());
    let body = match notification(&request, &answer) {
        Ok(body) => body,
        Err(error) => {
            tracing::error!(%error, "could not write a SOAP notification");
            return server_error();
        }
    };
    let submission = Submission {
        gateway: Gateway::Soap,
        reference: request.reference,
        amount: request.amount,
        currency: request.currency.clone(),
        scenario,
        answer,
        callback: Callback {
            gateway: Gateway::Soap,
            url: request.callback_url,
            content_type: XML,
            body,
        },
    };
    render(flow::submit(sim, submission).await, Answering::Submit)
}

async fn query(sim: &Sim, request: QueryPayment) -> Response {
    match flow::query(sim, Gateway::Soap, &request.reference).await {
        Some(reply) => render(reply, Answering::Query),
        None => respond(
            StatusCode::OK,
            Content::QueryPaymentResponse(PaymentStatus {
                status: "unknown",
                gateway_txn_id: None,
                reason: None,
            }),
        ),
    }
}

/// Which operation an answer responds to, naming its response element.
#[derive(Debug, Clone, Copy)]
enum Answering {
    Submit,
    Query,
    Refund,
    QueryRefund,
}

fn render(reply: Reply, answering: Answering) -> Response {
    let settled = matches!(reply, Reply::Settled(_));
    match reply {
        Reply::InFlight => flow::in_flight(),
        Reply::Answer(answer) | Reply::Settled(answer) => {
            let status = PaymentStatus {
                status: match (settled, answer.verdict.takes_payment()) {
                    (true, _) => "completed",
                    (false, true) => "accepted",
                    (false, false) => "declined",
                },
                gateway_txn_id: answer.txn_id.as_deref(),
                reason: answer.reason(),
            };
            let content = match answering {
                Answering::Submit => Content::SubmitPaymentResponse(status),
                Answering::Query => Content::QueryPaymentResponse(status),
                Answering::Refund => Content::RefundPaymentResponse(status),
                Answering::QueryRefund => Content::QueryRefundResponse(status),
            };
            respond(StatusCode::OK, content)
        }
        Reply::Unavailable => respond(
            StatusCode::SERVICE_UNAVAILABLE,
            Content::fault(FaultCode::Server, "temporarily unavailable", "UNAVAILABLE"),
        ),
        Reply::ProxyTimeout => flow::proxy_timeout(),
    }
}

/// The callback body.
fn notification(request: &SubmitPayment, answer: &Answer) -> Result<String, SeError> {
    let event_id = outcome::event_id();
    let amount = request.amount.to_string();
    let content = Content::PaymentNotification(Notification {
        event_id: &event_id,
        reference: &request.reference,
        gateway_txn_id: answer.txn_id.as_deref(),
        status: if answer.verdict.takes_payment() {
            "approved"
        } else {
            "declined"
        },
        amount: &amount,
        currency: &request.currency,
        reason: answer.reason(),
    });
    outgoing::to_xml(content)
}

fn respond(status: StatusCode, content: Content<'_>) -> Response {
    match outgoing::to_xml(content) {
        Ok(xml) => (status, [(header::CONTENT_TYPE, XML)], xml).into_response(),
        Err(error) => {
            tracing::error!(%error, "could not write a SOAP envelope");
            server_error()
        }
    }
}

/// A bare 500, for when the serializer itself failed.
fn server_error() -> Response {
    StatusCode::INTERNAL_SERVER_ERROR.into_response()
}
