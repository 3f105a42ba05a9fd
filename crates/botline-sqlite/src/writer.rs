//! Group commit: one thread owns the write connection; every write from any task is a job sent
//! to it. The thread takes all jobs waiting, runs them in one transaction, commits once (one
//! fsync in WAL mode with `synchronous = FULL`), and only then answers each job. A job whose
//! transaction did not commit is answered with an error, so no caller ever sees success for a
//! write that is not durable.
//!
//! When a job fails, the whole group is rolled back and each job runs again in a transaction of
//! its own, so one failure costs its neighbours nothing but time. (A savepoint around every job
//! would do the same, but was measured to cost the common case a statement journal and two
//! statements per job.)
//!
//! WAL checkpoints stay on this thread (SQLite's automatic checkpoint every 1000 pages): a
//! checkpoint thread of its own was measured to make acknowledgements stall for 150–250 ms, as
//! its fsyncs of the database file queued the writer's fsyncs of the WAL behind them.

use botline_core::BackendError;
use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

/// The most jobs one transaction takes.
const MAX_BATCH: usize = 1024;

/// A write waiting for the writer thread.
trait Job: Send {
    /// Runs the write, again if asked (after a rollback); false if it failed.
    fn run(&mut self, conn: &Connection) -> bool;
    /// Answers the caller once the transaction's fate is known.
    fn finish(self: Box<Self>, committed: Result<(), &BackendError>);
    /// Runs outside any transaction (a WAL checkpoint), after the jobs before it.
    fn bare(&self) -> bool;
    /// Closes the connection after running, and the writer with it.
    fn closes(&self) -> bool {
        false
    }
}

struct Op<R, F> {
    op: F,
    result: Option<Result<R, BackendError>>,
    reply: oneshot::Sender<Result<R, BackendError>>,
    bare: bool,
}

impl<R, F> Job for Op<R, F>
where
    R: Send,
    F: Fn(&Connection) -> Result<R, BackendError> + Send,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let result = (self.op)(conn);
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn finish(self: Box<Self>, committed: Result<(), &BackendError>) {
        let result = match (committed, self.result) {
            // Every error of a commit is `Unavailable` (see `exec`); its text is passed on as
            // is, not prefixed a second time.
            (Err(BackendError::Unavailable(text)), _) => {
                Err(BackendError::Unavailable(text.clone()))
            }
            (Err(e), _) => Err(BackendError::Unavailable(e.to_string())),
            (Ok(()), Some(result)) => result,
            (Ok(()), None) => Err(BackendError::Unavailable("write was not run".into())),
        };
        // The caller may have given up (timed out); then nobody is waiting for the answer.
        let _ = self.reply.send(result);
    }

    fn bare(&self) -> bool {
        self.bare
    }
}

/// The handle tasks use to write.
#[derive(Debug, Clone)]
pub(crate) struct Writer {
    jobs: mpsc::Sender<Box<dyn Job>>,
}

impl Writer {
    /// Starts the writer thread on `conn`. It stops when the last handle is dropped, or at
    /// [`Writer::close`].
    pub(crate) fn start(conn: Connection) -> std::io::Result<Self> {
        let (jobs, rx) = mpsc::channel(8 * MAX_BATCH);
        std::thread::Builder::new()
            .name("botline-sqlite-writer".into())
            .spawn(move || run(conn, rx))?;
        Ok(Self { jobs })
    }

    /// Runs `op` in the next group transaction and returns its result once that committed.
    /// `op` may run twice: once in the group, and again alone if another job's failure rolled
    /// the group back.
    pub(crate) async fn write<R, F>(&self, op: F) -> Result<R, BackendError>
    where
        R: Send + 'static,
        F: Fn(&Connection) -> Result<R, BackendError> + Send + 'static,
    {
        self.send(op, false).await
    }

    /// [`Writer::write`] for a thread outside the async runtime (the journal's importer).
    pub(crate) fn write_blocking<R, F>(&self, op: F) -> Result<R, BackendError>
    where
        R: Send + 'static,
        F: Fn(&Connection) -> Result<R, BackendError> + Send + 'static,
    {
        let stopped = || BackendError::Unavailable("the SQLite writer has stopped".into());
        let (reply, answer) = oneshot::channel();
        let job = Box::new(Op {
            op,
            result: None,
            reply,
            bare: false,
        });
        self.jobs.blocking_send(job).map_err(|_| stopped())?;
        answer.blocking_recv().map_err(|_| stopped())?
    }

    /// Runs `op` on the write connection outside any transaction, once the writes sent before
    /// it are committed (for statements SQLite refuses inside one, such as a WAL checkpoint).
    pub(crate) async fn outside_transaction<R, F>(&self, op: F) -> Result<R, BackendError>
    where
        R: Send + 'static,
        F: Fn(&Connection) -> Result<R, BackendError> + Send + 'static,
    {
        self.send(op, true).await
    }

    /// Closes the write connection once the writes sent before this are committed, and returns
    /// when it is closed: as the last connection to the file, its close checkpoints the WAL
    /// and deletes it. A write sent afterwards fails as unavailable.
    ///
    /// The thread would close the connection by itself when the last handle is dropped, but
    /// nothing waits for it then: a process whose `main` returns first leaves the WAL behind.
    pub(crate) async fn close(&self) -> Result<(), BackendError> {
        let (reply, answer) = oneshot::channel();
        if self.jobs.send(Box::new(Close { reply })).await.is_err() {
            return Ok(()); // closed already
        }
        answer.await.unwrap_or(Ok(()))
    }

