/**
 * Least privilege, read from the IAM policies in the template: every statement of every policy
 * of every role, the operator's managed policy, and the resource policies. Checked for both
 * stages and for the FIFO and X-Ray variants, which add or change resources.
 *
 * The functions' roles hold exactly what their code paths call (crates/botline-aws, driven by
 * crates/botline-lambda); what only the operator commands call (`botline dlq`, `stats`,
 * `messages`/`events`/`users export`, `import`, `tokens issue`) is in the operator policy,
 * attached to no function.
 * Forwarding to the bot's own handler (issue 16) adds one grant to the worker: invoking that one
 * function, or reading the secret token it sends to the handler's URL.
 */
import {
  CfnTemplate,
  Grant,
  grantsOf,
  logicalId,
  render,
  resourcesOfType,
  roleGrants,
  synth,
} from './support';

/** Services where a `*` in an action or a resource is never acceptable (issue 5; lambda: issue 16). */
const NO_WILDCARD_SERVICES = ['sqs', 'dynamodb', 'secretsmanager', 'ssm', 'lambda'];

/** The bot's handler of the handler variants. */
const HANDLER_FUNCTION = 'my-bot-handler';
const HANDLER_URL = 'https://bot.example.com/telegram';

const VARIANTS: [string, Record<string, unknown>][] = [
  ['dev', { stage: 'dev' }],
  ['prod', { stage: 'prod' }],
  ['dev, FIFO queue', { stage: 'dev', fifo: 'true' }],
  ['prod, X-Ray tracing', { stage: 'prod', tracing: 'true' }],
  ['dev, handler function', { stage: 'dev', handlerFunction: HANDLER_FUNCTION }],
  ['prod, handler URL', { stage: 'prod', handlerUrl: HANDLER_URL, handlerTimeout: '120' }],
];

const XRAY_GRANTS = ['xray:PutTraceSegments', 'xray:PutTelemetryRecords'].map((action) => ({
  effect: 'Allow' as const,
  action,
  resource: '*',
}));

