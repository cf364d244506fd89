use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{
    elements, ok_json, reference, soap_query, soap_submit, text, Receiver, Sim, CALLBACK_DELAY,
};

/// Short enough to keep the tests fast, long enough to tell a hang from a slow answer.
const HANG: Duration = Duration::from_millis(300);

async fn put_control(sim: &Sim, control: Value) -> reqwest::Response {
    sim.http
        .put(sim.url("/control"))
        .json(&control)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_forced_503_answers_every_gateway_after_the_delay_and_charges_nothing() {
    let sim = Sim::start().await;
    let receiver = Receiver::start().await;
    let known = reference();
    ok_json(sim.json_pay(&known, "10.00", &receiver.url)).await;

    let control = json!({"force_status": 503, "answer_delay_ms": 400});
    assert_eq!(put_control(&sim, control.clone()).await.status(), 200);
    assert_eq!(sim.get_json("/control").await, control);

    let reference = reference();
    let started = Instant::now();
    let json = sim
        .json_pay(&reference, "10.00", &receiver.url)
        .send()
        .await
        .unwrap();
    assert_eq!(json.status(), 503);
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "answered after {:?}",
        started.elapsed()
    );
    let (status, body) = sim
        .soap(soap_submit(&reference, "10.00", &receiver.url))
        .await;
    assert_eq!(status, 503);
    assert_eq!(
        text(&elements(&body), "Code").as_deref(),
        Some("UNAVAILABLE")
    );
    let card = sim
        .card_charge(&reference, "10.00", "4242424242424242", &receiver.url)
        .send()
        .await
        .unwrap();
    assert_eq!(card.status(), 503);
    let queried = sim.get(&format!("/json/payments/{known}")).await;
    assert_eq!(queried.status(), 503, "status queries are unavailable too");
    let (status, _) = sim.soap(soap_query(&known)).await;
    assert_eq!(status, 503);
    assert_eq!(sim.charges(&reference).await["charges"], 0);

    let restored = json!({"force_status": null, "answer_delay_ms": null});
    assert_eq!(put_control(&sim, restored).await.status(), 200);
    let started = Instant::now();
    let retried = sim
        .json_pay(&reference, "10.00", &receiver.url)
        .send()
        .await
        .unwrap();
    assert_eq!(retried.status(), 200, "a 503 was not remembered");
    assert!(started.elapsed() < Duration::from_millis(400));
    assert_eq!(sim.charges(&reference).await["charges"], 1);
}

#[tokio::test]
async fn a_control_forcing_anything_but_503_or_misspelt_is_refused() {
    let sim = Sim::start().await;

    for refused in [
        json!({"force_status": 500}),
        json!({"force_status": 503, "answer_delay": 1500}),
    ] {
        let response = put_control(&sim, refused.clone()).await;

        assert_eq!(response.status(), 422, "{refused}");
        let body: Value = response.json().await.unwrap();
        assert!(body["error"].is_string(), "{body}");
    }
    assert_eq!(
        sim.get_json("/control").await,
        json!({"force_status": null, "answer_delay_ms": null})
    );
}

#[tokio::test]
async fn a_stalled_payment_hangs_until_released_then_answers_and_calls_back() {
    let sim = Sim::start().await;
    let receiver = Receiver::start().await;
    let reference = reference();

    let timed_out = sim
        .card_charge(&reference, "10.07", "4242424242424242", &receiver.url)
        .timeout(HANG)
        .send()
        .await;
    assert!(timed_out.unwrap_err().is_timeout(), "the submit hangs");
    assert_eq!(
        sim.charges(&reference).await["charges"],
        1,
        "but the payment was taken"
    );
    let status_url = sim.url(&format!("/card/charges/{reference}"));
    let queried = sim.http.get(&status_url).timeout(HANG).send().await;
    assert!(queried.unwrap_err().is_timeout(), "status queries hang too");
    let held = tokio::spawn(
        sim.card_charge(&reference, "10.07", "4242424242424242", &receiver.url)
            .send(),
    );
    tokio::time::sleep(HANG).await;
    assert!(!held.is_finished(), "a repeat hangs as well");
    assert!(
        receiver.received().is_empty(),
        "no callback before the release"
    );

    assert_eq!(sim.release(&reference).await.status(), 200);

    let held: Value = held.await.unwrap().unwrap().json().await.unwrap();
    assert_eq!(held["code"], "0");
    let queried: Value = sim
        .http
        .get(&status_url)
        .timeout(HANG)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(queried, held);
    let callbacks = receiver.wait_for(1).await;
    assert_eq!(callbacks[0].json()["code"], "0");
    assert_eq!(
        callbacks[0].json()["transaction_id"],
        held["transaction_id"]
    );
    assert_eq!(sim.charges(&reference).await["charges"], 1);
}

