/**
 * One Botline deployment: HTTP API → ingest Lambda → SQS (+ DLQ) → worker Lambda → DynamoDB, with
 * the secrets, log groups, alarms and dashboard that go with it. Resource names are
 * `botline-<stage>-<resource>`; see docs/deploy.md for how to deploy it.
 */
import {
  Annotations,
  ArnFormat,
  CfnOutput,
  CfnParameter,
  CfnRule,
  Duration,
  Fn,
  Stack,
  StackProps,
  Tags,
} from 'aws-cdk-lib';
import * as apigwv2 from 'aws-cdk-lib/aws-apigatewayv2';
import { AccessLogFormat } from 'aws-cdk-lib/aws-apigateway';
import { HttpLambdaIntegration } from 'aws-cdk-lib/aws-apigatewayv2-integrations';
import * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import * as events from 'aws-cdk-lib/aws-events';
import * as targets from 'aws-cdk-lib/aws-events-targets';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as secretsmanager from 'aws-cdk-lib/aws-secretsmanager';
import * as sqs from 'aws-cdk-lib/aws-sqs';
import { Construct } from 'constructs';
import { BotlineConfig } from './config';
import { Monitoring } from './monitoring';
import { STAGE_SETTINGS, StageSettings } from './stages';

/** Figures from seed 001 and the issue, in one place so tests and docs can quote them. */
export const LIMITS = {
  ingest: { memoryMb: 256, timeout: Duration.seconds(30) },
  worker: {
    memoryMb: 512,
    /** The worker's timeout without a handler, and the least it is with one (see `timeouts`). */
    timeout: Duration.seconds(60),
    /**
     * With a handler, the worker's timeout is the handler timeout plus this: room for the batch's
     * claim before the handler is called and for sending the replies after it answers.
     */
    handlerHeadroom: Duration.seconds(30),
    maxConcurrency: 10,
    batchSize: 10,
  },
  queue: {
    /** Redrive to the DLQ on the receive after the third failed one. */
    maxReceiveCount: 3,
    retention: Duration.days(4),
    /**
     * The visibility timeout, in worker timeouts. AWS asks for at least six times the function
     * timeout (plus the batching window, which is zero here) so that a batch still in a retried
     * or throttled invocation does not become visible to another one. 6 × 60 s = 360 s; seed
     * 001's 5 minutes would be too short.
     */
    visibilityTimeoutInWorkerTimeouts: 6,
    /**
     * Standard queues keep a message's original enqueue time when it moves to the DLQ, so the
     * DLQ must keep messages longer than the queue does or dead letters expire on arrival.
     */
    dlqRetention: Duration.days(14),
  },
} as const;

/** Lambda's longest function timeout. */
const LAMBDA_MAX_TIMEOUT = Duration.minutes(15);

/**
 * The worker's timeout and the queue's visibility timeout, from the config; the one place they
 * are worked out. Without a handler: 60 s and 6 minutes. With one (`handlerUrl` or
 * `handlerFunction`), the worker waits up to `handlerTimeout` for it inside one invocation, so its
 * timeout is max(60 s, handlerTimeout + 30 s) and the visibility timeout six times that:
 * handlerTimeout=120 gives 150 s and 900 s. readConfig caps handlerTimeout at 840 s, so the
 * worker stays within Lambda's 900 s and the visibility timeout (at most 87 minutes) far within
 * SQS's 12 hours.
 */
export function timeouts(config: Pick<BotlineConfig, 'handlerUrl' | 'handlerFunction' | 'handlerTimeout'>): {
  worker: Duration;
  visibility: Duration;
} {
  const least = LIMITS.worker.timeout.toSeconds();
  const worker = hasHandler(config)
    ? Math.max(least, config.handlerTimeout + LIMITS.worker.handlerHeadroom.toSeconds())
    : least;
  if (worker > LAMBDA_MAX_TIMEOUT.toSeconds()) {
    throw new Error(`worker timeout ${worker} s is over Lambda's ${LAMBDA_MAX_TIMEOUT.toSeconds()} s`);
  }
  return {
    worker: Duration.seconds(worker),
    visibility: Duration.seconds(LIMITS.queue.visibilityTimeoutInWorkerTimeouts * worker),
  };
}

/** Whether the worker forwards updates to the bot's own handler (issue 16). */
export function hasHandler(config: Pick<BotlineConfig, 'handlerUrl' | 'handlerFunction'>): boolean {
  return config.handlerUrl !== undefined || config.handlerFunction !== undefined;
}

/**
 * The DynamoDB tables of the AWS backend, by the suffix after `botline-<stage>-` (the functions'
 * `BOTLINE_TABLE_PREFIX`). Keys, indexes and TTLs are the contract of the crate docs of
 * `crates/botline-aws/src/lib.rs` ("Tables") and of its `provision` step.
 */
