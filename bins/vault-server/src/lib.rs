//! The Vault Engine server: configuration, logging, wiring and command line.
//!
//! This is the composition root. [`config`] loads and validates the
//! configuration (defaults, then a TOML file, then `VAULT__…` environment
//! variables); [`startup`] picks the implementations it names and hands them
//! to the HTTP layer as trait objects; [`cli`] is the command line;
//! [`telemetry`] sets up logging.
//!
//! With no configuration at all the server runs the *embedded default*:
//! SQLite and a generated master key under `./vault-data/`, and — only
//! while no engine is configured — a development engine `dev` with every
//! grant, whose token is written to `./vault-data/dev-engine.token`.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = vault_server::config::Config::load(None)?;
//! let app = vault_server::startup::Application::build(&config).await?;
//! println!("listening on {}", app.local_addr());
//! app.run_until_stopped().await?;
//! # Ok(())
//! # }
//! ```

pub mod audit;
pub mod cli;
pub mod config;
pub mod engines;
pub mod import;
pub mod keys;
pub mod migrate;
pub mod progress;
pub mod startup;
pub mod telemetry;
