/**
 * Everything the Botline stack can be told from the command line (`-c key=value`), read once,
 * checked, and turned into one typed `BotlineConfig`. Both `bin/botline.ts` and the tests go
 * through `readConfig`, so what the tests assert is what `cdk synth` and `cdk deploy` build.
 */
import * as fs from 'fs';
import * as path from 'path';
import { Node } from 'constructs';

/** A deployment of Botline. Each stage is its own stack with its own resources. */
export type Stage = 'dev' | 'prod';

/**
 * Where the Lambda code comes from.
 * - `real`: the zips that `scripts/build-lambdas.sh` (cargo lambda, `--output-format zip`) leaves
 *   under `target/lambda/` (or `-c ingestZip`, `-c workerZip`); the app refuses to synthesize
 *   when they are missing.
 * - `placeholder`: a stand-in `bootstrap` that only exits with an error, for offline synth and
 *   tests. A template built from it carries a CloudFormation rule that fails every deploy.
 */
export type LambdaAssets = 'real' | 'placeholder';

export interface BotlineConfig {
  readonly stage: Stage;
  /** AWS region; eu-north-1 unless `-c region=...`. */
  readonly region: string;
  /** Account from `CDK_DEFAULT_ACCOUNT` (set by the CDK CLI from the credentials in use), else none. */
  readonly account?: string;
  /** SQS FIFO instead of standard (`-c fifo=true`). */
  readonly fifo: boolean;
  /** X-Ray active tracing on both functions (`-c tracing=true`). */
  readonly tracing: boolean;
  /** E-mail subscribed to the alarm topic (`-c alarmEmail=...`); none means no subscription. */
  readonly alarmEmail?: string;
  readonly lambdaAssets: LambdaAssets;
  readonly ingestCode: string;
  readonly workerCode: string;
  /** HTTP API steady-state request rate per second (`-c apiRateLimit=...`). */
  readonly apiRateLimit: number;
  /** HTTP API burst, in requests (`-c apiBurstLimit=...`). */
  readonly apiBurstLimit: number;
  /** Reserved concurrency of the worker (`-c workerReservedConcurrency=...`); none by default. */
  readonly workerReservedConcurrency?: number;
  /**
   * The bot's own webhook handler as an http(s) URL (`-c handlerUrl=...`): the worker POSTs every
   * durable update there (`BOTLINE_HANDLER_URL`), with a generated secret token. Excludes
   * `handlerFunction`; neither means no forwarding.
   */
  readonly handlerUrl?: string;
  /**
   * The bot's own handler as a Lambda function (`-c handlerFunction=...`): a name in the stack's
   * account and region, or an ARN, optionally qualified with a version or alias. The worker
   * invokes it synchronously with every durable update (`BOTLINE_HANDLER_FUNCTION`) and may
   * invoke nothing else. Excludes `handlerUrl`.
   */
  readonly handlerFunction?: string;
  /**
   * The longest the handler may take at one update, in seconds (`-c handlerTimeout=...`,
   * `BOTLINE_HANDLER_TIMEOUT`); 30 by default, at most `MAX_HANDLER_TIMEOUT_SECONDS`. The
   * worker's timeout and the queue's visibility timeout follow it (`timeouts` in
   * botline-stack.ts).
   */
  readonly handlerTimeout: number;
  /**
   * Minutes between two ticks of the worker's schedule (`-c workerTickMinutes=...`), 1 by
   * default, at most `MAX_WORKER_TICK_MINUTES`: an EventBridge rule invokes the worker this often
   * to send the calls that are due with no traffic to bring it a batch (reminders, calls that
   * waited out Telegram's `retry_after` or a backoff). A reminder goes out within one tick of
   * its time. There is no switch to turn it off: without it, such calls of a quiet bot would
   * wait for the next update, however long that takes.
   */
  readonly workerTickMinutes: number;
}

export const DEFAULT_REGION = 'eu-north-1';

/** The repository root: `infra/` sits directly under it. */
export const REPO_ROOT = path.resolve(__dirname, '..', '..');

/** The stand-in Lambda code for offline synth; see `LambdaAssets`. */
export const PLACEHOLDER_ASSET_DIR = path.resolve(__dirname, '..', 'placeholder-asset');

/**
 * Where `scripts/build-lambdas.sh` (cargo lambda with `--output-format zip`) puts each
 * function's zip: `target/lambda/<binary>/bootstrap.zip` under the repository root.
 */
export function defaultZip(functionName: 'botline-ingest' | 'botline-worker'): string {
  return path.join(REPO_ROOT, 'target', 'lambda', functionName, 'bootstrap.zip');
}

/** Build command for the real zips, run from the repository root; quoted in errors and docs/deploy.md. */
export const BUILD_COMMAND = 'scripts/build-lambdas.sh';

/** `handlerTimeout` when not given, in seconds: the worker's own default (`BOTLINE_HANDLER_TIMEOUT`). */
export const DEFAULT_HANDLER_TIMEOUT_SECONDS = 30;

/**
 * The longest `handlerTimeout`, in seconds: the worker's timeout is the handler's plus room for
 * the batch's claim and the replies, and Lambda allows at most 900 s.
 */