export const TABLE_NAMES = [
  'messages',
  'users',
  'events',
  'sessions',
  'updates',
  'outbox',
  'tokens',
] as const;
export type TableName = (typeof TABLE_NAMES)[number];

/**
 * The global secondary indexes the backend queries, by table. `updates` and `outbox` project only
 * what the claim step and the outbox's hand-out read from the index.
 */
export const TABLE_INDEXES: Partial<Record<TableName, dynamodb.GlobalSecondaryIndexProps>> = {
  events: { indexName: 'UserIdIndex', partitionKey: str('userId'), sortKey: str('timestamp') },
  sessions: { indexName: 'UserIdIndex', partitionKey: str('userId') },
  updates: {
    indexName: 'PendingIndex',
    partitionKey: str('pendingKey'),
    sortKey: num('updateId'),
    projectionType: dynamodb.ProjectionType.INCLUDE,
    nonKeyAttributes: ['state', 'attempts', 'leaseUntil', 'leaseMessageId', 'notBefore'],
  },
  outbox: {
    indexName: 'PendingIndex',
    partitionKey: str('pendingShard'),
    sortKey: str('chatSeq'),
    projectionType: dynamodb.ProjectionType.INCLUDE,
    nonKeyAttributes: ['chatId', 'dueAt'],
  },
};

/** The FIFO `MessageGroupId` the functions use (`BOTLINE_FIFO_GROUP`): one group per chat. */
export const FIFO_GROUP = 'chat';

export interface BotlineStackProps extends StackProps {
  readonly config: BotlineConfig;
}

export class BotlineStack extends Stack {
  readonly config: BotlineConfig;
  readonly settings: StageSettings;
  readonly api: apigwv2.HttpApi;
  readonly ingest: lambda.Function;
  readonly worker: lambda.Function;
  /** Invokes the worker every `workerTickMinutes` to send the calls that are due. */
  readonly workerTick: events.Rule;
  readonly queue: sqs.Queue;
  readonly deadLetters: sqs.Queue;
  readonly tables: Record<TableName, dynamodb.Table>;
  /** What Botline's operator commands need; attached to no function (see docs/deploy.md). */
  readonly operatorPolicy: iam.ManagedPolicy;

