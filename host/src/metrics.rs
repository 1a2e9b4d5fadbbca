//! What the host counts for its operators, per add-on and host-wide, exposed in the
//! Prometheus/OpenMetrics text format at `GET /metrics` (see [`crate::app`]).
//!
//! Each host owns its own registry (prometheus-client, no global recorder), so two hosts in
//! one process — the test suite runs dozens — never mix their numbers. Counters and
//! histograms are moved where things happen; gauges that describe the present (calls
//! running, KV usage, the serving version) are read when scraped.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AddonLabel {
    pub addon: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub addon: String,
    pub protocol: String,
    pub route: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub addon: String,
    pub call: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub addon: String,
    pub call: String,
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    pub addon: String,
    /// `done`, `retry` or `dead`.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CpuLabels {
    pub addon: String,
    /// `calls` (guest code, instances made ahead included) or `compile`.
    pub work: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    pub addon: String,
    pub version: String,
}

/// Seconds, from 0.5 ms to ~16 s: plugin calls, waits and commits.
fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Seconds, from 50 µs to ~1.6 s: one call's CPU, and its wait for a core.
fn cpu_seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.00005, 2.0, 16))
}

/// Seconds, from 10 ms to ~80 s: compilations.
fn compile_seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 14))
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub call_seconds: Histograms<CallLabels>,
    pub call_cpu_seconds: Histograms<CallLabels>,
    pub core_wait_seconds: Histograms<CallLabels>,
    pub cpu_seconds: Family<CpuLabels, Counter<f64, std::sync::atomic::AtomicU64>>,
    pub cpu_yielding_seconds: Family<AddonLabel, Counter<f64, std::sync::atomic::AtomicU64>>,
    pub failures: Family<FailureLabels, Counter>,
    pub replays: Family<AddonLabel, Counter>,
    pub queue_wait_seconds: Histograms<AddonLabel>,
    pub calls_running: Family<AddonLabel, Gauge>,
    pub calls_queued: Family<AddonLabel, Gauge>,
    pub kv_bytes: Family<AddonLabel, Gauge>,
    pub kv_keys: Family<AddonLabel, Gauge>,
    pub plugin_version: Family<VersionLabels, Gauge>,
    pub swaps: Family<AddonLabel, Counter>,
    pub job_runs: Family<JobLabels, Counter>,
    pub compile_seconds: Histograms<AddonLabel>,
    pub commit_seconds: Histogram,
    pub durable_writes: Counter,
    pub flushes: Counter,
    pub connections: Gauge,
    pub calls_in_flight: Gauge,
    pub spare_instances: Gauge,
    /// Free bytes on the data directory's disk (sled), sampled every second.
    pub data_disk_free_bytes: Gauge,
    pub calls_on_spares: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut m = Metrics {
            registry: Registry::default(),
            requests: Family::default(),
            call_seconds: Family::new_with_constructor(seconds),
            call_cpu_seconds: Family::new_with_constructor(cpu_seconds),
            core_wait_seconds: Family::new_with_constructor(cpu_seconds),
            cpu_seconds: Family::default(),
            cpu_yielding_seconds: Family::default(),
            failures: Family::default(),
            replays: Family::default(),
            queue_wait_seconds: Family::new_with_constructor(seconds),
            calls_running: Family::default(),
            calls_queued: Family::default(),
            kv_bytes: Family::default(),
            kv_keys: Family::default(),
            plugin_version: Family::default(),
            swaps: Family::default(),
            job_runs: Family::default(),
            compile_seconds: Family::new_with_constructor(compile_seconds),
            commit_seconds: seconds(),
            durable_writes: Counter::default(),
            flushes: Counter::default(),
            connections: Gauge::default(),
            calls_in_flight: Gauge::default(),
            spare_instances: Gauge::default(),
            data_disk_free_bytes: Gauge::default(),
            calls_on_spares: Counter::default(),
        };
        let r = &mut m.registry;
        r.register(
            "addon_requests",
            "Platform and admin requests by add-on, protocol, route and status",
            m.requests.clone(),
        );
        r.register("addon_plugin_call_seconds", "Plugin call duration by add-on and call", m.call_seconds.clone());
        r.register(
            "addon_plugin_call_cpu_seconds",
            "CPU a plugin call's guest code ran for (measured on its threads), by add-on and call",
            m.call_cpu_seconds.clone(),
        );
        r.register(
            "addon_plugin_core_wait_seconds",
            "Time a plugin call waited for a core (server.plugin_cores), by add-on and call",
            m.core_wait_seconds.clone(),
        );
        r.register(
            "addon_cpu_seconds",
            "CPU used for the add-on: its guest code (work=calls) and its plugin compiles (work=compile)",
            m.cpu_seconds.clone(),
        );
        r.register(
            "addon_cpu_yielding_seconds",
            "CPU of the add-on's calls that ran under SCHED_IDLE, yielding to other add-ons (a spinner's; part of work=calls)",
            m.cpu_yielding_seconds.clone(),
        );
        r.register("addon_call_failures", "Calls that failed, by add-on, call and error kind", m.failures.clone());
        r.register("addon_replays", "Identical repeats answered from the stored reply", m.replays.clone());
        r.register(
            "addon_queue_wait_seconds",
            "Time calls waited for a slot in the add-on's share",
            m.queue_wait_seconds.clone(),
        );
        r.register("addon_calls_running", "Plugin calls of the add-on running now", m.calls_running.clone());
        r.register(
            "addon_calls_queued",
            "Plugin calls of the add-on waiting for its share now",
            m.calls_queued.clone(),
        );
        r.register("addon_kv_bytes", "Key-value data of the add-on (keys and values)", m.kv_bytes.clone());
        r.register("addon_kv_keys", "Key-value keys of the add-on", m.kv_keys.clone());
        r.register("addon_plugin_version", "The plugin version serving the add-on (value 1)", m.plugin_version.clone());
        r.register(
            "addon_plugin_swaps",
            "Activations of a plugin version (uploads, rollbacks, watch reloads)",
            m.swaps.clone(),
        );
        r.register("addon_job_runs", "Job runs by add-on and outcome (done, retry, dead)", m.job_runs.clone());
        r.register(
            "addon_plugin_compile_seconds",
            "Plugin compilations (or compile-cache loads)",
            m.compile_seconds.clone(),
        );
        r.register(
            "addon_host_commit_seconds",
            "Durable commits of a call's writes, flush wait included",
            m.commit_seconds.clone(),
        );
        r.register("addon_host_durable_writes", "Writes acknowledged durable", m.durable_writes.clone());
        r.register("addon_host_flushes", "Storage flushes (group commits)", m.flushes.clone());
        r.register("addon_host_connections", "Open HTTP connections", m.connections.clone());
        r.register("addon_host_calls_in_flight", "Plugin calls running on the host now", m.calls_in_flight.clone());
        r.register(
            "addon_host_data_disk_free_bytes",
            "Free bytes on the data directory's disk (sled; below server.min_free_disk_mib new provisions and uploads are refused)",
            m.data_disk_free_bytes.clone(),
        );
        r.register(
            "addon_host_spare_instances",
            "Plugin instances made ahead of their call, ready now",
            m.spare_instances.clone(),
        );
        r.register(
            "addon_host_calls_on_spare_instances",
            "Plugin calls that ran in an instance made ahead of them",
            m.calls_on_spares.clone(),
        );
        m
    }

    /// A finished call: how long it took, the CPU it used and how long it waited for cores.
    pub fn call(&self, addon: &str, call: &str, took: Duration, used: crate::runtime::CallCpu) {
        let labels = CallLabels { addon: addon.to_owned(), call: call.to_owned() };
        self.call_seconds.get_or_create(&labels).observe(took.as_secs_f64());
        self.call_cpu_seconds.get_or_create(&labels).observe(used.cpu.as_secs_f64());
        self.core_wait_seconds.get_or_create(&labels).observe(used.waited.as_secs_f64());
    }

    /// Raise the add-on's CPU counters to its runtime totals.
    pub fn cpu(&self, addon: &str, totals: crate::runtime::CpuTotals) {
        let catch_up = |counter: &Counter<f64, std::sync::atomic::AtomicU64>, total: std::time::Duration| {
            let behind = total.as_secs_f64() - counter.get();
            if behind > 0.0 {
                counter.inc_by(behind);
            }
        };
        for (work, total) in [("calls", totals.calls), ("compile", totals.compile)] {
            catch_up(
                &self.cpu_seconds.get_or_create(&CpuLabels { addon: addon.to_owned(), work: work.to_owned() }),
                total,
            );
        }
        catch_up(&self.cpu_yielding_seconds.get_or_create(&AddonLabel { addon: addon.to_owned() }), totals.yielding);
    }

    pub fn failure(&self, addon: &str, call: &str, kind: &str) {
        let labels = FailureLabels { addon: addon.to_owned(), call: call.to_owned(), kind: kind.to_owned() };
        self.failures.get_or_create(&labels).inc();
    }

    pub fn job_run(&self, addon: &str, outcome: &str) {
        self.job_runs.get_or_create(&JobLabels { addon: addon.to_owned(), outcome: outcome.to_owned() }).inc();
    }

    pub fn addon_counter(family: &Family<AddonLabel, Counter>, addon: &str) {
        family.get_or_create(&AddonLabel { addon: addon.to_owned() }).inc();
    }

    pub fn addon_histogram(family: &Histograms<AddonLabel>, addon: &str, value: Duration) {
        family.get_or_create(&AddonLabel { addon: addon.to_owned() }).observe(value.as_secs_f64());
    }

    pub fn addon_gauge(family: &Family<AddonLabel, Gauge>, addon: &str, value: u64) {
        family.get_or_create(&AddonLabel { addon: addon.to_owned() }).set(i64::try_from(value).unwrap_or(i64::MAX));
    }

    /// Raise a counter kept elsewhere (storage's own tallies) to `total`.
    pub fn catch_up(counter: &Counter, total: u64) {
        let seen = counter.get();
        if total > seen {
            counter.inc_by(total - seen);
        }
    }

    /// The exposition text.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}
