/**
 * What differs between stages, in one table. Everything else is the same in dev and prod, so a
 * change tested in dev is the change that reaches prod.
 */
import { RemovalPolicy } from 'aws-cdk-lib';
import { RetentionDays } from 'aws-cdk-lib/aws-logs';
import { Stage } from './config';

export interface StageSettings {
  /** Lambda log groups keep their events this long. */
  readonly logRetention: RetentionDays;
  /**
   * What `cdk destroy` does to everything that holds data: tables, queues, secrets, log groups.
   * dev: delete it, so destroy leaves nothing behind. prod: keep it (CloudFormation forgets it).
   */
  readonly dataRemovalPolicy: RemovalPolicy;
  /** DynamoDB point-in-time recovery (35 days of continuous backups). */
  readonly pointInTimeRecovery: boolean;
  /** DynamoDB deletion protection: the tables cannot be deleted by any API call while it is on. */
  readonly tableDeletionProtection: boolean;
}

export const STAGE_SETTINGS: Record<Stage, StageSettings> = {
  dev: {
    logRetention: RetentionDays.TWO_WEEKS,
    dataRemovalPolicy: RemovalPolicy.DESTROY,
    pointInTimeRecovery: false,
    tableDeletionProtection: false,
  },
  prod: {
    logRetention: RetentionDays.ONE_MONTH,
    dataRemovalPolicy: RemovalPolicy.RETAIN,
    pointInTimeRecovery: true,
    tableDeletionProtection: true,
  },
};
