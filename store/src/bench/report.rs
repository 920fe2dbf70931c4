//! The result of one run, printed as text or as one flat JSON object (every
//! key always present, `null` when not applicable, so scripts can pick
//! fields without a JSON library).

use std::io::Write as _;
use std::time::Duration;

use serde::Serialize;

use super::hist::Histogram;
use super::procstat::ProcSample;
use super::{Api, BenchArgs, Format, closed_loop, watch};

/// One run's numbers.
#[derive(Debug, Serialize)]
pub struct Report {
    /// `v2` or `v3`.
    api: &'static str,
    workload: &'static str,
    endpoint: String,
    /// Concurrent clients (1 writer for `watch`).
    clients: u64,
    /// v3: HTTP/2 connections shared by the clients / watch streams.
    conns: Option<u64>,
    /// v3 watch: watch streams.
    streams: Option<u64>,
    /// keepalive: leases kept alive.
    leases: Option<u64>,
    value_size: usize,
    key_space: u64,
    /// Requests completed (ok + errors); writer puts for `watch`.
    ops: u64,
    errors: u64,
    elapsed_s: f64,
    /// Successful ops per second.
    ops_per_sec: f64,
    mean_us: f64,
    min_us: u64,
    p50_us: u64,
    p90_us: u64,
    p99_us: u64,
    max_us: u64,
    server_pid: Option<u32>,
    server_rss_kib: Option<u64>,
    server_hwm_kib: Option<u64>,
    server_cpu_s: Option<f64>,
    server_cpu_us_per_op: Option<f64>,
    watchers: Option<u64>,
    events_expected: Option<u64>,
    events_delivered: Option<u64>,
    events_missed: Option<u64>,
    /// v3: events received more than once.
    events_duplicated: Option<u64>,
    /// v3: events received after one with a higher revision.
    events_out_of_order: Option<u64>,
    /// v3: events for revisions the writer never produced.
    events_unexpected: Option<u64>,
    events_per_sec: Option<f64>,
    delivery_p50_us: Option<u64>,
    delivery_p90_us: Option<u64>,
    delivery_p99_us: Option<u64>,
    delivery_max_us: Option<u64>,
    history_cleared: Option<u64>,
    watch_errors: Option<u64>,
    error_samples: Vec<String>,
}