describe.each(VARIANTS)('%s', (_label, context) => {
  const stage = context.stage as string;
  const fifo = context.fifo === 'true';
  const tracing = context.tracing === 'true';
  const handlerFunction = context.handlerFunction !== undefined;
  const handlerUrl = context.handlerUrl !== undefined;
  let json: CfnTemplate;
  const name = (resource: string) => `botline-${stage}-${resource}`;
  const queueName = (resource: string) => `${name(resource)}${fifo ? '.fifo' : ''}`;
  beforeAll(() => {
    json = synth(context).json;
  });

  const id = (type: string, key: string, value: string) => logicalId(json, type, key, value);
  const fnRole = (fn: 'ingest' | 'worker') => {
    const role = json.Resources[id('AWS::Lambda::Function', 'FunctionName', name(fn))].Properties!.Role;
    return render(role).replace(/\.Arn$/, '');
  };
  const grantsOfFunction = (fn: 'ingest' | 'worker') => roleGrants(json, fnRole(fn));
  const operatorPolicyId = () => {
    const ids = Object.keys(resourcesOfType(json, 'AWS::IAM::ManagedPolicy'));
    expect(ids).toHaveLength(1);
    return ids[0];
  };
  const operatorGrants = () => grantsOf(json.Resources[operatorPolicyId()].Properties!.PolicyDocument);
  const arn = (type: string, key: string, value: string) => `${id(type, key, value)}.Arn`;
  const queueArn = () => arn('AWS::SQS::Queue', 'QueueName', queueName('queue'));
  const dlqArn = () => arn('AWS::SQS::Queue', 'QueueName', queueName('dlq'));
  const secretRef = (secret: string) => `ref(${id('AWS::SecretsManager::Secret', 'Name', name(secret))})`;
  const tableArn = (table: string) => arn('AWS::DynamoDB::Table', 'TableName', name(table));
  const logsArn = (fn: string) => arn('AWS::Logs::LogGroup', 'LogGroupName', `/aws/lambda/${name(fn)}`);
  const sorted = (grants: Grant[]) => grants.map((g) => `${g.effect} ${g.action} on ${g.resource}`).sort();

  test('the only roles are the two function roles, with no managed policies', () => {
    expect(Object.keys(resourcesOfType(json, 'AWS::IAM::Role')).sort()).toEqual(
      [fnRole('ingest'), fnRole('worker')].sort(),
    );
    for (const fn of ['ingest', 'worker'] as const) {
      expect(grantsOfFunction(fn).managedPolicies).toEqual([]);
    }
  });

  test('each role may be assumed by Lambda only', () => {
    for (const role of Object.values(resourcesOfType(json, 'AWS::IAM::Role'))) {
      expect(role.Properties!.AssumeRolePolicyDocument.Statement).toEqual([
        { Action: 'sts:AssumeRole', Effect: 'Allow', Principal: { Service: 'lambda.amazonaws.com' } },
      ]);
    }
  });

  /** Every table of the backend, and its indexes. */
  const TABLES = ['messages', 'users', 'events', 'sessions', 'updates', 'outbox', 'tokens'];
  const INDEXES: [string, string][] = [
    ['events', 'UserIdIndex'],
    ['sessions', 'UserIdIndex'],
    ['updates', 'PendingIndex'],
    ['outbox', 'PendingIndex'],
  ];
  const allow = (action: string, resource: string): Grant => ({ effect: 'Allow', action, resource });

  test('ingest: send to the queue and ping it, read and write the dedupe mark in updates, read the webhook secret, write its own logs; nothing else', () => {
    expect(sorted(grantsOfFunction('ingest').grants)).toEqual(
      sorted([
        allow('sqs:SendMessage', queueArn()),
        // GET /health: the backend's ping is GetQueueAttributes on the main queue.
        allow('sqs:GetQueueAttributes', queueArn()),
        // The enqueue: consistent GetItem (dedupe), SendMessage, conditional PutItem of the mark.
        allow('dynamodb:GetItem', tableArn('updates')),
        allow('dynamodb:PutItem', tableArn('updates')),
        // The schema check: the main queue and `updates`, descriptions only.
        allow('sqs:GetQueueUrl', queueArn()),
        allow('dynamodb:DescribeTable', tableArn('updates')),
        allow('secretsmanager:GetSecretValue', secretRef('webhook-secret')),
        allow('logs:CreateLogStream', logsArn('ingest')),
        allow('logs:PutLogEvents', logsArn('ingest')),
        ...(tracing ? XRAY_GRANTS : []),
      ]),
    );
  });

  test('worker: consume and re-send on the queue, copy dead letters to the DLQ, exactly the table operations of claim, apply, fail and the sender, read the bot token, write its own logs', () => {
    expect(sorted(grantsOfFunction('worker').grants)).toEqual(
      sorted([
        // The event source mapping (Receive, Delete, GetQueueAttributes); the claim step's
        // leases and holds (ChangeMessageVisibility), re-sends and wake-ups (SendMessage).
        ...[
          'sqs:ReceiveMessage',
          'sqs:DeleteMessage',
          'sqs:ChangeMessageVisibility',
          'sqs:GetQueueAttributes',
          'sqs:SendMessage',
        ].map((action) => allow(action, queueArn())),
        // send_to_dlq: a copy of each dead letter. Nothing else on the DLQ.
        allow('sqs:SendMessage', dlqArn()),
        // The queue's state: get_update, create_update, lease / fail / apply's done mark.
        allow('dynamodb:GetItem', tableArn('updates')),
        allow('dynamodb:PutItem', tableArn('updates')),
        allow('dynamodb:UpdateItem', tableArn('updates')),
        // chat_view and try_wake_next; the outbox's pending_calls.
        allow('dynamodb:Query', `${tableArn('updates')}/index/PendingIndex`),
        allow('dynamodb:Query', `${tableArn('outbox')}/index/PendingIndex`),
        // Store::apply's transaction.
        allow('dynamodb:PutItem', tableArn('messages')),
        allow('dynamodb:PutItem', tableArn('events')),
        allow('dynamodb:PutItem', tableArn('outbox')),
        allow('dynamodb:UpdateItem', tableArn('users')),
        allow('dynamodb:UpdateItem', tableArn('tokens')),
        // The sender: due_calls, call_done, call_failed.
        allow('dynamodb:UpdateItem', tableArn('outbox')),
        // A handler's session: read by Context::session, written or cleared by apply.
        allow('dynamodb:GetItem', tableArn('sessions')),
        allow('dynamodb:UpdateItem', tableArn('sessions')),
        allow('dynamodb:DeleteItem', tableArn('sessions')),
        // The sender's shared buckets for Telegram's limits (items of outbox).
        allow('dynamodb:BatchGetItem', tableArn('outbox')),
        // The schema check: both queues and every table, descriptions only.
        allow('sqs:GetQueueUrl', queueArn()),
        allow('sqs:GetQueueUrl', dlqArn()),
        ...TABLES.map((table) => allow('dynamodb:DescribeTable', tableArn(table))),
        allow('secretsmanager:GetSecretValue', secretRef('bot-token')),
        allow('logs:CreateLogStream', logsArn('worker')),
        allow('logs:PutLogEvents', logsArn('worker')),
        ...(tracing ? XRAY_GRANTS : []),
        // Forwarding (issue 16): invoke the handler function, or read the handler's secret token.
        ...(handlerFunction
          ? [
              allow(
                'lambda:InvokeFunction',
                `arn:aws:lambda:eu-north-1:ref(AWS::AccountId):function:${HANDLER_FUNCTION}`,
              ),
            ]
          : []),
        ...(handlerUrl ? [allow('secretsmanager:GetSecretValue', secretRef('handler-secret-token'))] : []),
      ]),
    );
  });

  test('the worker holds none of the operator-only permissions', () => {
    const grants = grantsOfFunction('worker').grants;
    // No Scan (dlq list, stats, messages export), no ConditionCheckItem, on any table or index;
    // no DeleteItem but of the sessions a handler clears.
    expect(grants.filter((g) => ['dynamodb:Scan', 'dynamodb:ConditionCheckItem'].includes(g.action))).toEqual(
      [],
    );
    expect(grants.filter((g) => g.action === 'dynamodb:DeleteItem')).toEqual([
      allow('dynamodb:DeleteItem', tableArn('sessions')),
    ]);
    // On the DLQ it only sends copies (and finds it, for the schema check): no receive, delete,
    // visibility change or attributes (those clean the DLQ after a redrive, an operator's
    // command).
    expect(sorted(grants.filter((g) => g.resource === dlqArn()))).toEqual(
      sorted([allow('sqs:SendMessage', dlqArn()), allow('sqs:GetQueueUrl', dlqArn())]),
    );
    // It redeems tokens but cannot issue them; it writes messages but cannot read them back
    // (describing a table, for the schema check, reads no item).
    const itemGrants = grants.filter((g) => g.action !== 'dynamodb:DescribeTable');
    expect(sorted(itemGrants.filter((g) => g.resource === tableArn('tokens')))).toEqual(
      sorted([allow('dynamodb:UpdateItem', tableArn('tokens'))]),
    );
    expect(sorted(itemGrants.filter((g) => g.resource.startsWith(tableArn('messages'))))).toEqual(
      sorted([allow('dynamodb:PutItem', tableArn('messages'))]),
    );
    // Nothing reads or writes items through the base tables it only writes to.
    for (const table of ['messages', 'users', 'events', 'tokens']) {
      expect(
        grants.filter(
          (g) =>
            g.resource.startsWith(tableArn(table)) &&
            ['dynamodb:GetItem', 'dynamodb:Query'].includes(g.action),
        ),
      ).toEqual([]);
    }
    // Sessions only item by item (a handler's): the UserIdIndexes are on no path of the worker.
    expect(grants.filter((g) => g.resource.includes('/index/UserIdIndex'))).toEqual([]);
  });

  test('operator policy: exactly what botline dlq, stats, the exports, import and tokens issue call', () => {
    expect(sorted(operatorGrants())).toEqual(
      sorted([
        // dead_rows and stats (Scan), get_update (GetItem), redrive_one (UpdateItem).
        allow('dynamodb:Scan', tableArn('updates')),
        allow('dynamodb:GetItem', tableArn('updates')),
        allow('dynamodb:UpdateItem', tableArn('updates')),
        // redrive_one sends the body back to the queue.
        allow('sqs:SendMessage', queueArn()),
        // purge_dlq_copies after a redrive.
        allow('sqs:ReceiveMessage', dlqArn()),
        allow('sqs:DeleteMessage', dlqArn()),
        allow('sqs:ChangeMessageVisibility', dlqArn()),
        // outbox_stats.
        allow('dynamodb:Scan', tableArn('outbox')),
        // Store::messages: Query with --chat, Scan without.
        allow('dynamodb:Query', tableArn('messages')),
        allow('dynamodb:Scan', tableArn('messages')),
        // issue_token.
        allow('dynamodb:PutItem', tableArn('tokens')),
        // Store::events and Store::users (events / users export).
        allow('dynamodb:Scan', tableArn('events')),
        allow('dynamodb:Scan', tableArn('users')),
        // Store::import: a conditional put per record, a stored user read to be merged.
        allow('dynamodb:PutItem', tableArn('messages')),
        allow('dynamodb:PutItem', tableArn('events')),
        allow('dynamodb:PutItem', tableArn('users')),
        allow('dynamodb:GetItem', tableArn('users')),
      ]),
    );
  });

  test('every DynamoDB grant names one of the seven tables or one of their four indexes', () => {
    const known = [
      ...TABLES.map(tableArn),
      ...INDEXES.map(([table, index]) => `${tableArn(table)}/index/${index}`),
    ];
    const all = [
      ...grantsOfFunction('ingest').grants,
      ...grantsOfFunction('worker').grants,
      ...operatorGrants(),
    ];
    const dynamo = all.filter((g) => g.action.startsWith('dynamodb:'));
    expect(dynamo.length).toBeGreaterThan(0);
    for (const grant of dynamo) {
      expect(known).toContain(grant.resource);
    }
  });

  test('the operator policy is attached to nothing and is an output', () => {
    const id = operatorPolicyId();
    const policy = json.Resources[id].Properties!;
    expect(policy.Roles).toBeUndefined();
    expect(policy.Users).toBeUndefined();
    expect(policy.Groups).toBeUndefined();
    expect(policy.ManagedPolicyName).toBeUndefined();
    for (const role of Object.values(resourcesOfType(json, 'AWS::IAM::Role'))) {
      expect(JSON.stringify(role.Properties!.ManagedPolicyArns ?? [])).not.toContain(id);
    }
    expect(render(json.Outputs!.OperatorPolicyArn.Value)).toBe(`ref(${id})`);
  });

  test('the ingest function touches DynamoDB only to GetItem and PutItem on updates (and describes it): no other table, no index', () => {
    const grants = grantsOfFunction('ingest').grants;
    const dynamo = grants.filter((g) => g.action.startsWith('dynamodb:'));
    expect(sorted(dynamo)).toEqual(
      sorted([
        allow('dynamodb:GetItem', tableArn('updates')),
        allow('dynamodb:PutItem', tableArn('updates')),
        // The schema check reads the table's description, none of its items.
        allow('dynamodb:DescribeTable', tableArn('updates')),
      ]),
    );
    for (const table of TABLES.filter((t) => t !== 'updates')) {
      expect(grants.filter((g) => g.resource.startsWith(tableArn(table)))).toEqual([]);
    }
    expect(grants.filter((g) => g.resource.includes('/index/'))).toEqual([]);
  });

  test('the ingest function has no DLQ, bot token or OpenAI key, and does not consume the queue', () => {
    const grants = grantsOfFunction('ingest').grants;
    for (const forbidden of [dlqArn(), secretRef('bot-token'), secretRef('openai-api-key')]) {
      expect(grants.filter((g) => g.resource === forbidden)).toEqual([]);
    }
    expect(
      grants.filter((g) =>
        ['sqs:ReceiveMessage', 'sqs:DeleteMessage', 'sqs:ChangeMessageVisibility'].includes(g.action),
      ),
    ).toEqual([]);
  });

  test('the worker cannot read the webhook secret or the OpenAI key', () => {
    const grants = grantsOfFunction('worker').grants;
    for (const forbidden of [secretRef('webhook-secret'), secretRef('openai-api-key')]) {
      expect(grants.filter((g) => g.resource === forbidden)).toEqual([]);
    }
  });

  test('no KMS grants: the queues use SQS-managed keys and the tables the AWS-managed key', () => {
    for (const queue of Object.values(resourcesOfType(json, 'AWS::SQS::Queue'))) {
      expect(queue.Properties!.SqsManagedSseEnabled).toBe(true);
      expect(queue.Properties!.KmsMasterKeyId).toBeUndefined();
    }
    for (const table of Object.values(resourcesOfType(json, 'AWS::DynamoDB::Table'))) {
      expect(table.Properties!.SSESpecification.KMSMasterKeyId).toBeUndefined();
    }
    expect(Object.keys(resourcesOfType(json, 'AWS::KMS::Key'))).toEqual([]);
    for (const fn of ['ingest', 'worker'] as const) {
      expect(grantsOfFunction(fn).grants.filter((g) => g.action.startsWith('kms:'))).toEqual([]);
    }
    expect(operatorGrants().filter((g) => g.action.startsWith('kms:'))).toEqual([]);
  });

  test('no function may read the OpenAI key yet, and the operator policy reads no secret', () => {
    const all = [...grantsOfFunction('ingest').grants, ...grantsOfFunction('worker').grants];
    expect(all.filter((g) => g.resource === secretRef('openai-api-key'))).toEqual([]);
    expect(operatorGrants().filter((g) => g.action.startsWith('secretsmanager:'))).toEqual([]);
  });

  test('no "*" action or resource for SQS, DynamoDB, Secrets Manager, SSM or Lambda in any IAM policy', () => {
    const policies = [
      ...Object.values(resourcesOfType(json, 'AWS::IAM::Policy')).map((p) => p.Properties!.PolicyDocument),
      ...Object.values(resourcesOfType(json, 'AWS::IAM::Role')).flatMap((r) =>
        (r.Properties!.Policies ?? []).map((p: { PolicyDocument: unknown }) => p.PolicyDocument),
      ),
      ...Object.values(resourcesOfType(json, 'AWS::IAM::ManagedPolicy')).map(
        (p) => p.Properties!.PolicyDocument,
      ),
    ];
    expect(policies.length).toBeGreaterThan(0);
    const grants = policies.flatMap((document) => grantsOf(document));
    for (const grant of grants) {
      expect(grant.effect).toBe('Allow');
      expect(grant.action).not.toBe('*');
      const service = grant.action.split(':')[0];
      expect(grant.action).not.toMatch(/^[a-z0-9-]+:\*$/);
      if (NO_WILDCARD_SERVICES.includes(service)) {
        expect({ grant, wildcard: grant.action.includes('*') || grant.resource.includes('*') }).toEqual({
          grant,
          wildcard: false,
        });
      }
    }
    // Resource "*" only where the service has no resource-level permissions (X-Ray).
    expect(
      grants
        .filter((g) => g.resource === '*')
        .map((g) => g.action)
        .sort(),
    ).toEqual(
      tracing
        ? [
            'xray:PutTelemetryRecords',
            'xray:PutTelemetryRecords',
            'xray:PutTraceSegments',
            'xray:PutTraceSegments',
          ].sort()
        : [],
    );
    expect(grants.filter((g) => g.action.startsWith('ssm:') || g.action.startsWith('iam:'))).toEqual([]);
  });

  test("who may invoke the functions: the tick's rule the worker, API Gateway's routes the ingest function; each from its source only", () => {
    const ruleArn = `${id('AWS::Events::Rule', 'Name', name('worker-tick'))}.Arn`;
    const fnArn = (fn: 'ingest' | 'worker') => `${id('AWS::Lambda::Function', 'FunctionName', name(fn))}.Arn`;
    const apiId = id('AWS::ApiGatewayV2::Api', 'Name', name('api'));
    const permissions = Object.values(resourcesOfType(json, 'AWS::Lambda::Permission')).map((p) => {
      const { Action, FunctionName, Principal, SourceArn, ...rest } = p.Properties!;
      // No SourceAccount, principal organisation or function URL auth: only the source ARN.
      expect(rest).toEqual({});
      return `${Action} on ${render(FunctionName)} for ${Principal} from ${render(SourceArn)}`;
    });
    expect(permissions.sort()).toEqual(
      [
        `lambda:InvokeFunction on ${fnArn('worker')} for events.amazonaws.com from ${ruleArn}`,
        `lambda:InvokeFunction on ${fnArn('ingest')} for apigateway.amazonaws.com from arn:aws:execute-api:eu-north-1:ref(AWS::AccountId):ref(${apiId})/*/*/health`,
        `lambda:InvokeFunction on ${fnArn('ingest')} for apigateway.amazonaws.com from arn:aws:execute-api:eu-north-1:ref(AWS::AccountId):ref(${apiId})/*/*/telegram/webhook`,
      ].sort(),
    );
    // The rule targets the worker alone, through that permission: no role for EventBridge.
    const rules = Object.values(resourcesOfType(json, 'AWS::Events::Rule'));
    expect(rules).toHaveLength(1);
    expect(
      rules[0].Properties!.Targets.map((t: { Arn: unknown; RoleArn?: unknown }) => [
        render(t.Arn),
        t.RoleArn,
      ]),
    ).toEqual([[fnArn('worker'), undefined]]);
  });

  test('resource policies only deny (queues: no TLS, no access)', () => {
    const queuePolicies = Object.values(resourcesOfType(json, 'AWS::SQS::QueuePolicy'));
    expect(queuePolicies).toHaveLength(2);
    for (const policy of queuePolicies) {
      for (const statement of policy.Properties!.PolicyDocument.Statement) {
        expect(statement.Effect).toBe('Deny');
        expect(statement.Condition).toEqual({ Bool: { 'aws:SecureTransport': 'false' } });
      }
    }
    for (const type of [
      'AWS::SecretsManager::ResourcePolicy',
      'AWS::SNS::TopicPolicy',
      'AWS::DynamoDB::ResourcePolicy',
    ]) {
      expect(Object.keys(resourcesOfType(json, type))).toEqual([]);
    }
  });
});

