use std::time::{Duration, Instant};

use paygate_common::signature::callback;
use serde_json::{json, Value};

use crate::support::{ok_json, reference, Receiver, Sim, JSON_SECRET};

#[tokio::test]
async fn a_json_payment_is_accepted_called_back_signed_and_charged_once_however_often_sent() {
    let sim = Sim::start().await;
    let receiver = Receiver::start().await;
    let reference = reference();

    let first = ok_json(sim.json_pay(&reference, "10.00", &receiver.url)).await;
    assert_eq!(first["status"], "accepted");
    assert!(first["gateway_txn_id"]
        .as_str()
        .unwrap()
        .starts_with("sim_"));
    assert_eq!(first["reason"], Value::Null);
    let again = ok_json(sim.json_pay(&reference, "10.00", &receiver.url)).await;
    assert_eq!(again, first);
    let queried = sim.get_json(&format!("/json/payments/{reference}")).await;
    assert_eq!(queried, first);
    assert_eq!(
        sim.charges(&reference).await,
        json!({"reference": reference, "charges": 1, "by_gateway": {"json": 1, "soap": 0, "card": 0}})
    );

    let callbacks = receiver.wait_for(1).await;
    let now = chrono::Utc::now().timestamp();
    assert_eq!(
        callback::verify(
            JSON_SECRET,
            callbacks[0].signature(),
            callbacks[0].body.as_bytes(),
            now
        ),
        Ok(())
    );
    let notified = callbacks[0].json();
    assert_eq!(notified["status"], "approved");
    assert_eq!(notified["gateway_txn_id"], first["gateway_txn_id"]);
    assert_eq!(notified["amount"], "10.00");
}

#[tokio::test]
async fn a_json_decline_is_a_402_and_charges_nothing() {
    let sim = Sim::start().await;
    let reference = reference();

    let declined = sim
        .json_pay(&reference, "10.01", "http://127.0.0.1:9/unused")
        .send()
        .await
        .unwrap();

    assert_eq!(declined.status(), 402);
    let body: Value = declined.json().await.unwrap();
    assert_eq!(
        body,
        json!({"status": "declined", "gateway_txn_id": null, "reason": "insufficient_funds"})
    );
    assert_eq!(sim.charges(&reference).await["charges"], 0);
}

#[tokio::test]
async fn a_json_payment_ending_in_02_is_charged_at_once_but_answered_late() {
    let sim = Sim::start().await;
    let reference = reference();

    let waited = sim
        .json_pay(&reference, "10.02", "http://127.0.0.1:9/unused")
        .timeout(Duration::from_millis(300))
        .send()
        .await;

    assert!(waited.unwrap_err().is_timeout());
    assert_eq!(sim.charges(&reference).await["charges"], 1);
}

#[tokio::test]
async fn a_json_payment_ending_in_04_calls_back_twice_with_the_same_event() {
    let sim = Sim::start().await;
    let receiver = Receiver::start().await;

    ok_json(sim.json_pay(&reference(), "10.04", &receiver.url)).await;

    let callbacks = receiver.wait_for(2).await;
    assert_eq!(callbacks[0].body, callbacks[1].body);
}

#[tokio::test]
async fn a_json_payment_ending_in_05_calls_back_before_answering() {
    let sim = Sim::start().await;
    let receiver = Receiver::start().await;

    let answered = sim
        .json_pay(&reference(), "10.05", &receiver.url)
        .send()
        .await
        .unwrap();
    let answered_at = Instant::now();

    assert_eq!(answered.status(), 200);
    let callbacks = receiver.received();
    assert_eq!(callbacks.len(), 1, "the callback arrived first");
    assert!(callbacks[0].at < answered_at);
}
