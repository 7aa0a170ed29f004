//! Running load at one level (a concurrency or a rate) until the measurement is stable.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, Exp, Zipf};
use serde::Serialize;
use tokio::sync::Mutex;

use crate::target::{ModelLoad, Target};

/// How requests are issued.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LoadShape {
    /// `concurrency` callers, each sending its next request when the last is answered.
    Closed { concurrency: usize },
    /// Poisson arrivals at `rate` requests per second, whatever the server does.
    Open { rate: f64 },
}

/// Windows and limits of a measurement.
#[derive(Clone, Debug)]
pub struct Plan {
    pub warmup: Duration,
    pub window: Duration,
    /// Windows that must agree (throughput within `stability` of their mean).
    pub stable_windows: usize,
    pub max_windows: usize,
    pub stability: f64,
    /// Open loop: requests allowed in flight before new arrivals are dropped (and counted).
    pub max_in_flight: usize,
    /// Zipf exponent for spreading requests over several models (0: uniform).
    pub zipf: f64,
    pub progress: bool,
    /// A latency target: the result says what fraction of requests met it.
    pub slo: Option<Duration>,
}

/// The result of one level.
#[derive(Clone, Debug, Serialize)]
pub struct LevelResult {
    pub label: String,
    pub concurrency: Option<usize>,
    pub rate: Option<f64>,
    pub requests: u64,
    pub seconds: f64,
    /// Batch elements per second, successful requests only.
    pub infer_per_sec: f64,
    pub requests_per_sec: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub mean_ms: f64,
    pub errors: BTreeMap<String, u64>,
    pub error_count: u64,
    pub windows: usize,
    pub stable: bool,
    /// Per-window throughputs (infer/s) of the windows reported.
    pub window_throughputs: Vec<f64>,
    /// Every answered request of the level, warm-up and unreported windows included (to reconcile
    /// with the server's own statistics).
    pub total_ok: u64,
    pub total_rows: u64,
    pub total_errors: u64,
    /// With a latency target: the fraction of the reported windows' requests answered within it
    /// (errors are misses).
    pub slo_attainment: Option<f64>,
}

#[derive(Debug)]
struct Recorder {
    histogram: Histogram<u64>,
    requests: u64,
    rows: u64,
    errors: BTreeMap<String, u64>,
}

impl Recorder {
    fn new() -> Self {
        Recorder {
            histogram: Histogram::new_with_bounds(1, 120_000_000, 3).expect("constant bounds are valid"),
            requests: 0,
            rows: 0,
            errors: BTreeMap::new(),
        }
    }

    fn record(&mut self, latency: Duration, rows: usize, error: Option<String>) {
        match error {
            None => {
                self.requests += 1;
                self.rows += rows as u64;
                let _ = self.histogram.record((latency.as_micros() as u64).max(1));
            }
            Some(e) => *self.errors.entry(e).or_default() += 1,
        }
    }

    fn merge(&mut self, other: &Recorder) {
        let _ = self.histogram.add(&other.histogram);
        self.requests += other.requests;
        self.rows += other.rows;
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
    }
}

/// Sends one request and checks the answer.
async fn send(target: &Target, load: &ModelLoad) -> Option<String> {
    match target.client().model_infer(load.request()).await {
        Ok(r) => {
            let r = r.into_inner();
            if r.outputs.is_empty() {
                Some("empty response".into())
            } else {
                None
            }
        }
        Err(status) => Some(format!("{:?}", status.code())),
    }
}

struct Picker {
    zipf: Option<Zipf<f64>>,
    n: usize,
}

impl Picker {
    fn new(n: usize, s: f64) -> Picker {
        let zipf = if n > 1 && s > 0.0 {
            Zipf::new(n as f64, s).ok()
        } else {
            None
        };
        Picker { zipf, n }
    }

    fn pick(&self, rng: &mut StdRng) -> usize {
        match &self.zipf {
            Some(z) => (z.sample(rng) as usize).clamp(1, self.n) - 1,
            None if self.n > 1 => rand::Rng::random_range(rng, 0..self.n),
            None => 0,
        }
    }
}

/// What every load task shares.
#[derive(Clone)]
struct Load {
    target: Arc<Target>,
    models: Arc<Vec<ModelLoad>>,
    recorder: Arc<Mutex<Recorder>>,
    stop: Arc<AtomicBool>,
    picker: Arc<Picker>,
}

impl Load {
    /// Sends one request to the model at `index` and records it, latency counted from `since`.
    async fn send_one(&self, index: usize, since: Instant) {
        let load = &self.models[index];
        let error = send(&self.target, load).await;
        self.recorder.lock().await.record(since.elapsed(), load.rows, error);
    }
}

