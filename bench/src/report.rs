//! The numbers: a JSON result, a table, and an SVG timeline of throughput and latency.

use std::collections::HashSet;
use std::time::Duration;

use plotters::prelude::*;
use serde::Serialize;

use crate::load::{Outcome, Run};
use crate::merchant::{is_final, Receiver};
use crate::Options;

#[derive(Debug, Serialize)]
pub struct Result {
    pub build: String,
    pub mode: String,
    pub seconds: f64,
    pub sent: usize,
    pub accepted: usize,
    /// Requests not accepted, by why (status code or the client's error).
    pub refused: std::collections::BTreeMap<String, usize>,
    pub intake_per_s: f64,
    pub intake_ms: Percentiles,
    /// Request to the final state's webhook.
    pub end_to_end_ms: Percentiles,
    /// Payments that reached their final webhook, per second from the first request to
    /// the last final webhook (not per second of load: a run whose payments finish
    /// during the drain has not sustained its intake rate).
    pub lifecycle_per_s: f64,
    /// Seconds from the first request to the last final webhook.
    pub lifecycle_seconds: f64,
    /// Payments whose final webhook arrived.
    pub finished: usize,
    pub pgbench_tps: Option<f64>,
    pub lifecycle_to_pgbench: Option<f64>,
    pub intake_to_pgbench: Option<f64>,
    /// Final in the api but no final webhook arrived.
    pub lost: usize,
    /// Not final after the drain.
    pub stuck: usize,
    /// A final state announced under more than one webhook id.
    pub duplicated: usize,
    /// The same webhook id received more than once (at-least-once redelivery; allowed).
    pub redelivered: usize,
    pub drained_in_s: f64,
    pub timeline: Vec<Second>,
}

#[derive(Debug, Default, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

impl Percentiles {
    fn of(mut values: Vec<f64>) -> Self {
        if values.is_empty() {
            return Percentiles::default();
        }
        values.sort_by(f64::total_cmp);
        let at = |p: f64| values[((values.len() as f64 * p) as usize).min(values.len() - 1)];
        Percentiles {
            p50: at(0.50),
            p95: at(0.95),
            p99: at(0.99),
        }
    }
}

