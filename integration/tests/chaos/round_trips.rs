//! PostgreSQL round trips per payment, per service: the real binaries on a private
//! PostgreSQL with `pg_stat_statements`, each service connected as its own role. What
//! the services do while idle (polls, the reconciler) is measured over a quiet spell
//! first and taken off, so what remains is what payments cost. It prints a table (the
//! book's Performance page has the figures):
//! `scripts/test -E 'test(round_trips)' --run-ignored only --no-capture`.

use std::collections::BTreeMap;
use std::time::Duration;

use paygate_testkit::eventually;

use crate::stack::{role, Stack, SERVICES};

/// Statements per role since the last reset.
async fn calls(pool: &sqlx::PgPool) -> BTreeMap<String, i64> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT r.rolname::text, sum(s.calls)::bigint FROM pg_stat_statements s
           JOIN pg_roles r ON r.oid = s.userid
          WHERE s.dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
          GROUP BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    rows.into_iter().collect()
}

async fn reset(pool: &sqlx::PgPool) {
    sqlx::query("SELECT pg_stat_statements_reset()")
        .execute(pool)
        .await
        .unwrap();
}

/// Sends `count` payments, one after another, and waits until each is final and its
/// final webhook arrived; returns how long that took.
async fn pay(stack: &Stack, from: u32, count: u32) -> Duration {
    let started = tokio::time::Instant::now();
    let mut ids = Vec::new();
    for n in from..from + count {
        let sent = crate::send(
            &stack.http,
            &stack.api,
            &stack.merchant.api_key,
            n * 4,
            false,
        )
        .await;
        ids.push(sent.id);
    }
    eventually(
        "every payment's final webhook",
        Duration::from_secs(120),
        || async {
            let finals = stack
                .webhooks
                .received()
                .iter()
                .filter(|w| {
                    let t = w.json()["type"].as_str().unwrap_or_default().to_owned();
                    t == "transaction.completed" || t == "transaction.failed"
                })
                .count();
            (finals >= ids.len() + usize::try_from(from).unwrap()).then_some(())
        },
    )
    .await;
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a measurement, not a check: run with --run-ignored only"]
async fn round_trips_per_payment_by_service() {
    let stack = Stack::start(
        &[
            "shared_preload_libraries=pg_stat_statements",
            "pg_stat_statements.track=all",
        ],
        |_, env| env,
    )
    .await;
    sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .execute(&stack.pool)
        .await
        .unwrap();
    // Warm: connections open, statements prepared, topics and groups settled.
    pay(&stack, 0, 5).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    reset(&stack.pool).await;
    let quiet = Duration::from_secs(10);
    tokio::time::sleep(quiet).await;
    let idle = calls(&stack.pool).await;

    reset(&stack.pool).await;
    let payments = 40;
    let busy = pay(&stack, 5, payments).await;
    // The last payment's outbox rows and deliveries are marked a moment after.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let busy = busy + Duration::from_secs(1);
    let used = calls(&stack.pool).await;

    println!("| service | statements per payment | idle statements per second |");
    println!("| --- | --- | --- |");
    for (name, _) in SERVICES {
        let role = role(name);
        let idle_rate = idle.get(&role).copied().unwrap_or(0) as f64 / quiet.as_secs_f64();
        let total = used.get(&role).copied().unwrap_or(0) as f64;
        let per_payment = (total - idle_rate * busy.as_secs_f64()).max(0.0) / f64::from(payments);
        println!("| {name} | {per_payment:.1} | {idle_rate:.1} |");
    }
    // Where they go: each service's statements by calls per payment (idle included).
    let top: Vec<(String, i64, String)> = sqlx::query_as(
        "SELECT r.rolname::text, s.calls, regexp_replace(left(s.query, 90), '\\s+', ' ', 'g')
           FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid
          WHERE s.dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
            AND r.rolname LIKE 'paygate_%'
          ORDER BY 1, 2 DESC",
    )
    .fetch_all(&stack.pool)
    .await
    .unwrap();
    for (role, calls, query) in top {
        println!("{role}\t{:.2}\t{query}", calls as f64 / f64::from(payments));
    }
    for service in stack.services {
        service.terminate().await;
    }
    stack.stop.cancel();
}
