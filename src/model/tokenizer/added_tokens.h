// Added tokens (Rust's tokenizer/added_vocabulary.rs): strings that are split out of the input
// before normalization (normalized = false) or after it (normalized = true) and become their ids
// directly, never going through the BPE model.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ekva::tokenizer {

struct AddedToken {
  std::string content;
  int32_t id;
  bool single_word;
  bool lstrip;
  bool rstrip;
  bool normalized;
  bool special;
};

// Leftmost-longest matching of a set of strings (the Aho-Corasick MatchKind::LeftmostLongest
// that Rust uses): at the first position where any pattern matches, the longest one. Added-token
// sets are small, so candidates are bucketed by first byte and tried longest first.
class TokenMatcher {
 public:
  struct Match {
    size_t begin;
    size_t end;
    size_t token;  // index into the added tokens
  };

  void add(std::string pattern, size_t token);  // `pattern` must not be empty
  bool empty() const { return empty_; }
  std::optional<Match> find(std::string_view text, size_t from) const;

 private:
  struct Entry {
    std::string pattern;
    size_t token;
  };
  std::array<std::vector<Entry>, 256> by_first_byte_;
  bool empty_ = true;
};

// A piece of text between added tokens (added_id < 0) or an added token's range.
struct Segment {
  size_t begin;
  size_t end;
  int32_t added_id;  // -1 for ordinary text
};

// Rust's AddedVocabulary::find_matches: single_word tokens must not touch word characters,
// lstrip / rstrip tokens absorb the whitespace next to them. `text` must be valid UTF-8; the
// segments cover it in order.
std::vector<Segment> split_on_added_tokens(std::string_view text, const TokenMatcher& matcher,
                                           const std::vector<AddedToken>& tokens);

}  // namespace ekva::tokenizer
