//! Creates the queues and tables the crate docs describe, or brings existing ones up to date:
//! `botline provision --backend aws`, the tests, a stack made outside the CDK app (which
//! creates them in its deployment).

use crate::outbox::OUTBOX_PENDING_INDEX;
use crate::queue::{MAX_RECEIVE_COUNT, PENDING_INDEX};
use crate::settings::queue_name;
use crate::store::USER_ID_INDEX;
use crate::{AwsClients, AwsError, AwsSettings, Tables, unavailable};
use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, CreateGlobalSecondaryIndexAction, GlobalSecondaryIndex,
    GlobalSecondaryIndexUpdate, KeySchemaElement, KeyType, Projection, ProjectionType,
    ScalarAttributeType, TableStatus, TimeToLiveSpecification,
};
use aws_sdk_sqs::types::QueueAttributeName;
use botline_core::{BackendError, Unprovisioned};
use std::collections::HashMap;
use std::time::Duration;

/// The command that creates what [`check_schema`] finds missing.
pub const PROVISION_COMMAND: &str = "botline provision --backend aws";

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
    Ok(provision_report(clients, settings).await?.settings)
}

/// What [`provision_report`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provisioned {
    /// The settings, with the URLs SQS answered with.
    pub settings: AwsSettings,
    /// One line per queue, table, index and TTL: what was created, changed or found as wanted.
    pub actions: Vec<String>,
}

/// [`provision`], and what it did: `botline provision --backend aws` prints it. A table that
/// exists without an index the backend needs (the seed documents' layout has no `PendingIndex`)
/// gets the index added (UpdateTable), and the call waits until it is active.
pub async fn provision_report(
    clients: &AwsClients,
    settings: &AwsSettings,
) -> Result<Provisioned, AwsError> {
    settings.validate()?;
    let mut actions = Vec::new();
    let fifo = settings.is_fifo();
    let dlq_url = create_queue(
        clients,
        &mut actions,
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
        &mut actions,
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
        create_table(clients, &mut actions, &table).await?;
    }
    Ok(Provisioned {
        settings: AwsSettings {
            queue_url,
            dlq_url,
            ..settings.clone()
        },
        actions,
    })
}

/// Whether both queues and the seven tables with their indexes exist, as [`provision`] makes
/// them: `GetQueueUrl` for each queue and `DescribeTable` for each table, all at once.
/// [`BackendError::Unprovisioned`] names every queue and table that is missing and every index a
/// table lacks (the seed documents' `updates` table has no `PendingIndex`, which the claim step
/// queries), and ends with [`PROVISION_COMMAND`]; [`BackendError::Unavailable`] when AWS could
/// not be asked. TTL and attributes are not checked: without them Botline still works.
pub async fn check_schema(
    clients: &AwsClients,
    settings: &AwsSettings,
) -> Result<(), BackendError> {
    check_schema_for(clients, settings, SchemaNeeds::Everything).await
}

/// What a schema check asks about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SchemaNeeds {
    /// Both queues and the seven tables: `serve`, `poll`, the worker function.
    #[default]
    Everything,
    /// The main queue and the `updates` table, all that the ingest function touches (and all
    /// its role may describe).
    Ingest,
}

/// [`check_schema`], asking only about what `needs` names.
pub async fn check_schema_for(
    clients: &AwsClients,
    settings: &AwsSettings,
    needs: SchemaNeeds,
) -> Result<(), BackendError> {
    let all_tables = Tables::with_prefix(&settings.table_prefix);
    let (queues, tables) = match needs {
        SchemaNeeds::Everything => (
            vec![
                queue_name(&settings.queue_url),
                queue_name(&settings.dlq_url),
            ],
            table_specs(&all_tables),
        ),
        SchemaNeeds::Ingest => (
            vec![queue_name(&settings.queue_url)],
            table_specs(&all_tables)
                .into_iter()
                .filter(|spec| spec.name == all_tables.updates)
                .collect(),
        ),
    };
    let (queues, tables) = futures_util::future::join(
        futures_util::future::join_all(queues.into_iter().map(|name| missing_queue(clients, name))),
        futures_util::future::join_all(tables.iter().map(|spec| missing_of_table(clients, spec))),
    )
    .await;
    let mut missing = Vec::new();
    for found in queues {
        missing.extend(found?);
    }
    for found in tables {
        missing.extend(found?);
    }
    if missing.is_empty() {
        return Ok(());
    }
    Err(BackendError::Unprovisioned(Unprovisioned {
        backend: "AWS",
        missing,
        fix: PROVISION_COMMAND,
    }))
}

