/**
 * Jest runs the TypeScript tests through ts-jest, which transpiles each file on its own
 * (`isolatedModules` in tsconfig.json) instead of type-checking it. `npm test` type-checks the
 * whole project once with `tsc --noEmit` before Jest starts: much faster on two cores than
 * type-checking aws-cdk-lib again in every worker.
 */
module.exports = {
  testEnvironment: 'node',
  roots: ['<rootDir>/test'],
  testMatch: ['**/*.test.ts'],
  transform: {
    '^.+\\.ts$': 'ts-jest',
  },
  // Each test file synthesizes whole stacks; two workers for a two-core machine.
  maxWorkers: 2,
  testTimeout: 60000,
};
