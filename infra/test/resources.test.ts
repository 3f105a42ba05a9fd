/**
 * Every resource of issue 5 and its properties, read from the synthesized template of each stage.
 */
import { CfnResource, logicalId, render, resourcesOfType, synth, Synthesized } from './support';

const STAGES = ['dev', 'prod'] as const;

describe.each(STAGES)('stage %s', (stage) => {
  let s: Synthesized;
  const name = (resource: string) => `botline-${stage}-${resource}`;
  const prod = stage === 'prod';
  beforeAll(() => {
    s = synth({ stage });
  });

  const fnId = (fn: 'ingest' | 'worker') =>
    logicalId(s.json, 'AWS::Lambda::Function', 'FunctionName', name(fn));
  const queueId = () => logicalId(s.json, 'AWS::SQS::Queue', 'QueueName', name('queue'));
  const dlqId = () => logicalId(s.json, 'AWS::SQS::Queue', 'QueueName', name('dlq'));
  const secretId = (secret: string) => logicalId(s.json, 'AWS::SecretsManager::Secret', 'Name', name(secret));
  const tableId = (table: string) => logicalId(s.json, 'AWS::DynamoDB::Table', 'TableName', name(table));
  const resource = (id: string): CfnResource => s.json.Resources[id];

  test('the stack is botline-<stage> in eu-north-1', () => {
    expect(s.stack.stackName).toBe(`botline-${stage}`);
    expect(s.stack.region).toBe('eu-north-1');
  });

  describe('HTTP API', () => {
    test('one HTTP API named botline-<stage>-api', () => {
      s.template.resourceCountIs('AWS::ApiGatewayV2::Api', 1);
      s.template.hasResourceProperties('AWS::ApiGatewayV2::Api', { Name: name('api'), ProtocolType: 'HTTP' });
    });

    test('exactly POST /telegram/webhook and GET /health, both to the ingest function (payload 2.0)', () => {
      const routes = Object.values(resourcesOfType(s.json, 'AWS::ApiGatewayV2::Route'));
      expect(routes.map((r) => r.Properties!.RouteKey).sort()).toEqual([
        'GET /health',
        'POST /telegram/webhook',
      ]);
      for (const route of routes) {
        const integrationId = render(route.Properties!.Target).replace(/^integrations\/ref\((.*)\)$/, '$1');
        expect(resource(integrationId).Type).toBe('AWS::ApiGatewayV2::Integration');
        expect(resource(integrationId).Properties).toMatchObject({
          IntegrationType: 'AWS_PROXY',
          PayloadFormatVersion: '2.0',
          IntegrationUri: { 'Fn::GetAtt': [fnId('ingest'), 'Arn'] },
        });
      }
    });

    test('the $default stage deploys automatically, is throttled and writes access logs without headers', () => {
      s.template.resourceCountIs('AWS::ApiGatewayV2::Stage', 1);
      const stageResource = Object.values(resourcesOfType(s.json, 'AWS::ApiGatewayV2::Stage'))[0];
      expect(stageResource.Properties).toMatchObject({
        StageName: '$default',
        AutoDeploy: true,
        DefaultRouteSettings: { ThrottlingRateLimit: 100, ThrottlingBurstLimit: 200 },
      });
      const accessLogs = logicalId(
        s.json,
        'AWS::Logs::LogGroup',
        'LogGroupName',
        `/aws/apigateway/${name('api')}`,
      );
      expect(render(stageResource.Properties!.AccessLogSettings.DestinationArn)).toBe(`${accessLogs}.Arn`);
      const format = JSON.parse(stageResource.Properties!.AccessLogSettings.Format);
      expect(format.requestId).toBe('$context.requestId');
      expect(JSON.stringify(format)).not.toMatch(/header|authorizer/i);
    });

    test('API Gateway may invoke the ingest function on its two routes only', () => {
      const permissions = Object.values(resourcesOfType(s.json, 'AWS::Lambda::Permission')).filter(
        (p) => p.Properties!.Principal === 'apigateway.amazonaws.com',
      );
      expect(permissions).toHaveLength(2);
      const apiId = logicalId(s.json, 'AWS::ApiGatewayV2::Api', 'Name', name('api'));
      expect(permissions.map((p) => render(p.Properties!.SourceArn)).sort()).toEqual([
        `arn:aws:execute-api:eu-north-1:ref(AWS::AccountId):ref(${apiId})/*/*/health`,
        `arn:aws:execute-api:eu-north-1:ref(AWS::AccountId):ref(${apiId})/*/*/telegram/webhook`,
      ]);
      for (const permission of permissions) {
        expect(permission.Properties).toMatchObject({
          Action: 'lambda:InvokeFunction',
          Principal: 'apigateway.amazonaws.com',
          FunctionName: { 'Fn::GetAtt': [fnId('ingest'), 'Arn'] },
        });
      }
    });
  });

  describe('Lambda functions', () => {
    test('exactly two: ingest and worker', () => {
      s.template.resourceCountIs('AWS::Lambda::Function', 2);
      fnId('ingest');
      fnId('worker');
    });

    test.each([
      ['ingest', 256, 30],
      ['worker', 512, 60],
    ] as const)('%s: Rust on provided.al2023, arm64, %i MB, %i s, JSON logs', (fn, memory, timeout) => {
      expect(resource(fnId(fn)).Properties).toMatchObject({
        Runtime: 'provided.al2023',
        Architectures: ['arm64'],
        Handler: 'bootstrap',
        MemorySize: memory,
        Timeout: timeout,
        LoggingConfig: { LogFormat: 'JSON', ApplicationLogLevel: 'INFO' },
      });
      expect(resource(fnId(fn)).Properties!.TracingConfig).toBeUndefined();
    });

    test('each function writes to its own log group, 14 days in dev and 30 in prod', () => {
      for (const fn of ['ingest', 'worker'] as const) {
        const logs = logicalId(s.json, 'AWS::Logs::LogGroup', 'LogGroupName', `/aws/lambda/${name(fn)}`);
        expect(resource(fnId(fn)).Properties!.LoggingConfig.LogGroup).toEqual({ Ref: logs });
      }
      const groups = Object.values(resourcesOfType(s.json, 'AWS::Logs::LogGroup'));
      expect(groups).toHaveLength(3);
      for (const group of groups) {
        expect(group.Properties!.RetentionInDays).toBe(prod ? 30 : 14);
        expect(group.DeletionPolicy).toBe(prod ? 'Retain' : 'Delete');
      }
    });

    test('ingest environment: queue URLs, table prefix and the webhook secret; nothing about the bot token', () => {
      expect(resource(fnId('ingest')).Properties!.Environment.Variables).toEqual({
        BOTLINE_STAGE: stage,
        BOTLINE_LOG: 'info',
        BOTLINE_QUEUE_URL: { Ref: queueId() },
        BOTLINE_DLQ_URL: { Ref: dlqId() },
        BOTLINE_TABLE_PREFIX: `botline-${stage}-`,
        BOTLINE_WEBHOOK_SECRET_ID: { Ref: secretId('webhook-secret') },
      });
    });

    test('worker environment: queue URLs, table prefix and the bot token only', () => {
      expect(resource(fnId('worker')).Properties!.Environment.Variables).toEqual({
        BOTLINE_STAGE: stage,
        BOTLINE_LOG: 'info',
        BOTLINE_QUEUE_URL: { Ref: queueId() },
        BOTLINE_DLQ_URL: { Ref: dlqId() },
        BOTLINE_TABLE_PREFIX: `botline-${stage}-`,
        BOTLINE_BOT_TOKEN_ID: { Ref: secretId('bot-token') },
      });
    });

    test('the table prefix names every table: <prefix><table>', () => {
      const prefix = resource(fnId('worker')).Properties!.Environment.Variables.BOTLINE_TABLE_PREFIX;
      for (const table of ['messages', 'users', 'events', 'sessions', 'updates', 'outbox', 'tokens']) {
        expect(resource(tableId(table)).Properties!.TableName).toBe(`${prefix}${table}`);
      }
    });

    test('no function is given the OpenAI key (no function reads it yet)', () => {
      for (const fn of ['ingest', 'worker'] as const) {
        const variables = resource(fnId(fn)).Properties!.Environment.Variables;
        expect(Object.keys(variables).filter((k) => k.includes('OPENAI'))).toEqual([]);
        expect(JSON.stringify(variables)).not.toContain(secretId('openai-api-key'));
      }
    });

    test('no reserved concurrency by default: the queue mapping caps the worker', () => {
      for (const fn of ['ingest', 'worker'] as const) {
        expect(resource(fnId(fn)).Properties!.ReservedConcurrentExecutions).toBeUndefined();
      }
    });

    test('each function has a role of its own', () => {
      const ingestRole = render(resource(fnId('ingest')).Properties!.Role);
      const workerRole = render(resource(fnId('worker')).Properties!.Role);
      expect(ingestRole).not.toBe(workerRole);
      s.template.resourceCountIs('AWS::IAM::Role', 2);
    });
  });

  describe('SQS', () => {
    test('the queue: 4 days, visibility ≥ 6 × worker timeout, DLQ after 3 receives, encrypted', () => {
      const queue = resource(queueId()).Properties!;
      expect(queue.MessageRetentionPeriod).toBe(4 * 24 * 3600);
      const workerTimeout = resource(fnId('worker')).Properties!.Timeout as number;
      expect(queue.VisibilityTimeout).toBeGreaterThanOrEqual(6 * workerTimeout);
      expect(queue.VisibilityTimeout).toBe(360);
      expect(queue.RedrivePolicy).toEqual({
        deadLetterTargetArn: { 'Fn::GetAtt': [dlqId(), 'Arn'] },
        maxReceiveCount: 3,
      });
      expect(queue.SqsManagedSseEnabled).toBe(true);
      expect(queue.FifoQueue).toBeUndefined();
    });

    test('the DLQ is encrypted and keeps messages longer than the queue', () => {
      const dlq = resource(dlqId()).Properties!;
      expect(dlq.SqsManagedSseEnabled).toBe(true);
      expect(dlq.MessageRetentionPeriod).toBeGreaterThan(
        resource(queueId()).Properties!.MessageRetentionPeriod,
      );
      expect(dlq.RedrivePolicy).toBeUndefined();
    });

    test('both queues refuse requests without TLS', () => {
      for (const id of [queueId(), dlqId()]) {
        s.template.hasResourceProperties('AWS::SQS::QueuePolicy', {
          Queues: [{ Ref: id }],
          PolicyDocument: {
            Statement: [
              {
                Effect: 'Deny',
                Action: 'sqs:*',
                Principal: { AWS: '*' },
                Condition: { Bool: { 'aws:SecureTransport': 'false' } },
                Resource: { 'Fn::GetAtt': [id, 'Arn'] },
              },
            ],
          },
        });
      }
    });

    test('queues are deleted with dev and kept with prod', () => {
      for (const id of [queueId(), dlqId()]) {
        expect(resource(id).DeletionPolicy).toBe(prod ? 'Retain' : 'Delete');
      }
    });
  });

  test('event source mapping: queue → worker, batch 10, ReportBatchItemFailures, maximum concurrency 10', () => {
    s.template.resourceCountIs('AWS::Lambda::EventSourceMapping', 1);
    const mapping = Object.values(resourcesOfType(s.json, 'AWS::Lambda::EventSourceMapping'))[0].Properties!;
    expect(mapping).toMatchObject({
      EventSourceArn: { 'Fn::GetAtt': [queueId(), 'Arn'] },
      FunctionName: { Ref: fnId('worker') },
      BatchSize: 10,
      FunctionResponseTypes: ['ReportBatchItemFailures'],
      ScalingConfig: { MaximumConcurrency: 10 },
      Enabled: true,
    });
    // No batching window: an update is processed as soon as it is polled (< 2 s end to end).
    expect(mapping.MaximumBatchingWindowInSeconds).toBeUndefined();
  });

  describe("the worker's tick", () => {
    const ruleId = () => logicalId(s.json, 'AWS::Events::Rule', 'Name', name('worker-tick'));

    test('one rule, botline-<stage>-worker-tick, invokes the worker every minute with the scheduled event', () => {
      s.template.resourceCountIs('AWS::Events::Rule', 1);
      const rule = resource(ruleId()).Properties!;
      expect(rule).toMatchObject({ ScheduleExpression: 'rate(1 minute)', State: 'ENABLED' });
      expect(rule.EventPattern).toBeUndefined();
      // The worker itself, given the event as EventBridge sends it (no Input: the function
      // dispatches on the scheduled event's shape), with no role (a resource policy allows it).
      expect(rule.Targets).toHaveLength(1);
      const [target] = rule.Targets;
      expect(target.Arn).toEqual({ 'Fn::GetAtt': [fnId('worker'), 'Arn'] });
      for (const key of ['Input', 'InputPath', 'InputTransformer', 'RoleArn']) {
        expect(target[key]).toBeUndefined();
      }
    });

    test('a tick is given up after one period: by EventBridge, and by Lambda, which does not retry it', () => {
      const [target] = resource(ruleId()).Properties!.Targets;
      expect(target.RetryPolicy).toEqual({ MaximumEventAgeInSeconds: 60, MaximumRetryAttempts: 2 });
      s.template.resourceCountIs('AWS::Lambda::EventInvokeConfig', 1);
      const [invokeConfig] = Object.values(resourcesOfType(s.json, 'AWS::Lambda::EventInvokeConfig'));
      expect(invokeConfig.Properties).toEqual({
        FunctionName: { Ref: fnId('worker') },
        Qualifier: '$LATEST',
        MaximumEventAgeInSeconds: 60,
        MaximumRetryAttempts: 0,
      });
    });

    test('the rule may invoke the worker, as its source; nothing else may but API Gateway the ingest function', () => {
      const permissions = Object.values(resourcesOfType(s.json, 'AWS::Lambda::Permission'));
      expect(permissions).toHaveLength(3);
      const fromEvents = permissions.filter((p) => p.Properties!.Principal === 'events.amazonaws.com');
      expect(fromEvents.map((p) => p.Properties)).toEqual([
        {
          Action: 'lambda:InvokeFunction',
          FunctionName: { 'Fn::GetAtt': [fnId('worker'), 'Arn'] },
          Principal: 'events.amazonaws.com',
          SourceArn: { 'Fn::GetAtt': [ruleId(), 'Arn'] },
        },
      ]);
    });
  });

  describe('DynamoDB', () => {
    const keys = {
      messages: { hash: ['chatId', 'S'], range: ['messageId', 'N'] },
      users: { hash: ['userId', 'S'] },
      events: { hash: ['eventId', 'S'] },
      sessions: { hash: ['sessionId', 'S'] },
      updates: { hash: ['updateId', 'N'] },
      outbox: { hash: ['outboxId', 'S'] },
      tokens: { hash: ['tokenDigest', 'S'] },
    } as Record<string, { hash: [string, string]; range?: [string, string] }>;

    /** Every index of the crate docs' table list, with the attribute types of its keys. */
    const indexes: Record<string, { index: Record<string, unknown>; attributes: [string, string][] }> = {
      events: {
        index: {
          IndexName: 'UserIdIndex',
          KeySchema: [
            { AttributeName: 'userId', KeyType: 'HASH' },
            { AttributeName: 'timestamp', KeyType: 'RANGE' },
          ],
          Projection: { ProjectionType: 'ALL' },
        },
        attributes: [
          ['userId', 'S'],
          ['timestamp', 'S'],
        ],
      },
      sessions: {
        index: {
          IndexName: 'UserIdIndex',
          KeySchema: [{ AttributeName: 'userId', KeyType: 'HASH' }],
          Projection: { ProjectionType: 'ALL' },
        },
        attributes: [['userId', 'S']],
      },
      updates: {
        index: {
          IndexName: 'PendingIndex',
          KeySchema: [
            { AttributeName: 'pendingKey', KeyType: 'HASH' },
            { AttributeName: 'updateId', KeyType: 'RANGE' },
          ],
          Projection: {
            ProjectionType: 'INCLUDE',
            NonKeyAttributes: ['state', 'attempts', 'leaseUntil', 'leaseMessageId', 'notBefore'],
          },
        },
        attributes: [
          ['pendingKey', 'S'],
          ['updateId', 'N'],
        ],
      },
      outbox: {
        index: {
          IndexName: 'PendingIndex',
          KeySchema: [
            { AttributeName: 'pendingShard', KeyType: 'HASH' },
            { AttributeName: 'chatSeq', KeyType: 'RANGE' },
          ],
          Projection: { ProjectionType: 'INCLUDE', NonKeyAttributes: ['chatId', 'dueAt'] },
        },
        attributes: [
          ['pendingShard', 'S'],
          ['chatSeq', 'S'],
        ],
      },
    };

    test('exactly the seven tables', () => {
      s.template.resourceCountIs('AWS::DynamoDB::Table', 7);
    });

    test.each(Object.keys(keys))('%s: keys, on demand, encrypted, PITR and deletion per stage', (table) => {
      const { hash, range } = keys[table];
      const t = resource(tableId(table));
      expect(t.Properties!.KeySchema).toEqual([
        { AttributeName: hash[0], KeyType: 'HASH' },
        ...(range ? [{ AttributeName: range[0], KeyType: 'RANGE' }] : []),
      ]);
      expect(t.Properties!.AttributeDefinitions).toEqual(
        expect.arrayContaining([
          { AttributeName: hash[0], AttributeType: hash[1] },
          ...(range ? [{ AttributeName: range[0], AttributeType: range[1] }] : []),
        ]),
      );
      expect(t.Properties).toMatchObject({
        BillingMode: 'PAY_PER_REQUEST',
        SSESpecification: { SSEEnabled: true },
        PointInTimeRecoverySpecification: { PointInTimeRecoveryEnabled: prod },
        DeletionProtectionEnabled: prod,
      });
      expect(t.Properties!.SSESpecification.KMSMasterKeyId).toBeUndefined();
      expect(t.Properties!.ProvisionedThroughput).toBeUndefined();
      expect(t.DeletionPolicy).toBe(prod ? 'Retain' : 'Delete');
      expect(t.UpdateReplacePolicy).toBe(prod ? 'Retain' : 'Delete');
    });

    test.each(Object.keys(keys))(
      '%s: exactly the indexes the backend queries, and only key attributes defined',
      (table) => {
        const t = resource(tableId(table)).Properties!;
        const expected = indexes[table];
        if (expected) {
          expect(t.GlobalSecondaryIndexes).toEqual([expected.index]);
        } else {
          expect(t.GlobalSecondaryIndexes).toBeUndefined();
        }
        expect(t.LocalSecondaryIndexes).toBeUndefined();
        const { hash, range } = keys[table];
        const defined = new Map<string, string>([
          hash,
          ...(range ? [range] : []),
          ...(expected?.attributes ?? []),
        ]);
        expect(
          (t.AttributeDefinitions as { AttributeName: string; AttributeType: string }[])
            .map((a) => `${a.AttributeName} ${a.AttributeType}`)
            .sort(),
        ).toEqual([...defined].map(([attribute, type]) => `${attribute} ${type}`).sort());
      },
    );

    test('TTL on expiresAt for sessions, updates and outbox, and only there', () => {
      for (const table of Object.keys(keys)) {
        const ttl = resource(tableId(table)).Properties!.TimeToLiveSpecification;
        if (['sessions', 'updates', 'outbox'].includes(table)) {
          expect(ttl).toEqual({ AttributeName: 'expiresAt', Enabled: true });
        } else {
          expect(ttl).toBeUndefined();
        }
      }
    });
  });

  describe('Secrets Manager', () => {
    test.each(['bot-token', 'webhook-secret', 'openai-api-key'])(
      '%s: named, generated, kept in prod',
      (secret) => {
        const r = resource(secretId(secret));
        expect(r.Properties!.GenerateSecretString).toMatchObject({
          ExcludePunctuation: true,
          IncludeSpace: false,
        });
        expect(r.Properties!.SecretString).toBeUndefined();
        expect(r.DeletionPolicy).toBe(prod ? 'Retain' : 'Delete');
      },
    );

    test('exactly three secrets and no SSM parameters', () => {
      s.template.resourceCountIs('AWS::SecretsManager::Secret', 3);
      s.template.resourceCountIs('AWS::SSM::Parameter', 0);
    });
  });

  test('outputs: webhook and health URLs, queue URLs, table names, the operator policy, secret ARNs', () => {
    const outputs = Object.fromEntries(
      Object.entries(s.json.Outputs ?? {}).map(([key, output]) => [key, render(output.Value)]),
    );
    const apiId = logicalId(s.json, 'AWS::ApiGatewayV2::Api', 'Name', name('api'));
    expect(outputs).toEqual({
      WebhookUrl: `${apiId}.ApiEndpoint/telegram/webhook`,
      HealthUrl: `${apiId}.ApiEndpoint/health`,
      QueueUrl: `ref(${queueId()})`,
      DlqUrl: `ref(${dlqId()})`,
      TablePrefix: `botline-${stage}-`,
      OperatorPolicyArn: `ref(${Object.keys(resourcesOfType(s.json, 'AWS::IAM::ManagedPolicy'))[0]})`,
      MessagesTableName: `ref(${tableId('messages')})`,
      UsersTableName: `ref(${tableId('users')})`,
      EventsTableName: `ref(${tableId('events')})`,
      SessionsTableName: `ref(${tableId('sessions')})`,
      UpdatesTableName: `ref(${tableId('updates')})`,
      OutboxTableName: `ref(${tableId('outbox')})`,
      TokensTableName: `ref(${tableId('tokens')})`,
      BotTokenSecretArn: `ref(${secretId('bot-token')})`,
      WebhookSecretArn: `ref(${secretId('webhook-secret')})`,
      OpenAiApiKeySecretArn: `ref(${secretId('openai-api-key')})`,
    });
  });

  test('every named resource follows botline-<stage>-<resource>', () => {
    const names: string[] = [];
    for (const r of Object.values(s.json.Resources)) {
      const p = r.Properties ?? {};
      for (const key of [
        'FunctionName',
        'QueueName',
        'TableName',
        'Name',
        'TopicName',
        'AlarmName',
        'DashboardName',
      ]) {
        if (typeof p[key] === 'string' && r.Type !== 'AWS::ApiGatewayV2::Stage') {
          names.push(p[key]);
        }
      }
    }
    expect(names.length).toBeGreaterThanOrEqual(2 + 2 + 7 + 3 + 1 + 1 + 7 + 1);
    for (const n of names) {
      expect(n).toMatch(new RegExp(`^botline-${stage}-[a-z0-9-]+$`));
    }
  });

  test('placeholder code: the template carries a rule that refuses every deploy', () => {
    expect(s.json.Parameters!.LambdaCode).toMatchObject({ Default: 'placeholder' });
    const [assertion] = s.json.Rules!.RefusePlaceholderLambdaCode.Assertions;
    expect(assertion.Assert).toEqual({ 'Fn::Equals': [{ Ref: 'LambdaCode' }, 'real'] });
    expect(assertion.AssertDescription).toMatch(/lambdaAssets=placeholder/);
  });
});

