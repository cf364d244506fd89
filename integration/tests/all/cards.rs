//! A card acquirer's `402 Payment Required` is the card declining: the payment fails with
//! the acquirer's reason, and no other acquirer is asked to charge it.

use std::time::Duration;

use paygate_testkit::{attempted_gateways, eventually, json_of, Suite, SIM_CARD_SECRET};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_card_the_acquirer_answers_402_fails_with_its_reason_and_the_next_acquirer_is_never_asked(
) {
    let suite = Suite::start().await;
    // A second card acquirer behind the first, at the same simulator.
    let second = paygate_testkit::gateway_config(
        "simcard2",
        "card",
        format!("{}/card", suite.simulator_url),
        SIM_CARD_SECRET,
        2_000,
    );
    paygate_testkit::register_gateway(&suite.pool, &second, Some((None, 1_000))).await;
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
