//! Creates the queues and tables the crate docs describe, for tests and for a development
//! stack (the CDK app creates them in a deployment).

use crate::outbox::OUTBOX_PENDING_INDEX;
use crate::queue::{MAX_RECEIVE_COUNT, PENDING_INDEX};
use crate::settings::queue_name;
use crate::store::USER_ID_INDEX;
use crate::{AwsClients, AwsError, AwsSettings, Tables, describe, unavailable};
use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType, TableStatus, TimeToLiveSpecification,
};
use aws_sdk_sqs::types::QueueAttributeName;
use botline_core::BackendError;
use std::collections::HashMap;
use std::time::Duration;

/// Four days, as seed 001 keeps updates on the main queue.
const RETENTION_SECONDS: &str = "345600";
/// Fourteen days (SQS's most) for dead letters.
const DLQ_RETENTION_SECONDS: &str = "1209600";

/// Creates the dead-letter queue, the main queue (its redrive policy sending a message to the
/// DLQ after [`MAX_RECEIVE_COUNT`] receives) and the seven tables, each on demand
/// (`PAY_PER_REQUEST`) with its indexes and TTL. Idempotent: what exists is left as it is (a
/// queue's attributes are brought to these).
///
/// The queues are named by the last segment of the settings' URLs; the returned settings carry
/// the URLs SQS answered with.
pub async fn provision(
    clients: &AwsClients,
    settings: &AwsSettings,
) -> Result<AwsSettings, AwsError> {
    settings.validate()?;
    let fifo = settings.is_fifo();
    let dlq_url = create_queue(
        clients,
        queue_name(&settings.dlq_url),
        fifo,
        HashMap::from([(
            QueueAttributeName::MessageRetentionPeriod,
            DLQ_RETENTION_SECONDS.to_owned(),
        )]),
    )
    .await?;
    let dlq_arn = clients
        .sqs
        .get_queue_attributes()
        .queue_url(&dlq_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(|e| unavailable("GetQueueAttributes", e))?
        .attributes
        .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
        .ok_or_else(|| BackendError::Unavailable("the DLQ has no ARN".into()))?;
    let redrive = serde_json::json!({
        "deadLetterTargetArn": dlq_arn,
        "maxReceiveCount": MAX_RECEIVE_COUNT,
    })
    .to_string();
    let queue_url = create_queue(
        clients,
        queue_name(&settings.queue_url),
        fifo,
        HashMap::from([
            (
                QueueAttributeName::MessageRetentionPeriod,
                RETENTION_SECONDS.to_owned(),
            ),
            (QueueAttributeName::VisibilityTimeout, "30".to_owned()),
            (QueueAttributeName::RedrivePolicy, redrive),
        ]),
    )
    .await?;
    for table in table_specs(&Tables::with_prefix(&settings.table_prefix)) {
        create_table(clients, &table).await?;
    }
    Ok(AwsSettings {
        queue_url,
        dlq_url,
        ..settings.clone()
    })
}

async fn create_queue(
    clients: &AwsClients,
    name: &str,
    fifo: bool,
    mut attributes: HashMap<QueueAttributeName, String>,
) -> Result<String, BackendError> {
    let mut create = attributes.clone();
    if fifo {
        create.insert(QueueAttributeName::FifoQueue, "true".into());
        create.insert(
            QueueAttributeName::ContentBasedDeduplication,
            "false".into(),
        );
    }
    let created = clients
        .sqs
        .create_queue()
        .queue_name(name)
        .set_attributes(Some(create))
        .send()
        .await;
    match created {
        Ok(created) => created
            .queue_url
            .ok_or_else(|| BackendError::Unavailable(format!("CreateQueue {name}: no URL"))),
        // It exists with other attributes: bring them to these.
        Err(e) if e.code() == Some("QueueAlreadyExists") || e.code() == Some("QueueNameExists") => {
            let url = clients
                .sqs
                .get_queue_url()
                .queue_name(name)
                .send()
                .await
                .map_err(|e| unavailable("GetQueueUrl", e))?
                .queue_url
                .ok_or_else(|| BackendError::Unavailable(format!("GetQueueUrl {name}: no URL")))?;
            attributes.remove(&QueueAttributeName::FifoQueue);
            clients
                .sqs
                .set_queue_attributes()
                .queue_url(&url)
                .set_attributes(Some(attributes))
                .send()
                .await
                .map_err(|e| unavailable("SetQueueAttributes", e))?;
            Ok(url)
        }
        Err(e) => Err(unavailable("CreateQueue", e)),
    }
}

/// A global secondary index: name, hash key, range key, projected attributes (all when `None`).
type IndexSpec = (
    &'static str,
    &'static str,
    Option<&'static str>,
    Option<Vec<&'static str>>,
);

/// One table as the crate docs describe it.
struct TableSpec {
    name: String,
    /// (attribute, type) of every key of the table and its indexes.
    attributes: Vec<(&'static str, ScalarAttributeType)>,
    hash: &'static str,
    range: Option<&'static str>,
    indexes: Vec<IndexSpec>,
    ttl: Option<&'static str>,
}

fn table_specs(tables: &Tables) -> Vec<TableSpec> {
    use ScalarAttributeType::{N, S};
    vec![
        TableSpec {
            name: tables.messages.clone(),
            attributes: vec![("chatId", S), ("messageId", N)],
            hash: "chatId",
            range: Some("messageId"),
            indexes: vec![],
            ttl: None,
        },
        TableSpec {
            name: tables.users.clone(),
            attributes: vec![("userId", S)],
            hash: "userId",
            range: None,
            indexes: vec![],
            ttl: None,
        },
        TableSpec {
            name: tables.events.clone(),
            attributes: vec![("eventId", S), ("userId", S), ("timestamp", S)],
            hash: "eventId",
            range: None,
            indexes: vec![(USER_ID_INDEX, "userId", Some("timestamp"), None)],
            ttl: None,
        },
        TableSpec {
            name: tables.sessions.clone(),
            attributes: vec![("sessionId", S), ("userId", S)],
            hash: "sessionId",
            range: None,
            indexes: vec![(USER_ID_INDEX, "userId", None, None)],
            ttl: Some("expiresAt"),
        },
        TableSpec {
            name: tables.updates.clone(),
            attributes: vec![("updateId", N), ("pendingKey", S)],
            hash: "updateId",
            range: None,
            indexes: vec![(
                PENDING_INDEX,
                "pendingKey",
                Some("updateId"),
                Some(vec![
                    "state",
                    "attempts",
                    "leaseUntil",
                    "leaseMessageId",
                    "notBefore",
                ]),
            )],
            ttl: Some("expiresAt"),
        },
        TableSpec {
            name: tables.outbox.clone(),
            attributes: vec![("outboxId", S), ("pendingShard", S), ("chatSeq", S)],
            hash: "outboxId",
            range: None,
            indexes: vec![(
                OUTBOX_PENDING_INDEX,
                "pendingShard",
                Some("chatSeq"),
                Some(vec!["chatId", "dueAt"]),
            )],
            ttl: Some("expiresAt"),
        },
        TableSpec {
            name: tables.tokens.clone(),
            attributes: vec![("tokenDigest", S)],
            hash: "tokenDigest",
            range: None,
            indexes: vec![],
            ttl: None,
        },
    ]
}

fn key_schema(hash: &str, range: Option<&str>) -> Result<Vec<KeySchemaElement>, BackendError> {
    let mut keys = vec![(hash, KeyType::Hash)];
    if let Some(range) = range {
        keys.push((range, KeyType::Range));
    }
    keys.into_iter()
        .map(|(name, key_type)| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(key_type)
                .build()
                .map_err(|e| BackendError::Unavailable(format!("CreateTable: {e}")))
        })
        .collect()
}

async fn create_table(clients: &AwsClients, spec: &TableSpec) -> Result<(), BackendError> {
    let built = |e: aws_sdk_dynamodb::error::BuildError| {
        BackendError::Unavailable(format!("CreateTable {}: {e}", spec.name))
    };
    let mut create = clients
        .dynamodb
        .create_table()
        .table_name(&spec.name)
        .billing_mode(BillingMode::PayPerRequest)
        .set_key_schema(Some(key_schema(spec.hash, spec.range)?));
    for (name, kind) in &spec.attributes {
        create = create.attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name(*name)
                .attribute_type(kind.clone())
                .build()
                .map_err(built)?,
        );
    }
    for (name, hash, range, projected) in &spec.indexes {
        let projection = match projected {
            None => Projection::builder()
                .projection_type(ProjectionType::All)
                .build(),
            Some(attributes) => Projection::builder()
                .projection_type(ProjectionType::Include)
                .set_non_key_attributes(Some(attributes.iter().map(|a| (*a).to_owned()).collect()))
                .build(),
        };
        create = create.global_secondary_indexes(
            GlobalSecondaryIndex::builder()
                .index_name(*name)
                .set_key_schema(Some(key_schema(hash, *range)?))
                .projection(projection)
                .build()
                .map_err(built)?,
        );
    }
    match create.send().await {
        Ok(_) => {}
        Err(e) if e.code() == Some("ResourceInUseException") => {}
        Err(e) => return Err(unavailable("CreateTable", e)),
    }
    // A table takes a while to become ACTIVE on AWS (at once on an emulator).
    for _ in 0..120 {
        let described = clients
            .dynamodb
            .describe_table()
            .table_name(&spec.name)
            .send()
            .await
            .map_err(|e| unavailable("DescribeTable", e))?;
        let status = described.table.and_then(|t| t.table_status);
        if status == Some(TableStatus::Active) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if let Some(attribute) = spec.ttl {
        let enabled = clients
            .dynamodb
            .update_time_to_live()
            .table_name(&spec.name)
            .time_to_live_specification(
                TimeToLiveSpecification::builder()
                    .attribute_name(attribute)
                    .enabled(true)
                    .build()
                    .map_err(built)?,
            )
            .send()
            .await;
        match enabled {
            Ok(_) => {}
            // Enabled before (by an earlier run).
            Err(e) if e.code() == Some("ValidationException") => {
                tracing::debug!(table = %spec.name, error = %describe("UpdateTimeToLive", &e), "TTL left as it is");
            }
            Err(e) => return Err(unavailable("UpdateTimeToLive", e)),
        }
    }
    Ok(())
}
