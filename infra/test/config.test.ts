/**
 * The context the app accepts (`-c key=value`), what it refuses, and where the Lambda code comes
 * from: the real zips, or the placeholder that a template can never be deployed with.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { App, Token } from 'aws-cdk-lib';
import { Annotations, Match } from 'aws-cdk-lib/assertions';
import { buildApp } from '../lib/app';
import { BUILD_COMMAND, ConfigError, defaultZip, PLACEHOLDER_ASSET_DIR, REPO_ROOT } from '../lib/config';
import { appContext, logicalId, quietSynth, resourcesOfType, synth } from './support';

/** Builds the app with exactly this context (no placeholder default), to see what it throws. */
function build(context: Record<string, unknown>) {
  const outdir = fs.mkdtempSync(path.join(os.tmpdir(), 'botline-infra-config-'));
  try {
    return buildApp(new App({ outdir, context: appContext(context) }), {});
  } finally {
    fs.rmSync(outdir, { recursive: true, force: true });
  }
}

describe('stage', () => {
  test('is required', () => {
    expect(() => build({ lambdaAssets: 'placeholder' })).toThrow(
      /no stage: pass -c stage=dev or -c stage=prod/,
    );
  });

  test('must be dev or prod', () => {
    expect(() => build({ stage: 'staging', lambdaAssets: 'placeholder' })).toThrow(ConfigError);
  });
});

describe('region and account', () => {
  test('eu-north-1 by default, whatever the CLI profile says', () => {
    const { stack } = synth({ stage: 'dev' }, { CDK_DEFAULT_REGION: 'us-east-1' });
    expect(stack.region).toBe('eu-north-1');
  });

  test('-c region overrides it, and the template follows', () => {
    const { stack, json } = synth({ stage: 'dev', region: 'eu-west-1' });
    expect(stack.region).toBe('eu-west-1');
    expect(JSON.stringify(json)).not.toContain('eu-north-1');
  });

  test('the account comes from CDK_DEFAULT_ACCOUNT when the CLI has credentials, and none is required', () => {
    expect(synth({ stage: 'dev' }, { CDK_DEFAULT_ACCOUNT: '123456789012' }).stack.account).toBe(
      '123456789012',
    );
    expect(Token.isUnresolved(synth({ stage: 'dev' }, {}).stack.account)).toBe(true);
  });
});

