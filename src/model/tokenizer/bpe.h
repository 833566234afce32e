// The BPE model of tokenizer.json (Rust's models/bpe): each pre-tokenized word starts as one
// symbol per character (or per byte with byte_fallback, or an unknown token) and adjacent pairs
// are merged by rank. Supported fields: vocab, merges ("a b" strings or [a, b] pairs),
// byte_fallback, fuse_unk, unk_token, ignore_merges; dropout must be null or 0 and the subword
// affixes empty.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "model/tokenizer/json_reader.h"

namespace ekva::tokenizer {

// A string-keyed map that string_views can look up without a copy.
struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
template <typename Value>
using StringMap = std::unordered_map<std::string, Value, StringHash, std::equal_to<>>;

class Bpe {
 public:
  // `model` is the object at `path` ("model"); `vocab` (model.vocab: token -> id) must outlive
  // the model. Throws ekva::Error naming the field at fault.
  Bpe(const JsonReader& reader, const Json& model, const std::string& path,
      const StringMap<int32_t>& vocab);

  // Appends the ids of one pre-tokenized word. Thread-safe (the word cache is locked).
  void tokenize(std::string_view word, std::vector<int32_t>& out) const;

 private:
  static constexpr size_t kMaxCachedWordBytes = 256;
  static constexpr size_t kCacheCapacity = 10000;

  struct Merge {
    uint32_t rank;  // position in model.merges: lower merges first
    int32_t new_id;
  };

  static uint64_t char_pair_key(char32_t a, char32_t b) { return (uint64_t{a} << 32) | b; }
  static uint64_t pair_key(int32_t left, int32_t right) {
    return (uint64_t{static_cast<uint32_t>(left)} << 32) | static_cast<uint32_t>(right);
  }

  void parse_merges(const JsonReader& reader, const Json& merges, const std::string& path);
  int32_t lookup(const JsonReader& reader, const std::string& path, const std::string& token);
  int32_t char_id(std::string_view ch) const;
  // merge_word() through the cache of short words.
  void merge_cached(std::string_view word, std::vector<int32_t>& out) const;
  void merge_word(std::string_view word, std::vector<int32_t>& out) const;

  const StringMap<int32_t>& vocab_;
  std::unordered_map<uint64_t, Merge> merges_;   // (left id, right id) -> merge
  std::array<int32_t, 256> byte_ids_{};          // id of "<0xNN>", -1 if absent
  std::array<int32_t, 128> ascii_ids_{};         // id of each ASCII character, -1 if absent
  std::unordered_set<uint64_t> adjacent_pairs_;  // (a, b) adjacent inside some vocab token
  int32_t unk_id_ = -1;
  bool byte_fallback_ = false;
  bool fuse_unk_ = false;
  bool ignore_merges_ = false;

  mutable std::mutex cache_mutex_;
  mutable StringMap<std::vector<int32_t>> cache_;  // word -> ids, for words < 256 bytes
};

}  // namespace ekva::tokenizer
