//! Refunds at the simulated gateways: only of a payment the gateway charged, never past
//! the charge, once per refund reference, with their own magic cents, and counted in
//! the ledger.

use serde_json::{json, Value};

use crate::support::{ok_json, reference, Sim};

async fn refund(sim: &Sim, reference: &str, payment: &str, amount: &str) -> reqwest::Response {
    sim.http
        .post(sim.url("/json/refunds"))
        .header("Idempotency-Key", reference)
        .json(
            &json!({"reference": reference, "payment_reference": payment,
                      "amount": amount, "currency": "EUR"}),
        )
        .send()
        .await
        .unwrap()
}

async fn booked(sim: &Sim, payment: &str) -> Value {
    let books = sim.get_json("/ledger").await;
    books
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["reference"] == payment)
        .cloned()
        .unwrap()
}

#[tokio::test]
async fn a_json_refund_is_made_once_however_often_sent_and_counted_in_the_ledger() {
    let sim = Sim::start().await;
    let payment = reference();
    ok_json(sim.json_pay(&payment, "10.00", "http://127.0.0.1:9/unused")).await;
    let refund_ref = reference();

    let first = refund(&sim, &refund_ref, &payment, "4.00").await;
    assert_eq!(first.status(), 200);
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["status"], "completed");
    let again: Value = refund(&sim, &refund_ref, &payment, "4.00")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again, first, "a repeat finds the first answer");
    let queried = sim.get_json(&format!("/json/refunds/{refund_ref}")).await;
    assert_eq!(queried, first);

    let entry = booked(&sim, &payment).await;
    assert_eq!(entry["refunded"], "4.00");
    assert_eq!(entry["refunds"], 1);
}

#[tokio::test]
async fn a_refund_past_the_charge_or_of_an_unknown_payment_is_declined_and_refunds_nothing() {
    let sim = Sim::start().await;
    let payment = reference();
    ok_json(sim.json_pay(&payment, "10.00", "http://127.0.0.1:9/unused")).await;
    assert_eq!(
        refund(&sim, &reference(), &payment, "6.00").await.status(),
        200
    );

    let past = refund(&sim, &reference(), &payment, "4.50").await;
    assert_eq!(past.status(), 402);
    assert_eq!(
        past.json::<Value>().await.unwrap()["reason"],
        "exceeds_charge"
    );
    let unknown = refund(&sim, &reference(), &reference(), "1.00").await;
    assert_eq!(unknown.status(), 402);
    assert_eq!(
        unknown.json::<Value>().await.unwrap()["reason"],
        "unknown_payment"
    );

    let entry = booked(&sim, &payment).await;
    assert_eq!(entry["refunded"], "6.00");
    assert_eq!(entry["refunds"], 1);
}

#[tokio::test]
async fn a_refunds_cents_pick_decline_503_and_a_proxy_timeout_after_refunding() {
    let sim = Sim::start().await;
    let payment = reference();
    ok_json(sim.json_pay(&payment, "50.00", "http://127.0.0.1:9/unused")).await;

    let declined = refund(&sim, &reference(), &payment, "1.01").await;
    assert_eq!(declined.status(), 402);
    let unavailable_ref = reference();
    assert_eq!(
        refund(&sim, &unavailable_ref, &payment, "1.03")
            .await
            .status(),
        503
    );
    assert_eq!(
        sim.get(&format!("/json/refunds/{unavailable_ref}"))
            .await
            .status(),
        404,
        "a 503 remembers nothing"
    );
    let proxied_ref = reference();
    assert_eq!(
        refund(&sim, &proxied_ref, &payment, "2.06").await.status(),
        504
    );
    let after = sim.get_json(&format!("/json/refunds/{proxied_ref}")).await;
    assert_eq!(
        after["status"], "completed",
        "refunded before the proxy gave up"
    );
    assert_eq!(booked(&sim, &payment).await["refunded"], "2.06");
}

#[tokio::test]
async fn a_stalled_refund_holds_its_answer_until_released() {
    let sim = Sim::start().await;
    let payment = reference();
    ok_json(sim.json_pay(&payment, "50.00", "http://127.0.0.1:9/unused")).await;
    let stalled_ref = reference();
    let held = {
        let sim_url = sim.url("/json/refunds");
        let body = json!({"reference": stalled_ref, "payment_reference": payment,
                          "amount": "3.07", "currency": "EUR"});
        let http = sim.http.clone();
        tokio::spawn(async move {
            http.post(sim_url)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!held.is_finished(), "held until released");
    assert!(sim.release(&stalled_ref).await.status().is_success());
    assert_eq!(held.await.unwrap(), 200);
    assert_eq!(booked(&sim, &payment).await["refunded"], "3.07");
}

fn soap_refund(reference: &str, payment: &str, amount: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" xmlns:pay="urn:paygate:sim:payments">
  <soap:Body><pay:RefundPayment><pay:Reference>{reference}</pay:Reference>
    <pay:PaymentReference>{payment}</pay:PaymentReference><pay:Amount>{amount}</pay:Amount>
    <pay:Currency>EUR</pay:Currency></pay:RefundPayment></soap:Body>
</soap:Envelope>"#
    )
}

#[tokio::test]
async fn a_soap_refund_answers_refund_payment_response_and_query_refund_reads_it_back() {
    let sim = Sim::start().await;
    let payment = reference();
    let (status, _) = sim
        .soap(crate::support::soap_submit(
            &payment,
            "20.00",
            "http://127.0.0.1:9/unused",
        ))
        .await;
    assert_eq!(status, 200);
    let refund_ref = reference();
    let (status, answer) = sim.soap(soap_refund(&refund_ref, &payment, "5.00")).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("RefundPaymentResponse"), "{answer}");
    assert!(
        answer.contains("<pay:Status>completed</pay:Status>"),
        "{answer}"
    );
    let query = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" xmlns:pay="urn:paygate:sim:payments">
  <soap:Body><pay:QueryRefund><pay:Reference>{refund_ref}</pay:Reference></pay:QueryRefund></soap:Body>
</soap:Envelope>"#
    );
    let (_, queried) = sim.soap(query).await;
    assert!(queried.contains("QueryRefundResponse"), "{queried}");
    assert!(
        queried.contains("<pay:Status>completed</pay:Status>"),
        "{queried}"
    );
    assert_eq!(booked(&sim, &payment).await["refunded"], "5.00");
}

#[tokio::test]
async fn a_card_refund_answers_bank_code_zero_and_refuses_one_past_the_charge_with_100() {
    let sim = Sim::start().await;
    let payment = reference();
    let charged = sim
        .card_charge(
            &payment,
            "30.00",
            "4242424242424242",
            "http://127.0.0.1:9/unused",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(charged.status(), 200);
    let refund = |reference: String, amount: &'static str| {
        sim.http
            .post(sim.url("/card/refunds"))
            .json(&json!({"reference": reference, "charge_reference": payment,
                          "amount": amount, "currency": "EUR"}))
            .send()
    };
    let first: Value = refund(reference(), "30.00")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(first["code"], "0", "{first}");
    assert!(first["transaction_id"]
        .as_str()
        .unwrap()
        .starts_with("acq_"));
    let past: Value = refund(reference(), "0.50")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(past["code"], "100", "{past}");
    assert_eq!(past["message"], "exceeds_charge");
    assert_eq!(booked(&sim, &payment).await["refunds"], 1);
}
