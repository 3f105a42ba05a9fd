/**
 * Alarms (to an SNS topic) and one dashboard for a Botline stage. The thresholds are exported so
 * that the tests and docs/deploy.md quote the same figures as the alarms.
 */
import { Duration } from 'aws-cdk-lib';
import * as apigwv2 from 'aws-cdk-lib/aws-apigatewayv2';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import * as actions from 'aws-cdk-lib/aws-cloudwatch-actions';
import * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import * as sns from 'aws-cdk-lib/aws-sns';
import * as subscriptions from 'aws-cdk-lib/aws-sns-subscriptions';
import * as sqs from 'aws-cdk-lib/aws-sqs';
import { Construct } from 'constructs';

const FIVE_MINUTES = Duration.minutes(5);

export const ALARM_THRESHOLDS = {
  /** Any dead letter is an update that was not processed: page at the first one. */
  dlqDepth: 0,
  /** Worker errors as a percentage of worker invocations over 5 minutes (seed 000). */
  workerErrorRatePercent: 5,
  /** API Gateway 5xx answers in 5 minutes (seed 001). Telegram retries them, but they cost latency. */
  api5xxPer5Minutes: 10,
  /**
   * Age of the oldest queued update. A batch that failed once comes back after the 6-minute
   * visibility timeout; older than two of them means it failed twice or nobody is receiving.
   */
  oldestMessageAgeSeconds: 2 * 6 * 60,
  /** Any throttled invocation: ingest throttles turn into 5xx for Telegram, worker ones delay work. */
  throttles: 0,
} as const;

export interface MonitoringProps {
  readonly name: (resource: string) => string;
  readonly api: apigwv2.HttpApi;
  readonly ingest: lambda.Function;
  readonly worker: lambda.Function;
  readonly queue: sqs.Queue;
  readonly deadLetters: sqs.Queue;
  readonly tables: dynamodb.Table[];
  readonly alarmEmail?: string;
}

export class Monitoring extends Construct {
  readonly topic: sns.Topic;
  readonly alarms: cloudwatch.Alarm[] = [];
  readonly dashboard: cloudwatch.Dashboard;

  constructor(scope: Construct, id: string, props: MonitoringProps) {
    super(scope, id);
    const { name } = props;

    // Alarm notifications carry no secrets, and CloudWatch cannot publish to a topic encrypted
    // with the AWS-managed SNS key, so the topic is left with SNS's default (no SSE).
    this.topic = new sns.Topic(this, 'AlarmTopic', {
      topicName: name('alarms'),
      displayName: name('alarms'),
    });
    if (props.alarmEmail) {
      this.topic.addSubscription(new subscriptions.EmailSubscription(props.alarmEmail));
    }

    const dlqDepth = props.deadLetters.metricApproximateNumberOfMessagesVisible({
      period: Duration.minutes(1),
      statistic: cloudwatch.Stats.MAXIMUM,
    });
    this.alarm('DlqNotEmpty', {
      alarmName: name('dlq-not-empty'),
      alarmDescription:
        'Updates reached the dead-letter queue: inspect with `botline dlq list`, then redrive.',
      metric: dlqDepth,
      threshold: ALARM_THRESHOLDS.dlqDepth,
    });

    const workerErrorRate = new cloudwatch.MathExpression({
      expression: 'IF(invocations > 0, 100 * errors / invocations, 0)',
      usingMetrics: {
        errors: props.worker.metricErrors({ period: FIVE_MINUTES, statistic: cloudwatch.Stats.SUM }),
        invocations: props.worker.metricInvocations({
          period: FIVE_MINUTES,
          statistic: cloudwatch.Stats.SUM,
        }),
      },
      period: FIVE_MINUTES,
      label: 'Worker error rate (%)',
    });
    this.alarm('WorkerErrorRate', {
      alarmName: name('worker-error-rate'),
      alarmDescription: `Worker errors above ${ALARM_THRESHOLDS.workerErrorRatePercent} % of invocations over 5 minutes.`,
      metric: workerErrorRate,
      threshold: ALARM_THRESHOLDS.workerErrorRatePercent,
    });

    this.alarm('Api5xx', {
      alarmName: name('api-5xx'),
      alarmDescription: `More than ${ALARM_THRESHOLDS.api5xxPer5Minutes} API 5xx answers in 5 minutes.`,
      metric: props.api.metricServerError({ period: FIVE_MINUTES, statistic: cloudwatch.Stats.SUM }),
      threshold: ALARM_THRESHOLDS.api5xxPer5Minutes,
    });

    const oldestAge = props.queue.metricApproximateAgeOfOldestMessage({
      period: FIVE_MINUTES,
      statistic: cloudwatch.Stats.MAXIMUM,
    });
    this.alarm('OldestMessageAge', {
      alarmName: name('queue-oldest-message-age'),
      alarmDescription: `An update has waited more than ${ALARM_THRESHOLDS.oldestMessageAgeSeconds} s in the queue.`,
      metric: oldestAge,
      threshold: ALARM_THRESHOLDS.oldestMessageAgeSeconds,
    });

    for (const [fn, label] of [
      [props.ingest, 'ingest'],
      [props.worker, 'worker'],
    ] as const) {
      this.alarm(`${label === 'ingest' ? 'Ingest' : 'Worker'}Throttles`, {
        alarmName: name(`${label}-throttles`),
        alarmDescription: `The ${label} function was throttled.`,
        metric: fn.metricThrottles({ period: FIVE_MINUTES, statistic: cloudwatch.Stats.SUM }),
        threshold: ALARM_THRESHOLDS.throttles,
      });
    }

    this.dashboard = this.buildDashboard(props, { dlqDepth, oldestAge, workerErrorRate });
  }

