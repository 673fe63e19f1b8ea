import js from '@eslint/js'
import tseslint from 'typescript-eslint'

export default tseslint.config(
  { ignores: ['**/node_modules/**', '**/build/**', '**/.turbo/**'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    rules: {
      'no-console': 'error',
      '@typescript-eslint/consistent-type-imports': 'error',
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }]
    }
  },
  {
    files: ['**/*.js'],
    languageOptions: { globals: { process: 'readonly', console: 'readonly' } }
  },
  {
    // The daemon gets records and identity from @strata/records: it must not need the step runner (or YAML) to start.
    files: ['packages/daemon/src/**'],
    rules: {
      'no-restricted-imports': ['error', {
        paths: [{ name: '@strata/runner', message: 'the daemon does not depend on the runner: records and identity come from @strata/records' }],
        patterns: [{ group: ['@strata/runner/*', '**/runner/src/**'], message: 'the daemon does not depend on the runner: records and identity come from @strata/records' }]
      }]
    }
  },
  {
    files: ['packages/cli/src/**', 'packages/cli/bin/**', 'scripts/**'],
    rules: { 'no-console': 'off' }
  }
)
