//! Test support for litefs-proxy's end-to-end tests: a recording app, proxies on real
//! sockets fed by a LiteFS stand-in, and a small HTTP client.
#![forbid(unsafe_code)]

pub mod app;
pub mod chaos;
pub mod client;
pub mod cluster;
pub mod django;
pub mod nagle_app;
pub mod netns;
pub mod node;
pub mod relay;

use std::time::Duration;

/// Polls `cond` until it holds or `deadline` passes; returns whether it held.
pub async fn eventually(deadline: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