  constructor(scope: Construct, id: string, props: BotlineStackProps) {
    super(scope, id, {
      description: `Botline ${props.config.stage}: Telegram webhook -> API Gateway -> Lambda -> SQS -> Lambda -> DynamoDB`,
      ...props,
    });
    this.config = props.config;
    this.settings = STAGE_SETTINGS[this.config.stage];
    const { stage } = this.config;
    const { worker: workerTimeout, visibility: visibilityTimeout } = timeouts(this.config);
    Tags.of(this).add('project', 'botline');
    Tags.of(this).add('stage', stage);

    // Queue and dead-letter queue.
    const fifoSuffix = this.config.fifo ? '.fifo' : '';
    this.deadLetters = new sqs.Queue(this, 'DeadLetterQueue', {
      queueName: `${this.name('dlq')}${fifoSuffix}`,
      fifo: this.config.fifo || undefined,
      retentionPeriod: LIMITS.queue.dlqRetention,
      encryption: sqs.QueueEncryption.SQS_MANAGED,
      enforceSSL: true,
      removalPolicy: this.settings.dataRemovalPolicy,
    });
    this.queue = new sqs.Queue(this, 'Queue', {
      queueName: `${this.name('queue')}${fifoSuffix}`,
      // FIFO: the backend sets MessageGroupId = the update's order key (`chat:<id>`, from
      // BOTLINE_FIFO_GROUP) and MessageDeduplicationId = the update id (a fresh id for every
      // copy it sends later), so content-based deduplication stays off.
      fifo: this.config.fifo || undefined,
      contentBasedDeduplication: this.config.fifo ? false : undefined,
      retentionPeriod: LIMITS.queue.retention,
      visibilityTimeout,
      deadLetterQueue: { queue: this.deadLetters, maxReceiveCount: LIMITS.queue.maxReceiveCount },
      encryption: sqs.QueueEncryption.SQS_MANAGED,
      enforceSSL: true,
      removalPolicy: this.settings.dataRemovalPolicy,
    });

    // Tables (names, keys, indexes and TTLs as the AWS backend expects them).
    this.tables = {
      messages: this.table('messages', { partitionKey: str('chatId'), sortKey: num('messageId') }),
      users: this.table('users', { partitionKey: str('userId') }),
      events: this.table('events', { partitionKey: str('eventId') }),
      sessions: this.table('sessions', { partitionKey: str('sessionId'), timeToLiveAttribute: 'expiresAt' }),
      // The dedupe set and the queue's state: one item per update id.
      updates: this.table('updates', { partitionKey: num('updateId'), timeToLiveAttribute: 'expiresAt' }),
      // Bot API calls to make, written in the transaction that applies their update.
      outbox: this.table('outbox', { partitionKey: str('outboxId'), timeToLiveAttribute: 'expiresAt' }),
      // Registration tokens, by the SHA-256 hex digest of the token.
      tokens: this.table('tokens', { partitionKey: str('tokenDigest') }),
    };
    for (const name of TABLE_NAMES) {
      const index = TABLE_INDEXES[name];
      if (index) {
        this.tables[name].addGlobalSecondaryIndex(index);
      }
    }

    // Secrets. CloudFormation generates a value for each so that the stack deploys on its own;
    // the operator replaces the bot token and the OpenAI key (docs/deploy.md). The generated
    // webhook secret is usable as it is: 64 characters from Telegram's allowed A-Z a-z 0-9.
    const botToken = this.secret(
      'bot-token',
      'Telegram bot token from @BotFather (replace the generated value)',
    );
    const webhookSecret = this.secret(
      'webhook-secret',
      'Telegram setWebhook secret_token, checked against X-Telegram-Bot-Api-Secret-Token',
    );
    // Stored now, read by no function yet (seed 000: "stored now, used in Phase 2").
    const openAiKey = this.secret(
      'openai-api-key',
      'OpenAI API key for later phases (replace the generated value)',
    );
    // The bot's own handler, when one is configured: its variables and grant for the worker.
    const forwarding = this.forwarding();

    // Functions, each with a role of its own that grants only what it uses. Both read the same
    // backend settings (crates/botline-aws: AwsSettings::from_env).
    const sharedEnvironment: Record<string, string> = {
      BOTLINE_STAGE: stage,
      BOTLINE_LOG: 'info',
      BOTLINE_QUEUE_URL: this.queue.queueUrl,
      // A URL grants nothing; the ingest function has no permission on the DLQ.
      BOTLINE_DLQ_URL: this.deadLetters.queueUrl,
      // Both functions: the ingest function deduplicates through the `updates` table.
      BOTLINE_TABLE_PREFIX: this.name(''),
      ...(this.config.fifo ? { BOTLINE_FIFO_GROUP: FIFO_GROUP } : {}),
    };
    const updatesTable = this.tables.updates;
    this.ingest = this.function('ingest', {
      code: this.config.ingestCode,
      memoryMb: LIMITS.ingest.memoryMb,
      timeout: LIMITS.ingest.timeout,
      description: 'Botline receiver: checks and enqueues Telegram updates, serves /health',
      environment: {
        ...sharedEnvironment,
        BOTLINE_WEBHOOK_SECRET_ID: webhookSecret.secretArn,
      },
      statements: [
        new iam.PolicyStatement({
          sid: 'SendUpdatesToQueue',
          // GetQueueAttributes: GET /health pings the queue with it.
          actions: ['sqs:SendMessage', 'sqs:GetQueueAttributes'],
          resources: [this.queue.queueArn],
        }),
        new iam.PolicyStatement({
          sid: 'DedupeMarkInUpdates',
          // The one deliberate widening of issue 5's "send to the queue and read its own
          // secrets". The enqueue is: a consistent GetItem of the update's item (present: a
          // duplicate, nothing sent), SendMessage, then a conditional PutItem of the item that
          // marks the update as received. The mark must be written by the receiver, after the
          // send: written before it, a failed send would make Telegram's retry look like a
          // duplicate; left to the worker, a retry arriving before the worker ran would be
          // enqueued twice. So: GetItem and PutItem on `updates`, its items only (no index, no
          // other table, no Query, Scan, UpdateItem or DeleteItem).
          actions: ['dynamodb:GetItem', 'dynamodb:PutItem'],
          resources: [updatesTable.tableArn],
        }),
        new iam.PolicyStatement({
          sid: 'CheckSchemaAtStart',
          // The schema check (botline_aws::check_schema_for with SchemaNeeds::Ingest): the
          // main queue exists (GetQueueUrl) and `updates` has its index (DescribeTable, which
          // reads the table's description, none of its items). Until both hold the webhook
          // answers 503 rather than 200 for an update no worker could process.
          actions: ['sqs:GetQueueUrl'],
          resources: [this.queue.queueArn],
        }),
        new iam.PolicyStatement({
          sid: 'DescribeUpdatesTable',
          actions: ['dynamodb:DescribeTable'],
          resources: [updatesTable.tableArn],
        }),
        new iam.PolicyStatement({
          sid: 'ReadWebhookSecret',
          actions: ['secretsmanager:GetSecretValue'],
          resources: [webhookSecret.secretArn],
        }),
      ],
    });
    // The worker's DynamoDB access, table by table: exactly what its code paths call. The
    // function (crates/botline-lambda, worker.rs) hands each SQS event to the claim step
    // (botline_aws::AwsBackend::claim), processes the leased updates (botline::worker::process:
    // Store::apply, and Queue::fail when an attempt fails; Queue::ack is never called, as
    // apply acknowledges) and sends the replies (botline::sender::Sender::drain: the Outbox
    // trait). TransactWriteItems has no action of its own: DynamoDB authorizes each item of
    // Store::apply's transaction by PutItem or UpdateItem on its table. Nothing on the worker's
    // path scans, reads the `UserIdIndex`es or deletes items but sessions a handler cleared
    // (DynamoDB's TTL is the AWS backend's housekeeping): those are the operator commands',
    // below, or nobody's.
    const tables = this.tables;
    const pendingIndex = (name: 'updates' | 'outbox') =>
      `${tables[name].tableArn}/index/${TABLE_INDEXES[name]!.indexName}`;
    this.worker = this.function('worker', {
      code: this.config.workerCode,
      memoryMb: LIMITS.worker.memoryMb,
      timeout: workerTimeout,
      description: 'Botline worker: processes queued updates into DynamoDB',
      reservedConcurrency: this.config.workerReservedConcurrency,
      environment: {
        ...sharedEnvironment,
        BOTLINE_BOT_TOKEN_ID: botToken.secretArn,
        ...forwarding.environment,
      },
      statements: [
        new iam.PolicyStatement({
          sid: 'ConsumeQueue',
          // ReceiveMessage, DeleteMessage, GetQueueAttributes: the event source mapping polls
          // the queue with the function's role and needs all three. DeleteMessage is also the
          // code's: Store::apply deletes the applied update's message, the claim step
          // (claim_one) deletes messages it drops, requeue deletes the held-back original, and
          // Queue::fail deletes the message of a dead letter.
          // ChangeMessageVisibility: lease hides a leased message for its lease, hold hides a
          // held-back one (standard queue), Queue::fail hides a failed one for its backoff.
          // SendMessage: requeue re-sends a held-back message (to the tail of its FIFO group,
          // or with a delay on a standard queue), and try_wake_next (standard queue) sends a
          // wake-up for a chat's next update once one is finished.
          actions: [
            'sqs:ReceiveMessage',
            'sqs:DeleteMessage',
            'sqs:ChangeMessageVisibility',
            'sqs:GetQueueAttributes',
            'sqs:SendMessage',
          ],
          resources: [this.queue.queueArn],
        }),
        new iam.PolicyStatement({
          sid: 'CopyDeadLettersToDlq',
          // send_to_dlq: a copy of each dead letter (from Queue::fail at the last attempt, and
          // from claim_one when the last lease expired), which the DLQ-depth alarm watches;
          // claim_one also moves a message that is not a Botline update there. The worker
          // never reads, deletes or inspects the DLQ: listing, redriving and cleaning it are
          // the operator's (OperatorPolicy).
          actions: ['sqs:SendMessage'],
          resources: [this.deadLetters.queueArn],
        }),
        new iam.PolicyStatement({
          sid: 'QueueStateInUpdates',
          // GetItem: get_update (claim_one reads an update's item when the index does not
          // show it). PutItem: create_update (claim_one writes the item of a message whose
          // receiver stopped before writing it). UpdateItem: lease, dead_letter_expired,
          // Queue::fail, and Store::apply's mark of the update as done.
          actions: ['dynamodb:GetItem', 'dynamodb:PutItem', 'dynamodb:UpdateItem'],
          resources: [tables.updates.tableArn],
        }),
        new iam.PolicyStatement({
          sid: 'QueryPendingIndexes',
          // updates/PendingIndex: chat_view (the claim step: is this update its chat's head?)
          // and try_wake_next. outbox/PendingIndex: pending_calls (Outbox::due_calls).
          actions: ['dynamodb:Query'],
          resources: [pendingIndex('updates'), pendingIndex('outbox')],
        }),
        new iam.PolicyStatement({
          sid: 'ApplyPutRecords',
          // Store::apply's transaction puts the message, the event and the outbox calls
          // (outbox_put), each conditional on there being none yet where it says so.
          actions: ['dynamodb:PutItem'],
          resources: [tables.messages.tableArn, tables.events.tableArn, tables.outbox.tableArn],
        }),
        new iam.PolicyStatement({
          sid: 'ApplyUpdateRecordsAndSendReplies',
          // users and tokens: Store::apply's transaction upserts the user and redeems the
          // registration token. outbox: the sender leases a due call (Outbox::due_calls) and
          // records how it went (finish_call for call_done and call_failed, or a later due time
          // for call_failed with retry_after).
          actions: ['dynamodb:UpdateItem'],
          resources: [tables.users.tableArn, tables.tokens.tableArn, tables.outbox.tableArn],
        }),
        new iam.PolicyStatement({
          sid: 'HandlerSessions',
          // A bot's handlers (botline::handler): Context::session reads the chat and sender's
          // session (Sessions::session, GetItem); Store::apply's transaction writes what a
          // handler saved (a session put is an UpdateItem that keeps createdAt) or cleared
          // (DeleteItem). The base table only: nothing on the worker's path reads UserIdIndex.
          actions: ['dynamodb:GetItem', 'dynamodb:UpdateItem', 'dynamodb:DeleteItem'],
          resources: [tables.sessions.tableArn],
        }),
        new iam.PolicyStatement({
          sid: 'TelegramLimitBuckets',
          // The sender's buckets for Telegram's limits, shared by every execution environment
          // (botline_aws::DynamoLimiter): items `limit#…` of outbox, read with BatchGetItem
          // and written by TransactWriteItems as conditional Puts (PutItem, above).
          actions: ['dynamodb:BatchGetItem'],
          resources: [tables.outbox.tableArn],
        }),
        new iam.PolicyStatement({
          sid: 'CheckSchemaQueues',
          // The schema check (botline_aws::check_schema): both queues exist.
          actions: ['sqs:GetQueueUrl'],
          resources: [this.queue.queueArn, this.deadLetters.queueArn],
        }),
        new iam.PolicyStatement({
          sid: 'CheckSchemaTables',
          // The schema check: the seven tables exist with their indexes. DescribeTable reads
          // a table's description, none of its items.
          actions: ['dynamodb:DescribeTable'],
          resources: Object.values(tables).map((table) => table.tableArn),
        }),
        new iam.PolicyStatement({
          sid: 'ReadBotToken',
          actions: ['secretsmanager:GetSecretValue'],
          resources: [botToken.secretArn],
        }),
        ...forwarding.statements,
      ],
    });

    this.operatorPolicy = this.createOperatorPolicy();

    // The worker polls the queue: batches of 10, failed items reported one by one, and at most
    // 10 concurrent invocations. Maximum concurrency on the mapping (not reserved concurrency on
    // the function) caps the worker without the poller being throttled into early redrives.
    new lambda.EventSourceMapping(this, 'WorkerQueueMapping', {
      target: this.worker,
      eventSourceArn: this.queue.queueArn,
      batchSize: LIMITS.worker.batchSize,
      reportBatchItemFailures: true,
      maxConcurrency: LIMITS.worker.maxConcurrency,
      enabled: true,
    });
    this.workerTick = this.tick();

    // HTTP API: the ingest function serves both routes (one axum router).
    this.api = new apigwv2.HttpApi(this, 'Api', {
      apiName: this.name('api'),
      description: `Botline ${stage}: Telegram webhook and health check`,
      createDefaultStage: false,
    });
    const integration = new HttpLambdaIntegration('IngestIntegration', this.ingest, {
      payloadFormatVersion: apigwv2.PayloadFormatVersion.VERSION_2_0,
    });
    this.api.addRoutes({ path: '/telegram/webhook', methods: [apigwv2.HttpMethod.POST], integration });
    this.api.addRoutes({ path: '/health', methods: [apigwv2.HttpMethod.GET], integration });
    const accessLogs = new logs.LogGroup(this, 'ApiAccessLogs', {
      logGroupName: `/aws/apigateway/${this.name('api')}`,
      retention: this.settings.logRetention,
      removalPolicy: this.settings.dataRemovalPolicy,
    });
    new apigwv2.HttpStage(this, 'DefaultStage', {
      httpApi: this.api,
      stageName: '$default',
      autoDeploy: true,
      description: 'Throttled: see docs/deploy.md for the figures',
      throttle: { rateLimit: this.config.apiRateLimit, burstLimit: this.config.apiBurstLimit },
      accessLogSettings: {
        destination: new apigwv2.LogGroupLogDestination(accessLogs),
        // No headers: the webhook secret travels in one.
        format: AccessLogFormat.custom(
          JSON.stringify({
            requestId: '$context.requestId',
            requestTime: '$context.requestTimeEpoch',
            sourceIp: '$context.identity.sourceIp',
            routeKey: '$context.routeKey',
            status: '$context.status',
            responseLength: '$context.responseLength',
            latencyMs: '$context.responseLatency',
            integrationError: '$context.integrationErrorMessage',
          }),
        ),
      },
    });

    const webhookUrl = `${this.api.apiEndpoint}/telegram/webhook`;
    new Monitoring(this, 'Monitoring', {
      name: (resource) => this.name(resource),
      api: this.api,
      ingest: this.ingest,
      worker: this.worker,
      queue: this.queue,
      deadLetters: this.deadLetters,
      tables: TABLE_NAMES.map((name) => this.tables[name]),
      stage,
      alarmEmail: this.config.alarmEmail,
      queueVisibilityTimeout: visibilityTimeout,
    });

    if (this.config.lambdaAssets === 'placeholder') {
      this.refuseDeployment();
    }

    // Outputs.
    this.output('WebhookUrl', webhookUrl, 'POST target for Telegram: botline webhook set --url <this>');
    this.output('HealthUrl', `${this.api.apiEndpoint}/health`, 'GET: {"status":"ok","version":...}');
    this.output('QueueUrl', this.queue.queueUrl, 'SQS queue of updates (BOTLINE_QUEUE_URL)');
    this.output('DlqUrl', this.deadLetters.queueUrl, 'SQS dead-letter queue (BOTLINE_DLQ_URL)');
    this.output('TablePrefix', this.name(''), 'BOTLINE_TABLE_PREFIX');
    this.output(
      'OperatorPolicyArn',
      this.operatorPolicy.managedPolicyArn,
      'Attach to the IAM user or role that runs botline dlq, stats, messages export, tokens issue',
    );
    for (const name of TABLE_NAMES) {
      this.output(`${capitalize(name)}TableName`, this.tables[name].tableName, `DynamoDB table ${name}`);
    }
    this.output('BotTokenSecretArn', botToken.secretArn, 'Put the bot token here');
    this.output('WebhookSecretArn', webhookSecret.secretArn, 'Telegram secret_token (generated)');
    this.output('OpenAiApiKeySecretArn', openAiKey.secretArn, 'Put the OpenAI API key here (later phases)');
    if (forwarding.secretToken) {
      this.output(
        'HandlerSecretTokenArn',
        forwarding.secretToken.secretArn,
        "X-Telegram-Bot-Api-Secret-Token sent to the handler URL (generated): give your bot's framework the same value",
      );
    }
  }