/// `queue <name> is missing`, when SQS has no queue of that name.
async fn missing_queue(clients: &AwsClients, name: &str) -> Result<Option<String>, BackendError> {
    match clients.sqs.get_queue_url().queue_name(name).send().await {
        Ok(_) => Ok(None),
        Err(e) if is_no_queue(e.code()) => Ok(Some(format!("queue {name} is missing"))),
        Err(e) => Err(unavailable("GetQueueUrl", e)),
    }
}

/// `table <name> is missing`, or one `table <name> has no index <index>` per index it lacks.
async fn missing_of_table(
    clients: &AwsClients,
    spec: &TableSpec,
) -> Result<Vec<String>, BackendError> {
    let described = match clients
        .dynamodb
        .describe_table()
        .table_name(&spec.name)
        .send()
        .await
    {
        Ok(described) => described.table,
        Err(e) if e.code() == Some("ResourceNotFoundException") => {
            return Ok(vec![format!("table {} is missing", spec.name)]);
        }
        Err(e) => return Err(unavailable("DescribeTable", e)),
    };
    let indexes: Vec<&str> = described
        .as_ref()
        .map(|table| {
            table
                .global_secondary_indexes()
                .iter()
                .filter_map(|index| index.index_name())
                .collect()
        })
        .unwrap_or_default();
    Ok(spec
        .indexes
        .iter()
        .filter(|(index, ..)| !indexes.contains(index))
        .map(|(index, ..)| format!("table {} has no index {index}", spec.name))
        .collect())
}

/// Whether an SQS error code says the queue does not exist (the JSON and the query protocol's).
fn is_no_queue(code: Option<&str>) -> bool {
    matches!(
        code,
        Some("AWS.SimpleQueueService.NonExistentQueue" | "QueueDoesNotExist")
    )
}