#[tokio::test]
async fn a_stalled_request_ends_when_the_simulator_shuts_down() {
    let mut sim = Sim::start().await;
    let reference = reference();
    let held = tokio::spawn(
        sim.json_pay(&reference, "10.07", "http://127.0.0.1:9/unused")
            .send(),
    );
    tokio::time::sleep(HANG).await;
    assert!(!held.is_finished());

    sim.shutdown.cancel();

    let stopped = tokio::time::timeout(Duration::from_secs(5), sim.handle.take().unwrap()).await;
    assert!(matches!(stopped, Ok(Ok(Ok(())))), "{stopped:?}");
    let held = held.await.unwrap().unwrap();
    assert_eq!(held.status(), 504, "a proxy gave up on the held request");
}

#[tokio::test]
async fn releasing_a_payment_that_never_stalled_is_a_404() {
    let sim = Sim::start().await;
    let reference = reference();
    ok_json(sim.json_pay(&reference, "10.00", "http://127.0.0.1:9/unused")).await;

    for unstalled in [reference.as_str(), "txn_never_seen"] {
        assert_eq!(sim.release(unstalled).await.status(), 404);
    }
}

#[tokio::test]
async fn charges_are_counted_per_reference_across_gateways() {
    let sim = Sim::start().await;
    let receiver = Receiver::start().await;
    let reference = reference();

    ok_json(sim.json_pay(&reference, "10.00", &receiver.url)).await;
    let (status, _) = sim
        .soap(soap_submit(&reference, "10.00", &receiver.url))
        .await;
    assert_eq!(status, 200);
    ok_json(sim.card_charge(&reference, "10.00", "4242424242424242", &receiver.url)).await;

    assert_eq!(
        sim.charges(&reference).await,
        json!({"reference": reference, "charges": 3, "by_gateway": {"json": 1, "soap": 1, "card": 1}})
    );
}

#[tokio::test]
async fn an_overloaded_gateway_stores_a_payment_only_after_its_hold_then_charges_it_once() {
    let sim = Sim::start().await;
    let receiver = Receiver::start().await;
    let control = json!({"force_status": null, "answer_delay_ms": null,
        "gateways": {"json": {"overloaded_ms": 600, "duplicate_in_flight": true}}});
    assert_eq!(put_control(&sim, control.clone()).await.status(), 200);
    assert_eq!(sim.get_json("/control").await, control);
    let reference = reference();

    let timed_out = sim
        .json_pay(&reference, "10.00", &receiver.url)
        .timeout(Duration::from_millis(200))
        .send()
        .await;
    assert!(timed_out.unwrap_err().is_timeout(), "the submit is held");
    let queried = sim.get(&format!("/json/payments/{reference}")).await;
    assert_eq!(queried.status(), 404, "not stored yet: unknown");
    let again = sim
        .json_pay(&reference, "10.00", &receiver.url)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409, "a re-submit in flight proves nothing");
    assert_eq!(sim.charges(&reference).await["charges"], 0);

    // The abandoned request completes after its hold, and calls back.
    let callbacks = receiver.wait_for(1).await;
    assert_eq!(callbacks[0].json()["status"], "approved");
    assert_eq!(sim.charges(&reference).await["charges"], 1);
    let settled = sim.get_json(&format!("/json/payments/{reference}")).await;
    assert_eq!(settled["status"], "completed");
    let repeated = sim
        .json_pay(&reference, "10.00", &receiver.url)
        .send()
        .await
        .unwrap();
    assert_eq!(repeated.status(), 200, "stored: a repeat finds the answer");
    assert_eq!(sim.charges(&reference).await["charges"], 1, "charged once");
}

