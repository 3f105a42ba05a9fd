/**
 * Synthesizes the Botline app the way `cdk synth` does (same entry point, same cdk.json context)
 * and helps read the template: logical ids by name, and intrinsic functions rendered as short
 * strings so that IAM resources can be compared with what they should be.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { App } from 'aws-cdk-lib';
import { Template } from 'aws-cdk-lib/assertions';
import { buildApp } from '../lib/app';
import { BotlineStack } from '../lib/botline-stack';

const CDK_JSON = path.resolve(__dirname, '..', 'cdk.json');

/** Context of cdk.json (feature flags), plus the test's own. */
export function appContext(extra: Record<string, unknown>): Record<string, unknown> {
  const cdkJson = JSON.parse(fs.readFileSync(CDK_JSON, 'utf8')) as { context?: Record<string, unknown> };
  return { ...cdkJson.context, ...extra };
}

export interface Synthesized {
  readonly stack: BotlineStack;
  readonly template: Template;
  readonly json: CfnTemplate;
  /** The cloud assembly directory (assets are staged here). */
  readonly outdir: string;
}

const outdirs: string[] = [];
afterAll(() => {
  for (const dir of outdirs.splice(0)) {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

/** Synthesizes with placeholder Lambda code unless the context says otherwise. */
export function synth(context: Record<string, unknown>, env: NodeJS.ProcessEnv = {}): Synthesized {
  const outdir = fs.mkdtempSync(path.join(os.tmpdir(), 'botline-infra-test-'));
  outdirs.push(outdir);
  const app = new App({ outdir, context: appContext({ lambdaAssets: 'placeholder', ...context }) });
  const stack = buildApp(app, env);
  const template = quietSynth(() => Template.fromStack(stack));
  return { stack, template, json: template.toJSON() as CfnTemplate, outdir };
}

/**
 * Runs a synth, swallowing the report CDK prints for the placeholder-code warning (asserted in
 * config.test.ts) and failing on anything else it prints: an unexpected validation finding.
 */
export function quietSynth<T>(run: () => T): T {
  const printed: string[] = [];
  const spy = jest.spyOn(console, 'error').mockImplementation((...args: unknown[]) => {
    printed.push(args.map(String).join(' '));
  });
  try {
    return run();
  } finally {
    spy.mockRestore();
    const unexpected = printed.filter(
      (text) => !/WARNING This template was synthesized with -c lambdaAssets=placeholder/.test(text),
    );
    if (unexpected.length > 0) {
      throw new Error(`synth printed unexpected findings:\n${unexpected.join('\n')}`);
    }
  }
}

export interface CfnResource {
  Type: string;
  Properties?: Record<string, any>;
  DeletionPolicy?: string;
  UpdateReplacePolicy?: string;
  DependsOn?: string[];
}

export interface CfnTemplate {
  Resources: Record<string, CfnResource>;
  Outputs?: Record<string, { Value: unknown; Description?: string }>;
  Parameters?: Record<string, any>;
  Rules?: Record<string, any>;
}

/** Resources of one type, by logical id. */
export function resourcesOfType(json: CfnTemplate, type: string): Record<string, CfnResource> {
  return Object.fromEntries(Object.entries(json.Resources).filter(([, r]) => r.Type === type));
}

/** The logical id of the one resource of `type` whose property `key` is `value`. */
export function logicalId(json: CfnTemplate, type: string, key: string, value: unknown): string {
  const ids = Object.entries(resourcesOfType(json, type))
    .filter(([, r]) => JSON.stringify(r.Properties?.[key]) === JSON.stringify(value))
    .map(([id]) => id);
  if (ids.length !== 1) {
    throw new Error(`expected one ${type} with ${key}=${JSON.stringify(value)}, found ${ids.length}`);
  }
  return ids[0];
}

/**
 * Renders an intrinsic as a string: `{Ref: X}` → `ref(X)`, `{Fn::GetAtt: [X, A]}` → `X.A`,
 * `Fn::Join` → the parts joined, `Fn::Sub` → its template. Anything else is JSON.
 */
export function render(value: unknown): string {
  if (typeof value === 'string') {
    return value;
  }
  if (value && typeof value === 'object' && !Array.isArray(value)) {
    const entries = Object.entries(value as Record<string, unknown>);
    if (entries.length === 1) {
      const [fn, arg] = entries[0];
      if (fn === 'Ref') {
        return `ref(${arg as string})`;
      }
      if (fn === 'Fn::GetAtt') {
        return (arg as string[]).join('.');
      }
      if (fn === 'Fn::Join') {
        const [separator, parts] = arg as [string, unknown[]];
        return parts.map(render).join(separator);
      }
      if (fn === 'Fn::Sub') {
        return typeof arg === 'string' ? arg : render((arg as unknown[])[0]);
      }
    }
  }
  return JSON.stringify(value);
}

/** One allowed (or denied) action on one resource, from an IAM policy statement. */
export interface Grant {
  readonly effect: 'Allow' | 'Deny';
  readonly action: string;
  readonly resource: string;
}

interface Statement {
  Effect: 'Allow' | 'Deny';
  Action?: string | string[];
  NotAction?: unknown;
  Resource?: unknown;
  NotResource?: unknown;
}

/** Every (action, resource) pair of a policy document, resources rendered with `render`. */
export function grantsOf(document: { Statement: Statement[] }): Grant[] {
  return document.Statement.flatMap((statement) => {
    if (statement.NotAction !== undefined || statement.NotResource !== undefined) {
      throw new Error(`NotAction/NotResource are not expected here: ${JSON.stringify(statement)}`);
    }
    const actions = ([] as string[]).concat(statement.Action ?? []);
    const resources = ([] as unknown[]).concat(statement.Resource ?? []);
    return actions.flatMap((action) =>
      resources.map((resource) => ({ effect: statement.Effect, action, resource: render(resource) })),
    );
  });
}

/**
 * Every grant an IAM role holds: its inline policies, the AWS::IAM::Policy resources attached to
 * it, and (asserted empty by the tests) its managed policies.
 */
export function roleGrants(
  json: CfnTemplate,
  roleId: string,
): { grants: Grant[]; managedPolicies: unknown[] } {
  const role = json.Resources[roleId];
  const inline = (role.Properties?.Policies ?? []) as { PolicyDocument: { Statement: Statement[] } }[];
  const attached = Object.values(resourcesOfType(json, 'AWS::IAM::Policy')).filter((policy) =>
    ((policy.Properties?.Roles ?? []) as unknown[]).some((r) => render(r) === `ref(${roleId})`),
  );
  return {
    grants: [
      ...inline,
      ...attached.map((p) => p.Properties as { PolicyDocument: { Statement: Statement[] } }),
    ].flatMap((p) => grantsOf(p.PolicyDocument)),
    managedPolicies: (role.Properties?.ManagedPolicyArns ?? []) as unknown[],
  };
}
