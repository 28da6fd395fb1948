//! Delivery of the usage log to the Logs Engine / Monitoring Engine.
//!
//! Each sink has a durable cursor in the database: the id (sequence
//! number) of the last record it delivered. A sink reads the next batch
//! after its cursor, delivers it, and only then moves the cursor. Delivery
//! is therefore at least once and in order; a batch interrupted by a
//! failure or a restart is sent again, and the receiver de-duplicates by
//! record `id`. Nothing is dropped while the receiver is down: the records
//! wait in the usage log, and retention never prunes past a sink's cursor.
//!
//! HTTP batches are `POST`ed as
//! `{"records": [{"id": 1, "at": "…", "request_id": "…", …}, …]}`.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use time::format_description::well_known::Rfc3339;
use vault_secret_store::AuditEntry;
use vault_types::Secret;

use crate::TokenManager;

/// Where a copy of the usage log goes.
#[derive(Clone)]
pub enum AuditSink {
    /// JSON batches to an HTTP endpoint.
    Http {
        /// Receiver URL.
        url: String,
        /// Value of the `Authorization` header, if the receiver wants one.
        authorization: Option<Secret>,
        /// Timeout of one delivery.
        timeout: Duration,
    },
    /// JSON lines appended to a file (synced after each batch).
    File {
        /// The file.
        path: PathBuf,
    },
}

impl std::fmt::Debug for AuditSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Http {
                url,
                authorization,
                timeout,
            } => f
                .debug_struct("Http")
                .field("url", url)
                .field("authorization", authorization)
                .field("timeout", timeout)
                .finish(),
            Self::File { path } => f.debug_struct("File").field("path", path).finish(),
        }
    }
}

/// Settings of one forwarder.
#[derive(Debug, Clone)]
pub struct ForwarderConfig {
    /// Name of its cursor (one per sink).
    pub name: String,
    /// The sink.
    pub sink: AuditSink,
    /// Most records per batch.
    pub batch: u32,
    /// Pause when there is nothing to send.
    pub interval: Duration,
    /// Longest pause between retries while the sink fails.
    pub max_backoff: Duration,
}

/// One usage record as JSON (forwarding, export). Never holds a token.
pub fn audit_entry_json(e: &AuditEntry) -> serde_json::Value {
    let r = &e.record;
    serde_json::json!({
        "id": e.seq,
        "at": r.at.format(&Rfc3339).unwrap_or_default(),
        "request_id": r.request_id,
        "engine_id": r.engine_id,
        "action": r.action.as_str(),
        "environment": r.environment,
        "project": r.project,
        "platform": r.platform,
        "outcome": r.outcome.as_str(),
        "detail": r.detail,
        "mac": e.mac.as_ref().map(|m| m.iter().map(|b| format!("{b:02x}")).collect::<String>()),
    })
}

