/**
 * Least privilege, read from the IAM policies in the template: every statement of every policy
 * of every role, the operator's managed policy, and the resource policies. Checked for both
 * stages and for the FIFO and X-Ray variants, which add or change resources.
 *
 * The functions' roles hold exactly what their code paths call (crates/botline-aws, driven by
 * crates/botline-lambda); what only the operator commands call (`botline dlq`, `stats`,
 * `messages export`, `tokens issue`) is in the operator policy, attached to no function.
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

/** Services where a `*` in an action or a resource is never acceptable (issue 5). */
const NO_WILDCARD_SERVICES = ['sqs', 'dynamodb', 'secretsmanager', 'ssm'];

const VARIANTS: [string, Record<string, unknown>][] = [
  ['dev', { stage: 'dev' }],
  ['prod', { stage: 'prod' }],
  ['dev, FIFO queue', { stage: 'dev', fifo: 'true' }],
  ['prod, X-Ray tracing', { stage: 'prod', tracing: 'true' }],
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
        allow('secretsmanager:GetSecretValue', secretRef('bot-token')),
        allow('logs:CreateLogStream', logsArn('worker')),
        allow('logs:PutLogEvents', logsArn('worker')),
        ...(tracing ? XRAY_GRANTS : []),
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
    // On the DLQ it only sends copies: no receive, delete, visibility change or attributes
    // (those clean the DLQ after a redrive, an operator's command).
    expect(grants.filter((g) => g.resource === dlqArn()).map((g) => g.action)).toEqual(['sqs:SendMessage']);
    // It redeems tokens but cannot issue them; it writes messages but cannot read them back.
    expect(sorted(grants.filter((g) => g.resource === tableArn('tokens')))).toEqual(
      sorted([allow('dynamodb:UpdateItem', tableArn('tokens'))]),
    );
    expect(sorted(grants.filter((g) => g.resource.startsWith(tableArn('messages'))))).toEqual(
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

  test('operator policy: exactly what botline dlq, stats, messages export and tokens issue call', () => {
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

  test('the ingest function touches DynamoDB only to GetItem and PutItem on updates: no other table, no index', () => {
    const grants = grantsOfFunction('ingest').grants;
    const dynamo = grants.filter((g) => g.action.startsWith('dynamodb:'));
    expect(sorted(dynamo)).toEqual(
      sorted([
        allow('dynamodb:GetItem', tableArn('updates')),
        allow('dynamodb:PutItem', tableArn('updates')),
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

  test('no "*" action or resource for SQS, DynamoDB, Secrets Manager or SSM in any IAM policy', () => {
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