  /**
   * The worker's tick (issue 19): an EventBridge rule invokes the worker every
   * `workerTickMinutes` with its scheduled event, and the worker sends the outbox's calls that
   * are due (crates/botline-lambda, worker.rs: `Worker::tick`). Without it, a call that waits
   * for its time (a reminder, a `retry_after`, a backoff) would go out only when an SQS batch
   * next brings the worker. The rule may invoke the worker and nothing else: the target adds a
   * resource policy to the worker (`lambda:InvokeFunction` for `events.amazonaws.com`, with the
   * rule as the source ARN), and no IAM role is involved.
   *
   * Each tick stands alone: one that cannot be delivered or fails is not worth keeping past the
   * next, so EventBridge and Lambda give it up after one period and Lambda does not retry it.
   */
  private tick(): events.Rule {
    const period = Duration.minutes(this.config.workerTickMinutes);
    const rule = new events.Rule(this, 'WorkerTick', {
      ruleName: this.name('worker-tick'),
      description:
        `Botline ${this.config.stage}: invokes the worker every ${period.toHumanString()} to send ` +
        'the Telegram calls that are due (reminders, retries) when no update comes',
      schedule: events.Schedule.rate(period),
    });
    rule.addTarget(new targets.LambdaFunction(this.worker, { maxEventAge: period, retryAttempts: 2 }));
    this.worker.configureAsyncInvoke({ maxEventAge: period, retryAttempts: 0 });
    return rule;
  }

