//! The background tasks: the refresher and the notification sender.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vault_types::SecretAddress;

use crate::TokenManager;
use crate::notify::{SIGNATURE_HEADER, sign_webhook};
use crate::refresh::OnDrop;

/// Settings of the background refresher.
#[derive(Debug, Clone)]
pub struct RefresherConfig {
    /// How often it looks for due tokens.
    pub interval: Duration,
    /// Most refreshes in flight at once.
    pub concurrency: usize,
    /// Most due tokens taken per look.
    pub batch: u32,
    /// Each refresh starts after a random delay up to this long, so tokens
    /// that fall due together do not hit the provider in one burst.
    pub max_jitter: Duration,
}

impl Default for RefresherConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(5),
            concurrency: 32,
            batch: 2000,
            max_jitter: Duration::from_millis(500),
        }
    }
}

/// Settings of the notification sender.
#[derive(Clone)]
pub struct NotifierConfig {
    /// Where notifications are POSTed.
    pub url: String,
    /// The HMAC key signing each delivery.
    pub secret: vault_types::Secret,
    /// How often it looks for pending notifications.
    pub interval: Duration,
    /// Timeout of one delivery.
    pub timeout: Duration,
}

impl std::fmt::Debug for NotifierConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotifierConfig")
            .field("url", &self.url)
            .field("secret", &self.secret)
            .field("interval", &self.interval)
            .field("timeout", &self.timeout)
            .finish()
    }
}

fn jitter(max: Duration) -> Duration {
    let max_ms = max.as_millis() as u64;
    if max_ms == 0 {
        return Duration::ZERO;
    }
    let r = vault_encryption_layer::random_u64().unwrap_or(0);
    Duration::from_millis(r % max_ms.saturating_add(1))
}

impl TokenManager {
    /// Takes or renews the lease of background job `name` for this
    /// process: whether it should run the job now.
    pub(crate) async fn holds_job(&self, name: &str) -> bool {
        match self
            .secret_store()
            .acquire_job_lease(name, &self.inner.holder, self.inner.policy.lease)
            .await
        {
            Ok(held) => held,
            Err(e) => {
                tracing::warn!(job = name, error = %e, "could not take a background job's lease");
                false
            }
        }
    }

    /// Runs the background refresher until [`TokenManager::shutdown`] (or
    /// until the task is dropped or aborted).
    ///
    /// Every `interval` it claims tokens whose refresh is due from the
    /// store (an index lookup: the cost follows the number due; each claim
    /// is a refresh lease, so the refreshers of several replicas sharing a
    /// database take disjoint sets) and refreshes them with at most
    /// `concurrency` in flight, each after a random jitter, through the same
    /// single-flight path as on-demand refreshes.
    pub async fn run_refresher(self, config: RefresherConfig) {
        let in_flight: Arc<Mutex<HashSet<SecretAddress>>> = Arc::default();
        let permits = Arc::new(tokio::sync::Semaphore::new(config.concurrency.max(1)));
        // Claims a few rounds of work at a time, so that claimed tokens do
        // not wait in this queue while other replicas sit idle.
        let claim = config
            .batch
            .min(u32::try_from(config.concurrency.saturating_mul(4)).unwrap_or(u32::MAX))
            .max(1);
        while !self.is_stopping() {
            // Tokens already refreshed but refused by the store come first:
            // their leases are renewed while they wait.
            self.retry_unpersisted().await;
            let now = self.now();
            let mut full = false;
            match self.claim_due(now, claim).await {
                Ok(due) => {
                    full = due.len() as u32 >= claim;
                    for address in due {
                        let fresh = in_flight
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(address.clone());
                        if !fresh {
                            continue;
                        }
                        let this = self.clone();
                        let in_flight = Arc::clone(&in_flight);
                        let permits = Arc::clone(&permits);
                        let delay = jitter(config.max_jitter);
                        this.inner
                            .claimed
                            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        tokio::spawn(async move {
                            // Forgets the address even if the refresh panics.
                            let _forget = OnDrop(Some(|| {
                                in_flight
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .remove(&address);
                                this.inner
                                    .claimed
                                    .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                            }));
                            // A stop cuts the jitter short: the claim is
                            // released below instead of held to its end.
                            tokio::select! {
                                () = tokio::time::sleep(delay) => {}
                                () = this.inner.stop.notified() => {}
                            }
                            if let Ok(_permit) = permits.acquire().await
                                && !this.is_stopping()
                            {
                                this.refresh_if_due(&address).await;
                            }
                            this.release_claim(&address).await;
                        });
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "background refresher could not list due tokens")
                }
            }
            if full {
                // More may be due: look again once the queue is down to
                // what runs at once.
                while in_flight.lock().unwrap_or_else(|e| e.into_inner()).len()
                    >= config.concurrency.max(1)
                    && !self.is_stopping()
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                continue;
            }
            tokio::select! {
                () = tokio::time::sleep(config.interval) => {}
                () = self.inner.stop.notified() => {}
            }
        }
    }

    /// Runs the notification sender until the task is dropped or aborted.
    ///
    /// Pending notifications live in the database, so deliveries that fail
    /// or are interrupted by a restart are retried (exponential backoff up
    /// to an hour) until the receiver acknowledges them with a 2xx.
    pub async fn run_notifier(self, config: NotifierConfig) {
        let http = match reqwest::Client::builder()
            .timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "notification sender could not start");
                return;
            }
        };
        loop {
            // One replica at a time sends webhooks.
            if !self.holds_job("notifier").await {
                tokio::time::sleep(config.interval).await;
                continue;
            }
            let now = self.now();
            match self.secret_store().pending_notifications(now, 100).await {
                Ok(pending) => {
                    for n in pending {
                        // A round may outlast the lease (slow receiver):
                        // renewed before each delivery, and given up when
                        // another replica has taken over, so no two send
                        // the same notification at once.
                        if !self.holds_job("notifier").await {
                            break;
                        }
                        // Signed just before sending: receivers reject old
                        // timestamps, and a round may take a while.
                        let signature = sign_webhook(
                            config.secret.expose().as_bytes(),
                            self.now().unix_timestamp(),
                            n.payload.as_bytes(),
                        );
                        let sent = http
                            .post(&config.url)
                            .header("content-type", "application/json")
                            .header(SIGNATURE_HEADER, signature)
                            .body(n.payload.clone())
                            .send()
                            .await;
                        let ok = matches!(&sent, Ok(res) if res.status().is_success());
                        let result = if ok {
                            self.secret_store().notification_delivered(n.id).await
                        } else {
                            let delay =
                                self.backoff_delay(n.attempts + 1, Duration::from_secs(3600));
                            tracing::warn!(
                                id = n.id,
                                attempts = n.attempts + 1,
                                status = sent.as_ref().map(|r| r.status().as_u16()).unwrap_or(0),
                                "notification delivery failed; will retry"
                            );
                            self.secret_store()
                                .notification_failed(n.id, self.now() + delay)
                                .await
                        };
                        if let Err(e) = result {
                            tracing::warn!(error = %e, "could not record a notification delivery");
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "notification sender could not list pending notifications")
                }
            }
            tokio::time::sleep(config.interval).await;
        }
    }
}
