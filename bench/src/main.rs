//! `paygate-bench`: drives deposits through a running Paygate (what `scripts/up` starts)
//! and measures what a merchant sees: intake latency and throughput, and the time from
//! the request to the webhook of the payment's final state, received by a merchant
//! endpoint inside the bench. It counts payments lost (accepted, final, but no final
//! webhook), stuck (not final after the drain) and duplicated (a final state announced
//! under more than one webhook id), and reports lifecycle throughput as a ratio to the
//! `pgbench` TPS of the same machine, so numbers compare across machines.
//!
//! Usage: `paygate-bench [--rate N | --max --concurrency C] [--seconds S] [--drain S]
//!        [--pgbench-tps X] [--out DIR]`. `scripts/bench` runs it with the stack and pgbench.
//! `--drain` (60 s) is how long the drain after the load waits with no payment finishing
//! before it counts the unfinished ones: a backlog the pipeline is still clearing is
//! waited for, however long it takes.
//! Only loopback addresses are used.

mod load;
mod merchant;
mod report;

use std::time::Duration;

use anyhow::{bail, Context as _};

/// How the bench runs.
#[derive(Debug, Clone)]
pub struct Options {
    pub api: String,
    /// `Some(rate)`: open loop at that many requests per second; `None`: closed loop.
    pub rate: Option<u32>,
    pub concurrency: usize,
    pub seconds: u64,
    pub drain: Duration,
    pub pgbench_tps: Option<f64>,
    pub out: std::path::PathBuf,
    pub admin_token: String,
    pub build: String,
}

fn options() -> anyhow::Result<Options> {
    let state = std::env::var("PAYGATE_TOOLS_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| {
            std::path::PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".local/share/paygate")
        })
        .join("demo");
    let read = |name: &str| {
        std::fs::read_to_string(state.join(name))
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    };
    let mut options = Options {
        api: "http://127.0.0.1:8080".to_owned(),
        rate: Some(50),
        concurrency: 32,
        seconds: 30,
        drain: Duration::from_secs(60),
        pgbench_tps: None,
        out: state.parent().unwrap_or(&state).join("bench"),
        admin_token: read("admin-token"),
        build: read("build"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--api" => options.api = value()?,
            "--rate" => options.rate = Some(value()?.parse()?),
            "--max" => options.rate = None,
            "--concurrency" => options.concurrency = value()?.parse()?,
            "--seconds" => options.seconds = value()?.parse()?,
            "--drain" => options.drain = Duration::from_secs(value()?.parse()?),
            "--pgbench-tps" => options.pgbench_tps = Some(value()?.parse()?),
            "--out" => options.out = value()?.into(),
            "--admin-token" => options.admin_token = value()?,
            other => bail!("unknown argument {other}; see the doc at the top of bench/src/main.rs"),
        }
    }
    let host = reqwest::Url::parse(&options.api)?
        .host_str()
        .unwrap_or_default()
        .to_owned();
    if !matches!(host.as_str(), "127.0.0.1" | "localhost" | "[::1]" | "::1") {
        bail!("the bench sends traffic to loopback only, not {host}");
    }
    if options.admin_token.is_empty() {
        bail!("no admin token: start the stack with scripts/up, or pass --admin-token");
    }
    Ok(options)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = options()?;
    let receiver = merchant::Receiver::start().await?;
    let key = merchant::register(&options, &receiver.url).await?;
    let run = load::run(&options, &key).await?;
    let outcome = load::drain(&options, &key, &run, &receiver).await;
    let result = report::Result::of(&options, &run, &receiver, &outcome);
    std::fs::create_dir_all(&options.out)?;
    let json = options.out.join("result.json");
    std::fs::write(&json, serde_json::to_vec_pretty(&result)?)?;
    let svg = options.out.join("timeline.svg");
    report::plot(&result, &svg)?;
    result.print();
    println!("\nwritten: {} and {}", json.display(), svg.display());
    if result.lost + result.stuck + result.duplicated > 0 {
        bail!("payments were lost, stuck or duplicated");
    }
    Ok(())
}