  /**
   * Forwarding every durable update to the bot's own handler (issue 16): what the worker is told
   * (BOTLINE_HANDLER_*) and the one grant that goes with it. Nothing without a handler.
   * - `handlerUrl`: the worker POSTs each update there with a secret token, a secret of its own
   *   that the worker may read (and no other function).
   * - `handlerFunction`: the worker invokes that function synchronously, and may invoke no other.
   */
  private forwarding(): {
    environment: Record<string, string>;
    statements: iam.PolicyStatement[];
    secretToken?: secretsmanager.Secret;
  } {
    const { handlerUrl, handlerFunction, handlerTimeout } = this.config;
    const timeout = { BOTLINE_HANDLER_TIMEOUT: `${handlerTimeout}s` };
    if (handlerUrl !== undefined) {
      // Generated like the webhook secret: 64 characters with ExcludePunctuation and no space,
      // that is from A-Z a-z 0-9 only, all of them in Telegram's secret_token alphabet
      // (A-Z a-z 0-9 _ -), so a framework that checks the header as Telegram's takes it as it is.
      const secretToken = this.secret(
        'handler-secret-token',
        "Sent to the bot's handler URL as X-Telegram-Bot-Api-Secret-Token; give its framework the same value",
      );
      return {
        environment: {
          BOTLINE_HANDLER_URL: handlerUrl,
          BOTLINE_HANDLER_SECRET_TOKEN_ID: secretToken.secretArn,
          ...timeout,
        },
        statements: [
          new iam.PolicyStatement({
            sid: 'ReadHandlerSecretToken',
            actions: ['secretsmanager:GetSecretValue'],
            resources: [secretToken.secretArn],
          }),
        ],
        secretToken,
      };
    }
    if (handlerFunction !== undefined) {
      // Exactly the function named (readConfig checked the name or ARN). A bare name is a
      // function of this stack's account and region. The grant is on the ARN as given: an
      // unqualified one allows invoking the unqualified function ($LATEST) only, not its
      // versions or aliases (those need `name:*` or their own ARN, which is not granted); a
      // qualified ARN (`...:function:NAME:ALIAS` or `:VERSION`) allows that version or alias only.
      const functionArn = handlerFunction.startsWith('arn:')
        ? handlerFunction
        : this.formatArn({
            service: 'lambda',
            resource: 'function',
            resourceName: handlerFunction,
            arnFormat: ArnFormat.COLON_RESOURCE_NAME,
          });
      return {
        environment: { BOTLINE_HANDLER_FUNCTION: handlerFunction, ...timeout },
        statements: [
          new iam.PolicyStatement({
            sid: 'InvokeHandlerFunction',
            actions: ['lambda:InvokeFunction'],
            resources: [functionArn],
          }),
        ],
      };
    }
    return { environment: {}, statements: [] };
  }

