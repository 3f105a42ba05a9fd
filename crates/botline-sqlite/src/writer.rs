//! Group commit: one thread owns the write connection; every write from any task is a job sent
//! to it. The thread takes all jobs waiting, runs each in its own savepoint inside one
//! transaction, commits once (one fsync in WAL mode with `synchronous = FULL`), and only then
//! answers each job. A job whose transaction did not commit is answered with an error, so no
//! caller ever sees success for a write that is not durable.
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
    /// Runs the write; false if it failed (its savepoint is then rolled back).
    fn run(&mut self, conn: &Connection) -> bool;
    /// Answers the caller once the transaction's fate is known.
    fn finish(self: Box<Self>, committed: Result<(), &BackendError>);
}

struct Op<R, F> {
    op: Option<F>,
    result: Option<Result<R, BackendError>>,
    reply: oneshot::Sender<Result<R, BackendError>>,
}

impl<R, F> Job for Op<R, F>
where
    R: Send,
    F: FnOnce(&Connection) -> Result<R, BackendError> + Send,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let Some(op) = self.op.take() else {
            return false;
        };
        let result = op(conn);
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn finish(self: Box<Self>, committed: Result<(), &BackendError>) {
        let result = match (committed, self.result) {
            (Err(e), _) => Err(BackendError::Unavailable(e.to_string())),
            (Ok(()), Some(result)) => result,
            (Ok(()), None) => Err(BackendError::Unavailable("write was not run".into())),
        };
        // The caller may have given up (timed out); then nobody is waiting for the answer.
        let _ = self.reply.send(result);
    }
}

/// The handle tasks use to write.
#[derive(Debug, Clone)]
pub(crate) struct Writer {
    jobs: mpsc::Sender<Box<dyn Job>>,
}

impl Writer {
    /// Starts the writer thread on `conn`. It stops when the last handle is dropped.
    pub(crate) fn start(conn: Connection) -> std::io::Result<Self> {
        let (jobs, rx) = mpsc::channel(8 * MAX_BATCH);
        std::thread::Builder::new()
            .name("botline-sqlite-writer".into())
            .spawn(move || run(conn, rx))?;
        Ok(Self { jobs })
    }

    /// Runs `op` in the next group transaction and returns its result once that committed.
    pub(crate) async fn write<R, F>(&self, op: F) -> Result<R, BackendError>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R, BackendError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = Box::new(Op {
            op: Some(op),
            result: None,
            reply,
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

fn run(conn: Connection, mut rx: mpsc::Receiver<Box<dyn Job>>) {
    let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(MAX_BATCH);
    while let Some(job) = rx.blocking_recv() {
        batch.push(job);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let committed = run_batch(&conn, &mut batch);
        if let Err(e) = &committed {
            tracing::warn!(error = %e, jobs = batch.len(), "SQLite transaction did not commit");
        }
        for job in batch.drain(..) {
            job.finish(committed.as_ref().map(|_| ()));
        }
    }
}

fn run_batch(conn: &Connection, batch: &mut [Box<dyn Job>]) -> Result<(), BackendError> {
    exec(conn, "BEGIN IMMEDIATE")?;
    for job in batch.iter_mut() {
        let step = exec(conn, "SAVEPOINT job").and_then(|()| {
            if job.run(conn) {
                exec(conn, "RELEASE job")
            } else {
                exec(conn, "ROLLBACK TO job").and_then(|()| exec(conn, "RELEASE job"))
            }
        });
        if let Err(e) = step {
            let _ = exec(conn, "ROLLBACK");
            return Err(e);
        }
    }
    exec(conn, "COMMIT").inspect_err(|_| {
        let _ = exec(conn, "ROLLBACK");
    })
}

fn exec(conn: &Connection, sql: &str) -> Result<(), BackendError> {
    conn.prepare_cached(sql)
        .and_then(|mut statement| statement.execute([]))
        .map(|_| ())
        .map_err(crate::unavailable)
}
