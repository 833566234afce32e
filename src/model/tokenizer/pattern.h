// Patterns of tokenizer.json: regular expressions (PCRE2 with Oniguruma's \s), the
// {"String"} / {"Regex"} pattern field, and Rust's SplitDelimiterBehavior over its matches.
#pragma once

#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "model/tokenizer/json_reader.h"

namespace ekva::tokenizer {

// A regular expression (PCRE2, UTF + UCP, JIT when available). Subjects are always valid UTF-8
// (input is sanitized first), so matching skips PCRE2's per-call UTF check, which would otherwise
// rescan the subject on every call of a match loop.
class Regex {
 public:
  // Throws ekva::Error "<origin>: <path>: invalid regex ..." on a compile error. A non-literal
  // pattern is read with Oniguruma's meaning of \s and \S, as HF compiles it.
  Regex(const JsonReader& reader, std::string_view path, std::string_view pattern, bool literal);
  Regex(Regex&&) noexcept;
  Regex& operator=(Regex&&) noexcept;
  ~Regex();

  // The [begin, end) of each match, left to right, with the iteration rule of the Rust `onig`
  // crate that HF uses: an empty match right where the previous match ended is skipped.
  std::vector<std::pair<size_t, size_t>> find_all(std::string_view subject) const;

 private:
  struct Compiled;  // the pcre2_code
  std::unique_ptr<Compiled> compiled_;
};

// A piece of a string produced by a pattern: [begin, end) and whether the pattern matched it.
struct Span {
  size_t begin;
  size_t end;
  bool is_match;
};

// HF's `pattern` field: {"String": s} (a literal) or {"Regex": r}. find_matches() returns spans
// that cover the text, like Rust's Pattern::find_matches (an empty text gives one empty span).
class Pattern {
 public:
  Pattern(const JsonReader& reader, const Json& obj, const std::string& path);
  // A non-empty literal (Metaspace's space and replacement character).
  explicit Pattern(std::string literal);

  std::vector<Span> find_matches(std::string_view text) const;

  // Rust's NormalizedString::replace / the Replace decoder: every match becomes `content`.
  std::string replace(std::string_view text, std::string_view content) const;

 private:
  std::string literal_;
  std::optional<Regex> regex_;
};

// Rust's SplitDelimiterBehavior applied to find_matches() spans; returns the kept ranges.
enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

std::vector<std::pair<size_t, size_t>> apply_split_behavior(const std::vector<Span>& spans,
                                                            SplitBehavior behavior);

// The "behavior" member of the component at `path`.
SplitBehavior parse_split_behavior(const JsonReader& reader, const Json& obj,
                                   const std::string& path);

}  // namespace ekva::tokenizer