  /**
   * The permissions of Botline's operator commands (`botline dlq list|show|redrive`,
   * `botline stats`, `botline messages|events|users export`, `botline import`,
   * `botline tokens issue`, run with
   * `--backend aws` and the stack's outputs), and nothing else: a managed policy attached to no
   * function, for the operator to attach to their own IAM user or role. The functions' roles do
   * not carry these: a compromised worker cannot scan the tables, read or empty the DLQ, or mint
   * registration tokens. Each grant is what crates/botline-aws calls for a command (crates/botline
   * src/ops.rs and main.rs wire the commands to the backend).
   */
  private createOperatorPolicy(): iam.ManagedPolicy {
    const { tables } = this;
    // Named by CloudFormation, as the roles are: IAM names are global to the account.
    return new iam.ManagedPolicy(this, 'OperatorPolicy', {
      description: `Botline ${this.config.stage} operator commands: dlq, stats, messages/events/users export, import, tokens issue`,
      statements: [
        new iam.PolicyStatement({
          sid: 'DeadLettersAndStatsOnUpdates',
          // Scan: dead_rows (`dlq list`, `dlq redrive --all`) and Queue::stats (`stats`).
          // GetItem: get_update (`dlq show ID`, `dlq redrive ID`). UpdateItem: redrive_one sets
          // a dead letter back to queued.
          actions: ['dynamodb:Scan', 'dynamodb:GetItem', 'dynamodb:UpdateItem'],
          resources: [tables.updates.tableArn],
        }),
        new iam.PolicyStatement({
          sid: 'RedriveToQueue',
          // redrive_one sends the dead letter's body to the main queue.
          actions: ['sqs:SendMessage'],
          resources: [this.queue.queueArn],
        }),
        new iam.PolicyStatement({
          sid: 'CleanDlqCopies',
          // purge_dlq_copies (after a redrive): receives from the DLQ, deletes the copies of the
          // redriven updates and makes the other messages visible again at once.
          actions: ['sqs:ReceiveMessage', 'sqs:DeleteMessage', 'sqs:ChangeMessageVisibility'],
          resources: [this.deadLetters.queueArn],
        }),
        new iam.PolicyStatement({
          sid: 'OutboxStats',
          // Outbox::outbox_stats (`stats`: replies waiting, sent, refused).
          actions: ['dynamodb:Scan'],
          resources: [tables.outbox.tableArn],
        }),
        new iam.PolicyStatement({
          sid: 'ExportMessages',
          // Store::messages (`messages export`): a Query with --chat, a Scan without.
          actions: ['dynamodb:Query', 'dynamodb:Scan'],
          resources: [tables.messages.tableArn],
        }),
        new iam.PolicyStatement({
          sid: 'ExportRecords',
          // Store::events and Store::users (`events export`, `users export`): a paged Scan.
          actions: ['dynamodb:Scan'],
          resources: [tables.events.tableArn, tables.users.tableArn],
        }),
        new iam.PolicyStatement({
          sid: 'ImportRecords',
          // Store::import (`import`): a conditional PutItem per record; a user stored already
          // is read (GetItem) and merged.
          actions: ['dynamodb:PutItem'],
          resources: [tables.messages.tableArn, tables.events.tableArn, tables.users.tableArn],
        }),
        new iam.PolicyStatement({
          sid: 'ImportMergesUsers',
          actions: ['dynamodb:GetItem'],
          resources: [tables.users.tableArn],
        }),
        new iam.PolicyStatement({
          sid: 'IssueTokens',
          // RegistrationTokens::issue_token (`tokens issue`): a conditional PutItem.
          actions: ['dynamodb:PutItem'],
          resources: [tables.tokens.tableArn],
        }),
      ],
    });
  }

