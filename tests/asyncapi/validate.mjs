// Validates an AsyncAPI document with the AsyncAPI parser (@asyncapi/parser, installed by
// scripts/install-asyncapi.sh): reads the file named as the argument, or standard input,
// prints every diagnostic to standard error and exits 1 when one of them is an error (and 2
// when the parser is missing or the input cannot be read). With `--to-json`, also prints the
// document as the parser read it, as JSON, so that a test can compare the YAML and JSON forms.
//
// Run with: consumer asyncapi --format yaml | node tests/asyncapi/validate.mjs
import { readFileSync } from "node:fs";

let Parser, DiagnosticSeverity, yaml;
try {
    ({ Parser, DiagnosticSeverity } = await import("@asyncapi/parser"));
    yaml = (await import("js-yaml")).default;
} catch (error) {
    console.error(`validate: the AsyncAPI parser is not installed (run scripts/install-asyncapi.sh): ${error.message}`);
    process.exit(2);
}

const args = process.argv.slice(2);
const toJson = args.includes("--to-json");
const file = args.find((arg) => arg !== "--to-json");
let text;
try {
    text = readFileSync(file ?? 0, "utf8");
} catch (error) {
    console.error(`validate: cannot read ${file ?? "standard input"}: ${error.message}`);
    process.exit(2);
}

const { document, diagnostics } = await new Parser().parse(text);
const severities = ["error", "warning", "information", "hint"];
let errors = 0;
for (const d of diagnostics) {
    const severity = severities[d.severity] ?? String(d.severity);
    if (d.severity === DiagnosticSeverity.Error) {
        errors += 1;
    }
    console.error(`${severity}: ${d.code}: ${d.message} at /${d.path.join("/")}`);
}
if (errors > 0 || document === undefined) {
    console.error(`validate: ${errors} error(s)`);
    process.exit(1);
}
if (toJson) {
    // js-yaml reads JSON too (YAML 1.2 is a superset): the text as data, before $refs resolve.
    process.stdout.write(JSON.stringify(yaml.load(text)) + "\n");
}
console.error(`validate: valid AsyncAPI ${document.version()} (${diagnostics.length} diagnostic(s), no error)`);
