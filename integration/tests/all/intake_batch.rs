//! Intake under load writes a group commit's payments in one statement
//! (`PendingPayment::write_all`). What that statement stores must be exactly what each
//! payment's own statement (`create_at_once`) stores, and it must leave the same
//! payments to the careful path: a merchant with limits in the currency, an
//! `Idempotency-Key` already taken, or one an earlier payment of the same batch holds.

use paygate_common::cards::SealedCard;
use paygate_common::domain::TransactionId;
use paygate_common::group_commit::Write;
use paygate_common::transactions::{Intake, KeptAnswer, PendingPayment};
use paygate_testkit::{plain_deposit, pool, settings};
use serde_json::Value;
use sqlx::PgPool;

fn kept(key: &str, body: &str) -> KeptAnswer {
    KeptAnswer {
        key: key.to_owned(),
        request_hash: body.as_bytes().to_vec(),
        status_code: 202,
        headers: serde_json::json!({"location": format!("/v1/{body}")}),
        body: body.as_bytes().to_vec(),
    }
}

/// The same payment under another id.
fn twin(payment: &PendingPayment, key: Option<&str>) -> PendingPayment {
    let mut record = payment.record.clone();
    record.id = TransactionId::new();
    PendingPayment {
        record,
        card: payment.card.clone(),
        answer: payment.answer.as_ref().map(|a| {
            let mut answer = kept(key.unwrap_or(&a.key), "twin");
            answer.request_hash.clone_from(&a.request_hash);
            answer.headers = a.headers.clone();
            answer.body.clone_from(&a.body);
            answer
        }),
    }
}

/// A stored payment and its first event, but for its id (and the ids inside the event).
async fn stored(pool: &PgPool, id: &TransactionId) -> Option<(Value, Value)> {
    sqlx::query_as(
        "SELECT to_jsonb(t) - 'id',
                jsonb_build_object('version', e.version, 'type', e.event_type,
                                   'status', e.status, 'destination', e.destination,
                                   'published', e.published_at IS NOT NULL)
           FROM transaction t JOIN transaction_event e ON e.transaction_id = t.id
          WHERE t.id = $1",
    )
    .bind(id.as_str())
    .fetch_optional(pool)
    .await
    .unwrap()
}

