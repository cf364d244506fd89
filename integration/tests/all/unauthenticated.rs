//! What a client that proves nothing costs PostgreSQL: made-up API keys, unsigned
//! callbacks, made-up gateway codes, the public JWKS and readiness probes are answered
//! without a query each (counted by `pg_stat_statements` on a private PostgreSQL),
//! while a merchant's deposits from the same address go on being answered in time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use paygate_common::domain::{MerchantId, TransactionId};
use paygate_testkit::{eventually, PrivatePostgres, Running};
use reqwest::StatusCode;

/// Calls since the last reset of the statements whose text contains every one of
/// `parts` (an empty part: the whole text is the next one, exactly).
async fn calls(pool: &sqlx::PgPool, parts: &[&str]) -> i64 {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT query, calls FROM pg_stat_statements
          WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    rows.iter()
        .filter(|(query, _)| match parts {
            ["", exact] => query.trim() == *exact,
            _ => parts.iter().all(|part| query.contains(part)),
        })
        .map(|(_, calls)| calls)
        .sum()
}

async fn reset(pool: &sqlx::PgPool) {
    sqlx::query("SELECT pg_stat_statements_reset()")
        .execute(pool)
        .await
        .unwrap();
}

/// An api on a private PostgreSQL that counts statements, `requests` unauthenticated
/// look-ups per address per second.
async fn counted_api(
    requests: u64,
) -> (
    PrivatePostgres,
    sqlx::PgPool,
    String,
    paygate_api::api_keys::ApiKeyCache,
    Running,
) {
    let postgres =
        PrivatePostgres::start_with(&["shared_preload_libraries=pg_stat_statements"]).await;
    let mut settings = paygate_testkit::settings_on(&postgres.admin_url).await;
    settings.api.unauthenticated.requests = requests;
    settings.api.unauthenticated.window_ms = 1000;
    settings.api.request_timeout_ms = 2000;
    settings.api.body_read_timeout_ms = 2000;
    let pool = paygate_testkit::pool(&settings).await;
    sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .execute(&pool)
        .await
        .unwrap();
    let app = paygate_api::Application::build(settings).await.unwrap();
    let url = format!("http://127.0.0.1:{}", app.port());
    let keys = app.api_keys();
    let running = Running::spawn(|s| app.run(s));
    eventually(
        "the key cache to listen",
        Duration::from_secs(10),
        || async { keys.is_listening().then_some(()) },
    )
    .await;
    (postgres, pool, url, keys, running)
}