describe('Lambda code', () => {
  let dir: string;
  let ingestZip: string;
  let workerZip: string;
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'botline-zips-'));
    ingestZip = path.join(dir, 'ingest.zip');
    workerZip = path.join(dir, 'worker.zip');
    fs.writeFileSync(ingestZip, 'not really a zip: ingest');
    fs.writeFileSync(workerZip, 'not really a zip: worker');
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  test('defaults to the zips scripts/build-lambdas.sh builds under target/lambda (cargo lambda --output-format zip)', () => {
    expect(defaultZip('botline-ingest')).toBe(
      path.join(REPO_ROOT, 'target/lambda/botline-ingest/bootstrap.zip'),
    );
    expect(defaultZip('botline-worker')).toBe(
      path.join(REPO_ROOT, 'target/lambda/botline-worker/bootstrap.zip'),
    );
    expect(fs.existsSync(path.join(REPO_ROOT, 'infra', 'cdk.json'))).toBe(true);
  });

  test('missing zips stop the synth, naming the build command and the placeholder option', () => {
    const missing = path.join(dir, 'missing.zip');
    let error: unknown;
    try {
      build({ stage: 'dev', ingestZip: missing, workerZip });
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(ConfigError);
    const message = (error as Error).message;
    expect(message).toContain(missing);
    expect(message).not.toContain(workerZip);
    expect(message).toContain(BUILD_COMMAND);
    expect(BUILD_COMMAND).toBe('scripts/build-lambdas.sh');
    expect(message).toContain('scripts/build-lambdas.sh');
    expect(message).toContain('-c lambdaAssets=placeholder');
  });

  test('real zips: each function gets its own, and the template has no refusal rule', () => {
    const { json, outdir, stack } = synth({ stage: 'prod', lambdaAssets: 'real', ingestZip, workerZip });
    expect(json.Rules?.RefusePlaceholderLambdaCode).toBeUndefined();
    expect(json.Parameters?.LambdaCode).toBeUndefined();
    expect(Annotations.fromStack(stack).findWarning('*', Match.stringLikeRegexp('placeholder'))).toEqual([]);
    for (const [fn, zip] of [
      ['ingest', ingestZip],
      ['worker', workerZip],
    ]) {
      const code =
        json.Resources[logicalId(json, 'AWS::Lambda::Function', 'FunctionName', `botline-prod-${fn}`)]
          .Properties!.Code;
      expect(code.S3Key).toMatch(/^[0-9a-f]{64}\.zip$/);
      const staged = path.join(outdir, `asset.${code.S3Key.replace(/\.zip$/, '')}.zip`);
      expect(fs.readFileSync(staged, 'utf8')).toBe(fs.readFileSync(zip, 'utf8'));
    }
  });

  test('placeholder: a warning at synth, and the template refuses to deploy', () => {
    const { json, stack } = synth({ stage: 'dev', lambdaAssets: 'placeholder' });
    const annotations = quietSynth(() => Annotations.fromStack(stack));
    expect(annotations.findWarning('*', Match.stringLikeRegexp('lambdaAssets=placeholder'))).toHaveLength(1);
    expect(json.Parameters!.LambdaCode).toEqual(
      expect.objectContaining({
        Type: 'String',
        Default: 'placeholder',
        AllowedValues: ['placeholder', 'real'],
      }),
    );
    expect(json.Rules!.RefusePlaceholderLambdaCode.Assertions[0].Assert).toEqual({
      'Fn::Equals': [{ Ref: 'LambdaCode' }, 'real'],
    });
  });

  test('the placeholder is an executable bootstrap that only fails', () => {
    const bootstrap = path.join(PLACEHOLDER_ASSET_DIR, 'bootstrap');
    expect(fs.statSync(bootstrap).mode & 0o111).not.toBe(0);
    expect(fs.readFileSync(bootstrap, 'utf8')).toMatch(/exit 1\s*$/);
  });

  test('placeholder and explicit zips exclude each other', () => {
    expect(() => build({ stage: 'dev', lambdaAssets: 'placeholder', ingestZip })).toThrow(
      /exclude each other/,
    );
  });

  test('lambdaAssets takes real or placeholder only', () => {
    expect(() => build({ stage: 'dev', lambdaAssets: 'fake' })).toThrow(ConfigError);
  });
});

describe('FIFO', () => {
  test('-c fifo=true makes both queues FIFO, deduplicated by the id the ingest function sets', () => {
    const { json } = synth({ stage: 'dev', fifo: 'true' });
    const queues = Object.values(resourcesOfType(json, 'AWS::SQS::Queue')).map((q) => q.Properties!);
    expect(queues.map((q) => q.QueueName).sort()).toEqual(['botline-dev-dlq.fifo', 'botline-dev-queue.fifo']);
    for (const queue of queues) {
      expect(queue.FifoQueue).toBe(true);
      expect(queue.SqsManagedSseEnabled).toBe(true);
    }
    const main = queues.find((q) => q.QueueName === 'botline-dev-queue.fifo')!;
    expect(main.ContentBasedDeduplication).toBe(false);
    expect(main.RedrivePolicy.maxReceiveCount).toBe(3);
    expect(main.VisibilityTimeout).toBe(360);
  });

  test('-c fifo=true gives both functions BOTLINE_FIFO_GROUP=chat; a standard queue gives none', () => {
    const variables = (context: Record<string, unknown>) =>
      Object.values(resourcesOfType(synth(context).json, 'AWS::Lambda::Function')).map(
        (f) => f.Properties!.Environment.Variables,
      );
    const fifo = variables({ stage: 'dev', fifo: 'true' });
    expect(fifo).toHaveLength(2);
    for (const v of fifo) {
      expect(v.BOTLINE_FIFO_GROUP).toBe('chat');
    }
    for (const v of variables({ stage: 'dev' })) {
      expect(v.BOTLINE_FIFO_GROUP).toBeUndefined();
    }
  });

  test('fifo accepts true or false only', () => {
    expect(() => build({ stage: 'dev', lambdaAssets: 'placeholder', fifo: 'yes' })).toThrow(ConfigError);
    expect(() => build({ stage: 'dev', lambdaAssets: 'placeholder', fifo: false })).not.toThrow();
  });
});

