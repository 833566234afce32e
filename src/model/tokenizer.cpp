// Hugging Face tokenizer.json, BPE models: the facade that reads the file and composes the
// components under model/tokenizer/ (added tokens, normalizers, pre-tokenizers, the BPE model, the
// post-processor's template, decoders). The reference for every rule is the Rust `tokenizers`
// crate (tokenizer/added_vocabulary.rs, models/bpe, normalizers, pre_tokenizers, processors,
// decoders); the components' comments name the places where that behaviour is surprising.
#include "model/tokenizer.h"

#include <algorithm>
#include <fstream>
#include <sstream>
#include <utility>

#include "core/error.h"
#include "model/tokenizer/added_tokens.h"
#include "model/tokenizer/bpe.h"
#include "model/tokenizer/decoders.h"
#include "model/tokenizer/json_reader.h"
#include "model/tokenizer/normalizers.h"
#include "model/tokenizer/post_processor.h"
#include "model/tokenizer/pre_tokenizers.h"
#include "model/tokenizer/utf8.h"

namespace ekva {
namespace {

using tokenizer::AddedToken;
using tokenizer::Bpe;
using tokenizer::Decoder;
using tokenizer::index_path;
using tokenizer::is_valid_utf8;
using tokenizer::Json;
using tokenizer::JsonReader;
using tokenizer::key_path;
using tokenizer::kReplacementUtf8;
using tokenizer::member_path;
using tokenizer::Normalizer;
using tokenizer::parse_decoder;
using tokenizer::parse_json;
using tokenizer::parse_normalizer;
using tokenizer::parse_post_processor;
using tokenizer::parse_pre_tokenizer;
using tokenizer::Piece;
using tokenizer::PreTokenizer;
using tokenizer::sanitize_utf8;
using tokenizer::Segment;
using tokenizer::SpecialTokenTemplate;
using tokenizer::split_on_added_tokens;
using tokenizer::StringMap;
using tokenizer::TokenMatcher;

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot open file", path.string());
  std::ostringstream content;
  content << in.rdbuf();
  if (in.bad()) fail("{}: read error", path.string());
  return content.str();
}

}  // namespace

// ---------------------------------------------------------------------------------------------

struct Tokenizer::Impl {
  explicit Impl(std::string origin) : reader(std::move(origin)) {}

  void load(const Json& root);
  int32_t id_or_fail(const JsonReader& at, std::string_view path, const std::string& token) const;
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens) const;
  void encode_segment(std::string text, bool at_input_start, std::vector<int32_t>& ids) const;
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens) const;
  void check_id(int32_t id) const;

  JsonReader reader;
  StringMap<int32_t> vocab;                     // model.vocab: token -> id
  StringMap<int32_t> added_ids;                 // added token content -> id
  std::vector<std::string> id_to_token;         // [vocab_size]; added tokens hold their content
  std::vector<uint8_t> special;                 // [vocab_size]; 1 for special added tokens
  std::vector<AddedToken> added_tokens;         // in file order
  TokenMatcher raw_matcher;                     // added tokens with normalized = false
  TokenMatcher normalized_matcher;              // normalized added tokens, by normalized content
  std::unique_ptr<Normalizer> normalizer;       // may be null
  std::unique_ptr<PreTokenizer> pre_tokenizer;  // may be null: the segment is one word
  std::unique_ptr<Bpe> model;
  std::unique_ptr<Decoder> decoder;     // may be null: tokens are joined with spaces
  SpecialTokenTemplate post_processor;  // the special tokens added around the text
  int32_t bos = -1;
  std::vector<int32_t> eos;
};

