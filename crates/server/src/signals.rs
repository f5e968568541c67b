//! Shutdown on SIGTERM or SIGINT; a second signal cuts the drain short.

use std::future::Future;

use tokio::signal::unix::{signal, SignalKind};

/// Resolves on the first SIGTERM or SIGINT. Handlers are installed now, so a signal that
/// arrives before the future is polled is not lost.
pub fn shutdown() -> std::io::Result<impl Future<Output = ()>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(
            signal = name,
            "shutting down: no new connections, draining (signal again to stop at once)"
        );
        // A second signal during the drain ends the process without waiting for it.
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            eprintln!("litefs-proxy: second signal, exiting without finishing the drain");
            std::process::exit(1);
        });
    })
}
