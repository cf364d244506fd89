//! Where Paygate's outgoing HTTP may go, and with what TLS.
//!
//! Merchants name their webhook URLs, so a URL is untrusted input: left alone it would
//! let a merchant make Paygate post to its own loopback, the cluster's private network
//! or a cloud metadata address (SSRF). [`Policy`] says which addresses are allowed;
//! [`GuardedResolver`] applies it to every address a name resolves to, at connect time
//! (so a name that resolved to a public address when it was registered and to a private
//! one now is still refused), and [`Policy::check_url`] refuses URLs whose host is an
//! address literal (which reqwest connects to without asking a resolver). Redirects are
//! never followed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use anyhow::Context as _;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::Url;

use crate::config::TlsSettings;

/// A client builder every outgoing call starts from: Mozilla's roots plus the
/// configured extra ones, no redirects, and no proxy taken from the environment
/// (`HTTPS_PROXY` and friends): a proxy would make the connection for us, after our
/// address guard, to wherever the name resolves for it.
pub fn client_builder(tls: &TlsSettings) -> anyhow::Result<reqwest::ClientBuilder> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none());
    if !tls.extra_root_certificates.is_empty() {
        let pem = std::fs::read(&tls.extra_root_certificates).with_context(|| {
            format!(
                "reading tls.extra_root_certificates {}",
                tls.extra_root_certificates
            )
        })?;
        let certificates = reqwest::Certificate::from_pem_bundle(&pem)
            .context("tls.extra_root_certificates holds no PEM certificate")?;
        for certificate in certificates {
            builder = builder.add_root_certificate(certificate);
        }
    }
    Ok(builder)
}

/// Which destinations are allowed besides public addresses over https.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    pub allow_http: bool,
    /// 127.0.0.0/8 and ::1.
    pub allow_loopback: bool,
    /// Private (10/8, 172.16/12, 192.168/16), shared (100.64/10), link-local
    /// (169.254/16, fe80::/10) and unique-local (fc00::/7) addresses.
    pub allow_private: bool,
}

/// Why a destination is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("must be an absolute URL")]
    NotAUrl,
    #[error("must be an https URL with a host")]
    Scheme,
    #[error("must not carry user name or password")]
    Credentials,
    #[error("{0} is a {1} address, which Paygate may not reach")]
    Address(IpAddr, &'static str),
}

impl Policy {
    /// `None` when `ip` may be reached, else the name of its range.
    pub fn forbidden_range(&self, ip: IpAddr) -> Option<&'static str> {
        let range = range_of(ip)?;
        let allowed = match range {
            "loopback" => self.allow_loopback,
            "private" | "shared" | "link-local" | "unique-local" => self.allow_private,
            _ => false,
        };
        (!allowed).then_some(range)
    }

    /// Checks `ip` against the policy.
    pub fn check_address(&self, ip: IpAddr) -> Result<(), Refusal> {
        match self.forbidden_range(ip) {
            Some(range) => Err(Refusal::Address(ip, range)),
            None => Ok(()),
        }
    }

    /// Checks what can be checked without resolving: the scheme, credentials, and a
    /// host that is an address literal.
    pub fn check_url(&self, url: &str) -> Result<Url, Refusal> {
        let parsed = Url::parse(url).map_err(|_| Refusal::NotAUrl)?;
        let scheme_ok =
            parsed.scheme() == "https" || (self.allow_http && parsed.scheme() == "http");
        if !scheme_ok || parsed.host().is_none() {
            return Err(Refusal::Scheme);
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(Refusal::Credentials);
        }
        match parsed.host() {
            Some(url::Host::Ipv4(ip)) => self.check_address(IpAddr::V4(ip))?,
            Some(url::Host::Ipv6(ip)) => self.check_address(IpAddr::V6(ip))?,
            _ => {}
        }
        Ok(parsed)
    }

    /// [`Policy::check_url`], then the addresses the host resolves to now — what the
    /// admin API asks before it stores a URL. A name that does not resolve passes: the
    /// check at send time still stands.
    pub async fn check_url_resolved(&self, url: &str) -> Result<Url, Refusal> {
        let parsed = self.check_url(url)?;
        if let Some(url::Host::Domain(host)) = parsed.host() {
            let port = parsed.port_or_known_default().unwrap_or(443);
            let lookup = tokio::net::lookup_host((host, port));
            if let Ok(Ok(addresses)) =
                tokio::time::timeout(std::time::Duration::from_secs(2), lookup).await
            {
                for address in addresses {
                    self.check_address(address.ip())?;
                }
            }
        }
        Ok(parsed)
    }
}

