//! PostgreSQL round trips per payment, per service: the real binaries on a private
//! PostgreSQL with `pg_stat_statements`, each service connected as its own role. What
//! the services do while idle (polls, the reconciler) is measured over a quiet spell
//! first and taken off, so what remains is what payments cost. It prints a table for
//! payments sent one at a time and one for payments sent twenty at a time, where the
//! batches and group commits hold more than one (the book's Performance page has the
//! figures):
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

/// Sends `count` payments, `at_once` at a time (each group sent together, the next once
/// they are accepted), and waits until each is final and its final webhook arrived;
/// returns how long that took. One at a time, every batch and group commit holds one
/// payment; together, they hold what arrives at one moment.
async fn pay(stack: &Stack, from: u32, count: u32, at_once: u32) -> Duration {
    let started = tokio::time::Instant::now();
    let mut sent = 0;
    let mut group = from;
    while group < from + count {
        let mut sending = tokio::task::JoinSet::new();
        for n in group..(group + at_once).min(from + count) {
            let (http, api, key) = (
                stack.http.clone(),
                stack.api.clone(),
                stack.merchant.api_key.clone(),
            );
            sending.spawn(async move { crate::send(&http, &api, &key, n * 4, false).await });
        }
        sent += sending.join_all().await.len();
        group += at_once;
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
            (finals >= sent + usize::try_from(from).unwrap()).then_some(())
        },
    )
    .await;
    started.elapsed()
}

/// Statements per payment and role while `payments` are paid `at_once` at a time, the
/// idle rate taken off; prints the table and where the statements go.
async fn measure(
    stack: &Stack,
    idle: &BTreeMap<String, i64>,
    quiet: Duration,
    from: u32,
    payments: u32,
    at_once: u32,
) {
    reset(&stack.pool).await;
    let busy = pay(stack, from, payments, at_once).await;
    // The last payment's outbox rows and deliveries are marked a moment after.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let busy = busy + Duration::from_secs(1);
    let used = calls(&stack.pool).await;

    println!("\n{payments} payments, {at_once} at a time\n");
    println!("| service | statements per payment | idle statements per second |");
    println!("| --- | --- | --- |");
    let mut all = 0.0;
    for (name, _) in SERVICES {
        let role = role(name);
        let idle_rate = idle.get(&role).copied().unwrap_or(0) as f64 / quiet.as_secs_f64();
        let total = used.get(&role).copied().unwrap_or(0) as f64;
        let per_payment = (total - idle_rate * busy.as_secs_f64()).max(0.0) / f64::from(payments);
        all += per_payment;
        println!("| {name} | {per_payment:.1} | {idle_rate:.1} |");
    }
    println!("| all four | {all:.1} | |");
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
    pay(&stack, 0, 5, 1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    reset(&stack.pool).await;
    let quiet = Duration::from_secs(10);
    tokio::time::sleep(quiet).await;
    let idle = calls(&stack.pool).await;

    measure(&stack, &idle, quiet, 5, 40, 1).await;
    measure(&stack, &idle, quiet, 45, 200, 20).await;
    for service in stack.services {
        service.terminate().await;
    }
    stack.stop.cancel();
}