describe('X-Ray', () => {
  test('off by default, active on both functions with -c tracing=true', () => {
    const functions = (context: Record<string, unknown>) =>
      Object.values(resourcesOfType(synth(context).json, 'AWS::Lambda::Function')).map(
        (f) => f.Properties!.TracingConfig,
      );
    expect(functions({ stage: 'prod' })).toEqual([undefined, undefined]);
    expect(functions({ stage: 'prod', tracing: 'true' })).toEqual([{ Mode: 'Active' }, { Mode: 'Active' }]);
  });
});

describe('throttling and concurrency', () => {
  test('-c apiRateLimit / apiBurstLimit set the stage throttling', () => {
    const { template } = synth({ stage: 'dev', apiRateLimit: '20', apiBurstLimit: '50' });
    template.hasResourceProperties('AWS::ApiGatewayV2::Stage', {
      DefaultRouteSettings: { ThrottlingRateLimit: 20, ThrottlingBurstLimit: 50 },
    });
  });

  test('a burst below the rate, or a non-integer, is refused', () => {
    expect(() => build({ stage: 'dev', lambdaAssets: 'placeholder', apiRateLimit: '500' })).toThrow(
      /apiBurstLimit/,
    );
    expect(() => build({ stage: 'dev', lambdaAssets: 'placeholder', apiRateLimit: '1.5' })).toThrow(
      /positive integer/,
    );
  });

  test('-c workerReservedConcurrency reserves concurrency for the worker only', () => {
    const { json } = synth({ stage: 'prod', workerReservedConcurrency: '10' });
    const reserved = (fn: string) =>
      json.Resources[logicalId(json, 'AWS::Lambda::Function', 'FunctionName', `botline-prod-${fn}`)]
        .Properties!.ReservedConcurrentExecutions;
    expect(reserved('worker')).toBe(10);
    expect(reserved('ingest')).toBeUndefined();
  });
});

describe("the worker's tick (issue 19)", () => {
  const base = { stage: 'dev', lambdaAssets: 'placeholder' };
  const tick = (json: ReturnType<typeof synth>['json']) =>
    json.Resources[logicalId(json, 'AWS::Events::Rule', 'Name', 'botline-dev-worker-tick')].Properties!;

  test('every minute by default', () => {
    expect(build(base).config.workerTickMinutes).toBe(1);
    expect(tick(synth({ stage: 'dev' }).json).ScheduleExpression).toBe('rate(1 minute)');
  });

  test('-c workerTickMinutes sets the rate, and how long a tick is kept', () => {
    const { json } = synth({ stage: 'dev', workerTickMinutes: '5' });
    expect(tick(json).ScheduleExpression).toBe('rate(5 minutes)');
    expect(tick(json).Targets[0].RetryPolicy.MaximumEventAgeInSeconds).toBe(300);
    const [invokeConfig] = Object.values(resourcesOfType(json, 'AWS::Lambda::EventInvokeConfig'));
    expect(invokeConfig.Properties!.MaximumEventAgeInSeconds).toBe(300);
  });

  test('1 to 60 minutes, whole ones', () => {
    for (const minutes of ['1', '60', 15]) {
      expect(build({ ...base, workerTickMinutes: minutes }).config.workerTickMinutes).toBe(Number(minutes));
    }
    for (const minutes of ['0', '-1', '1.5', 'often', '']) {
      expect(() => build({ ...base, workerTickMinutes: minutes })).toThrow(
        /workerTickMinutes must be a positive integer/,
      );
    }
    expect(() => build({ ...base, workerTickMinutes: '61' })).toThrow(/workerTickMinutes must be at most 60/);
  });
});

describe('alarm e-mail', () => {
  test('must look like an address', () => {
    expect(() => build({ stage: 'dev', lambdaAssets: 'placeholder', alarmEmail: 'ops' })).toThrow(
      /alarmEmail/,
    );
  });
});