  /** `botline-<stage>-<resource>`; with an empty resource, the prefix `botline-<stage>-`. */
  name(resource: string): string {
    return `botline-${this.config.stage}-${resource}`;
  }

  private table(
    name: TableName,
    keys: Pick<dynamodb.TableProps, 'partitionKey' | 'sortKey' | 'timeToLiveAttribute'>,
  ): dynamodb.Table {
    return new dynamodb.Table(this, `${capitalize(name)}Table`, {
      tableName: this.name(name),
      ...keys,
      billingMode: dynamodb.BillingMode.PAY_PER_REQUEST,
      encryption: dynamodb.TableEncryption.AWS_MANAGED,
      pointInTimeRecoverySpecification: { pointInTimeRecoveryEnabled: this.settings.pointInTimeRecovery },
      deletionProtection: this.settings.tableDeletionProtection,
      removalPolicy: this.settings.dataRemovalPolicy,
    });
  }

  private secret(name: string, description: string): secretsmanager.Secret {
    return new secretsmanager.Secret(this, `${pascal(name)}Secret`, {
      secretName: this.name(name),
      description,
      generateSecretString: { passwordLength: 64, excludePunctuation: true, includeSpace: false },
      removalPolicy: this.settings.dataRemovalPolicy,
    });
  }