async fn kept_answer(pool: &PgPool, merchant: &str, key: &str) -> Option<Value> {
    sqlx::query_scalar(
        "SELECT jsonb_build_object('hash', encode(request_hash, 'hex'), 'status', status_code,
                                   'headers', response_headers, 'body', encode(response_body, 'hex'))
           FROM idempotency_key WHERE merchant_id = $1 AND key = $2",
    )
    .bind(merchant)
    .bind(key)
    .fetch_optional(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_batch_written_in_one_statement_stores_what_each_payment_alone_would_and_leaves_the_same_ones_to_the_careful_path(
) {
    let settings = settings().await;
    let pool = pool(&settings).await;
    let keys = paygate_testkit::keys();
    let merchant = paygate_api::merchants::create(&pool, &keys, "m", None, None)
        .await
        .unwrap();
    let limited = paygate_api::merchants::create(&pool, &keys, "limited", None, None)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO merchant_payout_limit (merchant_id, currency, max_payout) VALUES ($1, 'USD', 100)",
    )
    .bind(limited.id.as_str())
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO idempotency_key (merchant_id, key, request_hash) VALUES ($1, 'taken', '\\x00')",
    )
    .bind(merchant.id.as_str())
    .execute(&pool)
    .await
    .unwrap();

    let payment = |merchant: &paygate_common::domain::MerchantId, user: &str, key: Option<&str>| {
        PendingPayment {
            record: plain_deposit(merchant, "12.50", user).pending(),
            card: None,
            answer: key.map(|key| kept(key, user)),
        }
    };
    let mut full = payment(&merchant.id, "u-full", None);
    full.record.country = Some("DE".to_owned());
    full.record.reference = Some("order-7".to_owned());
    full.record.metadata =
        paygate_common::metadata::Metadata::parse([("order".to_owned(), "A-17".to_owned())].into())
            .unwrap();
    full.record.pinned_gateways = Some(vec!["simjson".to_owned(), "simxml".to_owned()]);
    full.record.gateway_fallback = true;
    full.record.notification_url = Some("https://merchant.example/hooks".to_owned());
    full.record.payment_method = "card".to_owned();
    full.record.card_masked = Some("424242******4242".to_owned());
    full.card = Some(SealedCard {
        masked: "424242******4242".to_owned(),
        key_id: "k1".to_owned(),
        ciphertext: vec![1, 2, 3],
        cvv_given: true,
    });
    let batch = [
        payment(&merchant.id, "u-plain", None),
        full,
        payment(&merchant.id, "u-keyed", Some("k-1")),
        payment(&merchant.id, "u-same-key", Some("k-1")),
        payment(&limited.id, "u-limited", None),
        payment(&merchant.id, "u-taken", Some("taken")),
    ];
    let expected = [
        Intake::Created,
        Intake::Created,
        Intake::Created,
        Intake::KeyTaken,
        Intake::Limited,
        Intake::KeyTaken,
    ];

    let mut tx = pool.begin().await.unwrap();
    let refs: Vec<&PendingPayment> = batch.iter().collect();
    let together = PendingPayment::write_all(&refs, &mut tx).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(together, expected, "what each payment of the batch became");

    // The same payments, each alone (their keys renamed, as the batch's are now taken).
    let twins: Vec<PendingPayment> = batch
        .iter()
        .map(|p| match p.answer.as_ref().map(|a| a.key.as_str()) {
            Some("k-1") => twin(p, Some("t-1")),
            _ => twin(p, None),
        })
        .collect();
    let mut alone = Vec::new();
    for twin in &twins {
        let mut conn = pool.acquire().await.unwrap();
        alone.push(twin.write(&mut conn).await.unwrap());
    }
    assert_eq!(alone, expected, "what each payment alone became");

    for (one, other) in batch.iter().zip(&twins) {
        let (in_batch, by_itself) = (
            stored(&pool, &one.record.id).await,
            stored(&pool, &other.record.id).await,
        );
        assert_eq!(
            in_batch, by_itself,
            "{} is stored as it would be alone",
            one.record.user_id
        );
    }
    assert!(stored(&pool, &batch[1].record.id)
        .await
        .is_some_and(|(row, _)| row["pinned_gateways"]
            == serde_json::json!(["simjson", "simxml"])
            && row["metadata"] == serde_json::json!({"order": "A-17"})));
    assert_eq!(
        kept_answer(&pool, merchant.id.as_str(), "k-1").await,
        kept_answer(&pool, merchant.id.as_str(), "t-1").await,
        "the batch keeps the answer as a payment alone keeps it"
    );
    assert!(kept_answer(&pool, merchant.id.as_str(), "k-1")
        .await
        .is_some_and(|a| a["body"] == serde_json::json!(hex(b"u-keyed"))));
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM transaction_event")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        events, 6,
        "one first event per payment created, nothing else"
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A kept callback and its announcement, but for the ids.
async fn kept_callback(pool: &PgPool, gateway: &str, dedup_key: &str) -> Option<Value> {
    sqlx::query_scalar(
        "SELECT jsonb_build_object('transaction', c.transaction_id, 'content_type', c.content_type,
                                   'body', encode(c.body, 'hex'), 'refund', c.refund_id,
                                   'announced', (SELECT jsonb_agg(jsonb_build_array(e.event_type, e.destination))
                                                   FROM transaction_event e
                                                  WHERE e.transaction_id = c.transaction_id
                                                    AND e.event_type <> 'transaction.created'))
           FROM gateway_callback c WHERE c.gateway = $1 AND c.dedup_key = $2",
    )
    .bind(gateway)
    .bind(dedup_key)
    .fetch_optional(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn callbacks_kept_in_one_statement_are_kept_announced_or_refused_as_each_alone_would_be() {
    use paygate_common::transactions::{CallbackStored, NewCallback};
    let settings = settings().await;
    let pool = pool(&settings).await;
    paygate_testkit::route_everything_to_simulator(&pool, "http://127.0.0.1:9").await;
    let merchant = paygate_api::merchants::create(&pool, &paygate_testkit::keys(), "m", None, None)
        .await
        .unwrap();
    let mut payments = Vec::new();
    for user in ["u-batch", "u-alone"] {
        let record = plain_deposit(&merchant.id, "5.00", user).pending();
        let mut conn = pool.acquire().await.unwrap();
        paygate_common::transactions::create_at_once(&mut *conn, &record, None, None)
            .await
            .unwrap();
        payments.push(record.id);
    }
    let callback = |payment: &TransactionId, key: &str| NewCallback {
        gateway: "simjson".to_owned(),
        transaction_id: payment.clone(),
        refund_id: None,
        dedup_key: key.to_owned(),
        content_type: "application/json".to_owned(),
        body: format!("{{\"key\":\"{key}\"}}").into_bytes(),
    };
    let earlier = callback(&payments[0], "b-earlier");
    let mut conn = pool.acquire().await.unwrap();
    earlier.write(&mut conn).await.unwrap();
    drop(conn);
    let batch = [
        callback(&payments[0], "b-1"),
        callback(&payments[0], "b-1"),
        callback(&TransactionId::new(), "b-unknown"),
        callback(&payments[0], "b-earlier"),
        callback(&payments[0], "b-2"),
    ];
    let mut tx = pool.begin().await.unwrap();
    let refs: Vec<&NewCallback> = batch.iter().collect();
    let together = NewCallback::write_all(&refs, &mut tx).await.unwrap();
    tx.commit().await.unwrap();
    let shape = |stored: &[CallbackStored]| {
        stored
            .iter()
            .map(|s| match s {
                CallbackStored::Stored(_) => "stored",
                CallbackStored::Duplicate => "duplicate",
                CallbackStored::UnknownTransaction => "unknown",
            })
            .collect::<Vec<_>>()
    };
    let expected = ["stored", "duplicate", "unknown", "duplicate", "stored"];
    assert_eq!(
        shape(&together),
        expected,
        "what each callback of the batch became"
    );
    for (callback, stored) in batch.iter().zip(&together) {
        if let CallbackStored::Stored(id) = stored {
            let key: String =
                sqlx::query_scalar("SELECT dedup_key FROM gateway_callback WHERE id = $1")
                    .bind(id.as_str())
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            assert_eq!(key, callback.dedup_key, "each is answered with its own id");
        }
    }

    let twins: Vec<NewCallback> = batch
        .iter()
        .map(|c| {
            let payment = if c.transaction_id == payments[0] {
                &payments[1]
            } else {
                &c.transaction_id
            };
            let key = match c.dedup_key.as_str() {
                "b-earlier" => "b-earlier".to_owned(),
                other => other.replacen("b-", "a-", 1),
            };
            callback(payment, &key)
        })
        .collect();
    let mut alone = Vec::new();
    for twin in &twins {
        let mut conn = pool.acquire().await.unwrap();
        alone.push(twin.write(&mut conn).await.unwrap());
    }
    assert_eq!(shape(&alone), expected, "what each callback alone became");

    for (key, twin_key) in [("b-1", "a-1"), ("b-2", "a-2")] {
        let (in_batch, by_itself) = (
            kept_callback(&pool, "simjson", key).await.unwrap(),
            kept_callback(&pool, "simjson", twin_key).await.unwrap(),
        );
        assert_eq!(
            in_batch["body"],
            serde_json::json!(hex(format!("{{\"key\":\"{key}\"}}").as_bytes()))
        );
        // Announced once each: the earlier callback and the batch's two, against the
        // two kept alone.
        assert_eq!(in_batch["announced"].as_array().map(Vec::len), Some(3));
        assert_eq!(by_itself["announced"].as_array().map(Vec::len), Some(2));
        assert_eq!(in_batch["announced"][0], by_itself["announced"][0]);
        assert_eq!(in_batch["content_type"], by_itself["content_type"]);
        assert_eq!(in_batch["refund"], by_itself["refund"]);
    }
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM gateway_callback")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(kept, 5, "the earlier one, two of the batch and two alone");
}