void Tokenizer::Impl::load(const Json& root) {
  reader.object(root, "(top level)");
  const Json& model_json = reader.required(root, "", "model");
  reader.object(model_json, "model");
  const std::string model_type = reader.string_member(model_json, "model", "type");
  if (model_type != "BPE") {
    reader.fail_at("model.type", "unsupported model type \"{}\" (supported: BPE)", model_type);
  }

  // Vocabulary: model.vocab and added_tokens share one id space, which must be 0..N-1 with each
  // id naming one token (an added token may repeat a model.vocab entry with the same id).
  const Json& vocab_json =
      reader.object(reader.required(model_json, "model", "vocab"), "model.vocab");
  std::vector<std::pair<std::string, int64_t>> entries;  // every (token, id), for the checks
  entries.reserve(vocab_json.size());
  for (const auto& [token, id_json] : vocab_json.items()) {
    const int64_t id = reader.integer(id_json, key_path("model.vocab", token));
    vocab.emplace(token, static_cast<int32_t>(std::clamp<int64_t>(id, -1, INT32_MAX)));
    entries.emplace_back(token, id);
  }
  if (const Json* list = reader.optional(root, "", "added_tokens")) {
    reader.array(*list, "added_tokens");
    for (size_t i = 0; i < list->size(); ++i) {
      const std::string path = index_path("added_tokens", i);
      const Json& item = reader.object((*list)[i], path);
      AddedToken token;
      token.content = reader.string_member(item, path, "content");
      if (token.content.empty()) reader.fail_at(member_path(path, "content"), "empty token");
      const int64_t id = reader.integer(reader.required(item, path, "id"), member_path(path, "id"));
      token.id = static_cast<int32_t>(std::clamp<int64_t>(id, -1, INT32_MAX));
      token.special = reader.bool_member(item, path, "special", false);
      token.single_word = reader.bool_member(item, path, "single_word", false);
      token.lstrip = reader.bool_member(item, path, "lstrip", false);
      token.rstrip = reader.bool_member(item, path, "rstrip", false);
      token.normalized = reader.bool_member(item, path, "normalized", !token.special);
      if (const auto it = vocab.find(token.content); it != vocab.end() && it->second != id) {
        reader.fail_at(member_path(path, "id"), "{} but model.vocab gives {} the id {}", id,
                       Json(token.content).dump(), it->second);
      }
      if (!added_ids.emplace(token.content, token.id).second) {
        reader.fail_at(member_path(path, "content"), "{} is listed twice",
                       Json(token.content).dump());
      }
      if (!vocab.contains(token.content)) entries.emplace_back(token.content, id);
      added_tokens.push_back(std::move(token));
    }
  }
  const int64_t n_ids = static_cast<int64_t>(entries.size());
  id_to_token.assign(entries.size(), {});
  std::vector<uint8_t> seen(entries.size(), 0);
  for (const auto& [token, id] : entries) {
    const bool in_vocab = vocab.contains(token);
    const std::string path = in_vocab ? key_path("model.vocab", token)
                                      : fmt::format("added_tokens[content={}]", Json(token).dump());
    if (id < 0 || id >= n_ids) {
      reader.fail_at(path,
                     "id {} out of range: the vocabulary has {} tokens, so ids must be in "
                     "[0, {})",
                     id, n_ids, n_ids);
    }
    if (seen[id]) {
      reader.fail_at(path, "id {} is also the id of {}", id, Json(id_to_token[id]).dump());
    }
    seen[id] = 1;
    id_to_token[id] = token;
  }
  special.assign(entries.size(), 0);
  for (const AddedToken& token : added_tokens) special[token.id] = token.special ? 1 : 0;

  model = std::make_unique<Bpe>(reader, model_json, "model", vocab);
  if (const Json* obj = reader.optional(root, "", "normalizer")) {
    normalizer = parse_normalizer(reader, *obj, "normalizer");
  }
  if (const Json* obj = reader.optional(root, "", "pre_tokenizer")) {
    pre_tokenizer = parse_pre_tokenizer(reader, *obj, "pre_tokenizer");
  }
  if (const Json* obj = reader.optional(root, "", "post_processor")) {
    parse_post_processor(reader, *obj, "post_processor", id_to_token.size(), post_processor);
  }
  if (const Json* obj = reader.optional(root, "", "decoder")) {
    decoder = parse_decoder(reader, *obj, "decoder");
  }

  // Normalized added tokens are matched in normalized text by their normalized content.
  for (size_t i = 0; i < added_tokens.size(); ++i) {
    std::string pattern = added_tokens[i].content;
    if (added_tokens[i].normalized) {
      if (normalizer) normalizer->normalize(pattern);
      if (!pattern.empty()) normalized_matcher.add(std::move(pattern), i);
    } else {
      raw_matcher.add(std::move(pattern), i);
    }
  }
  if (bos < 0 && !post_processor.prefix_ids.empty()) bos = post_processor.prefix_ids.front();
}

int32_t Tokenizer::Impl::id_or_fail(const JsonReader& at, std::string_view path,
                                    const std::string& token) const {
  if (const auto it = added_ids.find(token); it != added_ids.end()) return it->second;
  if (const auto it = vocab.find(token); it != vocab.end()) return it->second;
  at.fail_at(path, "{} is not in the vocabulary", Json(token).dump());
}

void Tokenizer::Impl::check_id(int32_t id) const {
  if (id < 0 || id >= static_cast<int32_t>(id_to_token.size())) {
    fail("{}: token id {} is out of range [0, {})", reader.origin(), id, id_to_token.size());
  }
}

