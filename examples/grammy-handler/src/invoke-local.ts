// Runs dist/lambda.js's handler once, as Lambda's Node runtime would: the event (an update) on
// stdin, the result as JSON on stdout; a thrown error as Lambda's error document
// ({"errorType","errorMessage"}) on stdout with exit code 1. Used by Botline's tests behind
// their stand-in of Lambda's Invoke API: no emulator here runs Lambda functions.
import { readFileSync } from "node:fs";

const event = JSON.parse(readFileSync(0, "utf8"));
try {
  const { handler } = await import("./lambda.js");
  const result = await handler(event);
  process.stdout.write(JSON.stringify(result ?? null));
} catch (error) {
  const e = error instanceof Error ? error : new Error(String(error));
  process.stdout.write(JSON.stringify({ errorType: e.name, errorMessage: e.message }));
  process.exitCode = 1;
}