export const MAX_HANDLER_TIMEOUT_SECONDS = 840;

/** `workerTickMinutes` when not given: a reminder goes out within a minute of its time. */
export const DEFAULT_WORKER_TICK_MINUTES = 1;

/**
 * The longest `workerTickMinutes`: the tick bounds how late a reminder or a retried call goes
 * out, and an hour is already long for either. A tick is dropped once it is a period old (see
 * botline-stack.ts), and Lambda keeps an asynchronous event for at most 6 hours.
 */
export const MAX_WORKER_TICK_MINUTES = 60;

export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

/** Reads and checks the context of `node` (the app), and the default account from `env`. */
export function readConfig(node: Node, env: NodeJS.ProcessEnv = process.env): BotlineConfig {
  const stage = readStage(node.tryGetContext('stage'));
  const lambdaAssets = readLambdaAssets(node.tryGetContext('lambdaAssets'));
  const apiRateLimit = readPositiveInt(node, 'apiRateLimit', 100);
  const apiBurstLimit = readPositiveInt(node, 'apiBurstLimit', 200);
  if (apiBurstLimit < apiRateLimit) {
    throw new ConfigError(
      `apiBurstLimit (${apiBurstLimit}) must be at least apiRateLimit (${apiRateLimit}): ` +
        'a burst smaller than one second of steady traffic throttles the steady traffic',
    );
  }
  const reserved = node.tryGetContext('workerReservedConcurrency');
  const alarmEmail = readOptionalString(node, 'alarmEmail');
  if (alarmEmail !== undefined && !/^[^@\s]+@[^@\s]+\.[^@\s]+$/.test(alarmEmail)) {
    throw new ConfigError(`alarmEmail is not an e-mail address: ${alarmEmail}`);
  }
  const region = readOptionalString(node, 'region') ?? DEFAULT_REGION;
  return {
    stage,
    region,
    account: env.CDK_DEFAULT_ACCOUNT || undefined,
    fifo: readBool(node, 'fifo'),
    tracing: readBool(node, 'tracing'),
    alarmEmail,
    lambdaAssets,
    ...resolveCode(node, lambdaAssets),
    apiRateLimit,
    apiBurstLimit,
    workerReservedConcurrency:
      reserved === undefined ? undefined : readPositiveInt(node, 'workerReservedConcurrency', 0),
    ...readHandler(node, region),
    workerTickMinutes: readWorkerTick(node),
  };
}

/** Minutes between the worker's ticks: 1 to `MAX_WORKER_TICK_MINUTES`. */
function readWorkerTick(node: Node): number {
  const minutes = readPositiveInt(node, 'workerTickMinutes', DEFAULT_WORKER_TICK_MINUTES);
  if (minutes > MAX_WORKER_TICK_MINUTES) {
    throw new ConfigError(
      `workerTickMinutes must be at most ${MAX_WORKER_TICK_MINUTES}, not ${minutes}: the tick is ` +
        'how late a reminder or a retried Telegram call may go out when no update comes',
    );
  }
  return minutes;
}

/** The bot's own handler (issue 16): a URL or a Lambda function, never both, and its timeout. */
function readHandler(
  node: Node,
  region: string,
): Pick<BotlineConfig, 'handlerUrl' | 'handlerFunction' | 'handlerTimeout'> {
  const handlerUrl = readOptionalString(node, 'handlerUrl');
  const handlerFunction = readOptionalString(node, 'handlerFunction');
  if (handlerUrl !== undefined && handlerFunction !== undefined) {
    throw new ConfigError(
      "handlerUrl and handlerFunction exclude each other: pick one, the URL of the bot's webhook " +
        'handler or the Lambda function that handles its updates',
    );
  }
  const handlerTimeout = readPositiveInt(node, 'handlerTimeout', DEFAULT_HANDLER_TIMEOUT_SECONDS);
  if (handlerTimeout > MAX_HANDLER_TIMEOUT_SECONDS) {
    throw new ConfigError(
      `handlerTimeout must be at most ${MAX_HANDLER_TIMEOUT_SECONDS} (seconds), not ${handlerTimeout}: ` +
        'the worker waits for the handler and needs time for its batch and the replies, within ' +
        "Lambda's 900 s",
    );
  }
  if (node.tryGetContext('handlerTimeout') !== undefined && !handlerUrl && !handlerFunction) {
    throw new ConfigError(
      'handlerTimeout needs handlerUrl or handlerFunction: without a handler it does nothing',
    );
  }
  if (handlerUrl !== undefined) {
    checkHandlerUrl(handlerUrl);
  }
  if (handlerFunction !== undefined) {
    checkHandlerFunction(handlerFunction, region);
  }
  return { handlerUrl, handlerFunction, handlerTimeout };
}

