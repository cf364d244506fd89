//! The payment-processor against the simulator's three gateways over real HTTP: one
//! test per outcome class, the circuit breaker, the retry topic and its dead letters,
//! cards, one stuck payment among healthy ones, and the fence on the choice of gateway.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use paygate_common::cards::KeyRing;
use paygate_common::domain::{Country, Currency, Kind, Money};
use paygate_common::gateway::{self, CardDetails, Route};
use paygate_common::transactions::{self, NewTransaction};
use paygate_common::Settings;
use paygate_testkit::{
    attempted_gateways, control_simulator, eventually, json_of, read_topic, Suite, SuiteOptions,
    SIM_JSON_SECRET,
};
use secrecy::SecretString;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const LONG: Duration = Duration::from_secs(30);

async fn deposit(suite: &Suite, amount: &str, currency: &str, country: Option<&str>) -> String {
    let mut body = json!({"user_id": "user-1", "amount": amount, "currency": currency});
    if let Some(country) = country {
        body["country"] = json!(country);
    }
    let answer = json_of(suite.post("/v1/deposits").json(&body)).await;
    answer["id"]
        .as_str()
        .unwrap_or_else(|| panic!("refused: {answer}"))
        .to_owned()
}

/// (status, gateway, failure_reason) once the transaction reached `status`.
async fn reaches(suite: &Suite, id: &str, status: &str) -> (Option<String>, Option<String>) {
    eventually(&format!("{id} to be {status}"), LONG, || async {
        let (now, gateway, reason): (String, Option<String>, Option<String>) =
            sqlx::query_as("SELECT status, gateway, failure_reason FROM transaction WHERE id = $1")
                .bind(id)
                .fetch_one(&suite.pool)
                .await
                .unwrap();
        (now == status).then_some((gateway, reason))
    })
    .await
}

/// The status events of a transaction's history, in order.
async fn status_events(suite: &Suite, id: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT event_type FROM transaction_event
          WHERE transaction_id = $1 AND destination <> 'history' AND version IS NOT NULL
          ORDER BY version",
    )
    .bind(id)
    .fetch_all(&suite.pool)
    .await
    .unwrap()
}

/// The simulator's charge count for `reference`, total and by gateway.
async fn charges_at(simulator: &str, reference: &str) -> Value {
    json_of(reqwest::Client::new().get(format!("{simulator}/charges/{reference}"))).await
}

/// Registers a JSON gateway `code` at `url` with a route for `country` (or the default).
async fn json_gateway(suite: &Suite, code: &str, url: &str, country: Option<&str>, priority: i32) {
    let config = paygate_testkit::gateway_config(
        code,
        "json",
        format!("{url}/json"),
        SIM_JSON_SECRET,
        2_000,
    );
    paygate_testkit::register_gateway(&suite.pool, &config, Some((country, priority))).await;
}