describe("the bot's own handler (issue 16)", () => {
  const base = { stage: 'dev', lambdaAssets: 'placeholder' };
  /** The message of the ConfigError the context is refused with. */
  const refusal = (context: Record<string, unknown>): string => {
    let error: unknown;
    try {
      build({ ...base, ...context });
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(ConfigError);
    return (error as Error).message;
  };

  test('handlerUrl and handlerFunction together: pick one', () => {
    const message = refusal({
      handlerUrl: 'https://bot.example.com/telegram',
      handlerFunction: 'my-bot-handler',
    });
    expect(message).toMatch(/handlerUrl and handlerFunction exclude each other: pick one/);
  });

  test.each([
    'ftp://x',
    'https://',
    'bot.example.com/telegram',
    'https:bot.example.com',
    'http:///path',
    'not a url',
  ])('handlerUrl=%s is refused: an http(s) URL with a host only', (url) => {
    expect(refusal({ handlerUrl: url })).toMatch(
      /^handlerUrl must be an http:\/\/ or https:\/\/ URL with a host/,
    );
  });

  test.each(['https://bot.example.com/telegram', 'http://10.0.0.5:3000/bot?x=1', 'HTTPS://BOT.EXAMPLE.COM/'])(
    'handlerUrl=%s is accepted',
    (url) => {
      expect(() => build({ ...base, handlerUrl: url })).not.toThrow();
    },
  );

  test.each([
    'my bot handler',
    'x'.repeat(65),
    'my-bot-handler:live', // a qualifier needs the full ARN
    'function:my-bot-handler',
    '123456789012:function:my-bot-handler',
    'arn:aws:lambda:eu-north-1:1234:function:my-bot-handler',
    'arn:aws:lambda:eu-north-1:123456789012:function:*',
    'arn:aws:lambda:eu-north-1:123456789012:function:my-bot-handler:*',
    'arn:aws:lambda:eu-north-1:123456789012:layer:my-layer',
    'arn:aws:iam::123456789012:role/my-bot-handler',
  ])('handlerFunction=%s is refused: a name or a function ARN only', (name) => {
    expect(refusal({ handlerFunction: name })).toMatch(/^handlerFunction must be a Lambda function name/);
  });

  test.each([
    'my-bot-handler',
    'My_Bot_Handler2',
    'x'.repeat(64),
    'arn:aws:lambda:eu-north-1:123456789012:function:my-bot-handler',
    'arn:aws:lambda:eu-north-1:123456789012:function:my-bot-handler:live',
    'arn:aws:lambda:eu-north-1:123456789012:function:my-bot-handler:42',
    'arn:aws:lambda:eu-north-1:123456789012:function:my-bot-handler:$LATEST',
  ])('handlerFunction=%s is accepted', (name) => {
    expect(() => build({ ...base, handlerFunction: name })).not.toThrow();
  });

  test("an ARN in another region than the stack's is refused; in that region it is accepted", () => {
    const arn = 'arn:aws:lambda:us-east-1:123456789012:function:my-bot-handler';
    expect(refusal({ handlerFunction: arn })).toMatch(
      /handlerFunction is in us-east-1 but the stack deploys to eu-north-1/,
    );
    expect(() => build({ ...base, region: 'us-east-1', handlerFunction: arn })).not.toThrow();
    expect(() =>
      build({
        ...base,
        region: 'cn-north-1',
        handlerFunction: 'arn:aws-cn:lambda:cn-north-1:123456789012:function:my-bot-handler',
      }),
    ).not.toThrow();
  });

  test.each(['0', '841', 'abc', '1.5', '-30', '30s'])('handlerTimeout=%s is refused', (timeout) => {
    const message = refusal({ handlerFunction: 'my-bot-handler', handlerTimeout: timeout });
    expect(message).toMatch(/^handlerTimeout must be (a positive integer|at most 840 \(seconds\))/);
    expect(message).toContain(timeout);
  });

  test('handlerTimeout: 1 to 840 seconds, 30 by default', () => {
    for (const timeout of ['1', '840', 300]) {
      expect(() =>
        build({ ...base, handlerUrl: 'https://bot.example.com/', handlerTimeout: timeout }),
      ).not.toThrow();
    }
    expect(build({ ...base, handlerFunction: 'my-bot-handler' }).config.handlerTimeout).toBe(30);
  });

  test('handlerTimeout without a handler is refused: it would do nothing', () => {
    expect(refusal({ handlerTimeout: '60' })).toMatch(/handlerTimeout needs handlerUrl or handlerFunction/);
  });

  test('no handler: nothing in the config', () => {
    const { config } = build(base);
    expect(config.handlerUrl).toBeUndefined();
    expect(config.handlerFunction).toBeUndefined();
  });
});
