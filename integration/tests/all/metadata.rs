//! A payment's `metadata`: checked with typed errors that change nothing, stored, read
//! back in JSON and XML, filterable in the list, and carried in webhooks.

use std::time::Duration;

use paygate_testkit::{eventually, json_of, Suite};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::api::Api;

fn deposit(metadata: Value) -> String {
    json!({"user_id": "u-1", "amount": "10.00", "currency": "EUR", "metadata": metadata})
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_breaking_a_limit_is_refused_naming_its_entry_and_nothing_is_written() {
    let api = Api::start().await;
    let many: serde_json::Map<String, Value> =
        (0..51).map(|i| (format!("k{i}"), json!("v"))).collect();
    let cases = [
        ("51 keys", json!(many), "metadata"),
        ("a long key", json!({"k".repeat(41): "v"}), "metadata"),
        (
            "a long value",
            json!({"note": "v".repeat(501)}),
            "metadata.note",
        ),
        (
            "a card number",
            json!({"note": "4242 4242 4242 4242"}),
            "metadata.note",
        ),
        ("a number", json!({"order": 17}), "metadata.order"),
        (
            "a nested object",
            json!({"order": {"id": "A"}}),
            "metadata.order",
        ),
        ("not an object", json!("order=A-17"), "metadata"),
    ];
    for (case, metadata, field) in cases {
        let (status, body) = api.deposit(&deposit(metadata), "application/json").await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{case}: {body}");
        assert_eq!(body["error"]["code"], "validation_failed", "{case}: {body}");
        assert_eq!(body["error"]["field"], field, "{case}: {body}");
        assert!(!body.to_string().contains("4242"), "{case}: {body}");
    }
    // A card number sent as a JSON number is not quoted back either.
    let (_, body) = api
        .deposit(
            r#"{"user_id":"u","amount":"1.00","currency":"EUR","metadata":{"x":4242424242424242}}"#,
            "application/json",
        )
        .await;
    assert!(!body.to_string().contains("4242"), "{body}");
    assert_eq!(api.count("transaction").await, 0);
    api.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_is_stored_and_read_back_in_json_and_in_xml() {
    let api = Api::start().await;
    let (status, created) = api
        .deposit(
            &deposit(json!({"order": "A-17", "tier": "gold"})),
            "application/json",
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{created}");
    assert_eq!(
        created["metadata"],
        json!({"order": "A-17", "tier": "gold"})
    );
    let id = created["id"].as_str().unwrap();
    let read: Value = api
        .http
        .get(format!("{}/v1/transactions/{id}", api.url))
        .bearer_auth(&api.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(read["metadata"]["order"], "A-17");

    let xml = "<deposit><user_id>u-2</user_id><amount>5.00</amount><currency>EUR</currency>\
               <metadata><order>B-9</order></metadata></deposit>";
    let response = api
        .http
        .post(format!("{}/v1/deposits", api.url))
        .bearer_auth(&api.key)
        .header("content-type", "application/xml")
        .body(xml)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let answer = response.text().await.unwrap();
    assert!(
        answer.contains("<metadata><order>B-9</order></metadata>"),
        "{answer}"
    );
    // Without metadata, an empty object (never null).
    let (_, plain) = api
        .deposit(
            r#"{"user_id":"u","amount":"1.00","currency":"EUR"}"#,
            "application/json",
        )
        .await;
    assert_eq!(plain["metadata"], json!({}));
    api.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_transaction_list_filters_by_one_metadata_key_and_value() {
    let api = Api::start().await;
    for (order, user) in [("A-17", "u-1"), ("A-18", "u-2"), ("A-17", "u-3")] {
        let (status, _) = api
            .deposit(
                &json!({"user_id": user, "amount": "1.00", "currency": "EUR",
                        "metadata": {"order": order}})
                .to_string(),
                "application/json",
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED);
    }
    let list = |query: &'static str| {
        let api = &api;
        async move {
            let response = api
                .http
                .get(format!("{}/v1/transactions?{query}", api.url))
                .bearer_auth(&api.key)
                .send()
                .await
                .unwrap();
            (response.status(), response.json::<Value>().await.unwrap())
        }
    };
    let (status, page) = list("metadata%5Border%5D=A-17&limit=10").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let users: Vec<&str> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["user_id"].as_str().unwrap())
        .collect();
    assert_eq!(users, ["u-3", "u-1"]);
    let (_, none) = list("metadata[order]=Z-1").await;
    assert_eq!(none["data"], json!([]));
    let (status, refused) = list("metadata[order]=A-17&metadata[tier]=gold").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(refused["error"]["field"], "metadata");
    // Everything else is still refused when unknown.
    let (status, _) = list("colour=blue").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    api.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_payments_metadata_is_carried_in_its_webhooks() {
    let suite = Suite::start().await;
    let id = suite
        .deposit_with(
            &json!({"user_id": "u-1", "amount": "20.00", "currency": "USD",
                              "metadata": {"order": "A-17"}}),
        )
        .await;
    let webhook = eventually("the completed webhook", Duration::from_secs(60), || async {
        suite
            .webhooks
            .received()
            .into_iter()
            .map(|w| w.json())
            .find(|w| w["type"] == "transaction.completed")
    })
    .await;
    assert_eq!(webhook["data"]["id"], id.as_str());
    assert_eq!(webhook["data"]["metadata"], json!({"order": "A-17"}));
    let read = json_of(suite.get(&format!("/v1/transactions/{id}"))).await;
    assert_eq!(read["metadata"]["order"], "A-17");
    suite.stop().await;
}
