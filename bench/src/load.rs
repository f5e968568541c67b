//! A closed-loop load generator: N keep-alive connections, each its own task sending the
//! next request as soon as the previous answer is read. Latencies (µs) go into one
//! HdrHistogram per connection, merged at the end; only requests started after the
//! warm-up and finished before the end count.

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::Method;
use tokio::time::Instant;

use crate::client;

#[derive(Clone)]
pub struct Spec {
    pub addr: SocketAddr,
    pub conns: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub method: Method,
    pub path: String,
    pub body: Bytes,
}

/// Latency summary in microseconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Lat {
    pub count: u64,
    pub min: f64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Lat {
    pub fn of(h: &Histogram<u64>) -> Lat {
        if h.is_empty() {
            return Lat::default();
        }
        Lat {
            count: h.len(),
            min: h.min() as f64,
            p50: h.value_at_quantile(0.50) as f64,
            p99: h.value_at_quantile(0.99) as f64,
            max: h.max() as f64,
        }
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({"count": self.count, "min_us": self.min, "p50_us": self.p50, "p99_us": self.p99, "max_us": self.max})
    }
}

pub struct Outcome {
    pub rps: f64,
    pub lat: Lat,
    pub errors: u64,
}

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

pub async fn run(spec: &Spec) -> Outcome {
    let start = Instant::now();
    let record_from = start + spec.warmup;
    let end = record_from + spec.duration;
    let mut tasks = Vec::with_capacity(spec.conns);
    for _ in 0..spec.conns {
        let spec = spec.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist = histogram();
            let mut errors = 0u64;
            'conn: while Instant::now() < end {
                let Ok(mut sender) = client::connect(spec.addr).await else {
                    errors += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                loop {
                    let t0 = Instant::now();
                    if t0 >= end {
                        break 'conn;
                    }
                    let req =
                        client::request(spec.method.clone(), &spec.path, &[], spec.body.clone());
                    match client::send(&mut sender, req).await {
                        Ok(st) if st.is_success() => {
                            let t1 = Instant::now();
                            if t0 >= record_from && t1 <= end {
                                let us = (t1 - t0).as_micros() as u64;
                                let _ = hist.record(us.max(1));
                            }
                        }
                        Ok(_) => errors += 1,
                        // Closed by the server (or broken): reconnect.
                        Err(_) => {
                            if Instant::now() < end {
                                errors += 1;
                            }
                            continue 'conn;
                        }
                    }
                }
            }
            (hist, errors)
        }));
    }
    let mut total = histogram();
    let mut errors = 0;
    for t in tasks {
        if let Ok((h, e)) = t.await {
            let _ = total.add(&h);
            errors += e;
        }
    }
    Outcome {
        rps: total.len() as f64 / spec.duration.as_secs_f64(),
        lat: Lat::of(&total),
        errors,
    }
}
