//! `vault-server import FILE`: bulk import of tokens from JSON lines, for
//! moving from another token store.
//!
//! Each line is one store request, the body of `POST /vault/store`
//! ([`StoreBody`]: `project_id`, `platform`, optional `environment`,
//! `token_data`, optional `metadata`; `engine_id` is accepted and ignored). Every line is parsed
//! and validated before anything is written: one bad line and nothing is
//! imported, unless `--continue-on-error` imports the good ones. Errors name
//! the line and what is wrong, never a value from it.
//!
//! Without `--continue-on-error` the import is one transaction: every token
//! is sealed first, then all are written together, so a failure at any
//! point (a key service refusing, the disk filling up) leaves nothing
//! imported. It then only adds: two lines for one address, or a line for
//! an address that already holds a secret, refuse the whole import.
//! `--continue-on-error` stores line by line, each replacing what the
//! address held, and reports the lines that failed.

use std::path::Path;
use std::process::ExitCode;

use vault_token_manager::{RequestContext, StoreBody, StoreRequest, describe_json_error};

use crate::config::Config;

/// How to import.
#[derive(Debug, Clone, Copy)]
pub struct ImportOptions {
    /// Validate and report only.
    pub dry_run: bool,
    /// Import the valid lines even when some are not.
    pub continue_on_error: bool,
}

fn parse(config: &Config, n: usize, text: &str) -> Result<StoreRequest, String> {
    let body: StoreBody =
        serde_json::from_str(text).map_err(|e| format!("line {n}: {}", describe_json_error(&e)))?;
    let request = body
        .into_request(&config.vault.default_environment)
        .map_err(|e| format!("line {n}: {e}"))?;
    request.check().map_err(|e| format!("line {n}: {e}"))?;
    Ok(request)
}

/// Runs the import; the process exit code.
pub fn run(config_path: Option<&Path>, file: &Path, options: ImportOptions) -> ExitCode {
    let file = file.to_owned();
    crate::cli::run_tool(config_path, move |config| async move {
        let text = std::fs::read_to_string(&file)
            .map_err(|e| format!("reading {}: {e}", file.display()))?;
        let mut good = Vec::new();
        let mut bad = 0usize;
        for (i, raw) in text.lines().enumerate() {
            if raw.trim().is_empty() {
                continue;
            }
            match parse(&config, i + 1, raw) {
                Ok(r) => good.push((i + 1, r)),
                Err(e) => {
                    bad += 1;
                    eprintln!("{e}");
                }
            }
        }
        eprintln!("{} valid, {bad} invalid", good.len());
        if options.dry_run {
            eprintln!("dry run: nothing imported");
            return Ok(if bad == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            });
        }
        if bad > 0 && !options.continue_on_error {
            eprintln!("nothing imported (use --continue-on-error to import the valid lines)");
            return Ok(ExitCode::from(1));
        }
        if !options.continue_on_error {
            let mut first_line = std::collections::HashMap::new();
            let mut repeated = 0usize;
            for (n, request) in &good {
                // Each repeat is named against the line that came first.
                let first = *first_line.entry(&request.address).or_insert(*n);
                if first != *n {
                    repeated += 1;
                    eprintln!("line {n}: the same address as line {first}");
                }
            }
            if repeated > 0 {
                eprintln!("nothing imported (use --continue-on-error to store line by line)");
                return Ok(ExitCode::from(1));
            }
        }
        let tokens = crate::startup::tool_token_manager(&config)
            .await
            .map_err(|e| e.to_string())?;
        let total = good.len();
        if !options.continue_on_error {
            return import_at_once(&tokens, good).await;
        }
        let mut failed = 0usize;
        let mut progress = crate::progress::Progress::new("import", Some(total as u64));
        for (done, (n, request)) in good.into_iter().enumerate() {
            let ctx = RequestContext::new(format!("import-{n}"), Some("import".into()));
            if let Err(e) = tokens.store(&ctx, request).await {
                failed += 1;
                eprintln!("line {n}: {e}");
            }
            progress.update(done as u64 + 1, total as u64);
        }
        progress.finish();
        eprintln!("imported {}/{total}", total - failed);
        Ok(if bad == 0 && failed == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        })
    })
}

/// All lines in one transaction: imported whole or not at all.
async fn import_at_once(
    tokens: &vault_token_manager::TokenManager,
    good: Vec<(usize, StoreRequest)>,
) -> Result<ExitCode, String> {
    let total = good.len();
    let ctx = RequestContext::new("import".to_owned(), Some("import".into()));
    let mut progress = crate::progress::Progress::new("import", Some(total as u64));
    let result = tokens
        .import_batch(&ctx, good.into_iter().map(|(_, r)| r).collect(), |sealed| {
            progress.update(sealed, total as u64)
        })
        .await;
    progress.finish();
    match result {
        Ok(n) => {
            eprintln!("imported {n}/{total}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{e}");
            if e.kind() == vault_types::ErrorKind::Conflict {
                eprintln!(
                    "an address in the file already holds a secret: delete it first, or use \
                     --continue-on-error to replace secrets line by line"
                );
            }
            eprintln!("nothing imported");
            Ok(ExitCode::from(1))
        }
    }
}
