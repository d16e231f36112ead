// Builds dist/: ES module and CommonJS bundles (esbuild) of the browser
// entry (index) and the Node entry (node, adds FileStore), type
// definitions (tsc), and a minified browser bundle whose gzipped size the
// tests hold to the budget.
import { build } from 'esbuild';
import { execFileSync } from 'node:child_process';
import { rmSync } from 'node:fs';

rmSync('dist', { recursive: true, force: true });
const common = { bundle: true, target: 'es2020', sourcemap: false, logLevel: 'warning' };
for (const entry of ['index', 'node']) {
  const platform = entry === 'node' ? 'node' : 'neutral';
  await build({ ...common, platform, entryPoints: [`src/${entry}.ts`], format: 'esm', outfile: `dist/${entry}.mjs` });
  await build({ ...common, platform, entryPoints: [`src/${entry}.ts`], format: 'cjs', outfile: `dist/${entry}.cjs` });
}
// What a browser app ships: minified ESM, for the size budget and the demo.
await build({ ...common, platform: 'browser', minify: true, entryPoints: ['src/index.ts'], format: 'esm', outfile: 'dist/outpost.min.mjs' });
execFileSync(process.execPath, ['node_modules/typescript/bin/tsc', '-p', 'tsconfig.json'], { stdio: 'inherit' });
