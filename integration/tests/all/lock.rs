use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use paygate_common::lock::Locks;

async fn locks() -> Locks {
    let settings = paygate_testkit::settings().await;
    Locks::connect(&settings.redis).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tasks_racing_for_a_lock_never_hold_it_at_the_same_time() {
    let locks = locks().await;
    let holders = Arc::new(AtomicU32::new(0));
    let acquisitions = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (locks, holders, acquisitions) = (locks.clone(), holders.clone(), acquisitions.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..10 {
                let lock = locks
                    .acquire("txn_race", Duration::from_secs(10))
                    .await
                    .unwrap()
                    .expect("lock taken");
                let before = holders.fetch_add(1, Ordering::SeqCst);
                assert_eq!(before, 0, "two tasks held the lock at once");
                tokio::time::sleep(Duration::from_millis(2)).await;
                holders.fetch_sub(1, Ordering::SeqCst);
                acquisitions.fetch_add(1, Ordering::SeqCst);
                assert!(locks.release(lock).await.unwrap(), "a held lock releases");
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(acquisitions.load(Ordering::SeqCst), 80);
}

#[tokio::test]
async fn a_release_with_a_stale_token_does_not_free_the_next_holders_lock() {
    let locks = locks().await.with_ttl(Duration::from_millis(300));
    let first = locks
        .try_acquire("txn_stale")
        .await
        .unwrap()
        .expect("free at first");
    assert!(
        locks.try_acquire("txn_stale").await.unwrap().is_none(),
        "held, so not free"
    );

    tokio::time::sleep(Duration::from_millis(450)).await;
    let second = locks
        .try_acquire("txn_stale")
        .await
        .unwrap()
        .expect("free after the ttl");

    assert!(
        !locks.release(first).await.unwrap(),
        "the expired holder's release must not count"
    );
    assert!(
        locks.try_acquire("txn_stale").await.unwrap().is_none(),
        "the second holder keeps its lock"
    );
    assert!(locks.release(second).await.unwrap());
    assert!(locks.try_acquire("txn_stale").await.unwrap().is_some());
}
