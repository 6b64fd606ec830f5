//! executord's benchmarks (see BENCHMARKS.md; `scripts/bench` runs them all).
//!
//! ```sh
//! cargo run --release --example bench -- info
//! cargo run --release --example bench -- w1 [--history 200000]   # drain: tasks/s
//! cargo run --release --example bench -- w2                      # idle latency
//! cargo run --release --example bench -- w4                      # 10-step chain overhead
//! cargo run --release --example bench -- engine                  # W1, W1 with history, W2, W4
//! cargo run --release --example bench -- w3 --base-url http://127.0.0.1:8080
//! ```
//!
//! The engine workloads use the library directly: the embedded PostgreSQL
//! under `target/bench-pg` with its durable defaults (or `DATABASE_URL`), a
//! catalog of no-op kinds on the `noop` backend, and a runner with the
//! library's defaults (`RunnerConfig::default()`). W3 is a load generator
//! against a running service, which runs with its own defaults.
#![allow(
    clippy::print_stdout,
    reason = "a benchmark reports its results on stdout"
)]

#[path = "bench/engine.rs"]
mod engine;
#[path = "bench/env.rs"]
mod env;
#[path = "bench/http.rs"]
mod http;
#[path = "bench/receiver.rs"]
mod receiver;
#[path = "bench/seed.rs"]
mod seed;
#[path = "bench/stats.rs"]
mod stats;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::engine::{W1Args, W2Args, W4Args};
use crate::env::{Env, EnvArgs};
use crate::stats::{Metrics, summarize};

/// executord's benchmarks: W1 drain, W2 idle latency, W3 HTTP end to end, W4 chain overhead.
#[derive(Debug, Parser)]
#[command(name = "bench")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The machine and the database settings.
    Info {
        #[command(flatten)]
        env: EnvArgs,
    },
    /// W1: 20,000 single-step no-op operations queued, then the runner started: tasks/s.
    W1 {
        #[command(flatten)]
        env: EnvArgs,
        #[command(flatten)]
        w1: W1Args,
    },
    /// W2: one operation committed every 10 ms on an idle runner: commit → first step start.
    W2 {
        #[command(flatten)]
        env: EnvArgs,
        #[command(flatten)]
        w2: W2Args,
    },
    /// W4: sequential 10-step no-op chains: commit → last step done.
    W4 {
        #[command(flatten)]
        env: EnvArgs,
        #[command(flatten)]
        w4: W4Args,
    },
    /// W1, W1 after `--history` finished operations, W2 and W4, with their defaults.
    Engine {
        #[command(flatten)]
        env: EnvArgs,
        /// Finished operations in the tables for the second W1.
        #[arg(long, default_value_t = 200_000)]
        history: i64,
    },
    /// W3: the HTTP load against a running service (start it with scripts/bench w3).
    W3(http::W3Args),
    /// What one GET of a resource costs the service and PostgreSQL (`scripts/bench gets`).
    Gets(http::GetsArgs),
    /// Put finished operations in a service's history: copies of a real
    /// resource's (the decay benchmark, `scripts/bench decay`).
    Seed(seed::SeedArgs),
    /// A webhook receiver that answers 200 at once (`scripts/bench push`).
    Receiver(receiver::ReceiverArgs),
}

/// Runs `env.args.runs` runs of a workload and prints the summary.
macro_rules! runs {
    ($env:expr, $title:expr, $run:expr) => {{
        let env: &Env = $env;
        let mut all: Vec<Metrics> = Vec::new();
        for i in 1..=env.args.runs {
            eprintln!("{} run {i}/{}", $title, env.args.runs);
            all.push($run.await?);
        }
        let summary = summarize($title, &all);
        println!("{summary}");
        anyhow::Ok(())
    }};
}

#[tokio::main]
async fn main() -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,sqlx::query=error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::W3(args) => http::w3(&args).await,
        Command::Gets(args) => http::gets(&args).await,
        Command::Seed(args) => seed::seed(&args).await,
        Command::Receiver(args) => receiver::receiver(&args).await,
        // with_env prints the description.
        Command::Info { env } => with_env(env, 10, |_| async { Ok(()) }).await,
        Command::W1 { env, w1 } => {
            with_env(env, 10, |env| async move {
                let title = if w1.history > 0 {
                    format!(
                        "W1 drain: {} queued single-step ops, after {} finished ops of history",
                        w1.ops, w1.history
                    )
                } else {
                    format!("W1 drain: {} queued single-step ops, empty tables", w1.ops)
                };
                runs!(&env, &title, engine::w1(&env, &w1))
            })
            .await
        }
        Command::W2 { env, w2 } => {
            with_env(env, 10, |env| async move {
                let title = format!(
                    "W2 idle latency: one op per {} ms, {} measured",
                    w2.interval_ms, w2.ops
                );
                runs!(&env, &title, engine::w2(&env, &w2))
            })
            .await
        }
        Command::W4 { env, w4 } => {
            let steps = w4.steps;
            with_env(env, steps, |env| async move {
                let title = format!(
                    "W4 chain overhead: {}-step chains, {} measured",
                    w4.steps, w4.ops
                );
                runs!(&env, &title, engine::w4(&env, &w4))
            })
            .await
        }
        Command::Engine { env, history } => {
            with_env(env, 10, |env| async move {
                let plain = W1Args {
                    ops: 20_000,
                    history: 0,
                    producers: 4,
                    batch: 250,
                };
                let with_history = W1Args {
                    history,
                    ..plain.clone()
                };
                let w2 = W2Args {
                    ops: 500,
                    warmup: 20,
                    interval_ms: 10,
                };
                let w4 = W4Args {
                    ops: 200,
                    warmup: 10,
                    steps: 10,
                    history: 0,
                    keep_history: false,
                };
                // Alternated, so drift on a shared machine (load, the disk's
                // speed) falls on both alike.
                let (mut empty, mut full) = (Vec::new(), Vec::new());
                for i in 1..=env.args.runs {
                    eprintln!("W1 drain, empty tables: run {i}/{}", env.args.runs);
                    empty.push(engine::w1(&env, &plain).await?);
                    eprintln!(
                        "W1 drain, after {history} finished ops: run {i}/{}",
                        env.args.runs
                    );
                    full.push(engine::w1(&env, &with_history).await?);
                }
                println!(
                    "{}",
                    summarize(
                        "W1 drain: 20000 queued single-step ops, empty tables",
                        &empty
                    )
                );
                println!(
                    "{}",
                    summarize(
                        &format!(
                            "W1 drain: 20000 queued single-step ops, after {history} finished ops of history \
                             (runs alternated with the above)"
                        ),
                        &full
                    )
                );
                runs!(
                    &env,
                    "W2 idle latency: one op per 10 ms, 500 measured",
                    engine::w2(&env, &w2)
                )?;
                runs!(
                    &env,
                    "W4 chain overhead: 10-step chains, 200 measured",
                    engine::w4(&env, &w4)
                )
            })
            .await
        }
    }
}

/// Starts the environment, prints what it runs on, runs `body`, and stops it
/// whatever `body` returned.
async fn with_env<F, Fut>(args: EnvArgs, chain_steps: usize, body: F) -> Result<()>
where
    F: FnOnce(std::sync::Arc<Env>) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let env = std::sync::Arc::new(Env::start(args, chain_steps).await?);
    println!("{}", env.describe().await?);
    let result = body(env.clone()).await;
    match std::sync::Arc::try_unwrap(env) {
        Ok(env) => env.stop().await?,
        Err(_) => eprintln!("bench: the environment is still in use; leaving the database running"),
    }
    result
}
