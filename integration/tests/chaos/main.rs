//! The chaos suite: the four real service binaries, a broker, Redis and PostgreSQL of
//! this test's own, the gateway simulator and a merchant's webhook endpoint. While
//! deposits and withdrawals flow, each service in turn is SIGKILLed (its supervisor
//! starts it again), the broker, Redis and PostgreSQL are crashed and restarted, and two
//! payments stall at their gateway; for a while the JSON gateway is overloaded (it
//! stores a payment only after our timeout, answers "unknown" meanwhile and 409 to a
//! re-submit) and the SOAP gateway's callbacks are lost. Afterwards:
//! - every payment is final, except the stalled ones, which are deliberately left
//!   unresolved (pending, dead-lettered) until their gateway answers, and then final;
//! - the simulator charged no payment twice (a completed one exactly once), and the
//!   money invariant holds (testkit's checker: nothing charged at two gateways, nothing
//!   failed yet charged, nothing left without an owner);
//! - every status a payment reached was delivered to the merchant under exactly one
//!   webhook id, and no payment's final state was ever followed by another status;
//! - every gateway's settlement report for the day, reconciled, finds no difference;
//! - the dead-letter topics hold only the stalled payments and payments sent while the
//!   gateway was overloaded (left unresolved until it answered);
//! - completed deposits are refunded (in part) while the faults land: every refund
//!   completes, is refunded once at the gateway that charged, and its `refund.completed`
//!   reaches the merchant under one webhook id (the money invariant covers refunds).
//!
//! `scripts/test` runs the bounded form (one round of faults). `PAYGATE_CHAOS_LONG=1`
//! runs several rounds at a higher rate.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod round_trips;
mod stack;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use paygate_common::config::Topics;
use paygate_testkit::{eventually, read_topic};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use stack::{Stack, SERVICES};

/// How hard a run pushes.
struct Plan {
    /// Payments sent per second while the faults land.
    rate: u32,
    /// Rounds of the fault cycle (every service, the broker, Redis, PostgreSQL).
    rounds: usize,
    /// The pause between two faults.
    gap: Duration,
}

impl Plan {
    fn from_env() -> Self {
        if std::env::var("PAYGATE_CHAOS_LONG").is_ok_and(|v| v == "1") {
            Plan {
                rate: 10,
                rounds: 4,
                gap: Duration::from_secs(6),
            }
        } else {
            Plan {
                rate: 4,
                rounds: 1,
                gap: Duration::from_millis(3_500),
            }
        }
    }
}

/// An outbox row as the diagnosis of a stuck payment shows it: transaction, event type,
/// why it was set aside, published, attempts, last error.
type OutboxRow = (String, String, Option<String>, bool, i32, Option<String>);

/// One fault of the cycle.
#[derive(Debug, Clone, Copy)]
enum Fault {
    Kill(usize),
    Broker,
    Redis,
    Postgres,
    /// The JSON gateway overloaded and the SOAP gateway's callbacks lost, for a gap.
    Misbehave,
}

/// How long the overloaded JSON gateway holds a first submit: longer than the tests'
/// 2 s gateway timeout.
const OVERLOAD: Duration = Duration::from_millis(3_000);

/// A payment as the merchant sent it.
#[derive(Debug, Clone)]
pub(crate) struct Sent {
    pub(crate) id: String,
    pub(crate) stalled: bool,
    /// When it was first sent.
    pub(crate) at: tokio::time::Instant,
}

