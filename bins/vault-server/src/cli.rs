//! The command line.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::startup::Application;

/// Vault Engine: encrypted storage of third-party credentials for PURAIFY engines.
#[derive(Debug, Parser)]
#[command(name = "vault-server", version, about)]
pub struct Cli {
    /// TOML configuration file. Every key can also be set as an environment
    /// variable, e.g. VAULT__SERVER__BIND=0.0.0.0:8200.
    #[arg(long, short, env = "VAULT_CONFIG", global = true)]
    pub config: Option<PathBuf>,

    /// What to do (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP server (the default).
    Serve,
    /// Read an engine token on standard input and print its hex SHA-256,
    /// the value for `token_sha256` in `[[engines]]`.
    HashToken,
    /// Manage engines kept in the database (their tokens are stored as
    /// hashes only; a running vault sees changes within
    /// access.engine_reload_secs).
    #[command(subcommand)]
    Engine(EngineCommand),
    /// The usage log: verify its chain, export it.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// The configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Master keys: status, rotation, rewrap, retirement.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Copy the database to FILE while the vault runs (a consistent
    /// snapshot holding sealed values only, never a key).
    Backup {
        /// The new file (must not exist).
        file: PathBuf,
    },
    /// Restore a backup into an empty data directory; refused when the
    /// configured key cannot open it.
    Restore {
        /// The backup file.
        file: PathBuf,
    },
    /// Copy this vault's SQLite database into an empty PostgreSQL database
    /// (all or nothing; sealed values, engines and the usage log move as
    /// they are), then check that it opens with the configured keys.
    /// Stop the server first: changes made during the copy are not in it.
    Migrate {
        /// The PostgreSQL connection string (`postgres://user:password@host/db`);
        /// better given through VAULT_MIGRATE_TO than on the command line.
        #[arg(long, env = "VAULT_MIGRATE_TO", hide_env_values = true)]
        to: String,
    },
    /// Import tokens from a JSON-lines file (one store request per line).
    /// Every line is validated first; one bad line and nothing is imported.
    Import {
        /// The file.
        file: PathBuf,
        /// Validate and report only.
        #[arg(long)]
        dry_run: bool,
        /// Import the valid lines even when some are not.
        #[arg(long)]
        continue_on_error: bool,
    },
}

/// `vault-server config …`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration (file and VAULT__… variables) and print
    /// the effective configuration, token hashes masked; exit 2 when it is
    /// invalid.
    Check,
}

/// `vault-server keys …`.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Show the active master key, what each key seals, the rewrap backlog
    /// and which old keys can be retired.
    Status,
    /// Create a new master key version (file provider: appended to the key
    /// file; transit: a new Transit key version). New values use it at once;
    /// stored ones are rewrapped unless --no-rewrap (the server also
    /// rewraps in the background).
    Rotate {
        /// Leave the rewrap to the running server.
        #[arg(long)]
        no_rewrap: bool,
    },
    /// Rewrap every stored value under the active master key now.
    Rewrap,
    /// Forget an old master key version; refused while anything is sealed
    /// under it.
    Retire {
        /// The key id (see `keys status`).
        key_id: String,
    },
    /// Start a new usage-log key version; the chain stays verifiable.
    RotateAuditKey,
}

/// `vault-server audit …`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Walk the usage log and check its hash chain; exit 1 and name the
    /// first record that was changed, removed or inserted.
    Verify,
    /// Print the usage log as JSON lines, oldest first.
    Export,
}

/// `vault-server engine …`.
#[derive(Debug, Subcommand)]
pub enum EngineCommand {
    /// Add an engine with a new random token, printed once on stdout.
    Add {
        /// Engine id (X-Engine-Id).
        id: String,
        /// A grant, ACTIONS:ENVIRONMENTS:PROJECTS:PLATFORMS, e.g. read:prod:*:*
        /// (repeatable).
        #[arg(long = "grant", required = true)]
        grants: Vec<String>,
    },
    /// List managed engines (never their tokens).
    List,
    /// Revoke an engine: its token stops working.
    Revoke {
        /// Engine id.
        id: String,
    },
    /// Give an engine a new token, printed once on stdout; the old one
    /// stops working.
    Rotate {
        /// Engine id.
        id: String,
    },
}

/// Runs the command line; the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(cli.config),
        Command::HashToken => hash_token(),
        Command::Engine(cmd) => crate::engines::run(cli.config.as_deref(), cmd),
        Command::Audit(cmd) => crate::audit::run(cli.config.as_deref(), cmd),
        Command::Config(ConfigCommand::Check) => config_check(cli.config.as_deref()),
        Command::Keys(cmd) => crate::keys::run(cli.config.as_deref(), cmd),
        Command::Backup { file } => crate::keys::backup(cli.config.as_deref(), &file),
        Command::Restore { file } => crate::keys::restore(cli.config.as_deref(), &file),
        Command::Migrate { to } => crate::migrate::run(cli.config.as_deref(), &to),
        Command::Import {
            file,
            dry_run,
            continue_on_error,
        } => crate::import::run(
            cli.config.as_deref(),
            &file,
            crate::import::ImportOptions {
                dry_run,
                continue_on_error,
            },
        ),
    }
}

fn config_check(path: Option<&Path>) -> ExitCode {
    let shown = Config::load(path).and_then(|c| c.effective_toml());
    match shown {
        Ok(toml) => {
            eprintln!("configuration is valid; effective configuration:");
            print!("{toml}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn hash_token() -> ExitCode {
    let mut input = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut input) {
        eprintln!("error: reading standard input: {e}");
        return ExitCode::from(2);
    }
    let token = input.trim();
    if token.is_empty() {
        eprintln!("error: no token on standard input");
        return ExitCode::from(2);
    }
    println!("{}", vault_access_resolver::token_sha256_hex(token));
    ExitCode::SUCCESS
}

fn serve(config_path: Option<PathBuf>) -> ExitCode {
    let config = match Config::load(config_path.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    crate::telemetry::init(&config.log);
    let result = actix_web::rt::System::new().block_on(async {
        let app = Application::build(&config)
            .await
            .map_err(|e| e.to_string())?;
        app.run_until_stopped().await.map_err(|e| e.to_string())
    });
    match result {
        Ok(()) => {
            tracing::info!("vault stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "vault failed to start or stopped with an error");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs an offline command: loads the configuration (exit 2 when it is
/// invalid), runs `command` on a small runtime, prints its error (exit 1).
pub(crate) fn run_tool<F, Fut>(config_path: Option<&Path>, command: F) -> ExitCode
where
    F: FnOnce(Config) -> Fut,
    Fut: std::future::Future<Output = Result<ExitCode, String>>,
{
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(command(config)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
