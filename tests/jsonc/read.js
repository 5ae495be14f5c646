// Reads each file named on the command line as VS Code reads settings.json (jsonc-parser, comments and
// trailing commas allowed) and prints one JSON line per file: {"value": ..., "errors": ["CODE@offset", ...]}.
const fs = require("fs");
const jsonc = require("jsonc-parser");
for (const path of process.argv.slice(2)) {
  const errors = [];
  // VS Code decodes the file first: a UTF-8 BOM is not part of the text
  const text = fs.readFileSync(path, "utf8").replace(/^\uFEFF/, "");
  const value = jsonc.parse(text, errors, { allowTrailingComma: true, disallowComments: false });
  console.log(JSON.stringify({ value: value === undefined ? null : value,
    errors: errors.map((e) => `${jsonc.printParseErrorCode(e.error)}@${e.offset}`) }));
}
