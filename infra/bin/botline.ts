#!/usr/bin/env node
/**
 * The CDK app: `npx cdk synth|deploy|destroy -c stage=dev|prod [...]`. Options are listed in
 * docs/deploy.md and read by lib/config.ts.
 */
import { App } from 'aws-cdk-lib';
import { buildApp } from '../lib/app';
import { ConfigError } from '../lib/config';

const app = new App();
try {
  buildApp(app);
} catch (error) {
  if (error instanceof ConfigError) {
    console.error(`botline infra: ${error.message}`);
    process.exit(1);
  }
  throw error;
}
