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
   * Age of the oldest queued update, in visibility timeouts of the queue. A batch that failed
   * once comes back after one visibility timeout; older than two of them means it failed twice
   * or nobody is receiving.
   */
  oldestMessageAgeInVisibilityTimeouts: 2,
  /**
   * The same in seconds without a handler (6-minute visibility timeout). With one, the
   * visibility timeout is longer (`timeouts` in botline-stack.ts) and so is the threshold.
   */
  oldestMessageAgeSeconds: 2 * 6 * 60,
  /** Any throttled invocation: ingest throttles turn into 5xx for Telegram, worker ones delay work. */
  throttles: 0,
  /** Any update that ran out of attempts (Botline's own count, `botline_dead_lettered_total`). */
  deadLetteredPer5Minutes: 0,
} as const;

/**
 * Botline's own metrics. The Rust functions write them as CloudWatch Embedded Metric Format log
 * lines, in the namespace `Botline` with one static dimension, `Stage` (the stage name); a
 * metric's labels become further dimensions. The names are the Prometheus names of
 * `botline serve`'s /metrics, the same in the binary and the functions.
 */
export const CUSTOM_METRICS = {
  namespace: 'Botline',
  stageDimension: 'Stage',
  /** Counter, dimension `outcome`: accepted, duplicate, unauthorized, invalid, too_large, unavailable, internal_error (a request the function could not answer otherwise; `body_timeout` does not occur: API Gateway hands the body over whole). */
  webhookRequests: 'botline_webhook_requests_total',
  /** Counter, dimension `outcome`: written, already_done. */
  updatesProcessed: 'botline_updates_processed_total',
  /** Counter, no further dimension: processing attempts that failed. */
  processingFailures: 'botline_processing_failures_total',
  /** Counter, no further dimension: updates that ran out of attempts. */
  deadLettered: 'botline_dead_lettered_total',
  /** Histogram, seconds: receipt of an update to its records committed. */
  receiptToStored: 'botline_receipt_to_stored_seconds',
} as const;

export interface MonitoringProps {
  readonly name: (resource: string) => string;
  readonly api: apigwv2.HttpApi;
  readonly ingest: lambda.Function;
  readonly worker: lambda.Function;
  readonly queue: sqs.Queue;
  readonly deadLetters: sqs.Queue;
  readonly tables: dynamodb.Table[];
  /** The stage name: the `Stage` dimension of Botline's own metrics. */
  readonly stage: string;
  readonly alarmEmail?: string;
  /** The queue's visibility timeout: the oldest-message alarm is at two of them. */
  readonly queueVisibilityTimeout: Duration;
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
    const oldestAgeSeconds =
      ALARM_THRESHOLDS.oldestMessageAgeInVisibilityTimeouts * props.queueVisibilityTimeout.toSeconds();
    this.alarm('OldestMessageAge', {
      alarmName: name('queue-oldest-message-age'),
      alarmDescription: `An update has waited more than ${oldestAgeSeconds} s in the queue.`,
      metric: oldestAge,
      threshold: oldestAgeSeconds,
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

    // No label here: a labelled metric turns the alarm into a metric-math alarm.
    const deadLettered = this.botlineMetric(props, CUSTOM_METRICS.deadLettered, 'Sum');
    this.alarm('DeadLettered', {
      alarmName: name('dead-lettered'),
      alarmDescription:
        'Updates ran out of attempts (botline_dead_lettered_total): inspect with `botline dlq list`, then redrive.',
      metric: deadLettered,
      threshold: ALARM_THRESHOLDS.deadLetteredPer5Minutes,
    });

    this.dashboard = this.buildDashboard(props, { dlqDepth, oldestAge, workerErrorRate, deadLettered });
  }

  /** One of Botline's own metrics (EMF), for this stage, over 5 minutes. */
  private botlineMetric(
    props: MonitoringProps,
    metricName: string,
    statistic: string,
    label?: string,
    extraDimensions: Record<string, string> = {},
  ): cloudwatch.Metric {
    return new cloudwatch.Metric({
      namespace: CUSTOM_METRICS.namespace,
      metricName,
      dimensionsMap: { [CUSTOM_METRICS.stageDimension]: props.stage, ...extraDimensions },
      statistic,
      period: FIVE_MINUTES,
      label,
    });
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
      deadLettered: cloudwatch.Metric;
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
    const botline = (metricName: string, statistic: string, label: string, dims?: Record<string, string>) =>
      this.botlineMetric(props, metricName, statistic, label, dims);
    dashboard.addWidgets(
      widget('Updates received (webhook)', [
        botline(CUSTOM_METRICS.webhookRequests, 'Sum', 'received (accepted)', { outcome: 'accepted' }),
        botline(CUSTOM_METRICS.webhookRequests, 'Sum', 'duplicates', { outcome: 'duplicate' }),
      ]),
      widget(
        'Updates processed, failures, dead letters',
        [
          botline(CUSTOM_METRICS.updatesProcessed, 'Sum', 'processed (written)', { outcome: 'written' }),
          botline(CUSTOM_METRICS.updatesProcessed, 'Sum', 'processed (already done)', {
            outcome: 'already_done',
          }),
        ],
        [
          botline(CUSTOM_METRICS.processingFailures, 'Sum', 'failures'),
          metrics.deadLettered.with({ label: 'dead-lettered' }),
        ],
      ),
      widget('Receipt to stored (s)', [
        botline(CUSTOM_METRICS.receiptToStored, 'p99', 'receipt to stored p99'),
        botline(CUSTOM_METRICS.receiptToStored, 'p50', 'receipt to stored p50'),
      ]),
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
