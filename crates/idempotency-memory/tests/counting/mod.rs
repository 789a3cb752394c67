//! A `metrics` recorder for the memory crate's tests: counts every counter increment and
//! histogram value by metric key (`name{label=value,...}`).

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use metrics::{
    Counter, CounterFn, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};

/// Counts every counter increment and histogram value by metric key (`name{label=value}`).
#[derive(Default)]
pub struct Counting {
    pub counters: Mutex<BTreeMap<String, Arc<Total>>>,
    pub histograms: Mutex<BTreeMap<String, Arc<Total>>>,
}

#[derive(Default)]
pub struct Total(pub AtomicU64);

impl CounterFn for Total {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::Relaxed);
    }
    fn absolute(&self, value: u64) {
        self.0.store(value, Ordering::Relaxed);
    }
}

impl HistogramFn for Total {
    fn record(&self, value: f64) {
        assert!(value >= 0.0, "a latency is never negative: {value}");
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

pub fn metric_name(key: &Key) -> String {
    let labels: Vec<String> = key
        .labels()
        .map(|l| format!("{}={}", l.key(), l.value()))
        .collect();
    format!("{}{{{}}}", key.name(), labels.join(","))
}

pub type Totals = (BTreeMap<String, u64>, BTreeMap<String, u64>);

impl Counting {
    /// Every metric registered so far, counters then histograms (values recorded).
    pub fn totals(&self) -> Totals {
        self.read(|_| true)
    }

    /// [`Counting::totals`] without the metrics that were registered but never recorded.
    pub fn nonzero_totals(&self) -> Totals {
        self.read(|n| n > 0)
    }

    fn read(&self, keep: impl Fn(u64) -> bool) -> Totals {
        let read = |map: &Mutex<BTreeMap<String, Arc<Total>>>| {
            map.lock()
                .unwrap()
                .iter()
                .map(|(k, t)| (k.clone(), t.0.load(Ordering::Relaxed)))
                .filter(|(_, n)| keep(*n))
                .collect()
        };
        (read(&self.counters), read(&self.histograms))
    }

    /// The total of the counter `key` (`name{label=value,...}`), 0 if never registered.
    pub fn counter(&self, key: &str) -> u64 {
        let map = self.counters.lock().unwrap();
        map.get(key).map_or(0, |t| t.0.load(Ordering::Relaxed))
    }

    /// How many values the histogram `key` recorded, 0 if never registered.
    pub fn histogram(&self, key: &str) -> u64 {
        let map = self.histograms.lock().unwrap();
        map.get(key).map_or(0, |t| t.0.load(Ordering::Relaxed))
    }
}

impl Recorder for Counting {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let mut map = self.counters.lock().unwrap();
        Counter::from_arc(Arc::clone(map.entry(metric_name(key)).or_default()))
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        let mut map = self.histograms.lock().unwrap();
        Histogram::from_arc(Arc::clone(map.entry(metric_name(key)).or_default()))
    }
}