async fn create_queue(
    clients: &AwsClients,
    actions: &mut Vec<String>,
    name: &str,
    fifo: bool,
    attributes: HashMap<QueueAttributeName, String>,
) -> Result<String, BackendError> {
    // CreateQueue answers an existing queue with the same attributes as if it made it: ask
    // first, to say which it was.
    let existing = match clients.sqs.get_queue_url().queue_name(name).send().await {
        Ok(found) => found.queue_url,
        Err(e) if is_no_queue(e.code()) => None,
        Err(e) => return Err(unavailable("GetQueueUrl", e)),
    };
    if let Some(url) = existing {
        clients
            .sqs
            .set_queue_attributes()
            .queue_url(&url)
            .set_attributes(Some(attributes))
            .send()
            .await
            .map_err(|e| unavailable("SetQueueAttributes", e))?;
        actions.push(format!("queue {name}: exists, attributes set"));
        return Ok(url);
    }
    let mut create = attributes;
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
        .await
        .map_err(|e| unavailable("CreateQueue", e))?;
    actions.push(format!("queue {name}: created"));
    created
        .queue_url
        .ok_or_else(|| BackendError::Unavailable(format!("CreateQueue {name}: no URL")))
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

fn attribute_definition(
    name: &str,
    kind: &ScalarAttributeType,
) -> Result<AttributeDefinition, aws_sdk_dynamodb::error::BuildError> {
    AttributeDefinition::builder()
        .attribute_name(name)
        .attribute_type(kind.clone())
        .build()
}

fn secondary_index(spec: &IndexSpec) -> Result<GlobalSecondaryIndex, BackendError> {
    let (name, hash, range, projected) = spec;
    let projection = match projected {
        None => Projection::builder()
            .projection_type(ProjectionType::All)
            .build(),
        Some(attributes) => Projection::builder()
            .projection_type(ProjectionType::Include)
            .set_non_key_attributes(Some(attributes.iter().map(|a| (*a).to_owned()).collect()))
            .build(),
    };
    GlobalSecondaryIndex::builder()
        .index_name(*name)
        .set_key_schema(Some(key_schema(hash, *range)?))
        .projection(projection)
        .build()
        .map_err(|e| BackendError::Unavailable(format!("index {name}: {e}")))
}

/// Waits until the table and its indexes are ACTIVE (at once on an emulator, a while on AWS),
/// and returns the names of its indexes.
async fn wait_active(clients: &AwsClients, table: &str) -> Result<Vec<String>, BackendError> {
    for _ in 0..600 {
        let described = clients
            .dynamodb
            .describe_table()
            .table_name(table)
            .send()
            .await
            .map_err(|e| unavailable("DescribeTable", e))?
            .table
            .ok_or_else(|| BackendError::Unavailable(format!("DescribeTable {table}: no table")))?;
        let indexes = described.global_secondary_indexes();
        let active = described.table_status() == Some(&TableStatus::Active)
            && indexes
                .iter()
                .all(|i| i.index_status().is_none_or(|s| s.as_str() == "ACTIVE"));
        if active {
            return Ok(indexes
                .iter()
                .filter_map(|i| i.index_name().map(str::to_owned))
                .collect());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(BackendError::Unavailable(format!(
        "table {table} did not become active within 5 minutes"
    )))
}

async fn create_table(
    clients: &AwsClients,
    actions: &mut Vec<String>,
    spec: &TableSpec,
) -> Result<(), BackendError> {
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
        create = create.attribute_definitions(attribute_definition(name, kind).map_err(built)?);
    }
    for index in &spec.indexes {
        create = create.global_secondary_indexes(secondary_index(index)?);
    }
    let existed = match create.send().await {
        Ok(_) => {
            actions.push(format!("table {}: created", spec.name));
            false
        }
        Err(e) if e.code() == Some("ResourceInUseException") => true,
        Err(e) => return Err(unavailable("CreateTable", e)),
    };
    let mut indexes = wait_active(clients, &spec.name).await?;
    if existed {
        actions.push(format!("table {}: exists", spec.name));
        // A table made before, or by hand from the seed documents: add the indexes it lacks,
        // one at a time (DynamoDB creates one per UpdateTable).
        for index in &spec.indexes {
            let name = index.0;
            if indexes.iter().any(|i| i == name) {
                continue;
            }
            let keys = [Some(index.1), index.2];
            let definitions = spec
                .attributes
                .iter()
                .filter(|(attribute, _)| keys.contains(&Some(*attribute)))
                .map(|(attribute, kind)| attribute_definition(attribute, kind))
                .collect::<Result<Vec<_>, _>>()
                .map_err(built)?;
            let secondary = secondary_index(index)?;
            clients
                .dynamodb
                .update_table()
                .table_name(&spec.name)
                .set_attribute_definitions(Some(definitions))
                .global_secondary_index_updates(
                    GlobalSecondaryIndexUpdate::builder()
                        .create(
                            CreateGlobalSecondaryIndexAction::builder()
                                .index_name(name)
                                .set_key_schema(Some(secondary.key_schema))
                                .set_projection(secondary.projection)
                                .build()
                                .map_err(built)?,
                        )
                        .build(),
                )
                .send()
                .await
                .map_err(|e| unavailable("UpdateTable", e))?;
            indexes = wait_active(clients, &spec.name).await?;
            actions.push(format!("table {}: index {name} added", spec.name));
        }
    }
    if let Some(attribute) = spec.ttl {
        let current = clients
            .dynamodb
            .describe_time_to_live()
            .table_name(&spec.name)
            .send()
            .await
            .map_err(|e| unavailable("DescribeTimeToLive", e))?
            .time_to_live_description;
        let on = current.is_some_and(|ttl| {
            ttl.attribute_name() == Some(attribute)
                && matches!(
                    ttl.time_to_live_status().map(|s| s.as_str()),
                    Some("ENABLED" | "ENABLING")
                )
        });
        if on {
            actions.push(format!("table {}: TTL on {attribute} already", spec.name));
        } else {
            clients
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
                .await
                .map_err(|e| unavailable("UpdateTimeToLive", e))?;
            actions.push(format!("table {}: TTL on {attribute}", spec.name));
        }
    }
    Ok(())
}
