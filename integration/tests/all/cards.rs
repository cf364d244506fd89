//! A card acquirer's `402 Payment Required` is the card declining: the payment fails with
//! the acquirer's reason, and no other acquirer is asked to charge it.

use std::time::Duration;

use paygate_common::gateway::{self, GatewayConfig, Route};
use paygate_testkit::{attempted_gateways, eventually, json_of, Suite, SIM_CARD_SECRET};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_card_the_acquirer_answers_402_fails_with_its_reason_and_the_next_acquirer_is_never_asked(
) {
    let suite = Suite::start().await;
    // A second card acquirer behind the first, at the same simulator.
    gateway::upsert(
        &suite.pool,
        &paygate_testkit::keys(),
        &GatewayConfig {
            code: "simcard2".to_owned(),
            protocol: "card".to_owned(),
            base_url: format!("{}/card", suite.simulator_url),
            callback_secret: SIM_CARD_SECRET.to_owned().into(),
            timeout_ms: 2_000,
            max_concurrency: 16,
            enabled: true,
            timings: paygate_common::gateway::Timings::default(),
        },
    )
    .await
    .unwrap();
    gateway::upsert_route(
        &suite.pool,
        &Route {
            country: None,
            currency: None,
            kind: None,
            priority: 1_000,
            gateway_code: "simcard2".to_owned(),
        },
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await; // the route cache reloads

    let id = suite
        .deposit_with(&json!({
            "user_id": "u", "amount": "44.00", "currency": "EUR",
            "payment_method": {"type": "card", "card": {
                "number": "4000000000000408", "expiry_month": 12, "expiry_year": 2031,
                "cvv": "123", "holder_name": "Ada Lovelace"}}
        }))
        .await;
    let failed = eventually("the payment to fail", Duration::from_secs(30), || async {
        let body = json_of(suite.get(&format!("/v1/transactions/{id}"))).await;
        (body["status"] == "failed").then_some(body)
    })
    .await;
    assert_eq!(failed["failure_reason"], "insufficient_funds");
    assert_eq!(
        attempted_gateways(&suite.pool, &id).await,
        ["simcard"],
        "declined: the next acquirer is not asked"
    );
    assert_eq!(suite.charges(&id).await, 0);
    suite.stop().await;
}
