// Produces tests/data/tokenizer_goldens.json: token ids and decoded text for a fixed set of texts,
// computed by @lenml/tokenizers (a JS port of the Hugging Face tokenizers pipeline) so that
// tests/test_tokenizer.cpp checks the C++ tokenizer against an independent implementation.
//
//   node tools/tokenizer_goldens.mjs            # rewrites tests/data/tokenizer_goldens.json
//
// Needs the npm assets under tools/npm/node_modules (tokenizer files, @lenml/tokenizers and the
// SOTU corpus used for the large-text check).
import { createRequire } from "node:module";
import { readFileSync, readdirSync, writeFileSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";

const toolsDir = dirname(fileURLToPath(import.meta.url));
const repoRoot = join(toolsDir, "..");
const npmModules = join(toolsDir, "npm", "node_modules");
const require = createRequire(join(npmModules, "noop.js"));
const { TokenizerLoader } = require("@lenml/tokenizers");
const lenmlVersion = JSON.parse(
  readFileSync(join(npmModules, "@lenml", "tokenizers", "package.json"), "utf8")
).version;

const MISTRAL_DIR = join(npmModules, "@lenml", "tokenizer-llama2", "models");
const QWEN_DIR = join(npmModules, "@lenml", "tokenizer-qwen3", "models");
const SOTU_DIR = join(npmModules, "@stdlib", "datasets-sotu", "data");

// Texts given as `text` are UTF-8 strings; texts given as `bytes_hex` are raw bytes (mostly invalid
// UTF-8), which the JS side turns into a string with TextDecoder (each maximal invalid subpart
// becomes U+FFFD), the same rule the C++ encoder applies to invalid input.
const TEXTS = [
  { name: "plain", text: "Hello world" },
  { name: "sentence", text: "Hello, world! How are you doing today?" },
  { name: "pangram", text: "The quick brown fox jumps over the lazy dog." },
  { name: "contractions", text: "I'm sure you'll see they've done it; it's what we'd hoped." },
  { name: "shouting", text: "HELLO WORLD, SHOUTING'S FUN. DON'T YOU THINK? WE'LL SEE." },
  {
    name: "python",
    text:
      "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n" +
      "\n\nprint([fib(i) for i in range(10)])\n",
  },
  {
    name: "cpp_tabs",
    text:
      "#include <vector>\n\nint main() {\n\tstd::vector<int> v{1, 2, 3};\n" +
      "\tfor (auto& x : v) {\n\t\tx *= 2;  // double\n\t}\n\treturn 0;\n}\n",
  },
  { name: "json", text: '{"key": [1, 2.5, -3e10], "nested": {"a": null, "b": true}}' },
  { name: "accents", text: "Café naïve résumé — São Paulo, Zürich, Ångström, façade" },
  { name: "combining_decomposed", text: "e\u0301cole cafe\u0301 man\u0303ana A\u030A" },
  { name: "zalgo", text: "a\u0300\u0301\u0302\u0303 Z\u0351\u0352\u0353\u0354 o\u0308\u0304" },
  { name: "chinese", text: "你好，世界！这是一个测试。机器学习和自然语言处理。" },
  { name: "japanese", text: "こんにちは、世界。カタカナとひらがな、漢字も。" },
  { name: "korean", text: "안녕하세요 세계, 반갑습니다" },
  { name: "hangul_jamo", text: "\u1100\u1161\u11A8 \u1112\u1161\u11AB" },
  { name: "arabic", text: "مرحبا بالعالم، كيف حالك؟ ١٢٣" },
  { name: "hebrew_mixed", text: "שלום world 123 עולם" },
  { name: "hindi", text: "नमस्ते दुनिया, आप कैसे हैं?" },
  { name: "thai", text: "สวัสดีชาวโลก" },
  { name: "russian", text: "Привет, мир! Как дела? Ёжик в тумане." },
  { name: "greek", text: "Καλημέρα κόσμε, ΑΒΓΔ αβγδ" },
  { name: "emoji", text: "I love 🍕 and 🎉! 😀😃😄" },
  { name: "emoji_zwj", text: "👨‍👩‍👧‍👦 family, 👩🏽‍💻 coder, 🏳️‍🌈" },
  { name: "flags", text: "🇺🇸🇫🇷🇯🇵 flags 🏴󠁧󠁢󠁳󠁣󠁴󠁿" },
  { name: "rare_scripts", text: "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𒀀𒀁 ᚠᚢᚦ" },
  { name: "multi_space", text: "a  b   c    d     e" },
  { name: "lead_trail_space", text: "   leading and trailing   " },
  { name: "newlines", text: "line1\nline2\n\nline4\n\n\n" },
  { name: "only_newlines", text: "\n\n\n" },
  { name: "crlf", text: "windows\r\nline\r\n\r\nend" },
  { name: "tabs", text: "\t\tindented\t \tmixed \t" },
  { name: "trailing_spaces_lines", text: "x = 1   \ny = 2  \n  \n" },
  { name: "digits", text: "1234567890 3.14159 1,000,000 2024-01-15" },
  { name: "digits_units", text: "Call 555-0123 or +1 (800) 123-4567; 42kg, 3.5GHz, 1e-9" },
  { name: "mistral_specials", text: "<s>Hello</s> world <unk> and<s>again" },
  {
    name: "qwen_specials",
    text: "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
  },
  { name: "qwen_added", text: "<think>reasoning</think> answer <tool_call>{}</tool_call>" },
  { name: "near_specials", text: "<|im_start without end <s > </ s> <|endoftext" },
  { name: "empty", text: "" },
  { name: "single_space", text: " " },
  { name: "single_char", text: "a" },
  { name: "punctuation", text: "!!!???...---***" },
  { name: "url_email", text: "https://example.com/path?q=1&r=2#frag user@example.org" },
  { name: "math_symbols", text: "∑ x² ≤ ∞ ≠ π ≈ 3.14 → ✓ ©®™ €£¥" },
  {
    name: "long_words",
    text: "Supercalifragilisticexpialidocious pneumonoultramicroscopicsilicovolcanoconiosis",
  },
  { name: "repeats", text: "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa ========================" },
  { name: "mixed_scripts", text: "abc中文def123αβγ" },
  { name: "controls", text: "\u0000\u0001\u0007\u001b[31mred\u001b[0m\u007f" },
  { name: "unicode_spaces", text: "a\u00a0b\u2003c\u3000d\u200be\u2028f" },
  {
    name: "paragraph",
    text:
      "In meeting you again I feel much satisfaction in being able to repeat my congratulations " +
      "on the favorable prospects which continue to distinguish our public affairs.\n\n" +
      "The abundant fruits of another year have blessed our country with plenty.",
  },
  { name: "invalid_lone_ff", bytes_hex: "ff" },
  { name: "invalid_truncated_2byte", bytes_hex: "48656c6c6fc3" },
  { name: "invalid_truncated_3byte", bytes_hex: "e4bd20e4bda0" },
  { name: "invalid_overlong", bytes_hex: "c0af41e080af" },
  { name: "invalid_surrogate", bytes_hex: "eda080eda0bd41" },
  { name: "invalid_above_max", bytes_hex: "f490808041" },
  { name: "invalid_continuations", bytes_hex: "808080bf" },
  { name: "invalid_mixed", bytes_hex: "61e282ac62ff63f09f9880f09f98" },
];

// Variants of the real files with one pipeline stage swapped, so that stages the real files do not
// use (Metaspace, the GPT-2 ByteLevel regex) are also checked against the JS implementation. The
// C++ test applies the same top-level overrides before loading.
const SPIECE = "\u2581";
const TOKENIZERS = [
  { name: "mistral", dir: MISTRAL_DIR },
  { name: "qwen3", dir: QWEN_DIR },
  {
    name: "mistral_metaspace",
    dir: MISTRAL_DIR,
    overrides: {
      normalizer: null,
      pre_tokenizer: {
        type: "Metaspace",
        replacement: SPIECE,
        add_prefix_space: true,
        prepend_scheme: "first",
        split: false,
      },
      decoder: {
        type: "Sequence",
        decoders: [
          {
            type: "Metaspace",
            replacement: SPIECE,
            add_prefix_space: true,
            prepend_scheme: "first",
            split: false,
          },
          { type: "ByteFallback" },
          { type: "Fuse" },
        ],
      },
    },
  },
  {
    name: "qwen3_gpt2_bytelevel",
    dir: QWEN_DIR,
    overrides: {
      normalizer: null,
      pre_tokenizer: {
        type: "ByteLevel",
        add_prefix_space: true,
        trim_offsets: true,
        use_regex: true,
      },
    },
  },
];

function textOf(entry) {
  if (entry.text !== undefined) return entry.text;
  return new TextDecoder("utf-8").decode(Buffer.from(entry.bytes_hex, "hex"));
}

// FNV-1a 64 over the ids as little-endian int32, so the large-text check stores 16 hex digits.
function fnv1a64(ids) {
  let h = 0xcbf29ce484222325n;
  const prime = 0x100000001b3n;
  const mask = 0xffffffffffffffffn;
  for (const id of ids) {
    for (let k = 0; k < 4; ++k) {
      h ^= BigInt((id >>> (8 * k)) & 0xff);
      h = (h * prime) & mask;
    }
  }
  return h.toString(16).padStart(16, "0");
}

function loadTokenizer(spec) {
  const tokenizerJSON = JSON.parse(readFileSync(join(spec.dir, "tokenizer.json"), "utf8"));
  const tokenizerConfig = JSON.parse(readFileSync(join(spec.dir, "tokenizer_config.json"), "utf8"));
  Object.assign(tokenizerJSON, spec.overrides ?? {});
  return TokenizerLoader.fromPreTrained({ tokenizerJSON, tokenizerConfig });
}

function decode(tokenizer, ids, skip_special_tokens) {
  // The JS decode refuses an empty id list; the empty decode is the empty string.
  return ids.length === 0 ? "" : tokenizer.decode(ids, { skip_special_tokens });
}

// The large text: every SOTU speech, in file-name order, concatenated as is.
const corpusFiles = readdirSync(SOTU_DIR)
  .filter((f) => f.endsWith(".txt"))
  .sort();
const corpus = corpusFiles.map((f) => readFileSync(join(SOTU_DIR, f), "utf8")).join("");

const out = {
  generator: `tools/tokenizer_goldens.mjs with @lenml/tokenizers ${lenmlVersion}`,
  texts: TEXTS,
  corpus: {
    dir: relative(repoRoot, SOTU_DIR),
    files: corpusFiles.length,
    bytes: Buffer.byteLength(corpus, "utf8"),
  },
  tokenizers: [],
};

for (const spec of TOKENIZERS) {
  const tokenizer = loadTokenizer(spec);
  const results = TEXTS.map((entry) => {
    const text = textOf(entry);
    const ids = tokenizer.encode(text, { add_special_tokens: true });
    const idsNoSpecial = tokenizer.encode(text, { add_special_tokens: false });
    return {
      ids,
      ids_no_special: idsNoSpecial,
      decoded: decode(tokenizer, ids, false),
      decoded_skip_special: decode(tokenizer, ids, true),
    };
  });
  const started = performance.now();
  const corpusIds = tokenizer.encode(corpus, { add_special_tokens: false });
  const seconds = (performance.now() - started) / 1000;
  console.log(
    `${spec.name}: corpus ${corpusIds.length} ids in ${seconds.toFixed(1)} s ` +
      `(${(corpus.length / seconds / 1e6).toFixed(2)} M chars/s)`
  );
  out.tokenizers.push({
    name: spec.name,
    dir: relative(repoRoot, spec.dir),
    ...(spec.overrides ? { overrides: spec.overrides } : {}),
    corpus: { ids: corpusIds.length, ids_fnv1a64: fnv1a64(corpusIds) },
    results,
  });
}

// One line per text result keeps the file diffable without listing one id per line.
function format(value, indent) {
  const pad = " ".repeat(indent);
  if (Array.isArray(value) && value.every((v) => typeof v === "number")) {
    return JSON.stringify(value);
  }
  if (Array.isArray(value)) {
    if (value.length === 0) return "[]";
    const inner = value.map((v) => pad + "  " + format(v, indent + 2));
    return "[\n" + inner.join(",\n") + "\n" + pad + "]";
  }
  if (value !== null && typeof value === "object") {
    const simple = Object.values(value).every(
      (v) => v === null || typeof v !== "object" || v.every?.((x) => typeof x === "number")
    );
    if (simple) return JSON.stringify(value);
    const inner = Object.entries(value).map(
      ([k, v]) => pad + "  " + JSON.stringify(k) + ": " + format(v, indent + 2)
    );
    return "{\n" + inner.join(",\n") + "\n" + pad + "}";
  }
  return JSON.stringify(value);
}

const outPath = join(repoRoot, "tests", "data", "tokenizer_goldens.json");
writeFileSync(outPath, format(out, 0) + "\n");
console.log(`wrote ${relative(repoRoot, outPath)}`);
