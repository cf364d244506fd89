use std::time::{Duration, Instant};

use paygate_common::signature::callback;
use serde_json::{json, Value};

use crate::support::{ok_json, reference, Receiver, Sim, CALLBACK_DELAY, CARD_SECRET};

#[tokio::test]
async fn each_test_card_answers_its_code_and_only_taken_charges_count() {
    let sim = Sim::start().await;
    let receiver = Receiver::start().await;
    let cases = [
        ("4242424242424242", "0", "approved", 1),
        ("4000000000000002", "100", "insufficient_funds", 0),
        ("4000000000009995", "200", "pending", 1),
        ("5555555555554444", "100", "card_declined", 0),
    ];

    for (number, code, message, charges) in cases {
        let reference = reference();
        // `.01` would decline on the other gateways: the card decides here.
        let answer = ok_json(sim.card_charge(&reference, "10.01", number, &receiver.url)).await;

        assert_eq!(answer["code"], code, "{number}: {answer}");
        assert_eq!(answer["message"], message, "{number}");
        match charges {
            0 => assert_eq!(answer["transaction_id"], Value::Null),
            _ => assert!(answer["transaction_id"]
                .as_str()
                .unwrap()
                .starts_with("acq_")),
        }
        let counted = sim.charges(&reference).await;
        assert_eq!(counted["charges"], charges, "{number}");
        assert_eq!(counted["by_gateway"]["card"], charges, "{number}");
        let queried = sim.get_json(&format!("/card/charges/{reference}")).await;
        assert_eq!(queried, answer, "a status query answers as the charge did");
    }
}

#[tokio::test]
async fn a_succeeded_charge_calls_back_approved_and_signed_with_the_card_secret() {
    let sim = Sim::start().await;
    let receiver = Receiver::start().await;
    let reference = reference();

    let answer =
        ok_json(sim.card_charge(&reference, "25.50", "4242424242424242", &receiver.url)).await;

    let callbacks = receiver.wait_for(1).await;
    let body = &callbacks[0].body;
    let now = chrono::Utc::now().timestamp();
    assert_eq!(
        callback::verify(CARD_SECRET, callbacks[0].signature(), body.as_bytes(), now),
        Ok(())
    );
    let notified = callbacks[0].json();
    assert!(notified["event_id"]
        .as_str()
        .unwrap()
        .starts_with("simevt_"));
    assert_eq!(notified["reference"], reference.as_str());
    assert_eq!(notified["transaction_id"], answer["transaction_id"]);
    assert_eq!(notified["code"], "0");
    assert_eq!(notified["amount"], "25.50");
    assert_eq!(notified["currency"], "EUR");
    assert!(
        !body.contains("4242424242424242") && !body.contains("\"123\""),
        "card data never leaves in a callback"
    );
}

#[tokio::test]
async fn a_pending_charge_is_confirmed_approved_three_callback_delays_later() {
    let sim = Sim::start().await;
    let receiver = Receiver::start().await;
    let reference = reference();

    let answered = Instant::now();
    let answer =
        ok_json(sim.card_charge(&reference, "10.00", "4000000000009995", &receiver.url)).await;
    assert_eq!(answer["code"], "200");

    let callbacks = receiver.wait_for(1).await;
    assert!(
        callbacks[0].at - answered >= CALLBACK_DELAY * 3,
        "confirmed after {:?}",
        callbacks[0].at - answered
    );
    let notified = callbacks[0].json();
    assert_eq!(notified["code"], "0");
    assert_eq!(notified["message"], "approved");
}

#[tokio::test]
async fn a_repeated_card_charge_is_answered_as_before_and_charges_once() {
    let sim = Sim::start().await;
    let receiver = Receiver::start().await;
    let reference = reference();

    let first =
        ok_json(sim.card_charge(&reference, "10.00", "4242424242424242", &receiver.url)).await;
    let second =
        ok_json(sim.card_charge(&reference, "10.00", "4242424242424242", &receiver.url)).await;

    assert_eq!(second, first);
    assert_eq!(sim.charges(&reference).await["charges"], 1);
    receiver.wait_for(1).await;
    tokio::time::sleep(CALLBACK_DELAY * 4).await;
    assert_eq!(
        receiver.received().len(),
        1,
        "the repeat sent no second callback"
    );
}

#[tokio::test]
async fn a_charge_without_a_valid_card_is_a_400_that_does_not_quote_it() {
    let sim = Sim::start().await;
    let base = json!({"reference": "txn_x", "amount": "10.00", "currency": "EUR", "callback_url": "http://127.0.0.1:9/"});
    let with_card = |card: Value| {
        let mut body = base.clone();
        body["card"] = card;
        body
    };
    for body in [
        base.clone(),
        with_card(json!("4242424242424242")),
        with_card(json!({"number": 4242424242424242u64, "expiry_month": 12, "expiry_year": 2030})),
        with_card(
            json!({"number": "4242 4242 4242 4242", "expiry_month": 12, "expiry_year": 2030}),
        ),
        with_card(json!({"number": "4242424242424242", "expiry_month": 0, "expiry_year": 2030})),
    ] {
        let response = sim
            .http
            .post(sim.url("/card/charges"))
            .json(&body)
            .send()
            .await
            .unwrap();

        assert_eq!(response.status(), 400, "{body}");
        let refusal: Value = response.json().await.unwrap();
        assert_eq!(refusal["code"], "400");
        assert!(
            !refusal["message"].as_str().unwrap().contains("4242"),
            "{refusal}"
        );
    }
    assert_eq!(sim.charges("txn_x").await["charges"], 0);
}

#[tokio::test]
async fn an_unknown_card_charge_is_a_404() {
    let sim = Sim::start().await;

    let response = sim.get("/card/charges/txn_never_seen").await;

    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, json!({"code": "404", "message": "unknown reference"}));
}

#[tokio::test]
async fn a_card_charge_ending_in_03_is_unavailable_whatever_the_card() {
    let sim = Sim::start().await;
    let reference = reference();

    let response = sim
        .card_charge(
            &reference,
            "10.03",
            "4242424242424242",
            "http://127.0.0.1:9/",
        )
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "503");
    assert_eq!(sim.charges(&reference).await["charges"], 0);
}

#[tokio::test]
async fn a_card_charge_ending_in_06_is_charged_then_a_proxy_answers_504() {
    let sim = Sim::start().await;
    let receiver = Receiver::start().await;
    let reference = reference();

    let response = sim
        .card_charge(&reference, "10.06", "4242424242424242", &receiver.url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 504);
    assert_eq!(response.text().await.unwrap(), "Gateway Timeout");
    assert_eq!(sim.charges(&reference).await["charges"], 1);
    let callbacks = receiver.wait_for(1).await;
    assert_eq!(
        callbacks[0].json()["code"],
        "0",
        "the callback is not withheld"
    );
}
