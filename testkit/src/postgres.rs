//! A PostgreSQL server of the test's own, so a test can crash and restart it without
//! touching the one every other test (and everyone else on the machine) shares.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::{eventually, unique};

/// A private PostgreSQL cluster (Debian's binaries: `initdb`, `pg_ctl`) in a temporary
/// directory on a free port; trust authentication on loopback, user `postgres`.
pub struct PrivatePostgres {
    /// An admin connection URL (database `postgres`), as `PAYGATE_TEST_DATABASE_URL`.
    pub admin_url: String,
    port: u16,
    dir: PathBuf,
    bin: PathBuf,
    /// Server settings beyond the defaults (`-c name=value` each).
    extra: Vec<String>,
}

/// Where Debian keeps the server binaries: the newest `/usr/lib/postgresql/<n>/bin`.
fn server_binaries() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL's server binaries under /usr/lib/postgresql")
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, bin)| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("an initdb under /usr/lib/postgresql")
        .1
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Runs a server tool; as root, as the `postgres` user (the server refuses root).
fn run(bin: &std::path::Path, tool: &str, args: &[&str]) -> std::process::Output {
    let program = bin.join(tool);
    let mut command = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(&program);
        c
    } else {
        Command::new(&program)
    };
    command
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", program.display()))
}

impl PrivatePostgres {
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// [`PrivatePostgres::start`] with server settings of the test's choosing, e.g.
    /// `shared_preload_libraries=pg_stat_statements`.
    pub async fn start_with(settings: &[&str]) -> Self {
        Self::start_configured(settings, None).await
    }

    /// A server that takes TLS connections only (`hostnossl` is rejected), with `pki`'s
    /// server certificate. Its `admin_url` asks for TLS.
    pub async fn start_with_tls(pki: &crate::TestPki) -> Self {
        let mut postgres = Self::start_configured(&[], Some(pki)).await;
        postgres.admin_url = format!("{}?sslmode=require", postgres.admin_url);
        postgres
    }

    async fn start_configured(settings: &[&str], tls: Option<&crate::TestPki>) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(unique("paygate-pg-"));
        std::fs::create_dir_all(&dir).unwrap();
        if is_root() {
            let chown = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&dir)
                .status()
                .unwrap();
            assert!(chown.success(), "chown of {}", dir.display());
        }
        let bin = server_binaries();
        let data = dir.join("data");
        let data = data.to_str().unwrap();
        let init = tokio::task::block_in_place(|| {
            run(
                &bin,
                "initdb",
                &[
                    "-D",
                    data,
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--no-sync",
                    "-E",
                    "UTF8",
                ],
            )
        });
        assert!(
            init.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        let mut extra: Vec<String> = settings.iter().map(|s| format!(" -c {s}")).collect();
        if let Some(pki) = tls {
            // The server reads its key only when the server's user alone may.
            let (cert, key) = (dir.join("server.pem"), dir.join("server.key"));
            std::fs::copy(&pki.server_cert, &cert).unwrap();
            std::fs::copy(&pki.server_key, &key).unwrap();
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
            if is_root() {
                let chown = Command::new("chown")
                    .args(["postgres:postgres"])
                    .arg(&cert)
                    .arg(&key)
                    .status()
                    .unwrap();
                assert!(chown.success());
            }
            std::fs::write(
                dir.join("data").join("pg_hba.conf"),
                "local all all trust\n\
                 hostssl all all 127.0.0.1/32 trust\n\
                 hostnossl all all 127.0.0.1/32 reject\n",
            )
            .unwrap();
            extra.push(" -c ssl=on".to_owned());
            extra.push(format!(" -c ssl_cert_file={}", cert.display()));
            extra.push(format!(" -c ssl_key_file={}", key.display()));
        }
        let postgres = PrivatePostgres {
            admin_url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            port,
            dir,
            bin,
            extra,
        };
        postgres.start_server().await;
        postgres
    }

    fn data(&self) -> String {
        self.dir.join("data").to_str().unwrap().to_owned()
    }

    async fn start_server(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off -c max_connections=200{}",
            self.port,
            self.dir.display(),
            self.extra.concat()
        );
        let log = self.dir.join("server.log");
        let started = tokio::task::block_in_place(|| {
            run(
                &self.bin,
                "pg_ctl",
                &[
                    "-D",
                    &self.data(),
                    "-l",
                    log.to_str().unwrap(),
                    "-o",
                    &options,
                    "-w",
                    "start",
                ],
            )
        });
        assert!(
            started.status.success(),
            "pg_ctl start failed: {}{}",
            String::from_utf8_lossy(&started.stdout),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        eventually("PostgreSQL to listen", Duration::from_secs(30), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .ok()
                .map(|_| ())
        })
        .await;
    }

    /// Stops it the way a crash does (`pg_ctl stop -m immediate`: no checkpoint, every
    /// connection cut), and starts it again on the same port and data; recovery replays
    /// the WAL.
    pub async fn crash_and_restart(&self, down_for: Duration) {
        let stopped = tokio::task::block_in_place(|| {
            run(
                &self.bin,
                "pg_ctl",
                &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
            )
        });
        assert!(
            stopped.status.success(),
            "pg_ctl stop failed: {}",
            String::from_utf8_lossy(&stopped.stderr)
        );
        tokio::time::sleep(down_for).await;
        self.start_server().await;
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = run(
            &self.bin,
            "pg_ctl",
            &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
        );
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
