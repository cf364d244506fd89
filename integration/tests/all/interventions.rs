//! Operators' actions on payments through the admin API: each does what it says, is
//! recorded in the payment's history with who and why, is refused with a typed error on
//! a payment whose state does not allow it (changing nothing), and a repeat doubles
//! nothing. Set-aside outbox events are listed and re-sent once.

use std::time::Duration;

use paygate_common::domain::Status;
use paygate_common::transactions::{self, Change, TransactionRecord};
use paygate_testkit::{
    eventually, json_of, plain_deposit, route_everything_to_simulator, Running, Service, Suite,
    SuiteOptions, ADMIN_TOKEN,
};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::api::Api;
use crate::console::{hidden, Browser};

/// A pending payment of the merchant's; naming `gateway` (an attempt there) when given.
pub(crate) async fn pending(
    pool: &PgPool,
    merchant: &paygate_common::domain::MerchantId,
    gateway: Option<&str>,
) -> TransactionRecord {
    let mut tx = pool.begin().await.unwrap();
    let mut record = transactions::create(&mut tx, plain_deposit(merchant, "21.00", "u-ops"))
        .await
        .unwrap();
    if let Some(gateway) = gateway {
        record = transactions::record_attempt(&mut tx, &record, gateway, None)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    record
}

/// Marks a pending payment unresolved with `reason`, as the payment-processor does.
async fn unresolved(pool: &PgPool, id: &paygate_common::domain::TransactionId, reason: &str) {
    let mut conn = pool.acquire().await.unwrap();
    transactions::mark_unresolved(&mut conn, id, reason)
        .await
        .unwrap();
}

/// A payment taken at simjson and completed there.
async fn completed(pool: &PgPool, merchant: &paygate_common::domain::MerchantId) -> String {
    let record = pending(pool, merchant, Some("simjson")).await;
    let mut tx = pool.begin().await.unwrap();
    let change = Change {
        gateway: Some("simjson".to_owned()),
        gateway_txn_id: Some("sim_ops".to_owned()),
        ..Change::default()
    };
    let processing = transactions::transition(&mut tx, &record, Status::Processing, change)
        .await
        .unwrap();
    transactions::transition(&mut tx, &processing, Status::Completed, Change::default())
        .await
        .unwrap();
    tx.commit().await.unwrap();
    record.id.to_string()
}

async fn admin(api_url: &str, method: Method, path: &str, body: Value) -> (StatusCode, Value) {
    let response = reqwest::Client::new()
        .request(method, format!("{api_url}/admin/v1{path}"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    (
        response.status(),
        response.json().await.unwrap_or(Value::Null),
    )
}

/// `(version, event type, destination, actor, note)` of every event, in order.
type EventRow = (Option<i32>, String, String, Option<String>, Option<String>);

async fn events(pool: &PgPool, id: &str) -> Vec<EventRow> {
    sqlx::query_as(
        "SELECT version, event_type, destination, actor, note FROM transaction_event
          WHERE transaction_id = $1 ORDER BY seq",
    )
    .bind(id)
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn version_of(pool: &PgPool, id: &str) -> i32 {
    sqlx::query_scalar("SELECT version FROM transaction WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redrive_asks_for_an_unresolved_payment_again_clears_its_mark_records_who_and_why_and_a_repeat_changes_nothing(
) {
    let api = with_gateways().await;
    let merchant = merchant_of(&api).await;
    let record = pending(&api.pool, &merchant, Some("simjson")).await;
    let id = record.id.to_string();
    unresolved(&api.pool, &record.id, "the card's key left the ring").await;
    let reason: Option<String> =
        sqlx::query_scalar("SELECT unresolved_reason FROM transaction WHERE id = $1")
            .bind(&id)
            .fetch_one(&api.pool)
            .await
            .unwrap();
    assert_eq!(reason.as_deref(), Some("the card's key left the ring"));

    let body = json!({"reason": "key restored", "operator": "Ada"});
    let (status, first) = admin(
        &api.url,
        Method::POST,
        &format!("/transactions/{id}/redrive"),
        body.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["changed"], true);
    assert_eq!(first["transaction"]["status"], "pending");
    assert_eq!(first["transaction"]["version"], 3);
    let flags: (Option<chrono::DateTime<chrono::Utc>>, Option<String>) =
        sqlx::query_as("SELECT unresolved_since, unresolved_reason FROM transaction WHERE id = $1")
            .bind(&id)
            .fetch_one(&api.pool)
            .await
            .unwrap();
    assert_eq!(flags, (None, None), "the unresolved mark is cleared");
    let last = events(&api.pool, &id).await.pop().unwrap();
    assert_eq!(
        last,
        (
            Some(3),
            "payment.redriven".to_owned(),
            "payments_requested".to_owned(),
            Some("admin API: Ada".to_owned()),
            Some("key restored".to_owned())
        ),
        "asked for again on payments_requested, with who and why"
    );

    let (status, again) = admin(
        &api.url,
        Method::POST,
        &format!("/transactions/{id}/redrive"),
        body,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["changed"], false, "a repeat changes nothing");
    assert_eq!(version_of(&api.pool, &id).await, 3);
    assert_eq!(events(&api.pool, &id).await.len(), 3);

    // The merchant sees who and why in the payment's history.
    let history = json_of(
        api.http
            .get(format!("{}/v1/transactions/{id}/events", api.url))
            .bearer_auth(&api.key),
    )
    .await;
    let redriven = &history["data"][2];
    assert_eq!(redriven["type"], "payment.redriven");
    assert_eq!(redriven["actor"], "admin API: Ada");
    assert_eq!(redriven["note"], "key restored");
    assert!(
        history["data"][0].get("actor").is_none(),
        "Paygate's own events name no actor"
    );

    let (status, error) = admin(
        &api.url,
        Method::POST,
        &format!("/transactions/{id}/redrive"),
        json!({"reason": "  "}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error["error"]["field"], "reason", "a why is required");
    api.running.stop().await.unwrap();
}

/// The api alone, with the simulator's gateways registered (at an address nobody
/// answers: nothing here calls a gateway).
async fn with_gateways() -> Api {
    let api = Api::start().await;
    route_everything_to_simulator(&api.pool, "http://127.0.0.1:9").await;
    api
}

/// The test merchant's id (the only merchant of an [`Api`]'s database).
async fn merchant_of(api: &Api) -> paygate_common::domain::MerchantId {
    let id: String = sqlx::query_scalar("SELECT id FROM merchant LIMIT 1")
        .fetch_one(&api.pool)
        .await
        .unwrap();
    id.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_and_release_of_a_final_payment_are_refused_with_a_typed_error_and_change_nothing()
{
    let api = with_gateways().await;
    let merchant = merchant_of(&api).await;
    let id = completed(&api.pool, &merchant).await;
    let before = (
        version_of(&api.pool, &id).await,
        events(&api.pool, &id).await,
    );
    for (action, body) in [
        ("redrive", json!({"reason": "try again"})),
        (
            "release",
            json!({"reason": "try elsewhere", "gateway": "simjson"}),
        ),
    ] {
        let (status, error) = admin(
            &api.url,
            Method::POST,
            &format!("/transactions/{id}/{action}"),
            body,
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{action}");
        assert_eq!(error["error"]["code"], "not_pending", "{action}");
    }
    assert_eq!(
        (
            version_of(&api.pool, &id).await,
            events(&api.pool, &id).await
        ),
        before,
        "nothing changed"
    );

    // A pending payment that names no gateway has nothing to release.
    let unrouted = pending(&api.pool, &merchant, None).await.id.to_string();
    let (status, error) = admin(
        &api.url,
        Method::POST,
        &format!("/transactions/{unrouted}/release"),
        json!({"reason": "x", "gateway": "simjson"}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error["error"]["code"], "no_gateway");
    assert_eq!(version_of(&api.pool, &unrouted).await, 1);

    let (status, _) = admin(
        &api.url,
        Method::POST,
        "/transactions/txn_01a00000000070008000000000000000/redrive",
        json!({"reason": "x"}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    api.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_names_the_gateway_confirmed_with_clears_it_records_who_and_why_and_a_repeat_changes_nothing(
) {
    let api = with_gateways().await;
    let merchant = merchant_of(&api).await;
    let record = pending(&api.pool, &merchant, Some("simsoap")).await;
    let id = record.id.to_string();

    // Confirmed with another gateway than the one it names: nothing is released.
    let (status, error) = admin(
        &api.url,
        Method::POST,
        &format!("/transactions/{id}/release"),
        json!({"reason": "x", "gateway": "simjson"}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error["error"]["code"], "gateway_changed");
    assert_eq!(version_of(&api.pool, &id).await, 2);

    let body = json!({"reason": "simsoap support: no such reference", "gateway": "simsoap"});
    let (status, released) = admin(
        &api.url,
        Method::POST,
        &format!("/transactions/{id}/release"),
        body.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{released}");
    assert_eq!(released["changed"], true);
    assert_eq!(released["transaction"]["gateway"], Value::Null);
    let last = events(&api.pool, &id).await.pop().unwrap();
    assert_eq!(
        last,
        (
            Some(3),
            "gateway.released".to_owned(),
            "payments_requested".to_owned(),
            Some("admin API: admin token holder".to_owned()),
            Some("released from simsoap: simsoap support: no such reference".to_owned())
        ),
        "recorded, and asked for again from the top"
    );
    let gateway: Option<String> =
        sqlx::query_scalar("SELECT gateway FROM transaction WHERE id = $1")
            .bind(&id)
            .fetch_one(&api.pool)
            .await
            .unwrap();
    assert_eq!(gateway, None);

    let (status, again) = admin(
        &api.url,
        Method::POST,
        &format!("/transactions/{id}/release"),
        body,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["changed"], false, "a repeat changes nothing");
    assert_eq!(version_of(&api.pool, &id).await, 3);
    api.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_payment_released_from_a_gateway_that_never_got_it_completes_at_the_next_one() {
    // The payment-processor starts after the release, so it never asks simsoap.
    let suite = Suite::start_with(SuiteOptions {
        external: vec![Service::PaymentProcessor],
        ..SuiteOptions::default()
    })
    .await;
    // The payment names simsoap, which never saw it; the default route is simjson.
    let record = pending(&suite.pool, &suite.merchant.id, Some("simsoap")).await;
    let id = record.id.to_string();
    unresolved(&suite.pool, &record.id, "no definite answer").await;
    let (status, _) = admin(
        &suite.api_url,
        Method::POST,
        &format!("/transactions/{id}/release"),
        json!({"reason": "simsoap holds nothing", "gateway": "simsoap", "operator": "Ada"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let processor = paygate_payment_processor::Application::build(suite.settings.clone())
        .await
        .unwrap();
    let processor = Running::spawn(|s| processor.run(s));
    let done = eventually(
        "the payment to complete",
        Duration::from_secs(30),
        || async {
            let body = json_of(suite.get(&format!("/v1/transactions/{id}"))).await;
            (body["status"] == "completed").then_some(body)
        },
    )
    .await;
    assert_eq!(done["gateway"], "simjson");
    assert_eq!(suite.charges(&id).await, 1, "charged once");
    let history = json_of(suite.get(&format!("/v1/transactions/{id}/events"))).await;
    let types: Vec<&str> = history["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    let released = types.iter().position(|t| *t == "gateway.released").unwrap();
    assert_eq!(
        &types[..=released],
        [
            "transaction.created",
            "gateway.attempted",
            "gateway.released"
        ]
    );
    assert_eq!(history["data"][released]["actor"], "admin API: Ada");
    processor.stop().await.unwrap();
    suite.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolving_a_review_clears_it_keeps_the_status_and_when_it_became_final_and_a_repeat_changes_nothing(
) {
    let api = with_gateways().await;
    let merchant = merchant_of(&api).await;
    let id = completed(&api.pool, &merchant).await;
    sqlx::query(
        "UPDATE transaction SET review_reason = 'no_callback', review_since = now(),
                review_detail = 'asked 12 times' WHERE id = $1",
    )
    .bind(&id)
    .execute(&api.pool)
    .await
    .unwrap();
    let updated_at = |pool: PgPool, id: String| async move {
        sqlx::query_scalar::<_, chrono::DateTime<chrono::Utc>>(
            "SELECT updated_at FROM transaction WHERE id = $1",
        )
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    let final_at = updated_at(api.pool.clone(), id.clone()).await;

    let body = json!({"note": "callback found in the gateway's portal", "operator": "Grace"});
    let (status, resolved) = admin(
        &api.url,
        Method::POST,
        &format!("/transactions/{id}/review/resolve"),
        body.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{resolved}");
    assert_eq!(resolved["changed"], true);
    assert_eq!(resolved["transaction"]["status"], "completed");
    let review: (Option<String>, Option<String>, String) = sqlx::query_as(
        "SELECT review_reason, review_detail, status FROM transaction WHERE id = $1",
    )
    .bind(&id)
    .fetch_one(&api.pool)
    .await
    .unwrap();
    assert_eq!(review, (None, None, "completed".to_owned()));
    assert_eq!(updated_at(api.pool.clone(), id.clone()).await, final_at);
    let last = events(&api.pool, &id).await.pop().unwrap();
    assert_eq!(
        last,
        (
            Some(5),
            "review.resolved".to_owned(),
            "history".to_owned(),
            Some("admin API: Grace".to_owned()),
            Some("no_callback: callback found in the gateway's portal".to_owned())
        )
    );

    let (status, again) = admin(
        &api.url,
        Method::POST,
        &format!("/transactions/{id}/review/resolve"),
        body,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["changed"], false);
    assert_eq!(version_of(&api.pool, &id).await, 5);
    api.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_aside_event_is_listed_with_its_transaction_and_resent_once_then_published() {
    let api = with_gateways().await;
    let merchant = merchant_of(&api).await;
    let record = pending(&api.pool, &merchant, None).await;
    let id = record.id.to_string();
    eventually(
        "the relay to publish the first event",
        Duration::from_secs(30),
        || async {
            let published: Option<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
            "SELECT published_at FROM transaction_event WHERE transaction_id = $1 AND version = 1",
        )
        .bind(&id)
        .fetch_one(&api.pool)
        .await
        .unwrap();
            published.map(drop)
        },
    )
    .await;
    // Play the broker having refused it for good.
    let event_id: String = sqlx::query_scalar(
        "UPDATE transaction_event
            SET set_aside_at = now(), set_aside_reason = 'the broker does not know its topic',
                published_at = NULL
          WHERE transaction_id = $1 AND version = 1 RETURNING id",
    )
    .bind(&id)
    .fetch_one(&api.pool)
    .await
    .unwrap();

    let (status, listed) = admin(&api.url, Method::GET, "/outbox/set-aside", Value::Null).await;
    assert_eq!(status, StatusCode::OK);
    let row = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event_id"] == event_id.as_str())
        .expect("listed")
        .clone();
    assert_eq!(row["transaction_id"], id.as_str());
    assert_eq!(row["transaction_status"], "pending");
    assert_eq!(row["reason"], "the broker does not know its topic");
    // The console shows it on the payment's page and in "needs a human", with a button.
    let mut browser = Browser::new(&api.url);
    browser.sign_in_as("Ada").await;
    let page = browser.page(&format!("/console/transactions/{id}")).await;
    assert!(page.contains("1 set-aside event"), "{page}");
    assert!(page.contains(&format!("/console/events/{event_id}/resend")));
    let attention = browser.page("/console/attention").await;
    assert!(
        attention.contains(&event_id) && attention.contains("the broker does not know its topic")
    );

    let resend = |body: Option<Value>| {
        let request = api
            .http
            .post(format!("{}/admin/v1/outbox/{event_id}/resend", api.url))
            .bearer_auth(ADMIN_TOKEN);
        let request = match body {
            Some(body) => request.json(&body),
            None => request,
        };
        async move {
            let response = request.send().await.unwrap();
            (response.status(), response.json::<Value>().await.unwrap())
        }
    };
    let (status, resent) = resend(Some(json!({"reason": "topic created"}))).await;
    assert_eq!(status, StatusCode::OK, "{resent}");
    assert_eq!(resent["changed"], true);
    assert_eq!(resent["transaction_id"], id.as_str());
    eventually(
        "the relay to publish it",
        Duration::from_secs(30),
        || async {
            let published: Option<chrono::DateTime<chrono::Utc>> =
                sqlx::query_scalar("SELECT published_at FROM transaction_event WHERE id = $1")
                    .bind(&event_id)
                    .fetch_one(&api.pool)
                    .await
                    .unwrap();
            published.map(drop)
        },
    )
    .await;
    let (status, again) = resend(None).await;
    assert_eq!(status, StatusCode::OK, "no body is a resend with no reason");
    assert_eq!(again["changed"], false, "not set aside any more");
    assert_eq!(again["state"], "published");
    let resent_events: Vec<EventRow> = events(&api.pool, &id)
        .await
        .into_iter()
        .filter(|e| e.1 == "event.resent")
        .collect();
    assert_eq!(resent_events.len(), 1, "recorded once");
    assert_eq!(
        resent_events[0].4.as_deref(),
        Some(
            format!(
                "transaction.created {event_id} (the broker does not know its topic): topic created"
            )
            .as_str()
        )
    );
    let (_, listed) = admin(&api.url, Method::GET, "/outbox/set-aside", Value::Null).await;
    assert!(listed["data"].as_array().unwrap().is_empty());
    let (status, _) = admin(
        &api.url,
        Method::POST,
        "/outbox/evt_00000000000000000000000000000000/resend",
        json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    api.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_operators_act_under_the_name_they_signed_in_with_and_see_what_needs_them() {
    let api = with_gateways().await;
    let merchant = merchant_of(&api).await;
    let record = pending(&api.pool, &merchant, Some("simjson")).await;
    let id = record.id.to_string();
    unresolved(&api.pool, &record.id, "no definite answer from simjson").await;
    let under_review = completed(&api.pool, &merchant).await;
    sqlx::query(
        "UPDATE transaction SET review_reason = 'charged_but_failed', review_since = now(),
                review_detail = 'simjson says captured' WHERE id = $1",
    )
    .bind(&under_review)
    .execute(&api.pool)
    .await
    .unwrap();
    let mut browser = Browser::new(&api.url);
    browser.sign_in_as("Ada").await;

    let attention = browser.page("/console/attention").await;
    for shown in [
        id.as_str(),
        "no definite answer from simjson",
        under_review.as_str(),
        "charged_but_failed",
        "simjson says captured",
    ] {
        assert!(attention.contains(shown), "needs a human lacks {shown}");
    }

    let page = browser.page(&format!("/console/transactions/{id}")).await;
    assert!(page.contains("Release from simjson"), "{page}");
    let csrf = hidden(&page, "csrf");
    let forged = browser
        .post(
            &format!("/console/transactions/{id}/release"),
            &[("csrf", "forged"), ("gateway", "simjson"), ("reason", "x")],
        )
        .await;
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    let released = browser
        .post(
            &format!("/console/transactions/{id}/release"),
            &[
                ("csrf", &csrf),
                ("gateway", "simjson"),
                ("reason", "simjson confirmed it holds nothing"),
            ],
        )
        .await;
    assert_eq!(released.status(), StatusCode::SEE_OTHER);
    let last = events(&api.pool, &id).await.pop().unwrap();
    assert_eq!(last.1, "gateway.released");
    assert_eq!(last.3.as_deref(), Some("console: Ada"));

    let resolved = browser
        .post(
            &format!("/console/transactions/{under_review}/review/resolve"),
            &[("csrf", &csrf), ("reason", "refund issued")],
        )
        .await;
    assert_eq!(resolved.status(), StatusCode::SEE_OTHER);
    let review: Option<String> =
        sqlx::query_scalar("SELECT review_reason FROM transaction WHERE id = $1")
            .bind(&under_review)
            .fetch_one(&api.pool)
            .await
            .unwrap();
    assert_eq!(review, None);

    // A final payment: the page offers no action, and a forged one is refused.
    let page = browser
        .page(&format!("/console/transactions/{under_review}"))
        .await;
    assert!(!page.contains("Re-drive"));
    let refused = browser
        .post(
            &format!("/console/transactions/{under_review}/redrive"),
            &[("csrf", &csrf), ("reason", "again")],
        )
        .await;
    assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    api.running.stop().await.unwrap();
}