fn made_up_key() -> String {
    paygate_testkit::unique("pgk_madeup")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_made_up_api_keys_costs_postgresql_no_query_each_while_deposits_are_answered_in_time(
) {
    let budget = 20;
    let (_postgres, pool, url, _keys, running) = counted_api(budget).await;
    let merchant = paygate_api::merchants::create(&pool, &paygate_testkit::keys(), "m", None, None)
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let deposit = |n: usize| {
        http.post(format!("{url}/v1/deposits"))
            .bearer_auth(&merchant.api_key)
            .json(&serde_json::json!({
                "user_id": format!("user-{n}"), "amount": "10.00", "currency": "USD"
            }))
            .send()
    };
    assert_eq!(deposit(0).await.unwrap().status(), StatusCode::ACCEPTED);
    reset(&pool).await;

    // Eight clients send made-up keys as fast as they can for three seconds, while the
    // merchant deposits from the same address.
    let flood_for = Duration::from_secs(3);
    let started = Instant::now();
    let sent = Arc::new(AtomicUsize::new(0));
    let limited = Arc::new(AtomicUsize::new(0));
    let mut flooders = Vec::new();
    for _ in 0..8 {
        let (http, url, sent, limited) = (http.clone(), url.clone(), sent.clone(), limited.clone());
        flooders.push(tokio::spawn(async move {
            while started.elapsed() < flood_for {
                let response = http
                    .get(format!("{url}/v1/transactions"))
                    .bearer_auth(made_up_key())
                    .send()
                    .await
                    .unwrap();
                let status = response.status();
                assert!(
                    status == StatusCode::UNAUTHORIZED || status == StatusCode::TOO_MANY_REQUESTS,
                    "{status}"
                );
                if status == StatusCode::TOO_MANY_REQUESTS {
                    let body: serde_json::Value = response.json().await.unwrap();
                    assert_eq!(body["error"]["code"], "rate_limited");
                    limited.fetch_add(1, Ordering::Relaxed);
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let mut deposits = 0;
    while started.elapsed() < flood_for {
        deposits += 1;
        let asked = Instant::now();
        let response = deposit(deposits).await.unwrap();
        let took = asked.elapsed();
        assert_eq!(
            response.status(),
            StatusCode::ACCEPTED,
            "a deposit during the flood"
        );
        assert!(
            took < Duration::from_secs(2),
            "a deposit took {took:?} during the flood"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for flooder in flooders {
        flooder.await.unwrap();
    }
    let elapsed = started.elapsed();
    let sent = sent.load(Ordering::Relaxed);
    let lookups = calls(&pool, &["FROM api_key", "key_hash"]).await;
    let windows = i64::try_from(elapsed.as_secs()).unwrap() + 2;
    assert!(sent >= 1000, "only {sent} requests: not a flood");
    assert!(deposits >= 10, "only {deposits} deposits");
    assert!(
        lookups <= i64::try_from(budget).unwrap() * windows,
        "{lookups} key look-ups for {sent} made-up keys"
    );
    assert!(limited.load(Ordering::Relaxed) > sent / 2);

    // A wrong key repeated is refused from memory after its first look-up.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    reset(&pool).await;
    let wrong = made_up_key();
    for _ in 0..50 {
        let response = http
            .get(format!("{url}/v1/transactions"))
            .bearer_auth(&wrong)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    assert_eq!(calls(&pool, &["FROM api_key", "key_hash"]).await, 1);

    // A key created after it was tried works at once: its creation clears the memory.
    let later = made_up_key();
    let status = |key: String| {
        let request = http.get(format!("{url}/v1/transactions")).bearer_auth(key);
        async move { request.send().await.unwrap().status() }
    };
    assert_eq!(status(later.clone()).await, StatusCode::UNAUTHORIZED);
    paygate_api::merchants::create(
        &pool,
        &paygate_testkit::keys(),
        "n",
        None,
        Some(later.clone()),
    )
    .await
    .unwrap();
    eventually("the new key to work", Duration::from_secs(2), || async {
        (status(later.clone()).await == StatusCode::OK).then_some(())
    })
    .await;
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_merchants_first_burst_with_a_live_key_spends_no_budget_and_is_accepted_whole() {
    // A budget far below the burst: behind a load balancer every merchant shares one
    // address, and a replica that just started has confirmed no key yet.
    let (_postgres, pool, url, _keys, running) = counted_api(5).await;
    let merchant = paygate_api::merchants::create(&pool, &paygate_testkit::keys(), "m", None, None)
        .await
        .unwrap();
    // Its creation is announced; the replica reads the live keys again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let http = reqwest::Client::new();
    let mut burst = tokio::task::JoinSet::new();
    for n in 0..30 {
        let request = http
            .post(format!("{url}/v1/deposits"))
            .bearer_auth(&merchant.api_key)
            .json(&serde_json::json!({
                "user_id": format!("user-{n}"), "amount": "10.00", "currency": "USD"
            }));
        burst.spawn(async move { request.send().await.unwrap().status() });
    }
    let mut statuses = Vec::new();
    while let Some(status) = burst.join_next().await {
        statuses.push(status.unwrap());
    }
    assert!(
        statuses.iter().all(|s| *s == StatusCode::ACCEPTED),
        "{statuses:?}"
    );
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_callbacks_made_up_gateways_jwks_and_probes_cost_postgresql_a_bounded_number_of_queries(
) {
    let budget = 20;
    let (_postgres, pool, url, _keys, running) = counted_api(budget).await;
    paygate_testkit::route_everything_to_simulator(&pool, "http://127.0.0.1:9").await;
    let http = reqwest::Client::new();
    // Warm the gateway table, then count.
    let warm = http
        .post(format!("{url}/v1/callbacks/simjson"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(warm.status(), StatusCode::UNAUTHORIZED);
    reset(&pool).await;
    let started = Instant::now();
    for n in 0..200 {
        let legacy = http
            .post(format!("{url}/callback/{}", TransactionId::new()))
            .header("content-type", "application/json")
            .header("x-paygate-signature", format!("t=1,v1={n:064x}"))
            .body(r#"{"gateway_txn_id":"g","status":"completed","amount":"1.00"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(legacy.status(), StatusCode::UNAUTHORIZED);
        let made_up = http
            .post(format!(
                "{url}/v1/callbacks/{}",
                paygate_testkit::unique("gw")
            ))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(made_up.status(), StatusCode::UNAUTHORIZED);
        let ready = http.get(format!("{url}/readyz")).send().await.unwrap();
        assert_eq!(ready.status(), StatusCode::OK);
        let jwks = http
            .get(format!(
                "{url}/.well-known/paygate/webhooks/{}/jwks.json",
                MerchantId::new()
            ))
            .send()
            .await
            .unwrap();
        assert!(
            [
                StatusCode::NOT_FOUND,
                StatusCode::OK,
                StatusCode::TOO_MANY_REQUESTS
            ]
            .contains(&jwks.status()),
            "{}",
            jwks.status()
        );
    }
    let windows = i64::try_from(started.elapsed().as_secs()).unwrap() + 2;
    assert_eq!(
        calls(&pool, &["FROM transaction WHERE id"]).await,
        0,
        "an unsigned legacy callback read its transaction"
    );
    // The table is read again for a code it lacks at most twice a second.
    assert!(calls(&pool, &["FROM gateway ORDER BY code"]).await <= 2 * windows + 2);
    assert!(
        calls(&pool, &["FROM merchant WHERE id"]).await <= i64::try_from(budget).unwrap() * windows
    );
    assert!(
        calls(&pool, &["", "SELECT $1"]).await <= windows + 1,
        "readiness probes"
    );
    running.stop().await.unwrap();
}
