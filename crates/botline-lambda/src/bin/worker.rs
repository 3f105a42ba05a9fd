//! `botline-worker`: the worker Lambda function (see the crate docs).

use aws_lambda_events::event::sqs::SqsEvent;
use botline::aws::SecretStore;
use botline_lambda::worker::Worker;
use lambda_runtime::{Error, LambdaEvent};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[tokio::main]
async fn main() -> Result<(), Error> {
    botline_lambda::init_logging();
    let metrics = botline_lambda::init_metrics()?;
    let mut settings = botline_lambda::settings()?;
    if let Some(store) = SecretStore::from_env().await {
        store.fill(&mut settings).await?;
    }
    let backend = botline::aws::open_backend(settings.queue_config()).await?;
    let worker = Arc::new(Worker::new(&settings, backend)?);
    tracing::info!(version = botline::version(), "worker function ready");
    metrics_cloudwatch_embedded::lambda::handler::run(
        metrics,
        move |event: LambdaEvent<SqsEvent>| {
            let worker = Arc::clone(&worker);
            async move {
                let deadline = deadline(event.context.deadline);
                Ok::<_, Error>(worker.handle(event.payload, deadline).await)
            }
        },
    )
    .await
}

/// The invocation's deadline (unix milliseconds) on this process's monotonic clock.
fn deadline(unix_ms: u64) -> Option<Instant> {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()?
        .as_millis() as u64;
    Some(Instant::now() + Duration::from_millis(unix_ms.checked_sub(now_ms)?))
}