/// Measures one level of load.
pub async fn run(target: Arc<Target>, models: Arc<Vec<ModelLoad>>, shape: LoadShape, plan: &Plan) -> LevelResult {
    let picker = Arc::new(Picker::new(models.len(), plan.zipf));
    let shared = Load {
        target,
        models,
        recorder: Arc::new(Mutex::new(Recorder::new())),
        stop: Arc::new(AtomicBool::new(false)),
        picker,
    };
    let (recorder, stop) = (shared.recorder.clone(), shared.stop.clone());
    let mut tasks = Vec::new();
    match shape {
        LoadShape::Closed { concurrency } => {
            for k in 0..concurrency.max(1) {
                let load = shared.clone();
                tasks.push(tokio::spawn(async move {
                    let mut rng = StdRng::seed_from_u64(k as u64);
                    while !load.stop.load(Ordering::Relaxed) {
                        let index = load.picker.pick(&mut rng);
                        load.send_one(index, Instant::now()).await;
                    }
                }));
            }
        }
        LoadShape::Open { rate } => {
            let load = shared.clone();
            let max_in_flight = plan.max_in_flight;
            tasks.push(tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(7);
                let gap = Exp::new(rate.max(1e-9)).expect("a positive rate");
                let in_flight = Arc::new(AtomicUsize::new(0));
                let mut intended = Instant::now();
                while !load.stop.load(Ordering::Relaxed) {
                    intended += Duration::from_secs_f64(gap.sample(&mut rng));
                    tokio::time::sleep_until(intended.into()).await;
                    let index = load.picker.pick(&mut rng);
                    if in_flight.load(Ordering::Relaxed) >= max_in_flight {
                        load.recorder.lock().await.record(
                            Duration::ZERO,
                            0,
                            Some("client overloaded (dropped)".into()),
                        );
                        continue;
                    }
                    in_flight.fetch_add(1, Ordering::Relaxed);
                    let (load, in_flight) = (load.clone(), in_flight.clone());
                    let sent_at = intended;
                    tokio::spawn(async move {
                        // From the intended send time: a late send is the server's queueing too.
                        load.send_one(index, sent_at).await;
                        in_flight.fetch_sub(1, Ordering::Relaxed);
                    });
                }
            }));
        }
    }
    let label = match shape {
        LoadShape::Closed { concurrency } => format!("concurrency {concurrency}"),
        LoadShape::Open { rate } => format!("rate {rate}/s"),
    };
    tokio::time::sleep(plan.warmup).await;
    let warmup = std::mem::replace(&mut *recorder.lock().await, Recorder::new());
    let mut all = warmup;
    let mut windows: Vec<(Recorder, f64)> = Vec::new();
    let mut stable = false;
    let mut last_mark = Instant::now();
    for w in 0..plan.max_windows.max(plan.stable_windows) {
        tokio::time::sleep(plan.window).await;
        let taken = std::mem::replace(&mut *recorder.lock().await, Recorder::new());
        let now = Instant::now();
        let seconds = now.duration_since(last_mark).as_secs_f64();
        last_mark = now;
        let throughput = taken.rows as f64 / seconds;
        if plan.progress {
            let p99 = taken.histogram.value_at_quantile(0.99) as f64 / 1000.0;
            let errors: u64 = taken.errors.values().sum();
            eprint!(
                "\r[{label}] window {}: {throughput:>10.0} infer/s  p99 {p99:>8.2} ms  errors {errors}   ",
                w + 1
            );
        }
        all.merge(&taken);
        windows.push((taken, seconds));
        if windows.len() >= plan.stable_windows {
            let last = &windows[windows.len() - plan.stable_windows..];
            let t: Vec<f64> = last.iter().map(|(r, s)| r.rows as f64 / s).collect();
            let mean = t.iter().sum::<f64>() / t.len() as f64;
            if mean > 0.0 && t.iter().all(|x| (x - mean).abs() <= plan.stability * mean) {
                stable = true;
                break;
            }
        }
    }
    if plan.progress {
        eprintln!();
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    // Open loop: let requests still in flight land before the totals are read.
    if let LoadShape::Open { .. } = shape {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    all.merge(&*recorder.lock().await);
    let n = windows.len().min(plan.stable_windows.max(1));
    let reported = &windows[windows.len() - n..];
    let mut total = Recorder::new();
    let mut seconds = 0.0;
    for (r, s) in reported {
        total.merge(r);
        seconds += s;
    }
    let q = |x: f64| total.histogram.value_at_quantile(x) as f64 / 1000.0;
    let slo_attainment = plan.slo.map(|slo| {
        let within = total.histogram.count_between(1, (slo.as_micros() as u64).max(1));
        let all: u64 = total.requests + total.errors.values().sum::<u64>();
        if all == 0 { 0.0 } else { within as f64 / all as f64 }
    });
    LevelResult {
        label,
        concurrency: match shape {
            LoadShape::Closed { concurrency } => Some(concurrency),
            LoadShape::Open { .. } => None,
        },
        rate: match shape {
            LoadShape::Open { rate } => Some(rate),
            LoadShape::Closed { .. } => None,
        },
        requests: total.requests,
        seconds,
        infer_per_sec: total.rows as f64 / seconds.max(1e-9),
        requests_per_sec: total.requests as f64 / seconds.max(1e-9),
        p50_ms: q(0.5),
        p90_ms: q(0.9),
        p99_ms: q(0.99),
        p999_ms: q(0.999),
        mean_ms: total.histogram.mean() / 1000.0,
        error_count: total.errors.values().sum(),
        errors: total.errors,
        windows: windows.len(),
        stable,
        window_throughputs: reported.iter().map(|(r, s)| r.rows as f64 / s).collect(),
        total_ok: all.requests,
        total_rows: all.rows,
        total_errors: all.errors.values().sum(),
        slo_attainment,
    }
}
