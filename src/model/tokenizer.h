// The Hugging Face `tokenizer.json` tokenizer (BPE models), following the semantics of the Rust
// `tokenizers` library: added tokens are split out first, then each remaining segment is
// normalized, pre-tokenized into words, and each word is merged by BPE rank; a post-processor adds
// the template's special tokens. Decoding runs the file's decoder chain.
//
// Supported components (anything else fails to load with an error naming the type and JSON path):
//   model:          BPE (vocab, merges as "a b" strings or [a, b] pairs, byte_fallback, fuse_unk,
//                   unk_token, ignore_merges)
//   normalizer:     Sequence, Prepend, Replace, NFC, NFD, NFKC, NFKD
//   pre_tokenizer:  Sequence, Split, ByteLevel, Metaspace
//   post_processor: Sequence, TemplateProcessing, ByteLevel
//   decoder:        Sequence, Replace, ByteFallback, Fuse, Strip, ByteLevel, Metaspace
//
// Input text that is not valid UTF-8 is encoded as if each maximal invalid subsequence were
// U+FFFD (the WHATWG / Unicode "maximal subpart" rule, what a JS TextDecoder does).
//
// This header is the facade; each component is its own .h/.cpp under model/tokenizer/.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace ekva {

class Tokenizer {
 public:
  // Throws ekva::Error naming the file and the JSON field at fault.
  static Tokenizer from_file(const std::filesystem::path& tokenizer_json);
  // `origin` names the text in error messages (a file name, or "<memory>").
  static Tokenizer from_json_string(std::string_view json_text, std::string_view origin);
  // Reads DIR/tokenizer.json and, if present, DIR/tokenizer_config.json (add_bos_token and
  // add_eos_token rebuild the special-token template the way transformers' Llama-family fast
  // tokenizers do; bos_token / eos_token name the BOS and EOS tokens), DIR/generation_config.json
  // and DIR/config.json (bos_token_id, eos_token_id as an id or a list of ids).
  static Tokenizer from_model_dir(const std::filesystem::path& dir);

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  // Added tokens in `text` (special or not) always become their ids; add_special_tokens only
  // controls the post-processor (e.g. Mistral's leading <s>). Thread-safe.
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = true) const;
  // Throws ekva::Error for an id outside the vocabulary.
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens = false) const;

  std::string_view token_text(int32_t id) const;  // raw vocab string; throws for a bad id
  int32_t vocab_size() const;                     // including added tokens
  std::optional<int32_t> token_id(std::string_view token) const;
  bool is_special(int32_t id) const;  // an added token marked "special"
  // From tokenizer_config.json / generation_config.json / config.json, else the first special
  // token of the post-processor template; -1 if none.
  int32_t bos_id() const;
  // From tokenizer_config.json, generation_config.json and config.json (from_model_dir only).
  std::vector<int32_t> eos_ids() const;

 private:
  struct Impl;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Incremental decode for streaming generation: feed ids one at a time, get the text that is
// complete. Same algorithm as the Rust library's DecodeStream: decode a short window of recent ids
// and emit what extends the previously decoded window, so decoder rules that look at neighbours
// (Metaspace / Strip dropping the first space) apply as in a full decode, and text ending in
// U+FFFD (an incomplete UTF-8 sequence from byte-fallback or byte-level tokens) is held back until
// the next id completes it. The concatenation of all push() results and flush() equals
// decode(all ids).
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tokenizer, bool skip_special_tokens = false);
  std::string push(int32_t id);  // throws ekva::Error for a bad id
  std::string flush();           // emits whatever is held back and starts over

 private:
  const Tokenizer& tokenizer_;
  bool skip_special_tokens_;
  std::vector<int32_t> window_;  // ids whose text is (partly) not emitted yet, plus context
  std::string window_prefix_;    // decode(window_[0, prefix_ids_)), already emitted
  size_t prefix_ids_ = 0;
};

}  // namespace ekva
