/**
 * Alarms, their metrics and thresholds, the SNS topic and the dashboard, from the template.
 */
import { ALARM_THRESHOLDS, CUSTOM_METRICS } from '../lib/monitoring';
import { CfnResource, logicalId, render, resourcesOfType, synth, Synthesized } from './support';

describe.each(['dev', 'prod'] as const)('stage %s', (stage) => {
  let s: Synthesized;
  const name = (resource: string) => `botline-${stage}-${resource}`;
  beforeAll(() => {
    s = synth({ stage });
  });

  const id = (type: string, key: string, value: string) => logicalId(s.json, type, key, value);
  const alarm = (alarmName: string): Record<string, any> =>
    s.json.Resources[id('AWS::CloudWatch::Alarm', 'AlarmName', name(alarmName))].Properties!;
  const fnRef = (fn: string) => ({ Ref: id('AWS::Lambda::Function', 'FunctionName', name(fn)) });
  const queueNameOf = (queue: string) => ({
    'Fn::GetAtt': [id('AWS::SQS::Queue', 'QueueName', name(queue)), 'QueueName'],
  });
  const topicRef = () => ({ Ref: id('AWS::SNS::Topic', 'TopicName', name('alarms')) });

  test('an SNS topic for alarms, with no subscription unless alarmEmail is given', () => {
    s.template.resourceCountIs('AWS::SNS::Topic', 1);
    s.template.resourceCountIs('AWS::SNS::Subscription', 0);
  });

  test('seven alarms, each notifying the topic when it fires and when it clears', () => {
    const alarms = Object.values(resourcesOfType(s.json, 'AWS::CloudWatch::Alarm'));
    expect(alarms.map((a) => a.Properties!.AlarmName).sort()).toEqual(
      [
        'api-5xx',
        'dead-lettered',
        'dlq-not-empty',
        'ingest-throttles',
        'queue-oldest-message-age',
        'worker-error-rate',
        'worker-throttles',
      ].map(name),
    );
    for (const a of alarms) {
      expect(a.Properties).toMatchObject({
        AlarmActions: [topicRef()],
        OKActions: [topicRef()],
        ComparisonOperator: 'GreaterThanThreshold',
        EvaluationPeriods: 1,
        TreatMissingData: 'notBreaching',
      });
    }
  });

  test('DLQ depth > 0, checked every minute', () => {
    expect(alarm('dlq-not-empty')).toMatchObject({
      Namespace: 'AWS/SQS',
      MetricName: 'ApproximateNumberOfMessagesVisible',
      Dimensions: [{ Name: 'QueueName', Value: queueNameOf('dlq') }],
      Statistic: 'Maximum',
      Period: 60,
      Threshold: 0,
    });
  });

  test('worker errors > 5 % of invocations over 5 minutes, by metric math', () => {
    const a = alarm('worker-error-rate');
    expect(a.Threshold).toBe(5);
    expect(a.MetricName).toBeUndefined();
    const metrics = a.Metrics as Record<string, any>[];
    const expression = metrics.filter((m) => m.Expression);
    expect(expression).toHaveLength(1);
    expect(expression[0].ReturnData).toBe(true);
    expect(expression[0].Expression).toBe('IF(invocations > 0, 100 * errors / invocations, 0)');
    const inputs = Object.fromEntries(metrics.filter((m) => m.MetricStat).map((m) => [m.Id, m]));
    expect(Object.keys(inputs).sort()).toEqual(['errors', 'invocations']);
    for (const [metricId, metricName] of [
      ['errors', 'Errors'],
      ['invocations', 'Invocations'],
    ]) {
      expect(inputs[metricId]).toEqual({
        Id: metricId,
        ReturnData: false,
        MetricStat: {
          Metric: {
            Namespace: 'AWS/Lambda',
            MetricName: metricName,
            Dimensions: [{ Name: 'FunctionName', Value: fnRef('worker') }],
          },
          Period: 300,
          Stat: 'Sum',
        },
      });
    }
  });

  test('API 5xx > 10 in 5 minutes', () => {
    expect(alarm('api-5xx')).toMatchObject({
      Namespace: 'AWS/ApiGateway',
      MetricName: '5xx',
      Dimensions: [{ Name: 'ApiId', Value: { Ref: id('AWS::ApiGatewayV2::Api', 'Name', name('api')) } }],
      Statistic: 'Sum',
      Period: 300,
      Threshold: 10,
    });
  });

  test('age of the oldest queued update > two visibility timeouts', () => {
    const queue = s.json.Resources[id('AWS::SQS::Queue', 'QueueName', name('queue'))].Properties!;
    const a = alarm('queue-oldest-message-age');
    expect(a).toMatchObject({
      Namespace: 'AWS/SQS',
      MetricName: 'ApproximateAgeOfOldestMessage',
      Dimensions: [{ Name: 'QueueName', Value: queueNameOf('queue') }],
      Statistic: 'Maximum',
      Period: 300,
    });
    expect(a.Threshold).toBe(2 * queue.VisibilityTimeout);
    expect(a.Threshold).toBe(ALARM_THRESHOLDS.oldestMessageAgeSeconds);
  });

  test.each(['ingest', 'worker'])('%s throttles > 0 in 5 minutes', (fn) => {
    expect(alarm(`${fn}-throttles`)).toMatchObject({
      Namespace: 'AWS/Lambda',
      MetricName: 'Throttles',
      Dimensions: [{ Name: 'FunctionName', Value: fnRef(fn) }],
      Statistic: 'Sum',
      Period: 300,
      Threshold: 0,
    });
  });

  test("dead-lettered: Botline's own botline_dead_lettered_total (EMF), Sum > 0 over 5 minutes, for this stage", () => {
    const a = alarm('dead-lettered');
    expect(a).toMatchObject({
      Namespace: 'Botline',
      MetricName: 'botline_dead_lettered_total',
      Dimensions: [{ Name: 'Stage', Value: stage }],
      Statistic: 'Sum',
      Period: 300,
      Threshold: 0,
      ComparisonOperator: 'GreaterThanThreshold',
    });
    expect(a.Threshold).toBe(ALARM_THRESHOLDS.deadLetteredPer5Minutes);
    expect(CUSTOM_METRICS.namespace).toBe('Botline');
  });

  describe('dashboard', () => {
    let body: { widgets: { type: string; properties: Record<string, any> }[] };
    let metrics: string[];
    /** The same, followed by the metric's statistic: "namespace metric dimension=value … stat". */
    let withStats: string[];
    beforeAll(() => {
      s.template.resourceCountIs('AWS::CloudWatch::Dashboard', 1);
      const dashboard: CfnResource = Object.values(resourcesOfType(s.json, 'AWS::CloudWatch::Dashboard'))[0];
      expect(dashboard.Properties!.DashboardName).toBe(name('dashboard'));
      body = JSON.parse(render(dashboard.Properties!.DashboardBody));
      // Each metric as "namespace metric dimension=value", for lookups.
      metrics = body.widgets
        .filter((w) => w.type === 'metric')
        .flatMap((w) => w.properties.metrics as unknown[][])
        .filter((m) => typeof m[0] === 'string')
        .map((m) => {
          const [namespace, metricName, ...rest] = m.filter((part) => typeof part === 'string') as string[];
          const dimensions = [];
          for (let i = 0; i + 1 < rest.length; i += 2) {
            dimensions.push(`${rest[i]}=${rest[i + 1]}`);
          }
          return [namespace, metricName, ...dimensions].join(' ');
        });
      withStats = body.widgets
        .filter((w) => w.type === 'metric')
        .flatMap((w) => w.properties.metrics as unknown[][])
        .filter((m) => typeof m[0] === 'string')
        .map((m, i) => {
          const options = m.find((part) => typeof part === 'object' && part !== null) as { stat?: string };
          return `${metrics[i]} ${options?.stat}`;
        });
    });

    const apiDim = () => `ApiId=ref(${id('AWS::ApiGatewayV2::Api', 'Name', name('api'))})`;
    const fnDim = (fn: string) => `FunctionName=ref(${fnRef(fn).Ref})`;
    const queueDim = (queue: string) =>
      `QueueName=${id('AWS::SQS::Queue', 'QueueName', name(queue))}.QueueName`;
    const tableDim = (table: string) =>
      `TableName=ref(${id('AWS::DynamoDB::Table', 'TableName', name(table))})`;

    test('API requests and latency', () => {
      expect(metrics).toEqual(
        expect.arrayContaining([
          `AWS/ApiGateway Count ${apiDim()}`,
          `AWS/ApiGateway Latency ${apiDim()}`,
          `AWS/ApiGateway IntegrationLatency ${apiDim()}`,
          `AWS/ApiGateway 5xx ${apiDim()}`,
        ]),
      );
    });

    test('Lambda invocations, errors and duration for both functions', () => {
      for (const fn of ['ingest', 'worker']) {
        for (const metric of ['Invocations', 'Errors', 'Duration', 'Throttles']) {
          expect(metrics).toContain(`AWS/Lambda ${metric} ${fnDim(fn)}`);
        }
      }
    });

    test('queue depth and age, DLQ depth', () => {
      expect(metrics).toEqual(
        expect.arrayContaining([
          `AWS/SQS ApproximateNumberOfMessagesVisible ${queueDim('queue')}`,
          `AWS/SQS ApproximateNumberOfMessagesNotVisible ${queueDim('queue')}`,
          `AWS/SQS ApproximateAgeOfOldestMessage ${queueDim('queue')}`,
          `AWS/SQS ApproximateNumberOfMessagesVisible ${queueDim('dlq')}`,
        ]),
      );
    });

    test('DynamoDB consumed capacity and throttles for every table', () => {
      for (const table of ['messages', 'users', 'events', 'sessions', 'updates', 'outbox', 'tokens']) {
        for (const metric of [
          'ConsumedReadCapacityUnits',
          'ConsumedWriteCapacityUnits',
          'ReadThrottleEvents',
          'WriteThrottleEvents',
        ]) {
          expect(metrics).toContain(`AWS/DynamoDB ${metric} ${tableDim(table)}`);
        }
      }
    });

    test("Botline's own metrics (EMF, this stage): received, duplicates, processed, failures, dead-lettered, receipt-to-stored p99", () => {
      const stageDim = `Stage=${stage}`;
      expect(withStats).toEqual(
        expect.arrayContaining([
          `Botline botline_webhook_requests_total ${stageDim} outcome=accepted Sum`,
          `Botline botline_webhook_requests_total ${stageDim} outcome=duplicate Sum`,
          `Botline botline_updates_processed_total ${stageDim} outcome=written Sum`,
          `Botline botline_updates_processed_total ${stageDim} outcome=already_done Sum`,
          `Botline botline_processing_failures_total ${stageDim} Sum`,
          `Botline botline_dead_lettered_total ${stageDim} Sum`,
          `Botline botline_receipt_to_stored_seconds ${stageDim} p99`,
        ]),
      );
      const botline = metrics.filter((m) => m.startsWith('Botline '));
      expect(botline.length).toBeGreaterThanOrEqual(7);
      for (const metric of botline) {
        // Only this stage's series, and only the names the functions emit.
        expect(metric.split(' ')[2]).toBe(stageDim);
        expect(Object.values(CUSTOM_METRICS)).toContain(metric.split(' ')[1]);
      }
    });

    test('an alarm status widget with every alarm', () => {
      const alarmWidgets = body.widgets.filter((w) => w.type === 'alarm');
      expect(alarmWidgets).toHaveLength(1);
      expect(alarmWidgets[0].properties.alarms).toHaveLength(7);
    });
  });
});

test('alarmEmail subscribes that address to the alarm topic', () => {
  const { template, json } = synth({ stage: 'prod', alarmEmail: 'ops@example.com' });
  template.resourceCountIs('AWS::SNS::Subscription', 1);
  template.hasResourceProperties('AWS::SNS::Subscription', {
    Protocol: 'email',
    Endpoint: 'ops@example.com',
    TopicArn: { Ref: logicalId(json, 'AWS::SNS::Topic', 'TopicName', 'botline-prod-alarms') },
  });
});
