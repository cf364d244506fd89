//! Whoever starts tansu indexes its storage: the scripts' own `start_broker` leaves the
//! indexes tansu's fetches need in a fresh data directory, and again (idempotently) when
//! the broker is killed and started on the same data.

use std::path::Path;
use std::time::Duration;

const LIB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/lib.sh");

/// Runs `start_broker <port> <dir>` from `scripts/lib.sh` with the run's tansu binary;
/// returns the broker's session id (it is started with setsid).
async fn start_broker(port: u16, dir: &Path) -> String {
    let script = format!(
        "source {LIB}; TANSU=\"${{PAYGATE_TEST_TANSU:-$TANSU}}\"; start_broker {port} {}",
        dir.display()
    );
    let output = tokio::process::Command::new("bash")
        .args(["-c", &script])
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "start_broker failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// SIGKILL to the broker's whole session, as in a crash.
async fn kill_session(sid: &str) {
    let status = tokio::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{sid}")])
        .status()
        .await
        .unwrap();
    assert!(status.success());
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// The index names in a sqlite database, read with Python's sqlite3 module.
async fn indexes(db: &Path) -> Vec<String> {
    let output = tokio::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys\n\
             db = sqlite3.connect(sys.argv[1])\n\
             for (name,) in db.execute(\"SELECT name FROM sqlite_master WHERE type = 'index' ORDER BY name\"):\n    print(name)",
        ])
        .arg(db)
        .output()
        .await
        .unwrap();
    assert!(output.status.success());
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn the_scripts_start_tansu_with_its_storage_indexed_on_fresh_and_existing_data() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = std::env::temp_dir().join(paygate_testkit::unique("paygate-index-"));
    let db = dir.join("tansu.db");

    let first = start_broker(port, &dir).await;
    let found = indexes(&db).await;
    for wanted in ["header_record", "watermark_topition"] {
        assert!(
            found.iter().any(|name| name == wanted),
            "{wanted} missing from a fresh broker's storage: {found:?}"
        );
    }
    kill_session(&first).await;

    // Started again on the same data: the script runs again and changes nothing.
    let second = start_broker(port, &dir).await;
    assert_eq!(indexes(&db).await, found);
    kill_session(&second).await;
    std::fs::remove_dir_all(&dir).unwrap();
}
