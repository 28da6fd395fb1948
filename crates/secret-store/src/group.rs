//! What both stores' group-commit writers share: the jobs they take, how a
//! batch of them is taken apart, and how its callers are answered.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::{AuditRecord, Error, NewNotification, Result, SecretWrite};

/// Who to tell how a group-committed job ended.
pub(crate) type Reply = tokio::sync::oneshot::Sender<Result<()>>;

/// A store waiting for the group commit: the write, the version it
/// expects, and the records that describe it.
pub(crate) struct PutJob {
    pub(crate) write: SecretWrite,
    pub(crate) expected: Option<u64>,
    pub(crate) audit: AuditRecord,
    pub(crate) notification: Option<NewNotification>,
}

/// Work for a group-commit writer.
pub(crate) enum Pending {
    /// A usage record on its own (a read, a refused request).
    Audit(AuditRecord, Reply),
    /// A store with its usage record.
    Put(Box<PutJob>, Reply),
}

/// Queues `job` with `send` (false: the writer is gone), counted in
/// `queued`, and waits for the commit that holds it.
pub(crate) async fn submit(
    queued: &AtomicUsize,
    send: impl FnOnce(Pending) -> bool,
    job: impl FnOnce(Reply) -> Pending,
) -> Result<()> {
    let stopped = || Error::Invalid("the group-commit writer has stopped");
    let (reply, done) = tokio::sync::oneshot::channel();
    queued.fetch_add(1, Ordering::Relaxed);
    if !send(job(reply)) {
        queued.fetch_sub(1, Ordering::Relaxed);
        return Err(stopped());
    }
    done.await.map_err(|_| stopped())?
}

/// A batch of jobs taken apart: the stores in order, the lone records, and
/// every caller (marked when its job is a store).
pub(crate) struct Batch {
    pub(crate) puts: Vec<PutJob>,
    pub(crate) records: Vec<AuditRecord>,
    replies: Vec<(Reply, bool)>,
}

impl Batch {
    pub(crate) fn new(jobs: Vec<Pending>) -> Self {
        let mut batch = Self {
            puts: Vec::new(),
            records: Vec::new(),
            replies: Vec::with_capacity(jobs.len()),
        };
        for job in jobs {
            match job {
                Pending::Audit(record, reply) => {
                    batch.records.push(record);
                    batch.replies.push((reply, false));
                }
                Pending::Put(put, reply) => {
                    batch.puts.push(*put);
                    batch.replies.push((reply, true));
                }
            }
        }
        batch
    }

    /// How many callers wait on this batch.
    pub(crate) fn len(&self) -> usize {
        self.replies.len()
    }

    /// Answers everyone: the store has been dropped.
    pub(crate) fn closed(self) {
        for (reply, _) in self.replies {
            let _ = reply.send(Err(Error::Invalid("the store is closed")));
        }
    }

    /// Answers everyone once the batch's transaction ended: with `commit`
    /// committed, each store with its own outcome (`stores`, in the order
    /// of [`Batch::puts`]) and each lone record with success; otherwise
    /// everyone with an unavailable error. Fail closed: nobody whose change
    /// or record is not committed is told otherwise, and a database that
    /// cannot commit (a full disk, say) is unavailable, not corrupt.
    pub(crate) fn answer(self, commit: Result<()>, stores: Vec<Result<()>>) {
        match commit {
            Ok(()) => {
                let mut stores = stores.into_iter();
                for (reply, is_put) in self.replies {
                    let outcome = if is_put {
                        stores
                            .next()
                            .unwrap_or(Err(Error::Invalid("store not applied")))
                    } else {
                        Ok(())
                    };
                    let _ = reply.send(outcome);
                }
            }
            Err(e) => {
                // The error is rebuilt per caller (it is not Clone).
                let message = e.to_string();
                tracing::error!(error = %message, jobs = self.replies.len(), "group commit failed");
                for (reply, _) in self.replies {
                    let _ =
                        reply.send(Err(Error::Unavailable(format!("commit failed: {message}"))));
                }
            }
        }
    }
}
