//! A broker of a test's own, and reading a topic as a test looks at it.

use std::time::Duration;

use crate::{eventually, unique};
use paygate_common::Settings;

/// A broker of the test's own (tansu, durable `sqlite://` storage in a temporary
/// directory), so a test can kill it and bring it back on the same port and data.
/// The binary is `PAYGATE_TEST_TANSU`, by default where `scripts/test` installs it.
pub struct Broker {
    pub address: String,
    /// What it tells clients to connect to (its own address unless a front is put
    /// before it, see [`Broker::start_advertising`]).
    advertised: String,
    port: u16,
    dir: std::path::PathBuf,
    child: Option<tokio::process::Child>,
}

impl Broker {
    pub async fn start() -> Self {
        Self::start_advertising(None).await
    }

    /// A broker that tells clients to reach it at `127.0.0.1:<advertised>` (a
    /// [`crate::TlsFront`] before it), listening in clear on a port of its own.
    pub async fn start_advertising(advertised: Option<u16>) -> Self {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let dir = std::env::temp_dir().join(unique("paygate-broker-"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut broker = Broker {
            address: format!("127.0.0.1:{port}"),
            advertised: format!("127.0.0.1:{}", advertised.unwrap_or(port)),
            port,
            dir,
            child: None,
        };
        broker.restart().await;
        broker
    }

    fn binary() -> String {
        std::env::var("PAYGATE_TEST_TANSU").unwrap_or_else(|_| {
            let home = std::env::var("HOME").unwrap_or_default();
            format!("{home}/.local/share/paygate/tansu-0.6.0/bin/tansu")
        })
    }

    /// The broker's own log (`broker.log` beside its data, appended across restarts;
    /// `RUST_LOG` sets its level), kept when the test fails.
    fn log(&self) -> std::process::Stdio {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("broker.log"))
            .map(std::process::Stdio::from)
            .unwrap_or_else(|_| std::process::Stdio::null())
    }

    /// SIGKILL: the broker stops mid-whatever, as in a crash.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap();
        }
    }

    /// Starts (again) on the same port and storage; returns once it accepts connections.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "the broker is already running");
        let binary = Self::binary();
        let url = format!("tcp://{}", self.address);
        let advertised = format!("tcp://{}", self.advertised);
        let child = tokio::process::Command::new(&binary)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &advertised,
            ])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .current_dir(&self.dir)
            .stdout(self.log())
            .stderr(self.log())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("starting the broker {binary} (set PAYGATE_TEST_TANSU): {e}")
            });
        self.child = Some(child);
        eventually("the broker to listen", Duration::from_secs(30), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .ok()
                .map(|_| ())
        })
        .await;
        index_broker(&self.dir.join("tansu.db")).await;
    }
}

/// The scripts' own `scripts/tansu-index`, which adds the indexes tansu's sqlite storage
/// lacks once tansu has created its schema (whoever starts tansu applies them).
pub const TANSU_INDEX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/tansu-index");

/// Indexes a running broker's `tansu.db` with [`TANSU_INDEX`].
pub async fn index_broker(db: &std::path::Path) {
    let status = tokio::process::Command::new(TANSU_INDEX)
        .arg(db)
        .arg("30")
        .status()
        .await
        .unwrap_or_else(|e| panic!("running {TANSU_INDEX}: {e}"));
    assert!(status.success(), "{TANSU_INDEX} {} failed", db.display());
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        if std::thread::panicking() {
            eprintln!(
                "the broker's data and log are kept in {}",
                self.dir.display()
            );
            return;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis of the test's own (Debian's `redis-server`, nothing kept on disk), so a test
/// can stop it and bring it back on the same port without touching anyone else's.
pub struct PrivateRedis {
    pub url: String,
    port: u16,
    child: Option<tokio::process::Child>,
}

impl PrivateRedis {
    pub async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut redis = PrivateRedis {
            url: format!("redis://127.0.0.1:{port}"),
            port,
            child: None,
        };
        redis.restart().await;
        redis
    }

    /// SIGKILL: Redis is gone, with every lock and counter in it.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap();
        }
    }

    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "Redis is already running");
        let child = tokio::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("starting redis-server");
        self.child = Some(child);
        eventually("Redis to listen", Duration::from_secs(10), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .ok()
                .map(|_| ())
        })
        .await;
    }
}

/// A Redis of the test's own that speaks only TLS (`--port 0`), with `pki`'s server
/// certificate, and demands a client certificate from `pki`'s CA.
pub struct TlsRedis {
    /// `rediss://127.0.0.1:<port>`.
    pub url: String,
    _child: tokio::process::Child,
}

impl TlsRedis {
    pub async fn start(pki: &crate::TestPki) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let path = |p: &std::path::Path| p.to_str().unwrap().to_owned();
        let child = tokio::process::Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--tls-cert-file", &path(&pki.server_cert)])
            .args(["--tls-key-file", &path(&pki.server_key)])
            .args(["--tls-ca-cert-file", &path(&pki.ca)])
            .args(["--tls-auth-clients", "yes"])
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("starting redis-server with TLS");
        eventually("Redis to listen", Duration::from_secs(10), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(|_| ())
        })
        .await;
        TlsRedis {
            url: format!("rediss://127.0.0.1:{port}"),
            _child: child,
        }
    }
}

/// A message as a test reads it.
#[derive(Debug, Clone)]
pub struct TopicMessage {
    pub key: String,
    pub headers: std::collections::HashMap<String, String>,
    pub payload: Vec<u8>,
}

/// Reads every message on `topic` so far (waiting up to `wait` for at least `at_least`):
/// how tests look at dead-letter topics, and for what a message must never carry.
pub async fn read_topic(
    settings: &Settings,
    topic: &str,
    at_least: usize,
    wait: Duration,
) -> Vec<TopicMessage> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::{Headers, Message};

    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &settings.kafka.brokers)
        .set("group.id", unique("paygate-test-reader-"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut partitions = rdkafka::TopicPartitionList::new();
    for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
        partitions
            .add_partition_offset(topic, partition.id(), rdkafka::Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&partitions).unwrap();
    let mut found = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let now = tokio::time::Instant::now();
        if found.len() >= at_least && now + Duration::from_millis(500) > deadline || now >= deadline
        {
            return found;
        }
        let next = tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await;
        if let Ok(Ok(message)) = next {
            let key = message
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .unwrap_or_default();
            let headers = message
                .headers()
                .map(|hs| {
                    hs.iter()
                        .map(|h| {
                            (
                                h.key.to_owned(),
                                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            let payload = message.payload().unwrap_or_default().to_vec();
            found.push(TopicMessage {
                key,
                headers,
                payload,
            });
        }
    }
}
