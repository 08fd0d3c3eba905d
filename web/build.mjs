// Builds the page into ../app/webui/ (shipped inside the Python package, served at /):
// index.html, assets/app-<hash>.js and .css, and build-info.json with the hash of the
// sources it was built from (tests/test_webui.py fails when that hash is stale).
// Usage: npm ci && npm run build   (in web/)
import { createHash } from "node:crypto";
import { copyFileSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { dirname, join, relative, sep } from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "..", "app", "webui");

// The files whose content decides the build; tests/test_webui.py hashes the same list.
export const SOURCES = [".npmrc", "build.mjs", "index.html", "package.json", "package-lock.json", "tsconfig.json", "src"];

function files(path) {
  if (statSync(path).isDirectory()) {
    return readdirSync(path).sort().flatMap((name) => files(join(path, name)));
  }
  return [path];
}

export function sourceHash() {
  const all = SOURCES.flatMap((name) => files(join(here, name)))
    .map((path) => relative(here, path).split(sep).join("/"))
    .sort();
  const outer = createHash("sha256");
  for (const path of all) {
    const inner = createHash("sha256").update(readFileSync(join(here, path))).digest("hex");
    outer.update(`${path}\0${inner}\n`);
  }
  return outer.digest("hex");
}

const result = await esbuild.build({
  entryPoints: { app: join(here, "src", "main.ts") },
  bundle: true,
  format: "esm",
  target: ["es2022"],
  minify: true,
  sourcemap: false,
  legalComments: "none",
  entryNames: "[name]-[hash]",
  outdir: join(out, "assets"),
  write: false,
  metafile: true,
  logLevel: "warning",
});

rmSync(out, { recursive: true, force: true });
mkdirSync(join(out, "assets"), { recursive: true });
const names = {};
for (const file of result.outputFiles) {
  writeFileSync(file.path, file.contents);
  const name = relative(join(out, "assets"), file.path);
  names[name.endsWith(".css") ? "css" : "js"] = name;
}
copyFileSync(join(here, "src", "icon.svg"), join(out, "assets", "icon.svg"));
const html = readFileSync(join(here, "index.html"), "utf8")
  .replace("%APP_JS%", `/assets/${names.js}`)
  .replace("%APP_CSS%", `/assets/${names.css}`);
writeFileSync(join(out, "index.html"), html);
writeFileSync(
  join(out, "build-info.json"),
  JSON.stringify({ sources_sha256: sourceHash(), files: ["index.html", "assets/icon.svg", `assets/${names.js}`, `assets/${names.css}`] }, null, 2) + "\n",
);
console.log(`built ${names.js} ${names.css} into ${relative(process.cwd(), out) || "."}`);