/** Every statement of every IAM policy in the template: roles' inline, attached and managed. */
function allStatements(json: CfnTemplate): Parameters<typeof grantsOf>[0]['Statement'] {
  return [
    ...Object.values(resourcesOfType(json, 'AWS::IAM::Policy')).map((p) => p.Properties!.PolicyDocument),
    ...Object.values(resourcesOfType(json, 'AWS::IAM::Role')).flatMap((r) =>
      (r.Properties!.Policies ?? []).map((p: { PolicyDocument: unknown }) => p.PolicyDocument),
    ),
    ...Object.values(resourcesOfType(json, 'AWS::IAM::ManagedPolicy')).map(
      (p) => p.Properties!.PolicyDocument,
    ),
  ].flatMap((document) => document.Statement);
}

/** The grants of one function's role. */
function functionGrants(json: CfnTemplate, stage: string, fn: 'ingest' | 'worker'): Grant[] {
  const fnId = logicalId(json, 'AWS::Lambda::Function', 'FunctionName', `botline-${stage}-${fn}`);
  const role = render(json.Resources[fnId].Properties!.Role).replace(/\.Arn$/, '');
  return roleGrants(json, role).grants;
}

const invokes = (statement: { Action?: string | string[] }) =>
  ([] as string[]).concat(statement.Action ?? []).some((action) => action.startsWith('lambda:'));

