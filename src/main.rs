//! The `executord` binary: parses the command line and hands over to the library.

use std::io::{IsTerminal, Write};

use clap::Parser;
use executord::config::{CatalogCommand, Cli, Command, LogFormat};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, not in a log file.
        .with_ansi(std::io::stderr().is_terminal());
    match cli.log_format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Pretty => logs.init(),
    }
    match cli.command {
        Command::Serve(args) => executord::app::serve(args).await,
        Command::Worker(args) => executord::app::work(args).await,
        Command::Migrate(args) => executord::app::migrate(args).await,
        Command::Tokens(args) => executord::app::tokens(args).await,
        Command::FakeCloud(args) => executord::fakecloud::run(args).await,
        Command::Catalog(CatalogCommand::Check { catalog }) => {
            let found = executord::app::check_catalog(catalog.as_deref());
            let mut out = std::io::stdout().lock();
            match found {
                Ok(summary) => {
                    writeln!(out, "{summary}")?;
                    Ok(())
                }
                Err(errors) => {
                    for error in &errors {
                        writeln!(out, "{error}")?;
                    }
                    drop(out);
                    std::process::exit(1);
                }
            }
        }
        Command::Openapi => {
            let document = executord::api::openapi().to_pretty_json()?;
            writeln!(std::io::stdout().lock(), "{document}")?;
            Ok(())
        }
    }
}