  private function(
    name: 'ingest' | 'worker',
    props: {
      code: string;
      memoryMb: number;
      timeout: Duration;
      description: string;
      environment: Record<string, string>;
      statements: iam.PolicyStatement[];
      reservedConcurrency?: number;
    },
  ): lambda.Function {
    const functionName = this.name(name);
    const logGroup = new logs.LogGroup(this, `${capitalize(name)}Logs`, {
      logGroupName: `/aws/lambda/${functionName}`,
      retention: this.settings.logRetention,
      removalPolicy: this.settings.dataRemovalPolicy,
    });
    // Role names are left to CloudFormation (`botline-<stage>-<Id>-<random>`): IAM names are
    // global to the account, so a fixed name would collide between regions.
    const role = new iam.Role(this, `${capitalize(name)}Role`, {
      assumedBy: new iam.ServicePrincipal('lambda.amazonaws.com'),
      description: `Botline ${this.config.stage} ${name} function: only what it uses`,
    });
    role.addToPolicy(
      new iam.PolicyStatement({
        sid: 'WriteOwnLogs',
        // The log group exists already (above), so no logs:CreateLogGroup.
        actions: ['logs:CreateLogStream', 'logs:PutLogEvents'],
        resources: [logGroup.logGroupArn],
      }),
    );
    for (const statement of props.statements) {
      role.addToPolicy(statement);
    }
    return new lambda.Function(this, `${capitalize(name)}Function`, {
      functionName,
      description: props.description,
      runtime: lambda.Runtime.PROVIDED_AL2023,
      architecture: lambda.Architecture.ARM_64,
      handler: 'bootstrap',
      code: lambda.Code.fromAsset(props.code),
      memorySize: props.memoryMb,
      timeout: props.timeout,
      role,
      environment: props.environment,
      logGroup,
      // JSON logs: the Rust runtime reads AWS_LAMBDA_LOG_FORMAT and writes JSON lines.
      loggingFormat: lambda.LoggingFormat.JSON,
      applicationLogLevelV2: lambda.ApplicationLogLevel.INFO,
      systemLogLevelV2: lambda.SystemLogLevel.WARN,
      tracing: this.config.tracing ? lambda.Tracing.ACTIVE : lambda.Tracing.DISABLED,
      reservedConcurrentExecutions: props.reservedConcurrency,
    });
  }

  /**
   * A template built with placeholder code must never reach AWS. The rule below is evaluated by
   * CloudFormation when a change set is created, so `cdk deploy` (and any other deploy of this
   * template) fails with this message before anything is created or changed. It checks a
   * parameter, as CDK's own bootstrap-version rule does, rather than a constant; the parameter
   * can be overridden on purpose (`--parameters LambdaCode=real`), never by accident.
   */
  private refuseDeployment(): void {
    const message =
      'This template was synthesized with -c lambdaAssets=placeholder: its Lambda code is a ' +
      'placeholder that only exits with an error. Build the real zips and deploy without ' +
      'lambdaAssets=placeholder (docs/deploy.md).';
    const lambdaCode = new CfnParameter(this, 'LambdaCode', {
      type: 'String',
      default: 'placeholder',
      allowedValues: ['placeholder', 'real'],
      description: 'Which Lambda code this template carries; "placeholder" refuses to deploy',
    });
    new CfnRule(this, 'RefusePlaceholderLambdaCode', {
      assertions: [
        { assert: Fn.conditionEquals(lambdaCode.valueAsString, 'real'), assertDescription: message },
      ],
    });
    Annotations.of(this).addWarningV2('botline:placeholder-lambda-code', message);
  }

  private output(id: string, value: string, description: string): void {
    new CfnOutput(this, id, { value, description });
  }
}

function str(name: string): dynamodb.Attribute {
  return { name, type: dynamodb.AttributeType.STRING };
}

function num(name: string): dynamodb.Attribute {
  return { name, type: dynamodb.AttributeType.NUMBER };
}

function capitalize(word: string): string {
  return word.charAt(0).toUpperCase() + word.slice(1);
}

/** `openai-api-key` → `OpenaiApiKey`. */
function pascal(name: string): string {
  return name.split('-').map(capitalize).join('');
}
