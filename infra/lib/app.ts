/** Builds the Botline stack of the stage named in the app's context (see `readConfig`). */
import { App } from 'aws-cdk-lib';
import { BotlineStack } from './botline-stack';
import { readConfig } from './config';

export function buildApp(app: App, env: NodeJS.ProcessEnv = process.env): BotlineStack {
  const config = readConfig(app.node, env);
  return new BotlineStack(app, `botline-${config.stage}`, {
    config,
    env: { account: config.account, region: config.region },
  });
}
