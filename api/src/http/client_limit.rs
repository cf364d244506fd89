//! Limits per client address, for what a client may cost before it has proven who it
//! is: looking up an API key PostgreSQL has never confirmed, the public JWKS, console
//! sign-in attempts. Each is a fixed window per address, counted in this replica's
//! memory: no round trip (not even to Redis) is spent on a request that may be one of
//! a flood, and PostgreSQL sees at most `requests` such look-ups per address per window
//! from each replica. IPv6 clients are counted per /64, the block one subscriber holds.
//!
//! The address is the TCP peer (see `paygate_common::http_server`). Behind a proxy that
//! is the proxy: the limit then covers all clients together, which still bounds what
//! the database pays, while merchants whose keys were once confirmed never spend it.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use paygate_common::config::RateLimitSettings;

/// Addresses remembered at most; past it, those of earlier windows are dropped first.
const MAX_ADDRESSES: usize = 100_000;

/// Requests per client address per window.
#[derive(Clone)]
pub struct AddressLimit {
    /// Per address: the window it was last counted in, and its count there.
    counts: Arc<Mutex<HashMap<IpAddr, (u64, u64)>>>,
    requests: u64,
    window_ms: u64,
}

impl AddressLimit {
    pub fn new(requests: u64, window: Duration) -> Self {
        AddressLimit {
            counts: Arc::default(),
            requests,
            window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1),
        }
    }

    pub fn from_settings(settings: &RateLimitSettings) -> Self {
        Self::new(settings.requests, Duration::from_millis(settings.window_ms))
    }

    /// Counts one request from `address` (`None`, a request that came through no
    /// socket, shares one count); `Err(seconds)` to wait when it is over the limit.
    pub fn spend(&self, address: Option<IpAddr>) -> Result<(), u64> {
        let now_ms = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or_default();
        let window = now_ms / self.window_ms;
        let key = address.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), bucket);
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if counts.len() >= MAX_ADDRESSES {
            counts.retain(|_, (seen, _)| *seen == window);
            if counts.len() >= MAX_ADDRESSES {
                counts.clear();
            }
        }
        let entry = counts.entry(key).or_insert((window, 0));
        if entry.0 != window {
            *entry = (window, 0);
        }
        entry.1 += 1;
        if entry.1 > self.requests {
            let left_ms = (window + 1) * self.window_ms - now_ms;
            Err(left_ms.div_ceil(1000).max(1))
        } else {
            Ok(())
        }
    }
}

/// What an address is counted as: itself (IPv4), or its /64 (IPv6).
fn bucket(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// The api's limits per client address.
#[derive(Clone)]
pub struct ClientLimits {
    /// Requests that need PostgreSQL before they are authenticated.
    pub unauthenticated: AddressLimit,
    /// Console sign-in attempts.
    pub sign_in: AddressLimit,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_over_its_limit_waits_and_others_do_not() {
        let limit = AddressLimit::new(2, Duration::from_secs(60));
        let one: IpAddr = "10.0.0.1".parse().unwrap();
        let two: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(limit.spend(Some(one)).is_ok());
        assert!(limit.spend(Some(one)).is_ok());
        let wait = limit.spend(Some(one)).unwrap_err();
        assert!((1..=60).contains(&wait), "{wait}");
        assert!(limit.spend(Some(two)).is_ok());
    }

    #[test]
    fn ipv6_clients_are_counted_per_64() {
        let limit = AddressLimit::new(1, Duration::from_secs(60));
        assert!(limit.spend(Some("2001:db8::1".parse().unwrap())).is_ok());
        assert!(limit.spend(Some("2001:db8::2".parse().unwrap())).is_err());
        assert!(limit
            .spend(Some("2001:db8:0:1::1".parse().unwrap()))
            .is_ok());
    }
}