/// Lets the payment-processor's route cache see a change made after it started.
async fn routes_reload() {
    tokio::time::sleep(Duration::from_millis(700)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_german_deposit_goes_to_the_soap_gateway_first_and_completes_by_soap_callback() {
    let suite = Suite::start().await;
    let id = deposit(&suite, "12.00", "EUR", Some("DE")).await;
    let (gateway, _) = reaches(&suite, &id, "completed").await;
    assert_eq!(gateway.as_deref(), Some("simsoap"));
    assert_eq!(attempted_gateways(&suite.pool, &id).await, ["simsoap"]);
    let charges = charges_at(&suite.simulator_url, &id).await;
    assert_eq!(charges["charges"], 1, "{charges}");
    let outcome: String = sqlx::query_scalar(
        "SELECT outcome FROM gateway_callback WHERE transaction_id = $1 AND gateway = 'simsoap'",
    )
    .bind(&id)
    .fetch_one(&suite.pool)
    .await
    .unwrap();
    assert_eq!(outcome, "applied", "the SOAP callback was read and applied");
    paygate_testkit::assert_money_invariant(
        &suite.pool,
        &[&suite.simulator_url],
        paygate_testkit::Moment::Settled,
    )
    .await;
    suite.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gateway_answering_503_is_passed_over_for_the_next_by_priority_and_the_default_route() {
    let suite = Suite::start().await;
    let down = paygate_testkit::start_simulator(CancellationToken::new(), Duration::ZERO).await;
    control_simulator(&down, Some(503), None).await;
    json_gateway(&suite, "fr_down", &down, Some("FR"), 1).await;
    routes_reload().await;

    let id = deposit(&suite, "13.00", "EUR", Some("FR")).await;
    let (gateway, _) = reaches(&suite, &id, "completed").await;
    assert_eq!(
        gateway.as_deref(),
        Some("simjson"),
        "the default route took it"
    );
    assert_eq!(
        attempted_gateways(&suite.pool, &id).await,
        ["fr_down", "simjson"]
    );
    assert_eq!(charges_at(&down, &id).await["charges"], 0);
    assert_eq!(charges_at(&suite.simulator_url, &id).await["charges"], 1);
    paygate_testkit::assert_money_invariant(
        &suite.pool,
        &[&suite.simulator_url, &down],
        paygate_testkit::Moment::Settled,
    )
    .await;
    suite.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_decline_is_final_and_no_other_gateway_is_asked() {
    let suite = Suite::start().await;
    let id = deposit(&suite, "14.01", "EUR", Some("DE")).await;
    let (gateway, reason) = reaches(&suite, &id, "failed").await;
    assert_eq!(gateway.as_deref(), Some("simsoap"));
    assert_eq!(reason.as_deref(), Some("insufficient_funds"));
    assert_eq!(attempted_gateways(&suite.pool, &id).await, ["simsoap"]);
    paygate_testkit::assert_money_invariant(
        &suite.pool,
        &[&suite.simulator_url],
        paygate_testkit::Moment::Settled,
    )
    .await;
    suite.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gateway_that_charges_then_answers_504_is_asked_for_the_status_and_the_backup_is_never_charged(
) {
    let suite = Suite::start().await;
    // .06: the SOAP gateway takes the money, then a proxy answers 504.
    let id = deposit(&suite, "15.06", "EUR", Some("DE")).await;
    let (gateway, _) = reaches(&suite, &id, "completed").await;
    assert_eq!(gateway.as_deref(), Some("simsoap"));
    assert_eq!(
        attempted_gateways(&suite.pool, &id).await,
        ["simsoap"],
        "the JSON backup was never asked"
    );
    let charges = charges_at(&suite.simulator_url, &id).await;
    assert_eq!(charges["charges"], 1, "{charges}");
    assert_eq!(charges["by_gateway"]["soap"], 1, "{charges}");
    paygate_testkit::assert_money_invariant(
        &suite.pool,
        &[&suite.simulator_url],
        paygate_testkit::Moment::Settled,
    )
    .await;
    suite.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_timeout_is_followed_by_a_status_query_and_ends_completed_with_one_charge() {
    let suite = Suite::start().await;
    // .02: the JSON gateway takes it and answers after our 2 s timeout.
    let id = deposit(&suite, "16.02", "USD", None).await;
    let (gateway, _) = reaches(&suite, &id, "completed").await;
    assert_eq!(gateway.as_deref(), Some("simjson"));
    assert_eq!(attempted_gateways(&suite.pool, &id).await, ["simjson"]);
    assert_eq!(charges_at(&suite.simulator_url, &id).await["charges"], 1);
    paygate_testkit::assert_money_invariant(
        &suite.pool,
        &[&suite.simulator_url],
        paygate_testkit::Moment::Settled,
    )
    .await;
    suite.stop().await;
}

fn sensitive_breaker(settings: &mut Settings) {
    let breaker = &mut settings.payment_processor.breaker;
    breaker.min_calls = 2;
    breaker.failure_rate = 0.5;
    breaker.open_ms = 2_000;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_circuit_opens_after_repeated_failures_and_closes_through_a_half_open_trial() {
    let suite = Suite::start_with(SuiteOptions {
        tweak: Some(sensitive_breaker),
        ..SuiteOptions::default()
    })
    .await;
    let flaky = paygate_testkit::start_simulator(CancellationToken::new(), Duration::ZERO).await;
    control_simulator(&flaky, Some(503), None).await;
    json_gateway(&suite, "fr_flaky", &flaky, Some("FR"), 1).await;
    routes_reload().await;

    // Two failed calls open the circuit.
    for amount in ["20.00", "21.00"] {
        let id = deposit(&suite, amount, "EUR", Some("FR")).await;
        reaches(&suite, &id, "completed").await;
        assert_eq!(
            attempted_gateways(&suite.pool, &id).await,
            ["fr_flaky", "simjson"]
        );
    }
    // Open: the flaky gateway is skipped without a call.
    let skipped = deposit(&suite, "22.00", "EUR", Some("FR")).await;
    reaches(&suite, &skipped, "completed").await;
    assert_eq!(attempted_gateways(&suite.pool, &skipped).await, ["simjson"]);

    // It recovers; after the cool-down one trial call goes through, succeeds, and
    // closes the circuit.
    control_simulator(&flaky, None, None).await;
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    let trial = deposit(&suite, "23.00", "EUR", Some("FR")).await;
    let (gateway, _) = reaches(&suite, &trial, "completed").await;
    assert_eq!(gateway.as_deref(), Some("fr_flaky"));
    let after = deposit(&suite, "24.00", "EUR", Some("FR")).await;
    let (gateway, _) = reaches(&suite, &after, "completed").await;
    assert_eq!(gateway.as_deref(), Some("fr_flaky"), "closed again");
    suite.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_payment_whose_gateways_stay_down_is_retried_then_failed_and_dead_lettered_with_its_reason(
) {
    let suite = Suite::start().await;
    let down = paygate_testkit::start_simulator(CancellationToken::new(), Duration::ZERO).await;
    control_simulator(&down, Some(503), None).await;
    // GBP goes only to the down gateway.
    json_gateway(&suite, "gbp_down", &down, None, 1).await;
    sqlx::query("DELETE FROM gateway_route WHERE gateway_code = 'gbp_down'")
        .execute(&suite.pool)
        .await
        .unwrap();
    gateway::upsert_route(
        &suite.pool,
        &Route {
            country: None,
            currency: Some("GBP".to_owned()),
            kind: None,
            priority: 1,
            gateway_code: "gbp_down".to_owned(),
        },
    )
    .await
    .unwrap();
    sqlx::query("UPDATE gateway SET enabled = false WHERE code = 'simjson'")
        .execute(&suite.pool)
        .await
        .unwrap();
    routes_reload().await;

    let id = deposit(&suite, "30.00", "GBP", None).await;
    let (_, reason) = reaches(&suite, &id, "failed").await;
    let reason = reason.unwrap();
    assert!(reason.contains("failed after 4 attempts"), "{reason}");
    assert!(reason.contains("503"), "{reason}");
    assert_eq!(
        attempted_gateways(&suite.pool, &id).await,
        ["gbp_down"; 4],
        "one call per attempt, through the retry topic"
    );
    assert_eq!(charges_at(&down, &id).await["charges"], 0);

    let retry_dlq = format!("{}.dlq", suite.settings.kafka.topics.payments_retry);
    let dead = read_topic(&suite.settings, &retry_dlq, 1, Duration::from_secs(10)).await;
    let dead = dead.iter().find(|m| m.key == id).expect("dead-lettered");
    assert!(
        dead.headers["dlq-reason"].contains("failed after 4 attempts"),
        "{:?}",
        dead.headers
    );
    paygate_testkit::assert_money_invariant(
        &suite.pool,
        &[&suite.simulator_url, &down],
        paygate_testkit::Moment::Settled,
    )
    .await;
    suite.stop().await;
}

async fn card_payment(suite: &Suite, number: &str, amount: &str) -> String {
    let keys = KeyRing::from_config(&suite.settings.cards.keys).unwrap();
    let sealed = keys
        .seal(&CardDetails {
            number: SecretString::from(number.to_owned()),
            expiry_month: 12,
            expiry_year: 2031,
            holder_name: Some("Ada Lovelace".to_owned()),
            cvv: None,
        })
        .unwrap();
    let mut conn = suite.pool.acquire().await.unwrap();
    let record = transactions::create(
        &mut conn,
        NewTransaction {
            merchant_id: suite.merchant.id.clone(),
            kind: Kind::Deposit,
            money: Money::parse(amount, "EUR".parse::<Currency>().unwrap()).unwrap(),
            user_id: "card-user".to_owned(),
            country: Some("DE".parse::<Country>().unwrap()),
            reference: None,
            card: Some(sealed),
            metadata: Default::default(),
        },
    )
    .await
    .unwrap();
    record.id.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_test_card_ends_as_its_bank_code_says_and_cards_go_only_to_the_card_acquirer() {
    let suite = Suite::start().await;
    let approved = card_payment(&suite, "4242424242424242", "40.00").await;
    let declined = card_payment(&suite, "4000000000000002", "41.00").await;
    let pending = card_payment(&suite, "4000000000009995", "42.00").await;

    let (gateway, _) = reaches(&suite, &approved, "completed").await;
    assert_eq!(gateway.as_deref(), Some("simcard"));
    let (_, reason) = reaches(&suite, &declined, "failed").await;
    assert_eq!(reason.as_deref(), Some("insufficient_funds"));
    // Pending at the bank: processing until the acquirer's callback settles it.
    reaches(&suite, &pending, "completed").await;
    assert_eq!(
        status_events(&suite, &pending).await,
        [
            "transaction.created",
            "transaction.processing",
            "transaction.completed"
        ]
    );
    for id in [&approved, &declined, &pending] {
        assert_eq!(attempted_gateways(&suite.pool, id).await, ["simcard"]);
    }
    assert_eq!(
        charges_at(&suite.simulator_url, &declined).await["charges"],
        0
    );
    assert_eq!(
        charges_at(&suite.simulator_url, &approved).await["charges"],
        1
    );

    // A plain German deposit never goes to the card acquirer.
    let plain = deposit(&suite, "43.00", "EUR", Some("DE")).await;
    let (gateway, _) = reaches(&suite, &plain, "completed").await;
    assert_eq!(gateway.as_deref(), Some("simsoap"));
    paygate_testkit::assert_money_invariant(
        &suite.pool,
        &[&suite.simulator_url],
        paygate_testkit::Moment::Settled,
    )
    .await;
    suite.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_payment_whose_gateway_never_answers_holds_up_none_of_fifty_others_and_settles_when_its_gateway_answers(
) {
    let suite = Suite::start().await;
    // .07: the gateway takes it and then neither answers nor tells its status.
    let stuck = deposit(&suite, "50.07", "USD", None).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = tokio::time::Instant::now();
    let mut healthy = Vec::new();
    for i in 0..50 {
        healthy.push(deposit(&suite, &format!("{}.00", 60 + i), "USD", None).await);
    }
    for id in &healthy {
        reaches(&suite, id, "completed").await;
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(15),
        "50 healthy payments took {took:?} behind a stuck one"
    );

    // Its attempts run out: never failed, never sent elsewhere, unresolved, dead-lettered.
    let retry_dlq = format!("{}.dlq", suite.settings.kafka.topics.payments_retry);
    let dead = read_topic(&suite.settings, &retry_dlq, 1, LONG).await;
    let dead = dead.iter().find(|m| m.key == stuck).expect("dead-lettered");
    assert!(
        dead.headers["dlq-reason"].contains("unresolved"),
        "{:?}",
        dead.headers
    );
    let (status, unresolved): (String, Option<chrono::DateTime<chrono::Utc>>) =
        sqlx::query_as("SELECT status, unresolved_since FROM transaction WHERE id = $1")
            .bind(&stuck)
            .fetch_one(&suite.pool)
            .await
            .unwrap();
    assert_eq!(status, "pending");
    assert!(unresolved.is_some());
    assert!(attempted_gateways(&suite.pool, &stuck)
        .await
        .iter()
        .all(|g| g == "simjson"));

    // The gateway finally answers: the reconciler's status query settles it.
    let released = reqwest::Client::new()
        .post(format!("{}/control/release/{stuck}", suite.simulator_url))
        .send()
        .await
        .unwrap();
    assert!(released.status().is_success());
    reaches(&suite, &stuck, "completed").await;
    assert_eq!(charges_at(&suite.simulator_url, &stuck).await["charges"], 1);
    paygate_testkit::assert_money_invariant(
        &suite.pool,
        &[&suite.simulator_url],
        paygate_testkit::Moment::Settled,
    )
    .await;
    suite.stop().await;
}

/// The message that asks the payment-processor to route payment `id`, as the relay
/// produces it.
async fn payment_requested(suite: &Suite, id: &str) -> paygate_common::kafka::Inbound {
    use paygate_common::events::proto;
    use prost::Message as _;
    let record = transactions::find(&suite.pool, &id.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    paygate_common::kafka::Inbound {
        topic: suite.settings.kafka.topics.payments_requested.clone(),
        partition: 0,
        offset: 0,
        key: Some(id.to_owned()),
        payload: proto::PaymentRequested {
            event_id: "evt_test".to_owned(),
            transaction: Some(record.to_proto()),
            refund: None,
        }
        .encode_to_vec(),
        headers: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_workers_without_a_common_lock_are_fenced_so_only_one_gateway_charges_once() {
    use paygate_common::kafka::Handler;
    use paygate_common::lock::Locks;
    use paygate_payment_processor::PaymentHandler;

    let suite = Suite::start_with(SuiteOptions {
        external: vec![paygate_testkit::Service::PaymentProcessor],
        ..SuiteOptions::default()
    })
    .await;
    let slow_down =
        paygate_testkit::start_simulator(CancellationToken::new(), Duration::ZERO).await;
    control_simulator(&slow_down, Some(503), Some(1_500)).await;
    let healthy = paygate_testkit::start_simulator(CancellationToken::new(), Duration::ZERO).await;
    json_gateway(&suite, "nl_first", &slow_down, Some("NL"), 1).await;
    json_gateway(&suite, "nl_second", &healthy, Some("NL"), 2).await;
    let id = deposit(&suite, "70.00", "EUR", Some("NL")).await;

    // Two workers whose locks do not see each other (a lock lost to an expiry or a
    // Redis failover): only the version fence keeps them apart.
    let first = PaymentHandler::build(&suite.settings, suite.pool.clone())
        .await
        .unwrap()
        .with_locks(
            Locks::connect(&suite.settings.redis)
                .await
                .unwrap()
                .with_ttl(Duration::from_secs(1)),
        );
    let mut elsewhere = suite.settings.redis.clone();
    elsewhere.key_prefix.push_str(":elsewhere");
    let second = PaymentHandler::build(&suite.settings, suite.pool.clone())
        .await
        .unwrap()
        .with_locks(
            Locks::connect(&elsewhere)
                .await
                .unwrap()
                .with_ttl(Duration::from_secs(1)),
        );

    let message = payment_requested(&suite, &id).await;
    let (a, b) = tokio::join!(first.handle(&message), second.handle(&message));
    a.unwrap();
    b.unwrap();

    let (gateway, _) = reaches(&suite, &id, "processing").await;
    assert_eq!(
        gateway.as_deref(),
        Some("nl_second"),
        "it names the gateway that charged"
    );
    assert_eq!(charges_at(&healthy, &id).await["charges"], 1);
    assert_eq!(charges_at(&slow_down, &id).await["charges"], 0);
    assert_eq!(
        attempted_gateways(&suite.pool, &id).await,
        ["nl_first", "nl_second"],
        "each gateway was chosen once: the loser of each fenced write asked nobody"
    );
    paygate_testkit::assert_money_invariant(
        &suite.pool,
        &[&suite.simulator_url, &slow_down, &healthy],
        paygate_testkit::Moment::InFlight,
    )
    .await;
    suite.stop().await;
}

/// Names resolved to chosen addresses, as a DNS answer would give them.
struct FixedNames(std::collections::HashMap<String, Vec<std::net::SocketAddr>>);

impl reqwest::dns::Resolve for FixedNames {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let addresses = self.0.get(name.as_str()).cloned().unwrap_or_default();
        Box::pin(async move {
            let addrs: reqwest::dns::Addrs = Box::new(addresses.into_iter());
            Ok(addrs)
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gateway_whose_host_resolves_to_a_forbidden_address_is_never_connected_to() {
    use paygate_common::egress::GuardedResolver;
    use paygate_common::kafka::Handler;
    use paygate_payment_processor::PaymentHandler;

    let suite = Suite::start_with(SuiteOptions {
        external: vec![paygate_testkit::Service::PaymentProcessor],
        ..SuiteOptions::default()
    })
    .await;
    // The witness: a simulator on loopback, where a guard that let the name through
    // would charge. Loopback is the only address this test ever connects to.
    let witness = paygate_testkit::start_simulator(CancellationToken::new(), Duration::ZERO).await;
    let port: u16 = witness.rsplit(':').next().unwrap().parse().unwrap();
    json_gateway(
        &suite,
        "by_name",
        &format!("http://gateway.guarded.test:{port}"),
        Some("NL"),
        1,
    )
    .await;
    json_gateway(&suite, "by_literal", &witness, Some("NL"), 2).await;
    let id = deposit(&suite, "71.00", "EUR", Some("NL")).await;

    let mut settings = suite.settings.clone();
    settings.payment_processor.allow_loopback = false;
    let names = FixedNames(
        [(
            "gateway.guarded.test".to_owned(),
            vec![format!("127.0.0.1:{port}").parse().unwrap()],
        )]
        .into(),
    );
    let policy = settings.payment_processor.egress_policy();
    let handler = PaymentHandler::build_with_resolver(
        &settings,
        suite.pool.clone(),
        GuardedResolver::over(policy, std::sync::Arc::new(names)),
    )
    .await
    .unwrap();
    handler
        .handle(&payment_requested(&suite, &id).await)
        .await
        .unwrap();

    assert_eq!(
        charges_at(&witness, &id).await["charges"],
        0,
        "neither the name nor the literal reached the witness"
    );
    assert_eq!(charges_at(&suite.simulator_url, &id).await["charges"], 0);
    let status: String = sqlx::query_scalar("SELECT status FROM transaction WHERE id = $1")
        .bind(&id)
        .fetch_one(&suite.pool)
        .await
        .unwrap();
    assert_eq!(
        status, "pending",
        "refused gateways took nothing: retried later"
    );
    suite.stop().await;
}

/// Refunds `amount` of `payment` through the api; the refund's id.
async fn refund(suite: &Suite, payment: &str, amount: &str) -> String {
    let answer = json_of(
        suite
            .post(&format!("/v1/transactions/{payment}/refunds"))
            .json(&json!({"amount": amount})),
    )
    .await;
    answer["id"]
        .as_str()
        .unwrap_or_else(|| panic!("refused: {answer}"))
        .to_owned()
}

/// (status, gateway, failure_reason) of a refund once it reached `status`.
async fn refund_reaches(suite: &Suite, id: &str, status: &str) -> (String, Option<String>) {
    eventually(&format!("{id} to be {status}"), LONG, || async {
        let (now, gateway, reason): (String, String, Option<String>) =
            sqlx::query_as("SELECT status, gateway, failure_reason FROM refund WHERE id = $1")
                .bind(id)
                .fetch_one(&suite.pool)
                .await
                .unwrap();
        (now == status).then_some((gateway, reason))
    })
    .await
}

/// What the simulator refunded of `payment`, as its ledger books it.
async fn refunded_at(simulator: &str, payment: &str) -> (String, String, u64) {
    let books = json_of(reqwest::Client::new().get(format!("{simulator}/ledger"))).await;
    let entry = books
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["reference"] == payment)
        .cloned()
        .unwrap();
    (
        entry["gateway"].as_str().unwrap().to_owned(),
        entry["refunded"].as_str().unwrap().to_owned(),
        entry["refunds"].as_u64().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refund_goes_only_to_the_gateway_that_charged_through_soap_and_the_card_acquirer_alike() {
    let suite = Suite::start().await;
    let soap = deposit(&suite, "30.00", "EUR", Some("DE")).await;
    let card = card_payment(&suite, "4242424242424242", "40.00").await;
    for id in [&soap, &card] {
        reaches(&suite, id, "completed").await;
    }

    let soap_refund = refund(&suite, &soap, "10.00").await;
    let card_refund = refund(&suite, &card, "15.00").await;
    assert_eq!(
        refund_reaches(&suite, &soap_refund, "completed").await.0,
        "simsoap"
    );
    assert_eq!(
        refund_reaches(&suite, &card_refund, "completed").await.0,
        "simcard"
    );
    assert_eq!(
        refunded_at(&suite.simulator_url, &soap).await,
        ("soap".to_owned(), "10.00".to_owned(), 1)
    );
    assert_eq!(
        refunded_at(&suite.simulator_url, &card).await,
        ("card".to_owned(), "15.00".to_owned(), 1)
    );
    let gateway_refund_id: Option<String> =
        sqlx::query_scalar("SELECT gateway_refund_id FROM refund WHERE id = $1")
            .bind(&card_refund)
            .fetch_one(&suite.pool)
            .await
            .unwrap();
    assert!(gateway_refund_id.is_some_and(|g| g.starts_with("acq_")));
    suite.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refund_its_gateway_proves_it_never_took_is_retried_then_failed_and_its_hold_given_back()
{
    let suite = Suite::start().await;
    let payment = deposit(&suite, "10.00", "USD", None).await;
    reaches(&suite, &payment, "completed").await;
    // `.03`: 503 every time, nothing refunded.
    let unavailable = refund(&suite, &payment, "4.03").await;
    let (_, reason) = refund_reaches(&suite, &unavailable, "failed").await;
    assert!(reason.unwrap().contains("failed after"));
    let (_, refunded, refunds) = refunded_at(&suite.simulator_url, &payment).await;
    assert_eq!((refunded.as_str(), refunds), ("0", 0));
    // Its hold is back: the whole amount can be asked for again (the gateway's circuit,
    // opened by the 503s, decides when it is sent).
    let whole = json_of(
        suite
            .post(&format!("/v1/transactions/{payment}/refunds"))
            .json(&json!({})),
    )
    .await;
    assert_eq!(whole["amount"], "10.00", "{whole}");
    let dead = read_topic(
        &suite.settings,
        &paygate_common::config::Topics::dead_letter(&suite.settings.kafka.topics.payments_retry),
        1,
        LONG,
    )
    .await;
    // The whole refund may be dead-lettered too while the circuit stays open; the
    // spent one must be among them, whatever the partitions' order.
    let keys: Vec<&str> = dead.iter().map(|m| m.key.as_str()).collect();
    assert!(
        keys.contains(&unavailable.as_str()),
        "the spent refund is dead-lettered: {keys:?}"
    );
    suite.stop().await;
}