fn per_sec(n: u64, d: Duration) -> f64 {
    let s = d.as_secs_f64();
    if s > 0.0 { n as f64 / s } else { 0.0 }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

impl Report {
    fn base(workload: &'static str, args: &BenchArgs, clients: u64, h: &Histogram) -> Self {
        Self {
            api: match args.api {
                Api::V2 => "v2",
                Api::V3 => "v3",
            },
            workload,
            endpoint: args.endpoint.clone(),
            clients,
            conns: None,
            streams: None,
            leases: None,
            value_size: args.value_size,
            key_space: args.key_space,
            ops: 0,
            errors: 0,
            elapsed_s: 0.0,
            ops_per_sec: 0.0,
            mean_us: round2(h.mean()),
            min_us: h.min(),
            p50_us: h.percentile(50.0),
            p90_us: h.percentile(90.0),
            p99_us: h.percentile(99.0),
            max_us: h.max(),
            server_pid: args.pid,
            server_rss_kib: None,
            server_hwm_kib: None,
            server_cpu_s: None,
            server_cpu_us_per_op: None,
            watchers: None,
            events_expected: None,
            events_delivered: None,
            events_missed: None,
            events_duplicated: None,
            events_out_of_order: None,
            events_unexpected: None,
            events_per_sec: None,
            delivery_p50_us: None,
            delivery_p90_us: None,
            delivery_p99_us: None,
            delivery_max_us: None,
            history_cleared: None,
            watch_errors: None,
            error_samples: Vec::new(),
        }
    }

    /// Report for the closed-loop workloads (put/get/range/txn/keepalive/load).
    pub fn from_kv(workload: &'static str, args: &BenchArgs, o: &closed_loop::Outcome) -> Self {
        Self {
            ops: o.ok + o.errors,
            errors: o.errors,
            elapsed_s: round2(o.elapsed.as_secs_f64()),
            ops_per_sec: round2(per_sec(o.ok, o.elapsed)),
            error_samples: o.error_samples.clone(),
            ..Self::base(workload, args, u64::from(args.clients), &o.hist)
        }
    }

    /// Report for watch fan-out.
    pub fn from_watch(args: &BenchArgs, o: &watch::Outcome) -> Self {
        let d = &o.delivery_hist;
        Self {
            ops: o.puts + o.put_errors,
            errors: o.put_errors,
            elapsed_s: round2(o.write_elapsed.as_secs_f64()),
            ops_per_sec: round2(per_sec(o.puts, o.write_elapsed)),
            watchers: Some(o.watchers as u64),
            events_expected: Some(o.expected),
            events_delivered: Some(o.delivered),
            events_missed: Some(o.missed),
            events_duplicated: o.duplicated,
            events_out_of_order: o.out_of_order,
            events_unexpected: o.unexpected,
            events_per_sec: Some(round2(per_sec(o.delivered, o.delivery_elapsed))),
            delivery_p50_us: Some(d.percentile(50.0)),
            delivery_p90_us: Some(d.percentile(90.0)),
            delivery_p99_us: Some(d.percentile(99.0)),
            delivery_max_us: Some(d.max()),
            history_cleared: o.history_cleared,
            watch_errors: Some(o.watch_errors),
            error_samples: o.error_samples.clone(),
            ..Self::base("watch", args, 1, &o.put_hist)
        }
    }

    /// Records the v3 connection count.
    pub fn set_conns(&mut self, n: u64) {
        self.conns = Some(n);
    }

    /// Records the v3 watch stream count.
    pub fn set_streams(&mut self, n: u64) {
        self.streams = Some(n);
    }

    /// Records how many leases a keepalive run kept alive.
    pub fn set_leases(&mut self, n: u64) {
        self.leases = Some(n);
    }

    /// Adds the server's memory after the run and CPU used during it.
    pub fn set_server(&mut self, before: ProcSample, after: ProcSample) {
        let cpu = after.cpu.saturating_sub(before.cpu);
        self.server_rss_kib = Some(after.rss_kib);
        self.server_hwm_kib = Some(after.hwm_kib);
        self.server_cpu_s = Some(round2(cpu.as_secs_f64()));
        let per_op = match self.events_delivered {
            // For fan-out the work is per delivered event, not per put.
            Some(ev) if ev > 0 => Some(ev),
            _ => (self.ops > 0).then_some(self.ops),
        };
        self.server_cpu_us_per_op = per_op.map(|n| round2(cpu.as_secs_f64() * 1e6 / n as f64));
    }

    /// Successful ops (writer puts for `watch`).
    pub fn succeeded(&self) -> u64 {
        self.ops - self.errors
    }

    /// Writes the report to stdout.
    pub fn print(&self, format: Format) -> anyhow::Result<()> {
        let mut out = std::io::stdout().lock();
        match format {
            Format::Json => {
                serde_json::to_writer(&mut out, self)?;
                writeln!(out)?;
            }
            Format::Text => out.write_all(self.text().as_bytes())?,
        }
        out.flush()?;
        Ok(())
    }

    fn text(&self) -> String {
        let mut s = String::new();
        // Writing into a String cannot fail.
        let _ = self.write_text(&mut s);
        s
    }

    fn write_text(&self, s: &mut String) -> std::fmt::Result {
        use std::fmt::Write as _;
        let ms = |us: u64| us as f64 / 1000.0;
        write!(
            s,
            "{} {}  endpoint {}  clients {}",
            self.api, self.workload, self.endpoint, self.clients
        )?;
        if let Some(c) = self.conns {
            write!(s, "  conns {c}")?;
        }
        if let Some(st) = self.streams {
            write!(s, "  streams {st}")?;
        }
        if let Some(l) = self.leases {
            write!(s, "  leases {l}")?;
        }
        writeln!(
            s,
            "  value {}B  key space {}",
            self.value_size, self.key_space
        )?;
        let what = if self.workload == "watch" {
            "puts"
        } else {
            "ops"
        };
        writeln!(
            s,
            "  {what:<9} {} in {:.2}s, {} errors, {:.1} ops/s",
            self.ops, self.elapsed_s, self.errors, self.ops_per_sec
        )?;
        writeln!(
            s,
            "  latency   min {:.3}ms  mean {:.3}ms  p50 {:.3}ms  p90 {:.3}ms  p99 {:.3}ms  max {:.3}ms",
            ms(self.min_us),
            self.mean_us / 1000.0,
            ms(self.p50_us),
            ms(self.p90_us),
            ms(self.p99_us),
            ms(self.max_us)
        )?;
        if let (Some(w), Some(exp), Some(del), Some(missed)) = (
            self.watchers,
            self.events_expected,
            self.events_delivered,
            self.events_missed,
        ) {
            writeln!(
                s,
                "  fan-out   {w} watchers: {del}/{exp} events delivered, {missed} missed, {:.1} events/s",
                self.events_per_sec.unwrap_or(0.0)
            )?;
            write!(
                s,
                "  delivery  p50 {:.3}ms  p90 {:.3}ms  p99 {:.3}ms  max {:.3}ms  (",
                ms(self.delivery_p50_us.unwrap_or(0)),
                ms(self.delivery_p90_us.unwrap_or(0)),
                ms(self.delivery_p99_us.unwrap_or(0)),
                ms(self.delivery_max_us.unwrap_or(0)),
            )?;
            if let Some(c) = self.history_cleared {
                write!(s, "history cleared {c}, ")?;
            }
            if let (Some(d), Some(o), Some(u)) = (
                self.events_duplicated,
                self.events_out_of_order,
                self.events_unexpected,
            ) {
                write!(s, "duplicated {d}, out of order {o}, unexpected {u}, ")?;
            }
            writeln!(s, "watch errors {})", self.watch_errors.unwrap_or(0))?;
        }
        if let (Some(pid), Some(rss), Some(hwm)) =
            (self.server_pid, self.server_rss_kib, self.server_hwm_kib)
        {
            writeln!(
                s,
                "  server    pid {pid}: VmRSS {:.1} MiB  VmHWM {:.1} MiB  CPU {:.2}s = {:.1}us/{}",
                rss as f64 / 1024.0,
                hwm as f64 / 1024.0,
                self.server_cpu_s.unwrap_or(0.0),
                self.server_cpu_us_per_op.unwrap_or(0.0),
                if self.workload == "watch" {
                    "event"
                } else {
                    "op"
                }
            )?;
        }
        for e in &self.error_samples {
            writeln!(s, "  error     {e}")?;
        }
        Ok(())
    }
}
