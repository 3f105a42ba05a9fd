#!/usr/bin/env bash
# Tests the CDK app in infra/ offline, with no AWS account and no credentials:
#   1. npm ci (exact versions from package-lock.json),
#   2. prettier --check, then npm test: tsc --noEmit and the Jest tests on the synthesized
#      templates,
#   3. cdk synth of dev, prod, a dev variant (FIFO, X-Ray, alarm e-mail) and the two ways of
#      forwarding to the bot's own handler (a Lambda function, a URL) with the CDK CLI, using
#      the placeholder Lambda code (the real zips are built and checked elsewhere),
#   4. cfn-lint (pinned in requirements-cfn-lint.txt, installed from PyPI into infra/.venv) on
#      every synthesized template.
# Any failure, including any cfn-lint error or warning, fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in node npm python3; do
  command -v "$tool" >/dev/null || {
    echo "infra tests need $tool (Node.js 20+ with npm, Python 3.9+)" >&2
    exit 1
  }
done

# Offline and quiet: no instance-metadata credential lookups, no CLI telemetry or notices.
export AWS_EC2_METADATA_DISABLED=true
export CDK_DISABLE_CLI_TELEMETRY=true
export CDK_DISABLE_VERSION_CHECK=true
export npm_config_update_notifier=false

started=$SECONDS

echo "== infra: npm ci"
npm ci --no-audit --no-fund --loglevel=error

echo "== infra: prettier --check"
npm run --silent format:check

echo "== infra: npm test (tsc --noEmit, jest)"
rm -f .jest-results.json
npm test -- --json --outputFile=.jest-results.json

echo "== infra: cdk synth (placeholder Lambda code)"
rm -rf cdk.out
synth() {
  local out=$1
  shift
  npx cdk synth --quiet --no-notices --output "cdk.out/$out" -c lambdaAssets=placeholder "$@"
}
synth dev -c stage=dev
synth prod -c stage=prod
synth dev-variant -c stage=dev -c fifo=true -c tracing=true -c alarmEmail=ops@example.com
synth dev-handler-function -c stage=dev -c handlerFunction=my-bot-handler -c handlerTimeout=120
synth prod-handler-url -c stage=prod -c handlerUrl=https://bot.example.com/telegram
templates=(cdk.out/dev/botline-dev.template.json cdk.out/prod/botline-prod.template.json
  cdk.out/dev-variant/botline-dev.template.json
  cdk.out/dev-handler-function/botline-dev.template.json
  cdk.out/prod-handler-url/botline-prod.template.json)
for template in "${templates[@]}"; do
  [ -s "$template" ] || {
    echo "cdk synth did not write $template" >&2
    exit 1
  }
done

echo "== infra: cfn-lint"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv || {
    echo "python3 -m venv failed (on Debian: apt-get install python3-venv)" >&2
    exit 1
  }
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-cfn-lint.txt
.venv/bin/cfn-lint --version
# W3005 (a DependsOn that a GetAtt already implies) is how CDK orders a function after its role;
# it is harmless and not ours to change. Everything else fails the run.
.venv/bin/cfn-lint --regions eu-north-1 --ignore-checks W3005 -- "${templates[@]}"
echo "cfn-lint: ${#templates[@]} templates, no findings"

node -e '
  const r = require("./.jest-results.json");
  console.log(`infra: ${r.numPassedTests} passed, ${r.numFailedTests} failed`);
'
echo "infra tests took $((SECONDS - started)) s"
