//! Statements that move a payment found by its id find it by its id, on a fresh database
//! too. sqlx keeps each prepared statement's plan, and PostgreSQL soon settles on a
//! generic one: made while the tables' statistics still say "empty", a statement that
//! repeats a partial index's predicate (`status = 'pending'`, the predicate of
//! `transaction_pending`) was planned to walk that index and filter on the id — every
//! pending payment read for each attempt recorded (1,430 index entries an attempt in
//! the benchmark, the processor's costliest statement). Here each runs with the generic
//! plan forced on a database never analyzed, and the test reads which indexes its
//! database transaction scanned.

use paygate_common::domain::TransactionId;
use paygate_common::transactions;
use paygate_testkit::{plain_deposit, pool, route_everything_to_simulator, settings};
use sqlx::PgConnection;

/// The indexes of `transaction` this database transaction scanned, with how often.
async fn scanned(conn: &mut PgConnection) -> Vec<(String, i64)> {
    sqlx::query_as(
        "SELECT c.relname::text, pg_stat_get_xact_numscans(c.oid) FROM pg_index i
           JOIN pg_class c ON c.oid = i.indexrelid
          WHERE i.indrelid = 'transaction'::regclass AND pg_stat_get_xact_numscans(c.oid) > 0
          ORDER BY 1",
    )
    .fetch_all(conn)
    .await
    .unwrap()
}

#[tokio::test]
async fn on_a_fresh_database_a_payments_attempt_unresolved_mark_and_status_check_find_it_by_its_id()
{
    let settings = settings().await;
    let pool = pool(&settings).await;
    route_everything_to_simulator(&pool, "http://127.0.0.1:9").await;
    let merchant = paygate_api::merchants::create(&pool, &paygate_testkit::keys(), "m", None, None)
        .await
        .unwrap();
    let mut ids: Vec<TransactionId> = Vec::new();
    for n in 0..5 {
        let mut tx = pool.begin().await.unwrap();
        let payment = transactions::create(
            &mut tx,
            plain_deposit(&merchant.id, "12.00", &format!("u-{n}")),
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
        ids.push(payment.id);
    }
    let seen = transactions::find(&pool, &ids[0]).await.unwrap().unwrap();

    let mut conn = pool.acquire().await.unwrap();
    // What sqlx's cached statements run once PostgreSQL prefers the generic plan.
    sqlx::query("SET plan_cache_mode = force_generic_plan")
        .execute(&mut *conn)
        .await
        .unwrap();
    let mut tx = sqlx::Connection::begin(&mut *conn).await.unwrap();
    transactions::record_attempt(&mut tx, &seen, "simjson", None)
        .await
        .unwrap();
    transactions::mark_unresolved(&mut tx, &seen.id, "no definite answer")
        .await
        .unwrap();
    sqlx::query("UPDATE transaction SET status = 'processing' WHERE id = $1")
        .bind(ids[1].as_str())
        .execute(&mut *tx)
        .await
        .unwrap();
    transactions::next_status_check(&mut *tx, &ids[1], std::time::Duration::from_secs(60))
        .await
        .unwrap();
    let used = scanned(&mut tx).await;
    tx.rollback().await.unwrap();

    assert!(
        used.iter().all(|(index, _)| index == "transaction_pkey"),
        "the payment is found by its primary key, not by walking another index: {used:?}"
    );
    assert!(
        used.iter().any(|(index, _)| index == "transaction_pkey"),
        "{used:?}"
    );
}
