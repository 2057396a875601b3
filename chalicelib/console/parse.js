// Turning the create form's free text into what the API takes. The API validates the values;
// these only fail on text that cannot be turned into an argument list or NAME=value pairs.

export class ParseError extends Error {}

/**
 * A command line split like a POSIX shell splits words (without running anything): spaces
 * separate arguments, 'single' and "double" quotes group them, a backslash escapes. A JSON
 * array (["python", "serve.py"]) is taken as it is.
 */
export function splitCommand(text) {
  const trimmed = text.trim();
  if (trimmed.startsWith("[")) return parseJsonArray(trimmed);
  const args = [];
  let current = "";
  let inWord = false;
  let quote = null;
  for (let i = 0; i < trimmed.length; i += 1) {
    const char = trimmed[i];
    if (quote === "'") {
      if (char === "'") quote = null;
      else current += char;
    } else if (quote === '"') {
      if (char === '"') quote = null;
      else if (char === "\\" && '"\\$`'.includes(trimmed[i + 1] ?? "")) current += trimmed[++i];
      else current += char;
    } else if (char === "'" || char === '"') {
      quote = char;
      inWord = true;
    } else if (char === "\\") {
      if (i + 1 < trimmed.length) current += trimmed[++i];
      inWord = true;
    } else if (/\s/.test(char)) {
      if (inWord) args.push(current);
      current = "";
      inWord = false;
    } else {
      current += char;
      inWord = true;
    }
  }
  if (quote) throw new ParseError(`a ${quote === "'" ? "single" : "double"} quote is not closed`);
  if (inWord) args.push(current);
  return args;
}

function parseJsonArray(text) {
  let value;
  try {
    value = JSON.parse(text);
  } catch {
    throw new ParseError(
      'starts with "[" but is not a JSON array; write it as words, or as ["python", "serve.py"]',
    );
  }
  if (!Array.isArray(value) || !value.every((arg) => typeof arg === "string")) {
    throw new ParseError("a JSON command must be an array of strings");
  }
  return value;
}

/** One NAME=value a line; blank lines and # comments are skipped; the value is kept as typed. */
export function parseEnvVars(text) {
  const vars = {};
  text.split(/\r?\n/).forEach((line, index) => {
    if (!line.trim() || line.trimStart().startsWith("#")) return;
    const at = line.indexOf("=");
    if (at < 1) throw new ParseError(`line ${index + 1}: write NAME=value`);
    const name = line.slice(0, at).trim();
    if (Object.hasOwn(vars, name)) throw new ParseError(`line ${index + 1}: ${name} is set twice`);
    vars[name] = line.slice(at + 1);
  });
  return vars;
}
