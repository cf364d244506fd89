//! Which gateways may take a payment, best first, from a cached copy of the `gateway`
//! and `gateway_route` tables: the routes for its country (with matching or wildcard
//! currency and kind) by priority, then the default routes (no country) by priority.
//! Disabled gateways are left out; each gateway appears once, at its best place.
//!
//! Each route set (a country's routes, or the default routes `*`) may have a routing
//! policy (`routing_policy`): its rules pick the candidate set and its strategy orders
//! it (see [`crate::strategy`]). A payment whose merchant pinned gateways is offered
//! those, then, when it allows fallback, the routed ones.
//!
//! The tables change rarely and are read for every payment, so they are cached and
//! reloaded when PostgreSQL announces a change (`paygate_routes`, fired by gateways,
//! routes and policies alike) and at least every `route_refresh_ms`: a routing decision
//! costs no database round trip.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use paygate_common::gateway::policy::{self, RoutingPolicy, DEFAULT_ROUTE_SET};
use paygate_common::gateway::{self, GatewayRecord, Route};
use paygate_common::transactions::TransactionRecord;

use crate::strategy::Plan;

/// The NOTIFY channel fired when gateways or routes change (see the migrations).
pub const CHANNEL: &str = "paygate_routes";

/// Gateways and routes as last read.
#[derive(Debug, Default)]
pub struct Snapshot {
    gateways: HashMap<String, GatewayRecord>,
    routes: Vec<Route>,
    /// Route set (country code or `*`) -> its policy.
    policies: HashMap<String, RoutingPolicy>,
}

impl Snapshot {
    pub async fn load(pool: &PgPool) -> sqlx::Result<Self> {
        let gateways = gateway::all(pool).await?;
        let routes = gateway::all_routes(pool).await?;
        let policies = policy::all_policies(pool)
            .await?
            .into_iter()
            .map(|stored| (stored.route_set, stored.policy))
            .collect();
        Ok(Snapshot::new(gateways, routes, policies))
    }

    /// A snapshot of the given tables (benchmarks and tests build one without a database).
    pub fn new(
        gateways: Vec<GatewayRecord>,
        routes: Vec<Route>,
        policies: HashMap<String, RoutingPolicy>,
    ) -> Self {
        Snapshot {
            gateways: gateways.into_iter().map(|g| (g.code.clone(), g)).collect(),
            routes,
            policies,
        }
    }

    /// The candidates of `payment` before its strategy orders them: the gateways its
    /// merchant pinned (and, with fallback, the routed ones after them), or those of the
    /// first rule of its route set's policy it matches, or its routed gateways; only
    /// enabled gateways whose adapter takes its payment method.
    pub fn plan(&self, payment: &TransactionRecord) -> Plan<'_> {
        let method = payment.payment_method();
        let takes = |g: &GatewayRecord| g.enabled && g.adapter().is_some_and(|a| a.takes(method));
        let (route_set, policy) = payment
            .country
            .as_deref()
            .and_then(|country| self.policies.get_key_value(country))
            .or_else(|| self.policies.get_key_value(DEFAULT_ROUTE_SET))
            .map_or((None, None), |(set, policy)| {
                (Some(set.as_str()), Some(policy))
            });
        let rule = policy.and_then(|p| {
            p.first_match(
                payment.amount,
                payment.currency.trim(),
                method,
                payment.kind,
            )
        });
        let routed: Vec<GatewayRecord> = match (policy, rule) {
            (Some(policy), Some(index)) => policy.rules[index]
                .gateways
                .iter()
                .filter_map(|code| self.gateways.get(code))
                .filter(|g| takes(g))
                .cloned()
                .collect(),
            _ => self
                .candidates(payment)
                .into_iter()
                .filter(|g| takes(g))
                .collect(),
        };
        let pinned = payment.pinned_gateways.as_ref().map(|codes| {
            codes
                .iter()
                .filter_map(|code| self.gateways.get(code))
                .filter(|g| takes(g))
                .cloned()
                .collect()
        });
        Plan {
            routed,
            pinned,
            fallback: payment.gateway_fallback,
            policy,
            route_set,
            rule,
        }
    }

    pub fn gateway(&self, code: &str) -> Option<&GatewayRecord> {
        self.gateways.get(code)
    }

    /// The enabled gateways routed for `payment`, best first.
    pub fn candidates(&self, payment: &TransactionRecord) -> Vec<GatewayRecord> {
        let matches = |wanted: &Option<String>, value: Option<&str>| match wanted {
            None => true,
            Some(w) => Some(w.as_str()) == value,
        };
        // (is a default route, priority) of each gateway's best matching route.
        let mut best: HashMap<&str, (bool, i32)> = HashMap::new();
        for route in &self.routes {
            let fits = matches(&route.country, payment.country.as_deref())
                && matches(&route.currency, Some(payment.currency.trim()))
                && route.kind.is_none_or(|k| k == payment.kind);
            if !fits {
                continue;
            }
            let rank = (route.country.is_none(), route.priority);
            best.entry(route.gateway_code.as_str())
                .and_modify(|r| *r = (*r).min(rank))
                .or_insert(rank);
        }
        let mut ranked: Vec<((bool, i32), &GatewayRecord)> = best
            .into_iter()
            .filter_map(|(code, rank)| Some((rank, self.gateways.get(code)?)))
            .filter(|(_, g)| g.enabled)
            .collect();
        ranked.sort_by(|(a, ga), (b, gb)| a.cmp(b).then_with(|| ga.code.cmp(&gb.code)));
        ranked.into_iter().map(|(_, g)| g.clone()).collect()
    }
}

/// The shared, refreshed cache.
#[derive(Clone, Default)]
pub struct RouteTable {
    current: Arc<RwLock<Arc<Snapshot>>>,
}

impl RouteTable {
    pub async fn load(pool: &PgPool) -> sqlx::Result<Self> {
        let table = RouteTable::default();
        table.replace(Snapshot::load(pool).await?);
        Ok(table)
    }

    /// The snapshot in force.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn replace(&self, snapshot: Snapshot) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(snapshot);
    }

    /// Reloads on every change notification and every `every`, until `shutdown`. A failed
    /// reload keeps the last snapshot.
    pub async fn refresh(self, pool: PgPool, every: Duration, shutdown: CancellationToken) {
        let mut listener = listen(&pool).await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
                notified = async {
                    match listener.as_mut() {
                        Some(l) => l.recv().await.is_ok(),
                        None => std::future::pending().await,
                    }
                } => {
                    if !notified {
                        listener = listen(&pool).await;
                    }
                }
            }
            match Snapshot::load(&pool).await {
                Ok(snapshot) => self.replace(snapshot),
                Err(error) => {
                    tracing::warn!(%error, "could not reload gateways and routes; keeping the last ones")
                }
            }
        }
    }
}

async fn listen(pool: &PgPool) -> Option<PgListener> {
    let mut listener = PgListener::connect_with(pool).await.ok()?;
    listener.listen(CHANNEL).await.ok()?;
    Some(listener)
}