    async fn send<R, F>(&self, op: F, bare: bool) -> Result<R, BackendError>
    where
        R: Send + 'static,
        F: Fn(&Connection) -> Result<R, BackendError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = Box::new(Op {
            op,
            result: None,
            reply,
            bare,
        });
        self.jobs
            .send(job)
            .await
            .map_err(|_| BackendError::Unavailable("the SQLite writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| BackendError::Unavailable("the SQLite writer has stopped".into()))?
    }
}

/// The last job a writer runs: see [`Writer::close`].
struct Close {
    reply: oneshot::Sender<Result<(), BackendError>>,
}

impl Job for Close {
    fn run(&mut self, _: &Connection) -> bool {
        true
    }

    fn finish(self: Box<Self>, closed: Result<(), &BackendError>) {
        let closed = closed.map_err(|e| match e {
            BackendError::Unavailable(text) => BackendError::Unavailable(text.clone()),
            other => BackendError::Unavailable(other.to_string()),
        });
        let _ = self.reply.send(closed);
    }

    fn bare(&self) -> bool {
        true
    }

    fn closes(&self) -> bool {
        true
    }
}

fn run(conn: Connection, mut rx: mpsc::Receiver<Box<dyn Job>>) {
    let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(MAX_BATCH);
    let mut close = None;
    while let Some(job) = rx.blocking_recv() {
        let mut bare = None;
        if job.bare() {
            bare = Some(job);
        } else {
            batch.push(job);
        }
        while bare.is_none() && batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) if job.bare() => bare = Some(job),
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            run_batch(&conn, &mut batch);
        }
        if let Some(mut job) = bare {
            if job.closes() {
                close = Some(job);
                break;
            }
            job.run(&conn);
            job.finish(Ok(()));
        }
    }
    // Writes sent after the close are answered "the SQLite writer has stopped" (their reply
    // channels are dropped with them).
    rx.close();
    while rx.try_recv().is_ok() {}
    let closed = conn.close().map_err(|(_, e)| crate::unavailable(e));
    if let Err(e) = &closed {
        tracing::warn!(error = %e, "closing the SQLite write connection");
    }
    if let Some(job) = close {
        job.finish(closed.as_ref().map(|_| ()));
    }
}

/// Runs a batch in one transaction, or each job alone if one of them failed, and answers them.
fn run_batch(conn: &Connection, batch: &mut Vec<Box<dyn Job>>) {
    match run_group(conn, batch) {
        Ok(true) => finish_all(batch, Ok(())),
        Ok(false) => {
            for job in batch.drain(..) {
                run_alone(conn, job);
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, jobs = batch.len(), "SQLite transaction did not commit");
            finish_all(batch, Err(&e));
        }
    }
}

/// Runs every job in one transaction. `Ok(false)`: a job failed and the group was rolled back.
fn run_group(conn: &Connection, batch: &mut [Box<dyn Job>]) -> Result<bool, BackendError> {
    exec(conn, "BEGIN IMMEDIATE")?;
    if !batch.iter_mut().all(|job| job.run(conn)) {
        exec(conn, "ROLLBACK")?;
        return Ok(false);
    }
    commit(conn).map(|()| true)
}

/// Runs one job in a transaction of its own and answers it.
fn run_alone(conn: &Connection, mut job: Box<dyn Job>) {
    let committed = exec(conn, "BEGIN IMMEDIATE").and_then(|()| {
        if job.run(conn) {
            commit(conn)
        } else {
            // The job's own error is its answer; nothing of it stays.
            exec(conn, "ROLLBACK")
        }
    });
    job.finish(committed.as_ref().map(|_| ()));
}

fn commit(conn: &Connection) -> Result<(), BackendError> {
    exec(conn, "COMMIT").inspect_err(|_| {
        let _ = exec(conn, "ROLLBACK");
    })
}

fn finish_all(batch: &mut Vec<Box<dyn Job>>, committed: Result<(), &BackendError>) {
    for job in batch.drain(..) {
        job.finish(committed);
    }
}

fn exec(conn: &Connection, sql: &str) -> Result<(), BackendError> {
    conn.prepare_cached(sql)
        .and_then(|mut statement| statement.execute([]))
        .map(|_| ())
        .map_err(crate::unavailable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_job_leaves_nothing_and_costs_its_group_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::connect(&dir.path().join("t.db"), true).unwrap();
        conn.execute_batch("CREATE TABLE t (n INTEGER PRIMARY KEY)")
            .unwrap();
        let writer = Arc::new(Writer::start(conn).unwrap());
        let mut jobs = tokio::task::JoinSet::new();
        for n in 0..200_i64 {
            let writer = Arc::clone(&writer);
            jobs.spawn(async move {
                let result = writer
                    .write(move |conn| {
                        conn.execute("INSERT INTO t (n) VALUES (?1)", [n])
                            .map_err(crate::unavailable)?;
                        if n % 50 == 7 {
                            return Err(BackendError::Corrupt(format!("job {n} fails")));
                        }
                        Ok(n)
                    })
                    .await;
                (n, result)
            });
        }
        while let Some(joined) = jobs.join_next().await {
            let (n, result) = joined.unwrap();
            match result {
                Ok(value) => assert_eq!(value, n),
                Err(BackendError::Corrupt(text)) => assert_eq!(n % 50, 7, "{text}"),
                Err(e) => panic!("job {n}: {e}"),
            }
        }
        let rows: Vec<i64> = writer
            .write(|conn| {
                let mut select = conn
                    .prepare("SELECT n FROM t ORDER BY n")
                    .map_err(crate::unavailable)?;
                let rows = select
                    .query_map([], |row| row.get(0))
                    .and_then(|rows| rows.collect::<rusqlite::Result<Vec<i64>>>())
                    .map_err(crate::unavailable)?;
                Ok(rows)
            })
            .await
            .unwrap();
        let expected: Vec<i64> = (0..200).filter(|n| n % 50 != 7).collect();
        assert_eq!(rows, expected);
    }
}