/// The special-purpose range `ip` falls in, if any (IPv4-mapped, IPv4-compatible, NAT64
/// and 6to4 addresses are judged by the IPv4 address they carry).
fn range_of(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => range_of_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_v4(v6) {
                return range_of_v4(v4);
            }
            let first = v6.segments()[0];
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if first & 0xffc0 == 0xfe80 {
                Some("link-local")
            } else if first & 0xffc0 == 0xfec0 {
                // fec0::/10, the deprecated site-local range: private in practice.
                Some("unique-local")
            } else if v6.segments()[..3] == [0x64, 0xff9b, 1] {
                // 64:ff9b:1::/48, local-use NAT64 (RFC 8215): translates into a
                // network of the operator's choosing.
                Some("reserved")
            } else if first & 0xfe00 == 0xfc00 {
                Some("unique-local")
            } else if first & 0xff00 == 0xff00 {
                Some("multicast")
            } else {
                None
            }
        }
    }
}

fn range_of_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if a == 100 && (64..128).contains(&b) {
        Some("shared")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if a == 0 {
        Some("unspecified")
    } else if ip.is_broadcast() || a >= 240 {
        Some("reserved")
    } else if (a, b, c) == (192, 0, 0) {
        // 192.0.0.0/24: IETF protocol assignments (DS-Lite, NAT64 discovery, …).
        Some("reserved")
    } else if a == 198 && (b & 0xfe) == 18 {
        // 198.18.0.0/15: benchmarking networks, often routed inside a data centre.
        Some("reserved")
    } else if matches!((a, b, c), (192, 0, 2) | (198, 51, 100) | (203, 0, 113)) {
        Some("documentation")
    } else if ip.is_multicast() {
        Some("multicast")
    } else {
        None
    }
}

/// The IPv4 address inside an IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible
/// (`::a.b.c.d`, deprecated but still routed by some stacks), NAT64 (`64:ff9b::a.b.c.d`)
/// or 6to4 (`2002:AABB:CCDD::/48`) address.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = ip.segments();
    let o = ip.octets();
    let last = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(last);
    }
    // `::` and `::1` are the unspecified and loopback addresses, not IPv4-compatible.
    if s[..6] == [0; 6] && !ip.is_unspecified() && !ip.is_loopback() {
        return Some(last);
    }
    (s[0] == 0x2002).then(|| Ipv4Addr::new(o[2], o[3], o[4], o[5]))
}

/// A reqwest resolver that refuses a name when any address it resolves to is
/// forbidden, before a connection is attempted.
pub struct GuardedResolver {
    policy: Policy,
    names: Arc<dyn Resolve>,
}

impl GuardedResolver {
    /// Guards the system resolver.
    pub fn system(policy: Policy) -> Self {
        Self::over(policy, Arc::new(SystemResolver))
    }

    /// Guards `names` (tests map names to chosen addresses with their own).
    pub fn over(policy: Policy, names: Arc<dyn Resolve>) -> Self {
        GuardedResolver { policy, names }
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy;
        let resolving = self.names.resolve(name);
        Box::pin(async move {
            let addresses: Vec<SocketAddr> = resolving.await?.collect();
            for address in &addresses {
                policy.check_address(address.ip())?;
            }
            let addrs: Addrs = Box::new(addresses.into_iter());
            Ok(addrs)
        })
    }
}