/**
 * Forwarding every durable update to the bot's own handler (issue 16): the worker's variables,
 * its timeout above the handler's, the queue's visibility timeout after it, and the handler's
 * secret token.
 */
describe("the bot's own handler", () => {
  const fnProps = (s: Synthesized, fn: 'ingest' | 'worker') =>
    s.json.Resources[logicalId(s.json, 'AWS::Lambda::Function', 'FunctionName', `botline-dev-${fn}`)]
      .Properties!;
  const queueProps = (s: Synthesized) =>
    s.json.Resources[logicalId(s.json, 'AWS::SQS::Queue', 'QueueName', 'botline-dev-queue')].Properties!;
  const secretId = (s: Synthesized, secret: string) =>
    logicalId(s.json, 'AWS::SecretsManager::Secret', 'Name', `botline-dev-${secret}`);
  const alarmThreshold = (s: Synthesized) =>
    s.json.Resources[
      logicalId(s.json, 'AWS::CloudWatch::Alarm', 'AlarmName', 'botline-dev-queue-oldest-message-age')
    ].Properties!.Threshold;
  const HANDLER_VARIABLES = [
    'BOTLINE_HANDLER_URL',
    'BOTLINE_HANDLER_FUNCTION',
    'BOTLINE_HANDLER_TIMEOUT',
    'BOTLINE_HANDLER_SECRET_TOKEN_ID',
  ];
  const handlerVariables = (variables: Record<string, unknown>) =>
    Object.fromEntries(Object.entries(variables).filter(([key]) => HANDLER_VARIABLES.includes(key)));

  test('handlerFunction: the worker is told the function and the 30 s default; the ingest function nothing', () => {
    const s = synth({ stage: 'dev', handlerFunction: 'my-bot-handler' });
    expect(handlerVariables(fnProps(s, 'worker').Environment.Variables)).toEqual({
      BOTLINE_HANDLER_FUNCTION: 'my-bot-handler',
      BOTLINE_HANDLER_TIMEOUT: '30s',
    });
    expect(handlerVariables(fnProps(s, 'ingest').Environment.Variables)).toEqual({});
    // No secret token for a function: it is invoked with the worker's role, not over HTTP.
    s.template.resourceCountIs('AWS::SecretsManager::Secret', 3);
    expect(s.json.Outputs!.HandlerSecretTokenArn).toBeUndefined();
  });

  test('handlerUrl: the worker is told the URL, the timeout and its secret token', () => {
    const s = synth({ stage: 'dev', handlerUrl: 'https://bot.example.com/telegram', handlerTimeout: '45' });
    expect(handlerVariables(fnProps(s, 'worker').Environment.Variables)).toEqual({
      BOTLINE_HANDLER_URL: 'https://bot.example.com/telegram',
      BOTLINE_HANDLER_TIMEOUT: '45s',
      BOTLINE_HANDLER_SECRET_TOKEN_ID: { Ref: secretId(s, 'handler-secret-token') },
    });
    expect(handlerVariables(fnProps(s, 'ingest').Environment.Variables)).toEqual({});
  });

  test("handlerUrl: a generated secret token from Telegram's alphabet, output so that the bot's framework can be given it", () => {
    const s = synth({ stage: 'dev', handlerUrl: 'http://10.0.0.5:3000/bot' });
    s.template.resourceCountIs('AWS::SecretsManager::Secret', 4);
    const secret = s.json.Resources[secretId(s, 'handler-secret-token')];
    // Without punctuation or space, Secrets Manager draws from A-Z a-z 0-9 only; Telegram's
    // secret_token allows those and _ -, 1 to 256 characters.
    expect(secret.Properties!.GenerateSecretString).toEqual({
      PasswordLength: 64,
      ExcludePunctuation: true,
      IncludeSpace: false,
    });
    expect(secret.Properties!.SecretString).toBeUndefined();
    expect(secret.DeletionPolicy).toBe('Delete');
    expect(render(s.json.Outputs!.HandlerSecretTokenArn.Value)).toBe(
      `ref(${secretId(s, 'handler-secret-token')})`,
    );
  });

  test.each([
    {
      label: 'function, default',
      context: { handlerFunction: 'my-bot-handler' },
      handler: 30,
      worker: 60,
      visibility: 360,
    },
    {
      label: 'function, handlerTimeout=10',
      context: { handlerFunction: 'my-bot-handler', handlerTimeout: '10' },
      handler: 10,
      worker: 60,
      visibility: 360,
    },
    {
      label: 'URL, handlerTimeout=120',
      context: { handlerUrl: 'https://bot.example.com/telegram', handlerTimeout: '120' },
      handler: 120,
      worker: 150,
      visibility: 900,
    },
    {
      label: 'function, handlerTimeout=840',
      context: { handlerFunction: 'my-bot-handler', handlerTimeout: '840' },
      handler: 840,
      worker: 870,
      visibility: 5220,
    },
  ])(
    '$label: handler $handler s, worker $worker s (outlasting it), queue visibility $visibility s (6 worker timeouts)',
    ({ context, handler, worker, visibility }) => {
      const s = synth({ stage: 'dev', ...context });
      const workerTimeout = fnProps(s, 'worker').Timeout as number;
      expect(fnProps(s, 'worker').Environment.Variables.BOTLINE_HANDLER_TIMEOUT).toBe(`${handler}s`);
      expect(workerTimeout).toBe(worker);
      expect(workerTimeout).toBeGreaterThanOrEqual(handler + 30);
      expect(workerTimeout).toBeLessThanOrEqual(900);
      expect(queueProps(s).VisibilityTimeout).toBe(visibility);
      expect(queueProps(s).VisibilityTimeout).toBe(6 * workerTimeout);
      // The ingest function is not waiting for the handler.
      expect(fnProps(s, 'ingest').Timeout).toBe(30);
      // The oldest-message alarm stays at two visibility timeouts.
      expect(alarmThreshold(s)).toBe(2 * visibility);
    },
  );

  test('FIFO: the same timeouts on the .fifo queue', () => {
    const s = synth({ stage: 'dev', fifo: 'true', handlerFunction: 'my-bot-handler', handlerTimeout: '120' });
    expect(fnProps(s, 'worker').Timeout).toBe(150);
    const queue =
      s.json.Resources[logicalId(s.json, 'AWS::SQS::Queue', 'QueueName', 'botline-dev-queue.fifo')];
    expect(queue.Properties!.VisibilityTimeout).toBe(900);
  });
});
