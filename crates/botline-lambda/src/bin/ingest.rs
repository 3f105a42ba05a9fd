//! `botline-ingest`: the ingest Lambda function (see the crate docs).

use botline::aws::SecretStore;
use botline_lambda::ingest::Ingest;
use lambda_runtime::Error;
use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<(), Error> {
    botline_lambda::init_logging();
    let metrics = botline_lambda::init_metrics()?;
    let settings = botline_lambda::settings()?;
    // The schema check asks only about what ingest touches, which is all its role may describe.
    let backend = botline::aws::open_backend(settings.queue_config())
        .await?
        .checking(botline_aws::SchemaNeeds::Ingest);
    let store = SecretStore::from_env().await;
    let ingest = Arc::new(Ingest::new(settings, Arc::new(backend), store).await?);
    tracing::info!(version = botline::version(), "ingest function ready");
    metrics_cloudwatch_embedded::lambda::handler::run_http(metrics, move |request| {
        let ingest = Arc::clone(&ingest);
        async move { Ok::<_, Error>(ingest.handle(request).await) }
    })
    .await
}