async fn deliver(
    http: &reqwest::Client,
    sink: &AuditSink,
    batch: &[AuditEntry],
) -> Result<(), String> {
    match sink {
        AuditSink::Http {
            url, authorization, ..
        } => {
            let body = serde_json::json!({
                "records": batch.iter().map(audit_entry_json).collect::<Vec<_>>()
            });
            let mut req = http.post(url).json(&body);
            if let Some(auth) = authorization {
                req = req.header(reqwest::header::AUTHORIZATION, auth.expose());
            }
            let res = req.send().await.map_err(|e| {
                if e.is_timeout() {
                    "timeout".to_owned()
                } else {
                    "unreachable".to_owned()
                }
            })?;
            if res.status().is_success() {
                Ok(())
            } else {
                Err(format!("status {}", res.status().as_u16()))
            }
        }
        AuditSink::File { path } => {
            let mut lines = String::new();
            for e in batch {
                lines.push_str(&audit_entry_json(e).to_string());
                lines.push('\n');
            }
            let path = path.clone();
            tokio::task::spawn_blocking(move || {
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)?;
                // A batch that fails halfway (disk full) is cut off again, so
                // the retry does not glue its first line to a fragment.
                let start = f.metadata()?.len();
                let written = f.write_all(lines.as_bytes()).and_then(|()| f.sync_data());
                if written.is_err() {
                    let _ = f.set_len(start).and_then(|()| f.sync_data());
                }
                written
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
        }
    }
}

/// Usage records deleted per retention transaction.
pub(crate) const PRUNE_CHUNK: u32 = 10_000;

impl TokenManager {
    /// Runs one usage-log forwarder until the task is dropped or aborted.
    ///
    /// Processes sharing a store deliver to a sink one at a time: each
    /// round starts by taking or renewing the sink's job lease; the others
    /// wait, and take over when the holder stops renewing.
    pub async fn run_audit_forwarder(self, config: ForwarderConfig) {
        let timeout = match &config.sink {
            AuditSink::Http { timeout, .. } => *timeout,
            AuditSink::File { .. } => Duration::from_secs(30),
        };
        let http = match reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "usage-log forwarder could not start");
                return;
            }
        };
        let mut failures: u32 = 0;
        let job = format!("forward:{}", config.name);
        loop {
            // One replica at a time delivers to a sink.
            if !self.holds_job(&job).await {
                tokio::time::sleep(config.interval).await;
                continue;
            }
            let pause = match self.forward_once(&http, &config).await {
                Ok(0) => config.interval,
                Ok(_) => {
                    failures = 0;
                    Duration::ZERO
                }
                Err(why) => {
                    failures = failures.saturating_add(1);
                    let delay = self.backoff_delay(failures, config.max_backoff);
                    tracing::warn!(sink = %config.name, error = %why, failures, "usage-log delivery failed; will retry");
                    delay
                }
            };
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        }
    }

    /// Delivers the next batch after the sink's cursor; how many records
    /// were delivered.
    async fn forward_once(
        &self,
        http: &reqwest::Client,
        config: &ForwarderConfig,
    ) -> Result<usize, String> {
        let store = self.secret_store();
        let cursor = store
            .audit_cursor(&config.name)
            .await
            .map_err(|e| e.to_string())?;
        let batch = store
            .audit_after(cursor, config.batch.max(1))
            .await
            .map_err(|e| e.to_string())?;
        let Some(last) = batch.last().map(|e| e.seq) else {
            return Ok(0);
        };
        deliver(http, &config.sink, &batch).await?;
        store
            .set_audit_cursor(&config.name, last)
            .await
            .map_err(|e| e.to_string())?;
        Ok(batch.len())
    }

    /// Runs usage-log retention until the task is dropped or aborted: every
    /// `interval`, records older than `keep` that every sink in `sinks` has
    /// delivered are pruned, leaving a signed checkpoint.
    pub async fn run_audit_retention(self, keep: Duration, sinks: Vec<String>, interval: Duration) {
        loop {
            match self.prune_audit_once(keep, &sinks).await {
                Ok(Some(seq)) => tracing::info!(through = seq, "pruned the usage log"),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "usage-log retention failed"),
            }
            tokio::time::sleep(interval).await;
        }
    }

    /// One retention pass; the last pruned record, if any. Prunes in
    /// transactions of 10,000 records, so the first pass over a
    /// large backlog does not hold up the appends every read makes.
    pub async fn prune_audit_once(
        &self,
        keep: Duration,
        sinks: &[String],
    ) -> crate::Result<Option<i64>> {
        let before = self.now() - keep;
        let max_seq = self.delivered_everywhere(sinks).await?.unwrap_or(i64::MAX);
        let mut last = None;
        while let Some(seq) = self
            .secret_store()
            .prune_audit(before, max_seq, PRUNE_CHUNK)
            .await?
        {
            last = Some(seq);
            tokio::task::yield_now().await;
        }
        Ok(last)
    }

    /// The lowest cursor of the given sinks: records up to it have been
    /// delivered everywhere (and may be pruned).
    pub async fn delivered_everywhere(&self, sinks: &[String]) -> crate::Result<Option<i64>> {
        let mut low: Option<i64> = None;
        for name in sinks {
            let c = self.secret_store().audit_cursor(name).await?;
            low = Some(low.map_or(c, |l| l.min(c)));
        }
        Ok(low)
    }
}

#[cfg(test)]
mod tests;