// One segment between raw added tokens: normalize, split out normalized added tokens, then
// pre-tokenize and run BPE on each word.
void Tokenizer::Impl::encode_segment(std::string text, bool at_input_start,
                                     std::vector<int32_t>& ids) const {
  if (normalizer) normalizer->normalize(text);
  const std::vector<Segment> parts =
      normalized_matcher.empty() ? std::vector<Segment>{{0, text.size(), -1}}
                                 : split_on_added_tokens(text, normalized_matcher, added_tokens);
  for (const Segment& part : parts) {
    if (part.added_id >= 0) {
      ids.push_back(part.added_id);
      continue;
    }
    if (part.begin == part.end) continue;
    std::vector<Piece> pieces;
    pieces.push_back(
        {text.substr(part.begin, part.end - part.begin), at_input_start && part.begin == 0});
    if (pre_tokenizer) pre_tokenizer->pre_tokenize(pieces);
    for (const Piece& piece : pieces) model->tokenize(piece.text, ids);
  }
}

std::vector<int32_t> Tokenizer::Impl::encode(std::string_view text, bool add_special_tokens) const {
  std::string sanitized;
  if (!is_valid_utf8(text)) {
    sanitized = sanitize_utf8(text);
    text = sanitized;
  }
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + post_processor.prefix_ids.size() +
              post_processor.suffix_ids.size());
  if (add_special_tokens)
    ids.assign(post_processor.prefix_ids.begin(), post_processor.prefix_ids.end());
  for (const Segment& segment : split_on_added_tokens(text, raw_matcher, added_tokens)) {
    if (segment.added_id >= 0) {
      ids.push_back(segment.added_id);
    } else {
      encode_segment(std::string(text.substr(segment.begin, segment.end - segment.begin)),
                     segment.begin == 0, ids);
    }
  }
  if (add_special_tokens)
    ids.insert(ids.end(), post_processor.suffix_ids.begin(), post_processor.suffix_ids.end());
  return ids;
}

std::string Tokenizer::Impl::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (const int32_t id : ids) {
    check_id(id);
    if (skip_special_tokens && special[id]) continue;
    tokens.push_back(id_to_token[id]);
  }
  std::string text;
  if (decoder) {
    decoder->decode_chain(tokens);
    for (const std::string& token : tokens) text += token;
  } else {
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (i > 0) text += ' ';
      text += tokens[i];
    }
  }
  return text;
}

// ---------------------------------------------------------------------------------------------

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Tokenizer Tokenizer::from_json_string(std::string_view json_text, std::string_view origin) {
  auto impl = std::make_unique<Impl>(std::string(origin));
  impl->load(parse_json(json_text, impl->reader.origin()));
  return Tokenizer(std::move(impl));
}

Tokenizer Tokenizer::from_file(const std::filesystem::path& tokenizer_json) {
  return from_json_string(read_file(tokenizer_json), tokenizer_json.string());
}