  /** Every alarm: greater than its threshold for one period, quiet when there is no data. */
  private alarm(
    id: string,
    props: Pick<cloudwatch.AlarmProps, 'alarmName' | 'alarmDescription' | 'metric' | 'threshold'>,
  ): void {
    const alarm = new cloudwatch.Alarm(this, id, {
      ...props,
      evaluationPeriods: 1,
      datapointsToAlarm: 1,
      comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
      treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
    });
    alarm.addAlarmAction(new actions.SnsAction(this.topic));
    alarm.addOkAction(new actions.SnsAction(this.topic));
    this.alarms.push(alarm);
  }

  private buildDashboard(
    props: MonitoringProps,
    metrics: {
      dlqDepth: cloudwatch.IMetric;
      oldestAge: cloudwatch.IMetric;
      workerErrorRate: cloudwatch.IMetric;
    },
  ): cloudwatch.Dashboard {
    const fns = [props.ingest, props.worker];
    const perFunction = (metric: (fn: lambda.Function) => cloudwatch.IMetric) => fns.map(metric);
    const labelled = (fn: lambda.Function, what: string) =>
      `${fn === props.ingest ? 'ingest' : 'worker'} ${what}`;
    const perTable = (metricName: string, statistic: string) =>
      props.tables.map(
        (table) =>
          new cloudwatch.Metric({
            namespace: 'AWS/DynamoDB',
            metricName,
            dimensionsMap: { TableName: table.tableName },
            statistic,
            period: FIVE_MINUTES,
            label: `${table.node.id.replace(/Table$/, '').toLowerCase()} ${metricName}`,
          }),
      );
    const widget = (title: string, left: cloudwatch.IMetric[], right?: cloudwatch.IMetric[]) =>
      new cloudwatch.GraphWidget({ title, left, right, width: 8, height: 6 });

    const dashboard = new cloudwatch.Dashboard(this, 'Dashboard', {
      dashboardName: props.name('dashboard'),
      defaultInterval: Duration.hours(3),
    });
    dashboard.addWidgets(
      widget(
        'API requests',
        [props.api.metricCount({ statistic: 'Sum', period: FIVE_MINUTES, label: 'requests' })],
        [
          props.api.metricClientError({ statistic: 'Sum', period: FIVE_MINUTES, label: '4xx' }),
          props.api.metricServerError({ statistic: 'Sum', period: FIVE_MINUTES, label: '5xx' }),
        ],
      ),
      widget('API latency (ms)', [
        props.api.metricLatency({ statistic: 'p50', period: FIVE_MINUTES, label: 'latency p50' }),
        props.api.metricLatency({ statistic: 'p99', period: FIVE_MINUTES, label: 'latency p99' }),
        props.api.metricIntegrationLatency({
          statistic: 'p99',
          period: FIVE_MINUTES,
          label: 'integration p99',
        }),
      ]),
      new cloudwatch.AlarmStatusWidget({ title: 'Alarms', alarms: this.alarms, width: 8, height: 6 }),
    );
    dashboard.addWidgets(
      widget(
        'Lambda invocations',
        perFunction((fn) =>
          fn.metricInvocations({
            statistic: 'Sum',
            period: FIVE_MINUTES,
            label: labelled(fn, 'invocations'),
          }),
        ),
        perFunction((fn) =>
          fn.metricThrottles({ statistic: 'Sum', period: FIVE_MINUTES, label: labelled(fn, 'throttles') }),
        ),
      ),
      widget(
        'Lambda errors',
        perFunction((fn) =>
          fn.metricErrors({ statistic: 'Sum', period: FIVE_MINUTES, label: labelled(fn, 'errors') }),
        ),
        [metrics.workerErrorRate],
      ),
      widget('Lambda duration (ms)', [
        ...perFunction((fn) =>
          fn.metricDuration({ statistic: 'p50', period: FIVE_MINUTES, label: labelled(fn, 'p50') }),
        ),
        ...perFunction((fn) =>
          fn.metricDuration({ statistic: 'p99', period: FIVE_MINUTES, label: labelled(fn, 'p99') }),
        ),
      ]),
    );
    dashboard.addWidgets(
      widget('Queue depth', [
        props.queue.metricApproximateNumberOfMessagesVisible({
          statistic: 'Maximum',
          period: FIVE_MINUTES,
          label: 'visible',
        }),
        props.queue.metricApproximateNumberOfMessagesNotVisible({
          statistic: 'Maximum',
          period: FIVE_MINUTES,
          label: 'in flight',
        }),
      ]),
      widget('Age of oldest queued update (s)', [metrics.oldestAge]),
      widget('Dead-letter queue depth', [metrics.dlqDepth]),
    );
    dashboard.addWidgets(
      widget('DynamoDB consumed read capacity', perTable('ConsumedReadCapacityUnits', 'Sum')),
      widget('DynamoDB consumed write capacity', perTable('ConsumedWriteCapacityUnits', 'Sum')),
      widget('DynamoDB throttles', [
        ...perTable('ReadThrottleEvents', 'Sum'),
        ...perTable('WriteThrottleEvents', 'Sum'),
      ]),
    );
    return dashboard;
  }
}
