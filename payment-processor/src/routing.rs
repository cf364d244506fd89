//! Which gateways may take a payment, best first, from a cached copy of the `gateway`
//! and `gateway_route` tables: the routes for its country (with matching or wildcard
//! currency and kind) by priority, then the default routes (no country) by priority.
//! Disabled gateways are left out; each gateway appears once, at its best place.
//!
//! The tables change rarely and are read for every payment, so they are cached and
//! reloaded when PostgreSQL announces a change (`paygate_routes`) and at least every
//! `route_refresh_ms`.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use paygate_common::gateway::{self, GatewayRecord, Route};
use paygate_common::transactions::TransactionRecord;

/// The NOTIFY channel fired when gateways or routes change (see the migrations).
pub const CHANNEL: &str = "paygate_routes";

/// Gateways and routes as last read.
#[derive(Debug, Default)]
pub struct Snapshot {
    gateways: HashMap<String, GatewayRecord>,
    routes: Vec<Route>,
}

impl Snapshot {
    pub async fn load(pool: &PgPool) -> sqlx::Result<Self> {
        let gateways = gateway::all(pool)
            .await?
            .into_iter()
            .map(|g| (g.code.clone(), g))
            .collect();
        let routes = gateway::all_routes(pool).await?;
        Ok(Snapshot { gateways, routes })
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
