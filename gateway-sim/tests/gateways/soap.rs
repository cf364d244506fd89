use paygate_common::signature::callback;
use paygate_gateway_sim::{PAYMENTS_NS, SOAP_ENVELOPE_NS};

use crate::support::{
    element, elements, reference, soap_query, soap_submit, text, Receiver, Sim, JSON_SECRET,
    SOAP_SECRET,
};

#[tokio::test]
async fn a_soap_submit_is_accepted_in_the_payments_namespace_and_calls_back_signed() {
    let sim = Sim::start().await;
    let receiver = Receiver::start().await;
    let reference = reference();

    let (status, body) = sim
        .soap(soap_submit(&reference, "10.00", &receiver.url))
        .await;

    assert_eq!(status, 200, "{body}");
    let answer = elements(&body);
    assert_eq!(answer[0].name, "Envelope");
    assert_eq!(answer[0].namespace.as_deref(), Some(SOAP_ENVELOPE_NS));
    assert_eq!(
        element(&answer, "Body").namespace.as_deref(),
        Some(SOAP_ENVELOPE_NS)
    );
    let response = element(&answer, "SubmitPaymentResponse");
    assert_eq!(response.namespace.as_deref(), Some(PAYMENTS_NS));
    assert_eq!(text(&answer, "Status").as_deref(), Some("accepted"));
    let txn_id = text(&answer, "GatewayTxnId").unwrap();
    assert!(txn_id.starts_with("soap_"), "{txn_id}");
    assert_eq!(
        text(&answer, "Reason"),
        None,
        "no reason when there is none"
    );

    let callbacks = receiver.wait_for(1).await;
    let notification = &callbacks[0];
    assert_eq!(
        notification.headers["content-type"],
        "text/xml; charset=utf-8"
    );
    let now = chrono::Utc::now().timestamp();
    let signed = notification.signature();
    assert_eq!(
        callback::verify(SOAP_SECRET, signed, notification.body.as_bytes(), now),
        Ok(())
    );
    assert!(
        callback::verify(JSON_SECRET, signed, notification.body.as_bytes(), now).is_err(),
        "each gateway signs with its own secret"
    );
    let notified = elements(&notification.body);
    assert_eq!(
        element(&notified, "PaymentNotification")
            .namespace
            .as_deref(),
        Some(PAYMENTS_NS)
    );
    assert!(text(&notified, "EventId").unwrap().starts_with("simevt_"));
    assert_eq!(text(&notified, "Reference"), Some(reference.clone()));
    assert_eq!(text(&notified, "GatewayTxnId"), Some(txn_id.clone()));
    assert_eq!(text(&notified, "Status").as_deref(), Some("approved"));
    assert_eq!(text(&notified, "Amount").as_deref(), Some("10.00"));
    assert_eq!(text(&notified, "Currency").as_deref(), Some("EUR"));

    let (status, body) = sim.soap(soap_query(&reference)).await;
    assert_eq!(status, 200);
    let queried = elements(&body);
    element(&queried, "QueryPaymentResponse");
    assert_eq!(
        text(&queried, "Status").as_deref(),
        Some("completed"),
        "settled once its callback went"
    );
    assert_eq!(text(&queried, "GatewayTxnId"), Some(txn_id));

    let charges = sim.charges(&reference).await;
    assert_eq!(charges["charges"], 1);
    assert_eq!(charges["by_gateway"]["soap"], 1);
    assert_eq!(charges["by_gateway"]["json"], 0);
}

#[tokio::test]
async fn a_soap_query_of_an_unknown_reference_says_unknown() {
    let sim = Sim::start().await;

    let (status, body) = sim.soap(soap_query("txn_never_seen")).await;

    assert_eq!(status, 200, "{body}");
    let answer = elements(&body);
    element(&answer, "QueryPaymentResponse");
    assert_eq!(text(&answer, "Status").as_deref(), Some("unknown"));
    assert_eq!(text(&answer, "GatewayTxnId"), None);
}

#[tokio::test]
async fn a_soap_submit_ending_in_03_is_a_503_server_fault_and_charges_nothing() {
    let sim = Sim::start().await;
    let receiver = Receiver::start().await;
    let reference = reference();

    let (status, body) = sim
        .soap(soap_submit(&reference, "10.03", &receiver.url))
        .await;

    assert_eq!(status, 503, "{body}");
    let fault = elements(&body);
    assert_eq!(
        element(&fault, "Fault").namespace.as_deref(),
        Some(SOAP_ENVELOPE_NS)
    );
    assert_eq!(text(&fault, "faultcode").as_deref(), Some("soap:Server"));
    assert_eq!(
        text(&fault, "faultstring").as_deref(),
        Some("temporarily unavailable")
    );
    let code = element(&fault, "Code");
    assert_eq!(code.namespace.as_deref(), Some(PAYMENTS_NS));
    assert_eq!(code.text, "UNAVAILABLE");
    assert_eq!(sim.charges(&reference).await["charges"], 0);
    assert_eq!(
        sim.soap_status(&reference).await.as_deref(),
        Some("unknown"),
        "a 503 is not remembered"
    );
}

#[tokio::test]
async fn a_soap_decline_is_an_answer_not_a_fault() {
    let sim = Sim::start().await;
    let reference = reference();

    let (status, body) = sim
        .soap(soap_submit(
            &reference,
            "10.01",
            "http://127.0.0.1:9/unused",
        ))
        .await;

    assert_eq!(status, 200, "{body}");
    let answer = elements(&body);
    assert_eq!(text(&answer, "Status").as_deref(), Some("declined"));
    assert_eq!(
        text(&answer, "Reason").as_deref(),
        Some("insufficient_funds")
    );
    assert_eq!(text(&answer, "GatewayTxnId"), None);
    assert_eq!(sim.charges(&reference).await["charges"], 0);
}

#[tokio::test]
async fn a_request_that_is_not_a_soap_1_1_envelope_is_a_client_fault() {
    let sim = Sim::start().await;
    let soap_1_2 =
        soap_query("txn_1").replace(SOAP_ENVELOPE_NS, "http://www.w3.org/2003/05/soap-envelope");
    let with_entities = soap_query("&lol;").replace(
        r#"<?xml version="1.0" encoding="UTF-8"?>"#,
        r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">]>"#,
    );

    for request in [soap_1_2, with_entities, "not xml at all".to_owned()] {
        let (status, body) = sim.soap(request).await;

        assert_eq!(status, 500, "{body}");
        let fault = elements(&body);
        assert_eq!(text(&fault, "faultcode").as_deref(), Some("soap:Client"));
        assert_eq!(text(&fault, "Code").as_deref(), Some("BAD_REQUEST"));
    }
}

#[tokio::test]
async fn a_soap_submit_ending_in_06_is_charged_then_a_proxy_answers_504() {
    let sim = Sim::start().await;
    let receiver = Receiver::start().await;
    let reference = reference();

    let (status, body) = sim
        .soap(soap_submit(&reference, "10.06", &receiver.url))
        .await;

    assert_eq!(status, 504);
    assert_eq!(body, "Gateway Timeout", "a proxy answered, not the gateway");
    assert_eq!(sim.charges(&reference).await["charges"], 1);
    let callbacks = receiver.wait_for(1).await;
    assert_eq!(
        text(&elements(&callbacks[0].body), "Status").as_deref(),
        Some("approved")
    );
    assert_eq!(
        sim.soap_status(&reference).await.as_deref(),
        Some("completed"),
        "taken and, its callback sent, settled"
    );
}