/// Sends one payment until the api accepts it. The same `Idempotency-Key` every time,
/// so a request that was stored before its answer was lost (api killed, PostgreSQL
/// gone) is answered with the first payment instead of making a second.
pub(crate) async fn send(
    http: &reqwest::Client,
    api: &str,
    key: &str,
    n: u32,
    stalled: bool,
) -> Sent {
    let kind = if n % 2 == 0 {
        "deposits"
    } else {
        "withdrawals"
    };
    let amount = if stalled {
        "10.07".to_owned()
    } else if n % 10 == 3 {
        // Declined by the gateway: final `failed`.
        format!("{}.01", 10 + n % 40)
    } else {
        format!("{}.{:02}", 10 + n % 40, [0, 10, 25, 50][(n % 4) as usize])
    };
    let mut body =
        json!({"user_id": format!("user-{}", n % 7), "amount": amount, "currency": "EUR"});
    if n % 3 == 0 {
        // Germany goes to the SOAP gateway first.
        body["country"] = json!("DE");
    }
    let at = tokio::time::Instant::now();
    let deadline = at + Duration::from_secs(90);
    loop {
        let answer = http
            .post(format!("{api}/v1/{kind}"))
            .bearer_auth(key)
            .header("Idempotency-Key", format!("chaos-{n}"))
            .timeout(Duration::from_secs(10))
            .json(&body)
            .send()
            .await;
        if let Ok(answer) = answer {
            if answer.status() == StatusCode::ACCEPTED {
                let answer: Value = answer.json().await.unwrap();
                return Sent {
                    id: answer["id"].as_str().unwrap().to_owned(),
                    stalled,
                    at,
                };
            }
            assert!(
                answer.status().is_server_error()
                    || answer.status() == StatusCode::CONFLICT
                    || answer.status() == StatusCode::TOO_MANY_REQUESTS,
                "payment {n} refused: {} {}",
                answer.status(),
                answer.text().await.unwrap_or_default()
            );
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "payment {n} was not accepted within 90 s"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Refunds 1.00 of `payment` until the api accepts it, with the same `Idempotency-Key`
/// every time (a refund stored before its answer was lost is answered again, not made
/// twice). Returns the refund's id.
/// Asks for a settlement run of `gateway`'s UTC day and waits until it ended.
async fn reconcile_today(http: &reqwest::Client, api: &str, gateway: &str) -> Value {
    let asked = http
        .post(format!("{api}/admin/v1/settlement/runs"))
        .bearer_auth(paygate_testkit::ADMIN_TOKEN)
        .json(&json!({"gateway": gateway, "date": chrono::Utc::now().date_naive().to_string()}))
        .send()
        .await
        .unwrap();
    assert_eq!(asked.status(), StatusCode::ACCEPTED);
    eventually(
        &format!("the settlement run of {gateway}"),
        Duration::from_secs(60),
        || async {
            let runs = paygate_testkit::json_of(
                http.get(format!("{api}/admin/v1/settlement/runs?gateway={gateway}"))
                    .bearer_auth(paygate_testkit::ADMIN_TOKEN),
            )
            .await;
            let run = runs["data"][0].clone();
            (run["status"] == "completed" || run["status"] == "failed").then_some(run)
        },
    )
    .await
}

async fn refund(http: &reqwest::Client, api: &str, key: &str, payment: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let answer = http
            .post(format!("{api}/v1/transactions/{payment}/refunds"))
            .bearer_auth(key)
            .header("Idempotency-Key", format!("chaos-refund-{payment}"))
            .timeout(Duration::from_secs(10))
            .json(&json!({"amount": "1.00", "reason": "chaos"}))
            .send()
            .await;
        if let Ok(answer) = answer {
            if answer.status() == StatusCode::ACCEPTED {
                let answer: Value = answer.json().await.unwrap();
                return answer["id"].as_str().unwrap().to_owned();
            }
            assert!(
                answer.status().is_server_error()
                    || answer.status() == StatusCode::CONFLICT
                    || answer.status() == StatusCode::TOO_MANY_REQUESTS,
                "refund of {payment} refused: {} {}",
                answer.status(),
                answer.text().await.unwrap_or_default()
            );
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the refund of {payment} was not accepted within 90 s"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn while_every_part_of_paygate_dies_and_returns_no_payment_is_lost_charged_twice_announced_twice_or_overwritten(
) {
    let plan = Plan::from_env();
    let Stack {
        postgres,
        mut broker,
        mut redis,
        settings,
        pool,
        stop,
        simulator,
        webhooks,
        merchant,
        api,
        services,
        http,
    } = Stack::start(&[], |_, env| env).await;

    // The load: `rate` payments a second until the faults are done; two of them stall.
    let sent: Arc<Mutex<Vec<Sent>>> = Arc::default();
    let load_done = CancellationToken::new();
    let rate = plan.rate;
    let load = tokio::spawn({
        let (sent, load_done, http, api) =
            (sent.clone(), load_done.clone(), http.clone(), api.clone());
        let key = merchant.api_key.clone();
        async move {
            let mut senders = Vec::new();
            let mut n = 0u32;
            let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
            while !load_done.is_cancelled() {
                tick.tick().await;
                let stalled = n == 1 || n == 5;
                let (sent, http, api, key) = (sent.clone(), http.clone(), api.clone(), key.clone());
                senders.push(tokio::spawn(async move {
                    let payment = send(&http, &api, &key, n, stalled).await;
                    sent.lock().unwrap().push(payment);
                }));
                n += 1;
            }
            for sender in senders {
                sender.await.unwrap();
            }
        }
    });

    // Refunds of completed deposits while the faults land, each asked until accepted.
    let refunds: Arc<Mutex<Vec<String>>> = Arc::default();
    let refunder = tokio::spawn({
        let (refunds, load_done, http, api, pool) = (
            refunds.clone(),
            load_done.clone(),
            http.clone(),
            api.clone(),
            pool.clone(),
        );
        let key = merchant.api_key.clone();
        async move {
            let mut asked: BTreeSet<String> = BTreeSet::new();
            while !load_done.is_cancelled() {
                tokio::time::sleep(Duration::from_millis(700)).await;
                let completed: Vec<String> = sqlx::query_scalar(
                    "SELECT id FROM transaction WHERE kind = 'deposit' AND status = 'completed'
                      ORDER BY created_at LIMIT 50",
                )
                .fetch_all(&pool)
                .await
                .unwrap_or_default();
                let Some(payment) = completed.into_iter().find(|id| !asked.contains(id)) else {
                    continue;
                };
                asked.insert(payment.clone());
                let refund = refund(&http, &api, &key, &payment).await;
                refunds.lock().unwrap().push(refund);
            }
        }
    });

    // The faults, one after another, while the load runs.
    let mut cycle: Vec<Fault> = (0..SERVICES.len()).map(Fault::Kill).collect();
    cycle.extend([
        Fault::Broker,
        Fault::Redis,
        Fault::Postgres,
        Fault::Misbehave,
    ]);
    // Payments sent while the JSON gateway was overloaded (and a little before: one
    // already on its way meets the overload too).
    let mut overloaded: Vec<(tokio::time::Instant, tokio::time::Instant)> = Vec::new();
    tokio::time::sleep(Duration::from_secs(2)).await;
    for _ in 0..plan.rounds {
        for fault in &cycle {
            match *fault {
                Fault::Kill(i) => services[i].kill().await,
                Fault::Broker => {
                    broker.kill().await;
                    tokio::time::sleep(Duration::from_millis(1_500)).await;
                    broker.restart().await;
                }
                Fault::Redis => {
                    redis.kill().await;
                    tokio::time::sleep(Duration::from_millis(1_000)).await;
                    redis.restart().await;
                }
                Fault::Postgres => {
                    postgres
                        .crash_and_restart(Duration::from_millis(1_500))
                        .await;
                }
                Fault::Misbehave => {
                    let from = tokio::time::Instant::now() - Duration::from_secs(3);
                    paygate_testkit::misbehave(
                        &simulator,
                        json!({"json": {"overloaded_ms": OVERLOAD.as_millis(), "duplicate_in_flight": true},
                               "soap": {"lost_callback": true}}),
                    )
                    .await;
                    tokio::time::sleep(plan.gap).await;
                    paygate_testkit::misbehave(&simulator, json!({})).await;
                    overloaded.push((from, tokio::time::Instant::now() + OVERLOAD));
                }
            }
            tokio::time::sleep(plan.gap).await;
        }
    }
    load_done.cancel();
    load.await.unwrap();
    refunder.await.unwrap();
    let refunds = refunds.lock().unwrap().clone();
    assert!(
        !refunds.is_empty(),
        "deposits were refunded during the faults"
    );
    let sent = sent.lock().unwrap().clone();
    let stalled: BTreeSet<String> = sent
        .iter()
        .filter(|p| p.stalled)
        .map(|p| p.id.clone())
        .collect();
    let ids: BTreeSet<String> = sent.iter().map(|p| p.id.clone()).collect();
    assert_eq!(ids.len(), sent.len(), "every request made its own payment");
    assert_eq!(stalled.len(), 2);

    // Every payment but the stalled ones reaches a final state; those are left pending
    // and marked unresolved (their gateway may hold the money).
    let statuses = || async {
        let rows: Vec<(String, String, bool)> =
            sqlx::query_as("SELECT id, status, unresolved_since IS NOT NULL FROM transaction")
                .fetch_all(&pool)
                .await
                .unwrap_or_default();
        rows.into_iter()
            .map(|(id, status, unresolved)| (id, (status, unresolved)))
            .collect::<BTreeMap<_, _>>()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        let now = statuses().await;
        let unsettled: Vec<(&String, Option<&(String, bool)>)> = ids
            .iter()
            .map(|id| (id, now.get(id)))
            .filter(|(id, state)| match state {
                Some((status, unresolved)) if stalled.contains(*id) => {
                    !(status == "pending" && *unresolved)
                }
                Some((status, _)) => status != "completed" && status != "failed",
                None => true,
            })
            .collect();
        if unsettled.is_empty() {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            let held: Vec<OutboxRow> = sqlx::query_as(
                "SELECT transaction_id, event_type, set_aside_reason, published_at IS NOT NULL,
                            publish_attempts, last_error
                       FROM transaction_event WHERE transaction_id = ANY($1) ORDER BY seq",
            )
            .bind(
                unsettled
                    .iter()
                    .map(|(id, _)| (*id).clone())
                    .collect::<Vec<_>>(),
            )
            .fetch_all(&pool)
            .await
            .unwrap_or_default();
            panic!(
                "not settled after 180 s: {unsettled:?}\nTheir events: {held:#?}\nRuns: {:?}",
                {
                    let mut runs = Vec::new();
                    for service in &services {
                        runs.push((service.name().to_owned(), service.restarts().await));
                    }
                    runs
                }
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(statuses().await.len(), ids.len(), "no payment from nowhere");

    // Their gateway answers at last: a status query settles them.
    for id in &stalled {
        let released = http
            .post(format!("{simulator}/control/release/{id}"))
            .send()
            .await
            .unwrap();
        assert!(released.status().is_success());
    }
    eventually(
        "the stalled payments to settle once released",
        Duration::from_secs(60),
        || async {
            let now = statuses().await;
            stalled
                .iter()
                .all(|id| now[id].0 == "completed")
                .then_some(())
        },
    )
    .await;
    let finals = statuses().await;

    // No payment charged twice; a completed one exactly once.
    for id in &ids {
        let charges = paygate_testkit::json_of(http.get(format!("{simulator}/charges/{id}"))).await
            ["charges"]
            .as_u64()
            .unwrap();
        assert!(charges <= 1, "{id} charged {charges} times");
        if finals[id].0 == "completed" {
            assert_eq!(charges, 1, "{id} completed without a charge");
        }
    }

    // No final state was followed by another status change.
    let history: Vec<(String, i32, String)> = sqlx::query_as(
        "SELECT transaction_id, version, status FROM transaction_event
          WHERE status IS NOT NULL AND version IS NOT NULL ORDER BY transaction_id, version",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let mut by_payment: HashMap<&str, Vec<&str>> = HashMap::new();
    for (id, _, status) in &history {
        by_payment.entry(id).or_default().push(status);
    }
    for id in &ids {
        let steps = &by_payment[id.as_str()];
        let finals_in_history = steps
            .iter()
            .filter(|s| **s == "completed" || **s == "failed")
            .count();
        assert_eq!(finals_in_history, 1, "{id} went final once: {steps:?}");
        assert_eq!(
            steps.last().copied(),
            Some(finals[id].0.as_str()),
            "{id}: nothing after its final state: {steps:?}"
        );
    }

    // The merchant heard of each status of each payment under exactly one webhook id,
    // and of its final state in particular.
    eventually(
        "a webhook for every final state",
        Duration::from_secs(60),
        || async {
            let heard: BTreeSet<(String, String)> = webhooks
                .received()
                .iter()
                .map(|w| {
                    let body = w.json();
                    (
                        body["data"]["id"].as_str().unwrap_or_default().to_owned(),
                        body["type"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect();
            ids.iter()
                .all(|id| heard.contains(&(id.clone(), format!("transaction.{}", finals[id].0))))
                .then_some(())
        },
    )
    .await;
    let mut webhook_ids: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for webhook in webhooks.received() {
        let body = webhook.json();
        let payment = body["data"]["id"].as_str().unwrap().to_owned();
        let kind = body["type"].as_str().unwrap().to_owned();
        if kind == "transaction.completed" || kind == "transaction.failed" {
            assert_eq!(
                kind,
                format!("transaction.{}", finals[&payment].0),
                "{payment}: the merchant was told of a final state it does not have"
            );
        }
        webhook_ids
            .entry((payment, kind))
            .or_default()
            .insert(webhook.header("webhook-id").to_owned());
    }
    for ((payment, kind), delivered) in &webhook_ids {
        assert_eq!(
            delivered.len(),
            1,
            "{payment} {kind} arrived under several webhook ids: {delivered:?}"
        );
    }

    // Every refund completes, and the merchant hears of it under one webhook id (the
    // uniqueness was checked above with the rest).
    eventually(
        "every refund to complete",
        Duration::from_secs(90),
        || async {
            let done: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM refund WHERE id = ANY($1) AND status = 'completed'",
            )
            .bind(&refunds)
            .fetch_one(&pool)
            .await
            .unwrap_or_default();
            (done == i64::try_from(refunds.len()).unwrap()).then_some(())
        },
    )
    .await;
    eventually(
        "a refund.completed webhook for every refund",
        Duration::from_secs(60),
        || async {
            let heard: BTreeSet<String> = webhooks
                .received()
                .iter()
                .map(|w| w.json())
                .filter(|b| b["type"] == "refund.completed")
                .map(|b| b["data"]["id"].as_str().unwrap_or_default().to_owned())
                .collect();
            refunds.iter().all(|id| heard.contains(id)).then_some(())
        },
    )
    .await;

    // Every gateway's books agree with Paygate's, refunds included.
    paygate_testkit::assert_money_invariant(&pool, &[&simulator], paygate_testkit::Moment::Settled)
        .await;

    // And by the gateways' own settlement reports: a reconciliation of each gateway's
    // day finds nothing unexplained.
    for gateway in ["simjson", "simsoap", "simcard"] {
        let run = reconcile_today(&http, &api, gateway).await;
        assert_eq!(run["status"], "completed", "{gateway}: {run}");
    }
    let differences = paygate_testkit::json_of(
        http.get(format!(
            "{api}/admin/v1/settlement/differences?status=all&limit=500"
        ))
        .bearer_auth(paygate_testkit::ADMIN_TOKEN),
    )
    .await;
    assert_eq!(
        differences["data"],
        json!([]),
        "the gateways' reports agree with Paygate's books"
    );

    // The dead-letter topics hold the stalled payments, maybe payments that met the
    // overloaded gateway (unresolved until it answered), and nothing else.
    let met_overload: BTreeSet<String> = sent
        .iter()
        .filter(|p| {
            overloaded
                .iter()
                .any(|(from, to)| (*from..*to).contains(&p.at))
        })
        .map(|p| p.id.clone())
        .collect();
    let mut dead_lettered = BTreeSet::new();
    for topic in settings.kafka.topics.all() {
        let dead = read_topic(
            &settings,
            &Topics::dead_letter(topic),
            0,
            Duration::from_secs(3),
        )
        .await;
        for message in dead {
            assert!(
                stalled.contains(&message.key) || met_overload.contains(&message.key),
                "{} dead-lettered {} ({:?})",
                Topics::dead_letter(topic),
                message.key,
                message.headers.get("dlq-reason")
            );
            dead_lettered.insert(message.key);
        }
    }
    assert!(
        stalled.is_subset(&dead_lettered),
        "each stalled payment was dead-lettered: {dead_lettered:?}"
    );
    let declined = finals.values().filter(|(s, _)| s == "failed").count();
    assert!(
        declined > 0 && declined < ids.len(),
        "some payments were declined, most completed ({declined} of {})",
        ids.len()
    );

    let mut killed = Vec::new();
    for service in services {
        let restarts = service.restarts().await;
        assert!(
            restarts.len() >= plan.rounds,
            "{} was killed {} times but restarted {}",
            service.name(),
            plan.rounds,
            restarts.len()
        );
        killed.push(format!("{}: {restarts:?}", service.name()));
        service.terminate().await;
    }
    eprintln!(
        "chaos: {} payments, {} refunds, {} rounds of faults; runs ended: {}",
        ids.len(),
        refunds.len(),
        plan.rounds,
        killed.join("; ")
    );
    stop.cancel();
    pool.close().await;
}