function checkHandlerUrl(value: string): void {
  let url: URL | undefined;
  try {
    url = new URL(value);
  } catch {
    url = undefined;
  }
  // The scheme, then the host at once: the URL parser would also take `https:host` and
  // `http:///host` as having a host, which is not what anyone means.
  if (
    !/^https?:\/\/[^/?#\s]/i.test(value) ||
    !url ||
    !['http:', 'https:'].includes(url.protocol) ||
    !url.hostname
  ) {
    throw new ConfigError(
      `handlerUrl must be an http:// or https:// URL with a host, not ${JSON.stringify(value)}`,
    );
  }
}

/** A function name as Lambda allows it: letters, digits, hyphens and underscores, 1 to 64. */
const FUNCTION_NAME = '[A-Za-z0-9_-]{1,64}';
/**
 * `arn:<partition>:lambda:<region>:<account>:function:<name>[:<qualifier>]`; the qualifier is a
 * version (digits), `$LATEST` or an alias.
 */
const FUNCTION_ARN = new RegExp(
  `^arn:aws(?:-[a-z]+)*:lambda:([a-z]{2,}(?:-[a-z]+)+-[0-9]+):[0-9]{12}:function:${FUNCTION_NAME}` +
    '(?::(?:\\$LATEST|[A-Za-z0-9_-]{1,128}))?$',
);

function checkHandlerFunction(value: string, region: string): void {
  if (new RegExp(`^${FUNCTION_NAME}$`).test(value)) {
    return;
  }
  const arn = FUNCTION_ARN.exec(value);
  if (!arn) {
    throw new ConfigError(
      'handlerFunction must be a Lambda function name (letters, digits, - and _, at most 64) or ' +
        'its ARN, arn:aws:lambda:REGION:ACCOUNT:function:NAME, with :VERSION or :ALIAS to pin ' +
        `one; not ${JSON.stringify(value)}`,
    );
  }
  if (arn[1] !== region) {
    throw new ConfigError(
      `handlerFunction is in ${arn[1]} but the stack deploys to ${region}: the worker invokes ` +
        'functions of its own region only',
    );
  }
}

function readStage(value: unknown): Stage {
  if (value === 'dev' || value === 'prod') {
    return value;
  }
  throw new ConfigError(
    value === undefined
      ? 'no stage: pass -c stage=dev or -c stage=prod'
      : `unknown stage ${JSON.stringify(value)}: pass -c stage=dev or -c stage=prod`,
  );
}

function readLambdaAssets(value: unknown): LambdaAssets {
  if (value === undefined || value === 'real') {
    return 'real';
  }
  if (value === 'placeholder') {
    return 'placeholder';
  }
  throw new ConfigError(`lambdaAssets must be "real" or "placeholder", not ${JSON.stringify(value)}`);
}

/** The code of both functions: the real zips (which must exist) or the placeholder directory. */
function resolveCode(node: Node, assets: LambdaAssets): { ingestCode: string; workerCode: string } {
  if (assets === 'placeholder') {
    if (node.tryGetContext('ingestZip') !== undefined || node.tryGetContext('workerZip') !== undefined) {
      throw new ConfigError('ingestZip/workerZip and lambdaAssets=placeholder exclude each other');
    }
    return { ingestCode: PLACEHOLDER_ASSET_DIR, workerCode: PLACEHOLDER_ASSET_DIR };
  }
  const ingestCode = path.resolve(readOptionalString(node, 'ingestZip') ?? defaultZip('botline-ingest'));
  const workerCode = path.resolve(readOptionalString(node, 'workerZip') ?? defaultZip('botline-worker'));
  const missing = [ingestCode, workerCode].filter((zip) => !isFile(zip));
  if (missing.length > 0) {
    throw new ConfigError(
      `Lambda code not found: ${missing.join(', ')}.\n` +
        `Build both zips from the repository root with: ${BUILD_COMMAND}\n` +
        'or point -c ingestZip=... -c workerZip=... at the zips. For an offline synth that will ' +
        'never be deployed, pass -c lambdaAssets=placeholder.',
    );
  }
  return { ingestCode, workerCode };
}

function isFile(file: string): boolean {
  try {
    return fs.statSync(file).isFile();
  } catch {
    return false;
  }
}

function readOptionalString(node: Node, key: string): string | undefined {
  const value = node.tryGetContext(key);
  if (value === undefined || value === null || value === '') {
    return undefined;
  }
  if (typeof value !== 'string') {
    throw new ConfigError(`${key} must be a string, not ${JSON.stringify(value)}`);
  }
  return value;
}

/** Context flags come as strings from `-c` and as booleans from cdk.json; both are accepted. */
function readBool(node: Node, key: string): boolean {
  const value = node.tryGetContext(key);
  if (value === undefined || value === false || value === 'false') {
    return false;
  }
  if (value === true || value === 'true') {
    return true;
  }
  throw new ConfigError(`${key} must be true or false, not ${JSON.stringify(value)}`);
}

function readPositiveInt(node: Node, key: string, fallback: number): number {
  const value = node.tryGetContext(key);
  if (value === undefined) {
    return fallback;
  }
  const number = typeof value === 'number' ? value : Number(value);
  if (!Number.isInteger(number) || number < 1) {
    throw new ConfigError(`${key} must be a positive integer, not ${JSON.stringify(value)}`);
  }
  return number;
}
