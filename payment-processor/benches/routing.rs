//! One routing decision over 100 gateways and 1,000 rules, from the cached tables alone
//! (no database, no Redis: the success-rate windows are given, as the decision takes
//! them). `cargo bench -p paygate-payment-processor --bench routing`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashMap;

use criterion::{criterion_group, criterion_main, Criterion};
use rust_decimal::Decimal;

use paygate_common::domain::{Kind, MerchantId, Money};
use paygate_common::gateway::policy::{MethodClass, RoutingPolicy, Rule, Strategy};
use paygate_common::gateway::{GatewayRecord, Route};
use paygate_common::metadata::Metadata;
use paygate_common::secrets::Sealed;
use paygate_common::transactions::{NewTransaction, TransactionRecord};
use paygate_payment_processor::routing::Snapshot;
use paygate_payment_processor::strategy::Window;

const GATEWAYS: usize = 100;
const RULES: usize = 1_000;

fn gateway(i: usize) -> GatewayRecord {
    GatewayRecord {
        code: format!("gw{i:03}"),
        protocol: "json".into(),
        base_url: format!("http://127.0.0.1:9/gw{i}"),
        callback_secret: Sealed::from_stored("x".into()),
        timeout_ms: 1_000,
        max_concurrency: 8,
        enabled: true,
        settle_window_ms: 0,
        callback_deadline_ms: 0,
        review_after_ms: 0,
    }
}

/// 1,000 rules, none matching the payment but the last: the whole list is read.
fn policy() -> RoutingPolicy {
    let mut rules: Vec<Rule> = (0..RULES - 1)
        .map(|i| Rule {
            min_amount: Some(Decimal::from(10_000 + i)),
            max_amount: Some(Decimal::from(10_001 + i)),
            currency: Some("USD".into()),
            method: Some(MethodClass::Card),
            kind: Some(Kind::Withdrawal),
            gateways: vec![format!("gw{:03}", i % GATEWAYS)],
        })
        .collect();
    rules.push(Rule {
        min_amount: None,
        max_amount: None,
        currency: Some("EUR".into()),
        method: None,
        kind: None,
        gateways: (0..GATEWAYS).map(|i| format!("gw{i:03}")).collect(),
    });
    RoutingPolicy {
        strategy: Strategy::SuccessRate,
        rules,
        ..RoutingPolicy::default()
    }
}

fn payment() -> TransactionRecord {
    NewTransaction {
        merchant_id: MerchantId::new(),
        kind: Kind::Deposit,
        money: Money::parse("25.00", "EUR".parse().unwrap()).unwrap(),
        user_id: "u".into(),
        country: Some("DE".parse().unwrap()),
        reference: None,
        card: None,
        metadata: Metadata::default(),
    }
    .pending()
}

fn one_decision(c: &mut Criterion) {
    let gateways: Vec<GatewayRecord> = (0..GATEWAYS).map(gateway).collect();
    let routes: Vec<Route> = (0..GATEWAYS)
        .map(|i| Route {
            country: Some("DE".into()),
            currency: None,
            kind: None,
            priority: i32::try_from(i).unwrap(),
            gateway_code: format!("gw{i:03}"),
        })
        .collect();
    let snapshot = Snapshot::new(
        gateways,
        routes,
        HashMap::from([("DE".to_owned(), policy())]),
    );
    let windows: HashMap<String, Window> = (0..GATEWAYS)
        .map(|i| {
            let successes = u32::try_from(100 + i).unwrap();
            (
                format!("gw{i:03}"),
                Window {
                    successes,
                    samples: 200,
                },
            )
        })
        .collect();
    let payment = payment();
    let mut rng = rand::rng();
    c.bench_function("one routing decision: 100 gateways, 1,000 rules", |b| {
        b.iter(|| {
            let plan = snapshot.plan(std::hint::black_box(&payment));
            plan.decide(&windows, &mut rng)
        })
    });
}

criterion_group!(benches, one_decision);
criterion_main!(benches);