describe("forwarding to the bot's own handler (issue 16)", () => {
  const invokeGrant = (resource: string): Grant => ({
    effect: 'Allow',
    action: 'lambda:InvokeFunction',
    resource,
  });

  test("handlerFunction=my-bot-handler: one lambda:InvokeFunction statement, on that function of the stack's account and region only; the ingest function has no lambda: at all", () => {
    const { json } = synth({ stage: 'dev', handlerFunction: 'my-bot-handler' });
    const statements = allStatements(json).filter(invokes);
    expect(statements).toHaveLength(1);
    expect(statements[0].Action).toBe('lambda:InvokeFunction');
    expect(render(statements[0].Resource)).toBe(
      'arn:aws:lambda:eu-north-1:ref(AWS::AccountId):function:my-bot-handler',
    );
    const lambdaGrants = (fn: 'ingest' | 'worker') =>
      functionGrants(json, 'dev', fn).filter((g) => g.action.startsWith('lambda:'));
    expect(lambdaGrants('worker')).toEqual([
      invokeGrant('arn:aws:lambda:eu-north-1:ref(AWS::AccountId):function:my-bot-handler'),
    ]);
    expect(lambdaGrants('ingest')).toEqual([]);
  });

  test('a bare name is granted in the account the CLI deploys to, and in -c region', () => {
    const { json } = synth(
      { stage: 'prod', handlerFunction: 'my-bot-handler', region: 'eu-west-1' },
      { CDK_DEFAULT_ACCOUNT: '123456789012' },
    );
    expect(functionGrants(json, 'prod', 'worker').filter((g) => g.action.startsWith('lambda:'))).toEqual([
      invokeGrant('arn:aws:lambda:eu-west-1:123456789012:function:my-bot-handler'),
    ]);
  });

  test.each([
    ['a qualified (alias)', 'arn:aws:lambda:eu-north-1:123456789012:function:my-bot-handler:live'],
    ['a qualified (version)', 'arn:aws:lambda:eu-north-1:123456789012:function:my-bot-handler:7'],
    ['an unqualified', 'arn:aws:lambda:eu-north-1:123456789012:function:my-bot-handler'],
  ])('%s ARN is granted exactly as given: no wildcard, no other version or alias', (_kind, arn) => {
    const { json } = synth({ stage: 'dev', handlerFunction: arn });
    const statements = allStatements(json).filter(invokes);
    expect(statements).toHaveLength(1);
    expect(statements[0].Resource).toBe(arn);
    expect(functionGrants(json, 'dev', 'worker').filter((g) => g.action.startsWith('lambda:'))).toEqual([
      invokeGrant(arn),
    ]);
    expect(functionGrants(json, 'dev', 'ingest').filter((g) => g.action.startsWith('lambda:'))).toEqual([]);
  });

  test.each(VARIANTS.filter(([, context]) => context.handlerFunction === undefined))(
    '%s: no IAM policy allows any lambda: action',
    (_label, context) => {
      expect(allStatements(synth(context).json).filter(invokes)).toEqual([]);
    },
  );

  test('handlerUrl: the worker may read the handler secret token, and no other function or policy may', () => {
    const { json } = synth({ stage: 'prod', handlerUrl: HANDLER_URL });
    const secret = `ref(${logicalId(json, 'AWS::SecretsManager::Secret', 'Name', 'botline-prod-handler-secret-token')})`;
    const reads = (grants: Grant[]) => grants.filter((g) => g.resource === secret);
    expect(reads(functionGrants(json, 'prod', 'worker'))).toEqual([
      { effect: 'Allow', action: 'secretsmanager:GetSecretValue', resource: secret },
    ]);
    expect(reads(functionGrants(json, 'prod', 'ingest'))).toEqual([]);
    // Nowhere else: of every grant in the template, that one alone is on the secret.
    expect(grantsOf({ Statement: allStatements(json) }).filter((g) => g.resource === secret)).toEqual([
      { effect: 'Allow', action: 'secretsmanager:GetSecretValue', resource: secret },
    ]);
  });
});