#[tokio::test]
async fn an_overloaded_gateway_without_duplicate_detection_answers_a_resubmit_503() {
    let sim = Sim::start().await;
    let receiver = Receiver::start().await;
    let control = json!({"force_status": null, "answer_delay_ms": null,
        "gateways": {"soap": {"overloaded_ms": 500}}});
    assert_eq!(put_control(&sim, control).await.status(), 200);
    let reference = reference();
    let ((first, _), (second, _)) = tokio::join!(
        sim.soap(soap_submit(&reference, "10.00", &receiver.url)),
        async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            sim.soap(soap_submit(&reference, "10.00", &receiver.url))
                .await
        }
    );
    assert_eq!(second, 503, "a re-submit while it is held");
    assert_eq!(first, 200, "the first request completes after the hold");
    assert_eq!(sim.charges(&reference).await["charges"], 1);
}

#[tokio::test]
async fn a_lost_callback_is_never_sent_but_the_payment_settles_and_says_so_when_asked() {
    let sim = Sim::start().await;
    let receiver = Receiver::start().await;
    let control = json!({"force_status": null, "answer_delay_ms": null,
        "gateways": {"card": {"lost_callback": true}}});
    assert_eq!(put_control(&sim, control).await.status(), 200);
    let reference = reference();
    let charged = sim
        .card_charge(&reference, "10.00", "4242424242424242", &receiver.url)
        .send()
        .await
        .unwrap();
    assert_eq!(charged.json::<Value>().await.unwrap()["code"], "0");
    tokio::time::sleep(CALLBACK_DELAY * 6).await;
    assert!(receiver.received().is_empty(), "no callback");
    let status = sim.get_json(&format!("/card/charges/{reference}")).await;
    assert_eq!(status["code"], "10", "captured: {status}");
    assert_eq!(sim.charges(&reference).await["charges"], 1);
}

#[tokio::test]
async fn the_ledger_lists_every_payment_with_its_gateway_amount_and_whether_it_was_charged() {
    let sim = Sim::start().await;
    let receiver = Receiver::start().await;
    let (taken, declined) = (reference(), reference());
    ok_json(sim.json_pay(&taken, "12.30", &receiver.url)).await;
    let refused = sim
        .json_pay(&declined, "12.01", &receiver.url)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 402);
    let ledger = sim.get_json("/ledger").await;
    let find = |reference: &str| {
        ledger
            .as_array()
            .unwrap()
            .iter()
            .find(|entry| entry["reference"] == reference)
            .cloned()
            .unwrap()
    };
    assert_eq!(
        find(&taken),
        json!({"gateway": "json", "reference": taken, "charged": true, "amount": "12.30", "currency": "EUR",
               "refunded": "0", "refunds": 0})
    );
    assert_eq!(find(&declined)["charged"], false);
}

#[tokio::test]
async fn a_control_naming_an_unknown_gateway_or_mode_is_refused() {
    let sim = Sim::start().await;
    for refused in [
        json!({"gateways": {"paypal": {"lost_callback": true}}}),
        json!({"gateways": {"json": {"lost_callbacks": true}}}),
    ] {
        let response = put_control(&sim, refused.clone()).await;
        assert!(response.status().is_client_error(), "{refused}");
    }
}

#[tokio::test]
async fn a_gateways_decline_rate_and_latency_apply_to_it_alone_and_its_declines_are_its_own() {
    let sim = Sim::start().await;
    let receiver = Receiver::start().await;
    let control = json!({"gateways": {"json": {"decline_percent": 100, "latency_ms": 300}}});
    assert_eq!(put_control(&sim, control).await.status(), 200);

    let declined = reference();
    let started = Instant::now();
    let answer = sim
        .json_pay(&declined, "10.00", &receiver.url)
        .send()
        .await
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(answer.status(), 402);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(
        body["reason"], "do_not_honor",
        "the gateway's refusal, not the customer's: {body}"
    );
    assert_eq!(sim.charges(&declined).await["charges"], 0);

    // The other gateways approve as their amounts say.
    let approved = reference();
    let (status, body) = sim
        .soap(soap_submit(&approved, "10.00", &receiver.url))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(sim.charges(&approved).await["charges"], 1);

    let none = json!({"gateways": {"json": {"decline_percent": 0}}});
    assert_eq!(put_control(&sim, none).await.status(), 200);
    ok_json(sim.json_pay(&reference(), "10.00", &receiver.url)).await;

    let too_many = json!({"gateways": {"json": {"decline_percent": 101}}});
    assert_eq!(put_control(&sim, too_many).await.status(), 422);
}
