//! Withdrawals pay money out within the limits an operator sets per merchant and
//! currency: over the most one payout may be, or past what is left of the day's, is a
//! typed 422 that writes nothing, and payouts that race are held to the daily limit
//! exactly.

use paygate_testkit::ADMIN_TOKEN;
use reqwest::StatusCode;
use rust_decimal::Decimal;
use serde_json::{json, Value};

use crate::api::Api;

impl Api {
    async fn set_limits(&self, merchant: &str, body: Value) -> (StatusCode, Value) {
        let response = self
            .http
            .put(format!("{}/admin/v1/merchants/{merchant}/limits", self.url))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        (response.status(), response.json().await.unwrap())
    }

    async fn withdraw(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.url))
            .bearer_auth(&self.key)
            .json(&body)
            .send()
            .await
            .unwrap();
        (response.status(), response.json().await.unwrap())
    }

    async fn merchant_id(&self) -> String {
        sqlx::query_scalar("SELECT id FROM merchant LIMIT 1")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }
}

fn amount(body: &Value) -> Decimal {
    body["amount"].as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_racing_withdrawals_over_the_daily_limit_are_accepted_exactly_as_far_as_they_fit() {
    let api = Api::start().await;
    let merchant = api.merchant_id().await;
    let (status, limits) = api
        .set_limits(
            &merchant,
            json!({"currency": "EUR", "max_payout": "100.00", "max_daily_payouts": "250.00"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{limits}");
    assert_eq!(limits["max_payout"], "100.00");

    // 20 withdrawals of 10.00 to 29.00 EUR (390.00 in all) at once.
    let amounts: Vec<String> = (10..30).map(|a| format!("{a}.00")).collect();
    let mut sent = tokio::task::JoinSet::new();
    for (i, a) in amounts.iter().enumerate() {
        let request = api
            .http
            .post(format!("{}/v1/withdrawals", api.url))
            .bearer_auth(&api.key)
            .json(&json!({"user_id": "u", "amount": a, "currency": "EUR"}));
        sent.spawn(async move {
            let response = request.send().await.unwrap();
            let status = response.status();
            (i, (status, response.json::<Value>().await.unwrap()))
        });
    }
    let mut answers = sent.join_all().await;
    answers.sort_by_key(|(i, _)| *i);
    let answers: Vec<(StatusCode, Value)> = answers.into_iter().map(|(_, a)| a).collect();
    let mut accepted = Vec::new();
    let mut refused = Vec::new();
    for ((status, body), sent) in answers.iter().zip(&amounts) {
        let sent: Decimal = sent.parse().unwrap();
        match *status {
            StatusCode::ACCEPTED => accepted.push(amount(body)),
            StatusCode::UNPROCESSABLE_ENTITY => {
                assert_eq!(body["error"]["code"], "limit_exceeded", "{body}");
                assert_eq!(body["error"]["field"], "amount");
                refused.push(sent);
            }
            other => panic!("{other}: {body}"),
        }
    }
    let total: Decimal = accepted.iter().sum();
    let limit = Decimal::new(25_000, 2);
    assert!(total <= limit, "{total} paid out of a {limit} limit");
    assert!(!refused.is_empty(), "390.00 cannot fit in 250.00");
    for amount in &refused {
        assert!(
            total + amount > limit,
            "{amount} was refused though it fits next to {total}"
        );
    }
    let stored: (i64, Option<Decimal>) =
        sqlx::query_as("SELECT count(*), sum(amount) FROM transaction WHERE kind = 'withdrawal'")
            .fetch_one(&api.pool)
            .await
            .unwrap();
    assert_eq!(
        stored,
        (accepted.len() as i64, Some(total)),
        "refused ones wrote nothing"
    );
    assert_eq!(api.count("transaction_event").await, accepted.len() as i64);
    let counted: Decimal =
        sqlx::query_scalar("SELECT total FROM merchant_payout_day WHERE merchant_id = $1")
            .bind(&merchant)
            .fetch_one(&api.pool)
            .await
            .unwrap();
    assert_eq!(counted, total);
    api.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withdrawal_over_the_limit_per_payout_is_refused_on_every_route_and_deposits_and_other_currencies_are_not_limited(
) {
    let api = Api::start().await;
    let merchant = api.merchant_id().await;
    let (status, _) = api
        .set_limits(&merchant, json!({"currency": "EUR", "max_payout": "50.00"}))
        .await;
    assert_eq!(status, StatusCode::OK);

    let (status, error) = api
        .withdraw(
            "/v1/withdrawals",
            json!({"user_id": "u", "amount": "50.01", "currency": "EUR"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error["error"]["code"], "limit_exceeded");
    assert_eq!(error["error"]["field"], "amount");
    let (status, error) = api
        .withdraw(
            "/withdrawal",
            json!({"user_id": 7, "amount": "60.00", "currency": "EUR"}),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "the original route too"
    );
    assert_eq!(error["error"]["code"], "limit_exceeded");
    assert_eq!(api.count("transaction").await, 0, "nothing written");

    for (path, body) in [
        (
            "/v1/withdrawals",
            json!({"user_id": "u", "amount": "50.00", "currency": "EUR"}),
        ),
        (
            "/v1/deposits",
            json!({"user_id": "u", "amount": "5000.00", "currency": "EUR"}),
        ),
        (
            "/v1/withdrawals",
            json!({"user_id": "u", "amount": "5000.00", "currency": "USD"}),
        ),
    ] {
        let (status, body) = api.withdraw(path, body).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{path}: {body}");
    }

    // Both limits left out: the currency's limits are gone.
    let (status, cleared) = api.set_limits(&merchant, json!({"currency": "EUR"})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(cleared["max_payout"], Value::Null);
    let (status, _) = api
        .withdraw(
            "/v1/withdrawals",
            json!({"user_id": "u", "amount": "900.00", "currency": "EUR"}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);

    let (status, error) = api
        .set_limits(&merchant, json!({"currency": "EUR", "max_payout": "-1"}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error["error"]["field"], "max_payout");
    let (status, _) = api
        .set_limits(
            "mer_00000000000000000000000000000000",
            json!({"currency": "EUR", "max_payout": "1.00"}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    api.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposit_or_withdrawal_over_the_merchants_maximum_per_payment_is_a_typed_422_that_writes_nothing(
) {
    let api = Api::start().await;
    let merchant = api.merchant_id().await;
    let (status, limits) = api
        .set_limits(
            &merchant,
            json!({"currency": "EUR", "max_payment": "500.00"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{limits}");
    assert_eq!(limits["max_payment"], "500.00");
    assert_eq!(limits["max_payout"], Value::Null);

    for path in ["/v1/deposits", "/v1/withdrawals"] {
        let (status, error) = api
            .withdraw(
                path,
                json!({"user_id": "u", "amount": "500.01", "currency": "EUR"}),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{path}: {error}");
        assert_eq!(error["error"]["code"], "limit_exceeded", "{path}");
        assert_eq!(error["error"]["field"], "amount", "{path}");
        let (status, body) = api
            .withdraw(
                path,
                json!({"user_id": "u", "amount": "500.00", "currency": "EUR"}),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{path}: {body}");
    }
    let (status, body) = api
        .withdraw(
            "/v1/deposits",
            json!({"user_id": "u", "amount": "900.00", "currency": "USD"}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "another currency: {body}");
    assert_eq!(
        api.count("transaction").await,
        3,
        "the refused ones wrote nothing"
    );

    let (status, error) = api
        .set_limits(&merchant, json!({"currency": "EUR", "max_payment": "0"}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error["error"]["field"], "max_payment");
    api.running.stop().await.unwrap();
}