Tokenizer Tokenizer::from_model_dir(const std::filesystem::path& dir) {
  Tokenizer tokenizer = from_file(dir / "tokenizer.json");
  Impl& impl = *tokenizer.impl_;

  // A token named in tokenizer_config.json: a string, or {"content": ...} (a serialized
  // AddedToken); null means none.
  const auto token_name = [](const JsonReader& at, const Json& config,
                             std::string_view key) -> std::optional<std::string> {
    const Json* value = at.optional(config, "", key);
    if (value == nullptr) return std::nullopt;
    if (value->is_object()) return at.string_member(*value, key, "content");
    return at.string(*value, key);
  };
  // bos_token_id / eos_token_id in generation_config.json or config.json: an id or a list.
  const auto config_ids = [&impl](const JsonReader& at, const Json& config, std::string_view key) {
    std::vector<int32_t> ids;
    const Json* value = at.optional(config, "", key);
    if (value == nullptr) return ids;
    const auto add = [&](const Json& v, const std::string& path) {
      const int64_t id = at.integer(v, path);
      if (id < 0 || id >= static_cast<int64_t>(impl.id_to_token.size())) {
        at.fail_at(path, "id {} is not in the vocabulary", id);
      }
      ids.push_back(static_cast<int32_t>(id));
    };
    if (value->is_array()) {
      for (size_t i = 0; i < value->size(); ++i) add((*value)[i], index_path(key, i));
    } else {
      add(*value, std::string(key));
    }
    return ids;
  };
  const auto add_eos = [&impl](int32_t id) {
    if (std::find(impl.eos.begin(), impl.eos.end(), id) == impl.eos.end()) impl.eos.push_back(id);
  };

  std::optional<int32_t> bos;
  if (const std::filesystem::path path = dir / "tokenizer_config.json";
      std::filesystem::exists(path)) {
    const JsonReader at(path.string());
    const Json config = parse_json(read_file(path), at.origin());
    at.object(config, "(top level)");
    std::optional<int32_t> bos_token;
    std::optional<int32_t> eos_token;
    if (const auto name = token_name(at, config, "bos_token")) {
      bos_token = impl.id_or_fail(at, "bos_token", *name);
    }
    if (const auto name = token_name(at, config, "eos_token")) {
      eos_token = impl.id_or_fail(at, "eos_token", *name);
      add_eos(*eos_token);
    }
    if (config.contains("bos_token")) bos = bos_token.value_or(-1);
    // transformers' Llama / GPT-NeoX / Gemma fast tokenizers rebuild the template from these
    // flags (update_post_processor); a missing flag counts as false.
    if (config.contains("add_bos_token") || config.contains("add_eos_token")) {
      const bool add_bos = at.bool_member(config, "", "add_bos_token", false);
      const bool add_eos_flag = at.bool_member(config, "", "add_eos_token", false);
      if (add_bos && !bos_token) at.fail_at("add_bos_token", "true but bos_token is not set");
      if (add_eos_flag && !eos_token) at.fail_at("add_eos_token", "true but eos_token is not set");
      impl.post_processor.prefix_ids.clear();
      impl.post_processor.suffix_ids.clear();
      if (add_bos) impl.post_processor.prefix_ids.push_back(*bos_token);
      if (add_eos_flag) impl.post_processor.suffix_ids.push_back(*eos_token);
    }
  }
  for (const char* name : {"generation_config.json", "config.json"}) {
    const std::filesystem::path path = dir / name;
    if (!std::filesystem::exists(path)) continue;
    const JsonReader at(path.string());
    const Json config = parse_json(read_file(path), at.origin());
    at.object(config, "(top level)");
    if (const std::vector<int32_t> ids = config_ids(at, config, "bos_token_id");
        !bos && !ids.empty()) {
      bos = ids.front();
    }
    for (const int32_t id : config_ids(at, config, "eos_token_id")) add_eos(id);
  }
  if (bos) impl.bos = *bos;
  return tokenizer;
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  return impl_->encode(text, add_special_tokens);
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  return impl_->decode(ids, skip_special_tokens);
}

std::string_view Tokenizer::token_text(int32_t id) const {
  impl_->check_id(id);
  return impl_->id_to_token[id];
}

int32_t Tokenizer::vocab_size() const { return static_cast<int32_t>(impl_->id_to_token.size()); }

std::optional<int32_t> Tokenizer::token_id(std::string_view token) const {
  if (const auto it = impl_->added_ids.find(token); it != impl_->added_ids.end()) {
    return it->second;
  }
  if (const auto it = impl_->vocab.find(token); it != impl_->vocab.end()) return it->second;
  return std::nullopt;
}

bool Tokenizer::is_special(int32_t id) const {
  impl_->check_id(id);
  return impl_->special[id] != 0;
}

int32_t Tokenizer::bos_id() const { return impl_->bos; }

std::vector<int32_t> Tokenizer::eos_ids() const { return impl_->eos; }

// ---------------------------------------------------------------------------------------------

StreamDecoder::StreamDecoder(const Tokenizer& tokenizer, bool skip_special_tokens)
    : tokenizer_(tokenizer), skip_special_tokens_(skip_special_tokens) {}

std::string StreamDecoder::push(int32_t id) {
  window_.push_back(id);
  std::string text = tokenizer_.decode(window_, skip_special_tokens_);
  if (text.size() <= window_prefix_.size() || text.ends_with(kReplacementUtf8)) return {};
  if (!text.starts_with(window_prefix_)) {
    fail("StreamDecoder: decoding token {} changed text that was already emitted", id);
  }
  std::string emitted = text.substr(window_prefix_.size());
  // Keep the ids from the previous emission point on as context for the next decode.
  window_.erase(window_.begin(), window_.begin() + static_cast<ptrdiff_t>(prefix_ids_));
  window_prefix_ = tokenizer_.decode(window_, skip_special_tokens_);
  prefix_ids_ = window_.size();
  return emitted;
}

std::string StreamDecoder::flush() {
  const std::string text = tokenizer_.decode(window_, skip_special_tokens_);
  if (!text.starts_with(window_prefix_)) {
    fail("StreamDecoder: the held-back tokens changed text that was already emitted");
  }
  std::string emitted = text.substr(window_prefix_.size());
  window_.clear();
  window_prefix_.clear();
  prefix_ids_ = 0;
  return emitted;
}

}  // namespace ekva
