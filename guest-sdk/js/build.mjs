#!/usr/bin/env node
// Builds a JavaScript or TypeScript foldhost plugin into a WebAssembly
// component: tsc type-checks the project if it has a tsconfig.json, esbuild
// bundles the entry with this SDK (stripping TypeScript types), then
// componentize-qjs embeds the bundle in the QuickJS engine with every WASI
// import stubbed out, so the component imports only the host's log.
//
// usage: node build.mjs [PROJECT_DIR | ENTRY_FILE] [-o OUT.wasm] [--wit DIR] [--toolchain DIR]
//
// --toolchain names the folder whose node_modules hold esbuild and
// componentize-qjs (default: this SDK's own folder, after `npm ci`).

import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { basename, dirname, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const SDK = dirname(fileURLToPath(import.meta.url));
const ENTRIES = ["src/index.ts", "src/index.js", "index.ts", "index.js"];
const WORLDS = { aggregate: "aggregate-plugin", projection: "projection-plugin" };
const USAGE = "usage: node build.mjs [PROJECT_DIR | ENTRY_FILE] [-o OUT.wasm] [--wit DIR] [--toolchain DIR]";

class BuildError extends Error {}

function parseArgs(argv) {
  const args = { target: ".", out: undefined, wit: undefined, toolchain: SDK };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) throw new BuildError(`${arg} needs a value\n${USAGE}`);
      return argv[++i];
    };
    if (arg === "-o" || arg === "--out") args.out = value();
    else if (arg === "--wit") args.wit = value();
    else if (arg === "--toolchain") args.toolchain = resolve(value());
    else if (arg === "-h" || arg === "--help") {
      console.log(USAGE);
      process.exit(0);
    } else if (arg.startsWith("-")) throw new BuildError(`unknown option ${arg}\n${USAGE}`);
    else args.target = arg;
  }
  return args;
}

/** The project directory and its entry module. */
function locate(target) {
  const path = resolve(target);
  if (!existsSync(path)) throw new BuildError(`${target} does not exist`);
  if (statSync(path).isFile()) return { project: dirname(path), entry: path };
  const manifest = join(path, "package.json");
  const main = existsSync(manifest) ? JSON.parse(readFileSync(manifest, "utf8")).main : undefined;
  const candidates = main ? [main] : ENTRIES;
  const entry = candidates.map((file) => join(path, file)).find((file) => existsSync(file));
  if (!entry) throw new BuildError(`no entry module in ${path}: expected ${candidates.join(" or ")}`);
  return { project: path, entry };
}

function projectName(project) {
  const manifest = join(project, "package.json");
  const name = existsSync(manifest) ? JSON.parse(readFileSync(manifest, "utf8")).name : undefined;
  return (name ?? basename(project)).replace(/^@[^/]+\//, "");
}

function witDir(wit) {
  const dir = wit ? resolve(wit) : join(SDK, "../../wit");
  if (!existsSync(dir)) {
    throw new BuildError(`the foldhost WIT contract is not at ${dir}: pass --wit DIR (the repository's wit/)`);
  }
  return dir;
}

/** esbuild, componentize-qjs and tsc, from `dir`'s node_modules. */
async function toolchain(dir) {
  const require = createRequire(join(dir, "package.json"));
  const load = (name) => import(pathToFileURL(require.resolve(name)).href);
  try {
    const [esbuild, { componentize }] = await Promise.all([load("esbuild"), load("componentize-qjs")]);
    return { esbuild, componentize, tsc: require.resolve("typescript/bin/tsc") };
  } catch (error) {
    throw new BuildError(
      `the JavaScript toolchain is not installed in ${dir} (${error.message.split("\n")[0]}): run \`npm ci\` there`,
    );
  }
}

/** Runs tsc over a project that has a tsconfig.json; its errors fail the build. */
function typecheck(tsc, project) {
  const config = join(project, "tsconfig.json");
  if (!existsSync(config)) return;
  const result = spawnSync(process.execPath, [tsc, "--project", config, "--noEmit"], {
    stdio: "inherit",
  });
  if (result.status !== 0) throw new BuildError(`${config}: type errors (tsc), listed above`);
}

/** Bundles the entry with the SDK; returns the code and the world its exports pick. */
async function bundle(esbuild, entry) {
  let result;
  try {
    result = await esbuild.build({
      entryPoints: [entry],
      bundle: true,
      write: false,
      metafile: true,
      format: "esm",
      platform: "neutral",
      mainFields: ["module", "main"],
      target: "es2023",
      charset: "utf8",
      legalComments: "none",
      external: ["foldhost:*"],
      alias: { "foldhost-guest": join(SDK, "src/index.js") },
      logLevel: "silent",
    });
  } catch (error) {
    const messages = await esbuild.formatMessages(error.errors ?? [], { kind: "error" });
    throw new BuildError(messages.join("") || error.message);
  }
  const [output] = Object.values(result.metafile.outputs);
  const exported = output.exports;
  const kinds = exported.filter((name) => name in WORLDS);
  const others = exported.filter((name) => !(name in WORLDS));
  if (kinds.length !== 1 || others.length > 0) {
    throw new BuildError(
      `${entry} must export exactly one of \`aggregate\` (defineAggregate) or \`projection\` (defineProjection), ` +
        `and nothing else; it exports ${exported.length ? exported.join(", ") : "nothing"}`,
    );
  }
  return { code: result.outputFiles[0].text, kind: kinds[0] };
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const { project, entry } = locate(args.target);
  const out = resolve(args.out ?? join(project, "dist", `${projectName(project)}.wasm`));
  const wit = witDir(args.wit);
  const { esbuild, componentize, tsc } = await toolchain(args.toolchain);
  typecheck(tsc, project);
  const { code, kind } = await bundle(esbuild, entry);
  let component;
  try {
    ({ component } = await componentize({ witPath: wit, jsSource: code, world: WORLDS[kind], stubWasi: true, sync: true }));
  } catch (error) {
    throw new BuildError(`componentize-qjs failed: ${error.message}`);
  }
  mkdirSync(dirname(out), { recursive: true });
  writeFileSync(out, component);
  console.log(`${out}: ${kind}, ${component.length} bytes`);
}

main().catch((error) => {
  console.error(`error: ${error instanceof BuildError ? error.message : (error.stack ?? error)}`);
  process.exit(1);
});