/// The operating system's resolver (getaddrinfo, off the async threads).
struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addresses = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let addrs: Addrs = Box::new(addresses.collect::<Vec<_>>().into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRICT: Policy = Policy {
        allow_http: false,
        allow_loopback: false,
        allow_private: false,
    };

    fn refused(address: &str) -> Option<&'static str> {
        STRICT.forbidden_range(address.parse().unwrap())
    }

    #[test]
    fn every_special_purpose_range_is_refused_by_a_strict_policy() {
        for (address, range) in [
            ("127.0.0.1", "loopback"),
            ("127.255.0.9", "loopback"),
            ("::1", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("100.64.0.1", "shared"),
            ("169.254.169.254", "link-local"),
            ("fe80::1", "link-local"),
            ("fd00:ec2::254", "unique-local"),
            ("fc00::1", "unique-local"),
            ("0.0.0.0", "unspecified"),
            ("::", "unspecified"),
            ("255.255.255.255", "reserved"),
            ("224.0.0.1", "multicast"),
            ("ff02::1", "multicast"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:169.254.169.254", "link-local"),
            ("64:ff9b::10.0.0.1", "private"),
            ("192.0.0.170", "reserved"),
            ("198.18.0.1", "reserved"),
            ("198.19.255.254", "reserved"),
            ("192.0.2.1", "documentation"),
            ("198.51.100.7", "documentation"),
            ("203.0.113.200", "documentation"),
            ("64:ff9b:1::a00:1", "reserved"),
            ("::169.254.169.254", "link-local"),
            ("::127.0.0.1", "loopback"),
            ("2002:a9fe:a9fe::1", "link-local"),
            ("2002:7f00:1::", "loopback"),
            ("fec0::1", "unique-local"),
        ] {
            assert_eq!(refused(address), Some(range), "{address}");
        }
    }

    #[test]
    fn public_addresses_pass_a_strict_policy() {
        for address in [
            "93.184.215.14",
            "172.32.0.1",
            "100.128.0.1",
            "198.20.0.1",
            "192.0.3.1",
            "2606:4700::1111",
            "2002:5db8:d70e::1",
            "8.8.8.8",
        ] {
            assert_eq!(refused(address), None, "{address}");
        }
    }

    #[test]
    fn configuration_allows_loopback_and_private_ranges_separately() {
        let local = Policy {
            allow_loopback: true,
            ..STRICT
        };
        assert_eq!(local.forbidden_range("127.0.0.1".parse().unwrap()), None);
        assert_eq!(
            local.forbidden_range("10.0.0.1".parse().unwrap()),
            Some("private")
        );
        let private = Policy {
            allow_private: true,
            ..STRICT
        };
        assert_eq!(private.forbidden_range("10.0.0.1".parse().unwrap()), None);
        assert_eq!(
            private.forbidden_range("::1".parse().unwrap()),
            Some("loopback")
        );
        assert_eq!(
            private.forbidden_range("0.0.0.0".parse().unwrap()),
            Some("unspecified"),
            "nothing allows the unspecified address"
        );
    }

    #[test]
    fn a_url_needs_https_a_host_and_no_credentials_and_its_address_literal_is_checked() {
        assert!(STRICT.check_url("https://merchant.example/hooks").is_ok());
        assert_eq!(
            STRICT.check_url("http://merchant.example/"),
            Err(Refusal::Scheme)
        );
        assert_eq!(
            STRICT.check_url("ftp://merchant.example/"),
            Err(Refusal::Scheme)
        );
        assert_eq!(STRICT.check_url("not a url"), Err(Refusal::NotAUrl));
        assert_eq!(
            STRICT.check_url("https://user:pw@merchant.example/"),
            Err(Refusal::Credentials)
        );
        assert!(matches!(
            STRICT.check_url("https://169.254.169.254/latest/meta-data"),
            Err(Refusal::Address(_, "link-local"))
        ));
        assert!(matches!(
            STRICT.check_url("https://[::ffff:7f00:1]/"),
            Err(Refusal::Address(_, "loopback"))
        ));
        let http = Policy {
            allow_http: true,
            ..STRICT
        };
        assert!(http.check_url("http://merchant.example/").is_ok());
    }

    #[test]
    fn a_proxy_named_in_the_environment_is_never_used() {
        // The environment is per process: the check runs in a child process of its own,
        // given proxy variables that point at a listener that never answers.
        let proxy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let proxy = format!("http://{}", proxy.local_addr().unwrap());
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "egress::tests::with_a_proxy_in_the_environment_a_client_still_connects_directly",
                "--ignored",
            ])
            .env("HTTP_PROXY", &proxy)
            .env("http_proxy", &proxy)
            .env("HTTPS_PROXY", &proxy)
            .env("ALL_PROXY", &proxy)
            .env_remove("NO_PROXY")
            .env_remove("no_proxy")
            .status()
            .unwrap();
        assert!(status.success(), "the client went through the proxy");
    }

    #[tokio::test]
    #[ignore = "run by a_proxy_named_in_the_environment_is_never_used, in a process of its own"]
    async fn with_a_proxy_in_the_environment_a_client_still_connects_directly() {
        assert!(std::env::var("HTTP_PROXY").is_ok(), "run with a proxy set");
        let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = target.local_addr().unwrap().port();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            let (mut socket, _) = target.accept().await.unwrap();
            let mut request = [0u8; 1024];
            let _ = socket.read(&mut request).await;
            let _ = socket
                .write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
                .await;
        });
        let tls = TlsSettings {
            extra_root_certificates: String::new(),
        };
        let answer = client_builder(&tls)
            .unwrap()
            .timeout(std::time::Duration::from_secs(3))
            .build()
            .unwrap()
            .get(format!("http://127.0.0.1:{port}/"))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), reqwest::StatusCode::NO_CONTENT);
    }
}