/// One second of the run.
#[derive(Debug, Default, Serialize)]
pub struct Second {
    pub second: u64,
    pub accepted: u64,
    pub finished: u64,
    pub intake_p50_ms: f64,
    pub end_to_end_p50_ms: f64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl Result {
    pub fn of(options: &Options, run: &Run, receiver: &Receiver, outcome: &Outcome) -> Self {
        let seconds = (run.ended - run.started).as_secs_f64();
        let accepted: Vec<_> = run.sent.iter().filter(|s| s.accepted.is_some()).collect();
        let mut end_to_end = Vec::new();
        let mut timeline: Vec<Second> = (0..=seconds.ceil() as u64)
            .map(|second| Second {
                second,
                ..Second::default()
            })
            .collect();
        let mut intake_by_second: Vec<Vec<f64>> = vec![Vec::new(); timeline.len()];
        let mut e2e_by_second: Vec<Vec<f64>> = vec![Vec::new(); timeline.len()];
        let (mut duplicated, mut redelivered, mut finished) = (0, 0, 0);
        let mut last_final = run.ended;
        for sent in &accepted {
            let second = ((sent.at - run.started).as_secs() as usize).min(timeline.len() - 1);
            timeline[second].accepted += 1;
            intake_by_second[second].push(ms(sent.latency));
            let Some(id) = &sent.accepted else { continue };
            let arrivals = receiver.of(id);
            let finals: Vec<_> = arrivals
                .iter()
                .filter(|a| is_final(&a.event_type))
                .collect();
            let distinct: HashSet<&str> = finals.iter().map(|a| a.webhook_id.as_str()).collect();
            if distinct.len() > 1 {
                duplicated += 1;
            }
            redelivered += finals.len() - distinct.len();
            if let Some(first) = finals.iter().map(|a| a.at).min() {
                finished += 1;
                last_final = last_final.max(first);
                let took = ms(first - sent.at);
                end_to_end.push(took);
                let done = ((first - run.started).as_secs() as usize).min(timeline.len() - 1);
                timeline[done].finished += 1;
                e2e_by_second[second].push(took);
            }
        }
        for (i, second) in timeline.iter_mut().enumerate() {
            second.intake_p50_ms = Percentiles::of(std::mem::take(&mut intake_by_second[i])).p50;
            second.end_to_end_p50_ms = Percentiles::of(std::mem::take(&mut e2e_by_second[i])).p50;
        }
        let stuck = outcome
            .unfinished
            .iter()
            .filter(|(_, status)| !matches!(status.as_str(), "completed" | "failed"))
            .count();
        let lost = outcome.unfinished.len() - stuck;
        let intake_per_s = accepted.len() as f64 / seconds;
        let lifecycle_seconds = (last_final - run.started).as_secs_f64();
        let lifecycle_per_s = finished as f64 / lifecycle_seconds;
        Result {
            build: options.build.clone(),
            mode: match options.rate {
                Some(rate) => format!("open loop at {rate}/s"),
                None => format!("closed loop, {} clients", options.concurrency),
            },
            seconds,
            sent: run.sent.len(),
            accepted: accepted.len(),
            refused: run.sent.iter().filter_map(|s| s.refused.clone()).fold(
                Default::default(),
                |mut counted, why| {
                    *counted.entry(why).or_default() += 1;
                    counted
                },
            ),
            intake_per_s,
            intake_ms: Percentiles::of(accepted.iter().map(|s| ms(s.latency)).collect()),
            end_to_end_ms: Percentiles::of(end_to_end),
            lifecycle_per_s,
            lifecycle_seconds,
            finished,
            pgbench_tps: options.pgbench_tps,
            lifecycle_to_pgbench: options.pgbench_tps.map(|tps| lifecycle_per_s / tps),
            intake_to_pgbench: options.pgbench_tps.map(|tps| intake_per_s / tps),
            lost,
            stuck,
            duplicated,
            redelivered,
            drained_in_s: outcome.drained_in.as_secs_f64(),
            timeline,
        }
    }

    pub fn print(&self) {
        let ratio = |r: Option<f64>| r.map_or("-".to_owned(), |r| format!("{r:.3} x pgbench"));
        println!("\nPaygate benchmark ({} build, {})", self.build, self.mode);
        println!(
            "  sent / accepted          {} / {} in {:.1} s",
            self.sent, self.accepted, self.seconds
        );
        for (why, count) in &self.refused {
            println!("    not accepted: {count} × {why}");
        }
        println!(
            "  intake                   {:.1}/s ({})  p50 {:.1} ms  p95 {:.1} ms  p99 {:.1} ms",
            self.intake_per_s,
            ratio(self.intake_to_pgbench),
            self.intake_ms.p50,
            self.intake_ms.p95,
            self.intake_ms.p99
        );
        println!(
            "  lifecycle (final webhook) {:.1}/s ({}; {} finished in {:.1} s)",
            self.lifecycle_per_s,
            ratio(self.lifecycle_to_pgbench),
            self.finished,
            self.lifecycle_seconds
        );
        println!(
            "  end to end               p50 {:.1} ms  p95 {:.1} ms  p99 {:.1} ms",
            self.end_to_end_ms.p50, self.end_to_end_ms.p95, self.end_to_end_ms.p99
        );
        println!(
            "  pgbench -N               {}",
            self.pgbench_tps
                .map_or("not measured".to_owned(), |t| format!("{t:.0} TPS"))
        );
        println!(
            "  lost / stuck / duplicated {} / {} / {}  (redelivered webhooks: {}, drained in {:.1} s)",
            self.lost, self.stuck, self.duplicated, self.redelivered, self.drained_in_s
        );
    }
}

/// Throughput (accepted and finished per second) above, p50 latencies below.
pub fn plot(result: &Result, path: &std::path::Path) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1000, 700)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(350);
    let seconds = result.timeline.len() as u64;
    let most = result
        .timeline
        .iter()
        .map(|s| s.accepted.max(s.finished))
        .max()
        .unwrap_or(1)
        .max(1);
    let mut chart = ChartBuilder::on(&top)
        .caption("payments per second", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(0..seconds, 0..most + most / 10 + 1)?;
    chart.configure_mesh().x_desc("second").draw()?;
    chart
        .draw_series(LineSeries::new(
            result.timeline.iter().map(|s| (s.second, s.accepted)),
            &BLUE,
        ))?
        .label("accepted")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    chart
        .draw_series(LineSeries::new(
            result.timeline.iter().map(|s| (s.second, s.finished)),
            &GREEN,
        ))?
        .label("final webhook")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], GREEN));
    chart.configure_series_labels().border_style(BLACK).draw()?;

    let slowest = result
        .timeline
        .iter()
        .map(|s| s.intake_p50_ms.max(s.end_to_end_p50_ms))
        .fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(&bottom)
        .caption("p50 latency (ms) by second sent", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(0..seconds, 0.0..slowest * 1.1)?;
    chart.configure_mesh().x_desc("second").draw()?;
    chart
        .draw_series(LineSeries::new(
            result.timeline.iter().map(|s| (s.second, s.intake_p50_ms)),
            &BLUE,
        ))?
        .label("intake")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    chart
        .draw_series(LineSeries::new(
            result
                .timeline
                .iter()
                .map(|s| (s.second, s.end_to_end_p50_ms)),
            &RED,
        ))?
        .label("request to final webhook")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    chart.configure_series_labels().border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}
