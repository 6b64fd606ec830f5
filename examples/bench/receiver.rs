//! A webhook receiver for the push benchmark: answers every request `200`
//! at once and counts what it received, so the measured cost is the
//! service's (outbox rows, signing, delivery), not the receiver's.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

/// `bench receiver`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ReceiverArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9100")]
    pub(crate) listen: SocketAddr,
}

/// Serves until SIGTERM or SIGINT; `GET /count` answers how many other
/// requests arrived, and the count is printed on stderr at the end.
pub(crate) async fn receiver(args: &ReceiverArgs) -> Result<()> {
    let count = Arc::new(AtomicU64::new(0));
    let app = Router::new()
        .route(
            "/count",
            get(|State(count): State<Arc<AtomicU64>>| async move {
                count.load(Ordering::Relaxed).to_string()
            }),
        )
        .fallback(|State(count): State<Arc<AtomicU64>>| async move {
            count.fetch_add(1, Ordering::Relaxed);
            StatusCode::OK
        })
        .with_state(count.clone());
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(term) => term,
                    Err(_) => return std::future::pending().await,
                };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        })
        .await?;
    eprintln!(
        "receiver: {} requests answered 200",
        count.load(Ordering::Relaxed)
    );
    Ok(())
}
