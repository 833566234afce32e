// Hugging Face tokenizer.json, BPE models. The reference for every rule below is the Rust
// `tokenizers` crate (tokenizer/added_vocabulary.rs, models/bpe, normalizers, pre_tokenizers,
// processors, decoders); comments name the places where that behaviour is surprising.
#include "model/tokenizer.h"

#include <algorithm>
#include <array>
#include <fstream>
#include <functional>
#include <mutex>
#include <queue>
#include <sstream>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <unicode/bytestream.h>
#include <unicode/errorcode.h>
#include <unicode/normalizer2.h>
#include <unicode/uchar.h>

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace ekva {
namespace {

using Json = nlohmann::json;

// ---------------------------------------------------------------------------------------------
// UTF-8

constexpr char32_t kReplacementChar = 0xFFFD;
constexpr std::string_view kReplacementUtf8 = "\xEF\xBF\xBD";

struct Utf8Step {
  char32_t cp;  // kReplacementChar when !valid
  int len;      // bytes consumed: the whole sequence, or the maximal invalid subpart (>= 1)
  bool valid;
};

// Decodes the sequence at s[i] following Unicode Table 3-7 (well-formed UTF-8); an ill-formed
// sequence consumes its maximal subpart, as WHATWG's decoder and Rust's from_utf8_lossy do.
Utf8Step next_utf8(std::string_view s, size_t i) {
  const auto b0 = static_cast<uint8_t>(s[i]);
  if (b0 < 0x80) return {b0, 1, true};
  int need = 0;
  char32_t cp = 0;
  uint8_t lo = 0x80;
  uint8_t hi = 0xBF;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 1;
    cp = b0 & 0x1F;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 2;
    cp = b0 & 0x0F;
    if (b0 == 0xE0) lo = 0xA0;  // overlong
    if (b0 == 0xED) hi = 0x9F;  // surrogates
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 3;
    cp = b0 & 0x07;
    if (b0 == 0xF0) lo = 0x90;  // overlong
    if (b0 == 0xF4) hi = 0x8F;  // above U+10FFFF
  } else {
    return {kReplacementChar, 1, false};
  }
  int len = 1;
  for (int k = 0; k < need; ++k) {
    if (i + len >= s.size()) return {kReplacementChar, len, false};
    const auto b = static_cast<uint8_t>(s[i + len]);
    if (b < lo || b > hi) return {kReplacementChar, len, false};
    cp = (cp << 6) | (b & 0x3F);
    lo = 0x80;
    hi = 0xBF;
    ++len;
  }
  return {cp, len, true};
}

bool is_valid_utf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    if (static_cast<uint8_t>(s[i]) < 0x80) {
      ++i;
      continue;
    }
    const Utf8Step step = next_utf8(s, i);
    if (!step.valid) return false;
    i += step.len;
  }
  return true;
}

// Replaces each maximal invalid subpart by U+FFFD.
std::string sanitize_utf8(std::string_view s) {
  std::string out;
  out.reserve(s.size() + 8);
  for (size_t i = 0; i < s.size();) {
    const Utf8Step step = next_utf8(s, i);
    if (step.valid) {
      out.append(s.substr(i, step.len));
    } else {
      out.append(kReplacementUtf8);
    }
    i += step.len;
  }
  return out;
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// Byte length of the character starting with `lead` in a string known to be valid UTF-8.
size_t char_len(char lead) {
  const auto b = static_cast<uint8_t>(lead);
  return b < 0x80 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4;
}

// Decodes one character of a valid UTF-8 string.
char32_t decode_at(std::string_view s, size_t i) { return next_utf8(s, i).cp; }

// Start of the last character of a non-empty valid UTF-8 string.
size_t last_char_start(std::string_view s) {
  size_t i = s.size() - 1;
  while (i > 0 && (static_cast<uint8_t>(s[i]) & 0xC0) == 0x80) --i;
  return i;
}

// Rust's char::is_whitespace and regex \s: the White_Space property.
bool is_white_space(char32_t c) { return u_isUWhiteSpace(static_cast<UChar32>(c)); }

// Rust regex \w (used by added tokens' single_word): Alphabetic, Mark, Decimal_Number,
// Connector_Punctuation, Join_Control.
bool is_word_char(char32_t c) {
  const auto u = static_cast<UChar32>(c);
  if (u_hasBinaryProperty(u, UCHAR_ALPHABETIC) || u_hasBinaryProperty(u, UCHAR_JOIN_CONTROL)) {
    return true;
  }
  return (U_GET_GC_MASK(u) & (U_GC_M_MASK | U_GC_ND_MASK | U_GC_PC_MASK)) != 0;
}

// ---------------------------------------------------------------------------------------------
// JSON access that reports "<origin>: <json path>: <what is wrong>".

std::string member_path(std::string_view path, std::string_view key) {
  return path.empty() ? std::string(key) : fmt::format("{}.{}", path, key);
}

std::string index_path(std::string_view path, size_t index) {
  return fmt::format("{}[{}]", path, index);
}

std::string key_path(std::string_view path, std::string_view key) {
  return fmt::format("{}[{}]", path, Json(std::string(key)).dump());
}

// A value for an error message: scalars as JSON, arrays and objects by their type (dumping them
// would recurse through arbitrarily deep input).
std::string describe(const Json& value) {
  return value.is_structured() ? std::string(value.type_name()) : value.dump();
}

// Sequence components nest; deeper input is rejected before recursion can exhaust the stack.
constexpr size_t kMaxNesting = 64;

class JsonReader {
 public:
  explicit JsonReader(std::string origin) : origin_(std::move(origin)) {}

  const std::string& origin() const { return origin_; }

  template <typename... Args>
  [[noreturn]] void fail_at(std::string_view path, fmt::format_string<Args...> format,
                            Args&&... args) const {
    fail("{}: {}: {}", origin_, path, fmt::format(format, std::forward<Args>(args)...));
  }

  const Json& object(const Json& value, std::string_view path) const {
    if (!value.is_object()) fail_at(path, "expected an object, got {}", value.type_name());
    return value;
  }

  const Json& array(const Json& value, std::string_view path) const {
    if (!value.is_array()) fail_at(path, "expected an array, got {}", value.type_name());
    return value;
  }

  // A member that must be present and not null.
  const Json& required(const Json& obj, std::string_view path, std::string_view key) const {
    const Json* found = optional(obj, path, key);
    if (found == nullptr) fail_at(member_path(path, key), "missing");
    return *found;
  }

  // A member that may be absent or null (both give nullptr).
  const Json* optional(const Json& obj, std::string_view path, std::string_view key) const {
    object(obj, path);
    const auto it = obj.find(key);
    return it == obj.end() || it->is_null() ? nullptr : &*it;
  }

  std::string string(const Json& value, std::string_view path) const {
    if (!value.is_string()) fail_at(path, "expected a string, got {}", value.type_name());
    return value.get<std::string>();
  }

  std::string string_member(const Json& obj, std::string_view path, std::string_view key) const {
    return string(required(obj, path, key), member_path(path, key));
  }

  bool bool_member(const Json& obj, std::string_view path, std::string_view key,
                   bool default_value) const {
    const Json* value = optional(obj, path, key);
    if (value == nullptr) return default_value;
    if (!value->is_boolean()) {
      fail_at(member_path(path, key), "expected a boolean, got {}", value->type_name());
    }
    return value->get<bool>();
  }

  int64_t integer(const Json& value, std::string_view path) const {
    if (!value.is_number_integer()) fail_at(path, "expected an integer, got {}", describe(value));
    if (value.is_number_unsigned() && value.get<uint64_t>() > uint64_t{INT64_MAX}) {
      fail_at(path, "integer {} is too large", describe(value));
    }
    return value.get<int64_t>();
  }

  // A single Unicode character given as a one-character string (Rust's `char` fields).
  char32_t character(const Json& value, std::string_view path) const {
    const std::string s = string(value, path);
    if (s.empty() || next_utf8(s, 0).len != static_cast<int>(s.size())) {
      fail_at(path, "expected a single character, got {}", value.dump());
    }
    return decode_at(s, 0);
  }

 private:
  std::string origin_;
};

// ---------------------------------------------------------------------------------------------
// Regular expressions (PCRE2, UTF + UCP, JIT when available). Subjects are always valid UTF-8
// (input is sanitized first), so matching skips PCRE2's per-call UTF check, which would otherwise
// rescan the subject on every call of a match loop.

// HF compiles patterns with Oniguruma, whose \s is the White_Space property and so includes
// U+0085 (NEL); PCRE2's UCP \s does not. Rewrite \s outside and inside character classes, and \S
// outside them, to Oniguruma's sets. (\S inside a class is left as is: it cannot be written as a
// class item, and no known tokenizer uses it.)
std::string onig_to_pcre2(std::string_view pattern) {
  std::string out;
  out.reserve(pattern.size() + 16);
  bool in_class = false;
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {
      const char escaped = pattern[++i];
      if (escaped == 's') {
        out += in_class ? "\\s\\x{85}" : "[\\s\\x{85}]";
      } else if (escaped == 'S' && !in_class) {
        out += "[^\\s\\x{85}]";
      } else {
        out += c;
        out += escaped;
      }
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out += c;
      // A ']' right after '[' or '[^' is a literal, not the end of the class.
      if (i + 1 < pattern.size() && pattern[i + 1] == '^') out += pattern[++i];
      if (i + 1 < pattern.size() && pattern[i + 1] == ']') out += pattern[++i];
      continue;
    }
    if (in_class && c == '[' && i + 1 < pattern.size() && pattern[i + 1] == ':') {
      const size_t end = pattern.find(":]", i + 2);  // POSIX class such as [:alpha:]
      if (end != std::string_view::npos) {
        out.append(pattern.substr(i, end + 2 - i));
        i = end + 1;
        continue;
      }
    }
    if (in_class && c == ']') in_class = false;
    out += c;
  }
  return out;
}

class Regex {
 public:
  // Throws ekva::Error "<origin>: <path>: invalid regex ..." on a compile error.
  Regex(const JsonReader& reader, std::string_view path, std::string_view pattern, bool literal) {
    int error_code = 0;
    PCRE2_SIZE error_offset = 0;
    const std::string translated = literal ? std::string(pattern) : onig_to_pcre2(pattern);
    const uint32_t options = PCRE2_UTF | PCRE2_UCP | (literal ? PCRE2_LITERAL : 0);
    pcre2_compile_context* context = pcre2_compile_context_create(nullptr);
    pcre2_set_newline(context, PCRE2_NEWLINE_LF);
    code_.reset(pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()), translated.size(),
                              options, &error_code, &error_offset, context));
    pcre2_compile_context_free(context);
    if (!code_) {
      // The offset is into the pattern PCRE2 saw, which differs after the \s rewrite.
      const std::string where = translated == pattern
                                    ? fmt::format("at offset {}", error_offset)
                                    : fmt::format("at offset {} of its PCRE2 form {}", error_offset,
                                                  Json(translated).dump());
      reader.fail_at(path, "invalid regex {}: {} ({})", Json(std::string(pattern)).dump(),
                     error_message(error_code), where);
    }
    pcre2_jit_compile(code_.get(), PCRE2_JIT_COMPLETE);  // without JIT, the interpreter runs
  }

  // Calls fn(begin, end) for each match, left to right, with the iteration rule of the Rust
  // `onig` crate that HF uses: an empty match right where the previous match ended is skipped.
  template <typename Fn>
  void for_each_match(std::string_view subject, Fn&& fn) const {
    const std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> match_data(
        pcre2_match_data_create_from_pattern(code_.get(), nullptr), &pcre2_match_data_free);
    size_t pos = 0;
    size_t last_match_end = std::string_view::npos;
    while (pos <= subject.size()) {
      const int rc =
          pcre2_match(code_.get(), reinterpret_cast<PCRE2_SPTR>(subject.data()), subject.size(),
                      pos, PCRE2_NO_UTF_CHECK, match_data.get(), nullptr);
      if (rc == PCRE2_ERROR_NOMATCH) return;
      if (rc < 0) fail("tokenizer: regex match failed: {}", error_message(rc));
      const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(match_data.get());
      const size_t begin = ovector[0];
      const size_t end = ovector[1];
      if (begin == end && end == last_match_end) {
        if (pos >= subject.size()) return;
        pos += char_len(subject[pos]);
        continue;
      }
      fn(begin, end);
      pos = end;
      last_match_end = end;
    }
  }

 private:
  static std::string error_message(int code) {
    std::array<PCRE2_UCHAR, 256> buffer{};
    pcre2_get_error_message(code, buffer.data(), buffer.size());
    return reinterpret_cast<const char*>(buffer.data());
  }

  struct CodeFree {
    void operator()(pcre2_code* code) const { pcre2_code_free(code); }
  };
  std::unique_ptr<pcre2_code, CodeFree> code_;
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
  Pattern(const JsonReader& reader, const Json& obj, const std::string& path) {
    reader.object(obj, path);
    const Json* literal = reader.optional(obj, path, "String");
    const Json* regex = reader.optional(obj, path, "Regex");
    if ((literal == nullptr) == (regex == nullptr)) {
      reader.fail_at(path, "expected exactly one of \"String\" and \"Regex\"");
    }
    if (literal != nullptr) {
      literal_ = reader.string(*literal, member_path(path, "String"));
      // An empty literal matches the empty string everywhere, which a regex handles.
      if (literal_.empty()) regex_.emplace(reader, member_path(path, "String"), "", true);
    } else {
      const std::string regex_path = member_path(path, "Regex");
      regex_.emplace(reader, regex_path, reader.string(*regex, regex_path), false);
    }
  }

  // A non-empty literal (Metaspace's space and replacement character).
  explicit Pattern(std::string literal) : literal_(std::move(literal)) {}

  std::vector<Span> find_matches(std::string_view text) const {
    std::vector<Span> spans;
    if (text.empty()) {
      spans.push_back({0, 0, false});
      return spans;
    }
    size_t prev = 0;
    const auto on_match = [&](size_t begin, size_t end) {
      if (prev != begin) spans.push_back({prev, begin, false});
      spans.push_back({begin, end, true});
      prev = end;
    };
    if (regex_) {
      regex_->for_each_match(text, on_match);
    } else {
      for (size_t at = text.find(literal_); at != std::string_view::npos;
           at = text.find(literal_, at + literal_.size())) {
        on_match(at, at + literal_.size());
      }
    }
    if (prev != text.size()) spans.push_back({prev, text.size(), false});
    return spans;
  }

  // Rust's NormalizedString::replace / the Replace decoder: every match becomes `content`.
  std::string replace(std::string_view text, std::string_view content) const {
    std::string out;
    out.reserve(text.size());
    for (const Span& span : find_matches(text)) {
      if (span.is_match) {
        out.append(content);
      } else {
        out.append(text.substr(span.begin, span.end - span.begin));
      }
    }
    return out;
  }

 private:
  std::string literal_;
  std::optional<Regex> regex_;
};

// Rust's SplitDelimiterBehavior applied to find_matches() spans; returns the kept ranges.
enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

std::vector<std::pair<size_t, size_t>> apply_split_behavior(const std::vector<Span>& spans,
                                                            SplitBehavior behavior) {
  std::vector<std::pair<size_t, size_t>> out;
  out.reserve(spans.size());
  bool previous_match = false;
  switch (behavior) {
    case SplitBehavior::kRemoved:
      for (const Span& s : spans) {
        if (!s.is_match) out.emplace_back(s.begin, s.end);
      }
      break;
    case SplitBehavior::kIsolated:
      for (const Span& s : spans) out.emplace_back(s.begin, s.end);
      break;
    case SplitBehavior::kContiguous:
      for (const Span& s : spans) {
        if (s.is_match == previous_match && !out.empty()) {
          out.back().second = s.end;
        } else {
          out.emplace_back(s.begin, s.end);
        }
        previous_match = s.is_match;
      }
      break;
    case SplitBehavior::kMergedWithPrevious:
      for (const Span& s : spans) {
        if (s.is_match && !previous_match && !out.empty()) {
          out.back().second = s.end;
        } else {
          out.emplace_back(s.begin, s.end);
        }
        previous_match = s.is_match;
      }
      break;
    case SplitBehavior::kMergedWithNext:
      for (auto it = spans.rbegin(); it != spans.rend(); ++it) {
        if (it->is_match && !previous_match && !out.empty()) {
          out.back().first = it->begin;
        } else {
          out.emplace_back(it->begin, it->end);
        }
        previous_match = it->is_match;
      }
      std::reverse(out.begin(), out.end());
      break;
  }
  return out;
}

SplitBehavior parse_split_behavior(const JsonReader& reader, const Json& obj,
                                   const std::string& path) {
  const std::string behavior = reader.string_member(obj, path, "behavior");
  if (behavior == "Removed") return SplitBehavior::kRemoved;
  if (behavior == "Isolated") return SplitBehavior::kIsolated;
  if (behavior == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (behavior == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (behavior == "Contiguous") return SplitBehavior::kContiguous;
  reader.fail_at(member_path(path, "behavior"),
                 "unknown split behavior \"{}\" (expected Removed, Isolated, MergedWithPrevious, "
                 "MergedWithNext or Contiguous)",
                 behavior);
}

std::string component_type(const JsonReader& reader, const Json& obj, const std::string& path) {
  if (static_cast<size_t>(std::count(path.begin(), path.end(), '.')) > kMaxNesting) {
    reader.fail_at(path, "components nested more than {} deep", kMaxNesting);
  }
  return reader.string_member(reader.object(obj, path), path, "type");
}

// ---------------------------------------------------------------------------------------------
// Normalizers: transform one segment of text (the text between added tokens).

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual void normalize(std::string& text) const = 0;
};

std::unique_ptr<Normalizer> parse_normalizer(const JsonReader& reader, const Json& obj,
                                             const std::string& path);

class SequenceNormalizer final : public Normalizer {
 public:
  SequenceNormalizer(const JsonReader& reader, const Json& obj, const std::string& path) {
    const std::string list_path = member_path(path, "normalizers");
    const Json& list = reader.array(reader.required(obj, path, "normalizers"), list_path);
    for (size_t i = 0; i < list.size(); ++i) {
      steps_.push_back(parse_normalizer(reader, list[i], index_path(list_path, i)));
    }
  }
  void normalize(std::string& text) const override {
    for (const auto& step : steps_) step->normalize(text);
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> steps_;
};

// Prepends only to a non-empty segment (so "" stays "" and "<s>" alone gets no "▁").
class PrependNormalizer final : public Normalizer {
 public:
  explicit PrependNormalizer(std::string prepend) : prepend_(std::move(prepend)) {}
  void normalize(std::string& text) const override {
    if (!text.empty()) text.insert(0, prepend_);
  }

 private:
  std::string prepend_;
};

class ReplaceNormalizer final : public Normalizer {
 public:
  ReplaceNormalizer(const JsonReader& reader, const Json& obj, const std::string& path)
      : pattern_(reader, reader.required(obj, path, "pattern"), member_path(path, "pattern")),
        content_(reader.string_member(obj, path, "content")) {}
  void normalize(std::string& text) const override { text = pattern_.replace(text, content_); }

 private:
  Pattern pattern_;
  std::string content_;
};

// NFC / NFD / NFKC / NFKD through ICU.
class UnicodeNormalizer final : public Normalizer {
 public:
  UnicodeNormalizer(const JsonReader& reader, const std::string& path, const std::string& form) {
    icu::ErrorCode status;
    if (form == "NFC") normalizer_ = icu::Normalizer2::getNFCInstance(status);
    if (form == "NFD") normalizer_ = icu::Normalizer2::getNFDInstance(status);
    if (form == "NFKC") normalizer_ = icu::Normalizer2::getNFKCInstance(status);
    if (form == "NFKD") normalizer_ = icu::Normalizer2::getNFKDInstance(status);
    if (status.isFailure() || normalizer_ == nullptr) {
      reader.fail_at(path, "ICU has no {} normalizer: {}", form, status.errorName());
    }
  }
  void normalize(std::string& text) const override {
    icu::ErrorCode status;
    if (normalizer_->isNormalizedUTF8(text, status) && status.isSuccess()) return;
    std::string out;
    icu::StringByteSink<std::string> sink(&out, static_cast<int32_t>(text.size()));
    normalizer_->normalizeUTF8(0, text, sink, nullptr, status);
    if (status.isFailure()) fail("tokenizer: ICU normalization failed: {}", status.errorName());
    text = std::move(out);
  }

 private:
  const icu::Normalizer2* normalizer_ = nullptr;
};

std::unique_ptr<Normalizer> parse_normalizer(const JsonReader& reader, const Json& obj,
                                             const std::string& path) {
  const std::string type = component_type(reader, obj, path);
  if (type == "Sequence") return std::make_unique<SequenceNormalizer>(reader, obj, path);
  if (type == "Prepend") {
    return std::make_unique<PrependNormalizer>(reader.string_member(obj, path, "prepend"));
  }
  if (type == "Replace") return std::make_unique<ReplaceNormalizer>(reader, obj, path);
  if (type == "NFC" || type == "NFD" || type == "NFKC" || type == "NFKD") {
    return std::make_unique<UnicodeNormalizer>(reader, path, type);
  }
  reader.fail_at(member_path(path, "type"),
                 "unsupported normalizer type \"{}\" (supported: Sequence, Prepend, Replace, NFC, "
                 "NFD, NFKC, NFKD)",
                 type);
}

// ---------------------------------------------------------------------------------------------
// Pre-tokenizers: split a normalized segment into words, possibly rewriting them.

struct Piece {
  std::string text;
  // Whether the piece begins at byte 0 of the original input (Rust's
  // `offsets_original().0 == 0`); Metaspace's prepend_scheme "first" prepends only there.
  bool at_input_start;
};

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  virtual void pre_tokenize(std::vector<Piece>& pieces) const = 0;
};

// Replaces each piece by its kept sub-ranges; empty ranges are dropped, as in Rust's
// PreTokenizedString::split.
template <typename SplitFn>  // std::vector<std::pair<size_t, size_t>>(std::string_view)
void split_pieces(std::vector<Piece>& pieces, SplitFn&& split) {
  std::vector<Piece> out;
  out.reserve(pieces.size());
  for (Piece& piece : pieces) {
    for (const auto& [begin, end] : split(std::string_view(piece.text))) {
      if (begin == end) continue;
      out.push_back({piece.text.substr(begin, end - begin), piece.at_input_start && begin == 0});
    }
  }
  pieces = std::move(out);
}

std::unique_ptr<PreTokenizer> parse_pre_tokenizer(const JsonReader& reader, const Json& obj,
                                                  const std::string& path);

class SequencePreTokenizer final : public PreTokenizer {
 public:
  SequencePreTokenizer(const JsonReader& reader, const Json& obj, const std::string& path) {
    const std::string list_path = member_path(path, "pretokenizers");
    const Json& list = reader.array(reader.required(obj, path, "pretokenizers"), list_path);
    for (size_t i = 0; i < list.size(); ++i) {
      steps_.push_back(parse_pre_tokenizer(reader, list[i], index_path(list_path, i)));
    }
  }
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    for (const auto& step : steps_) step->pre_tokenize(pieces);
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> steps_;
};

class SplitPreTokenizer final : public PreTokenizer {
 public:
  SplitPreTokenizer(const JsonReader& reader, const Json& obj, const std::string& path)
      : pattern_(reader, reader.required(obj, path, "pattern"), member_path(path, "pattern")),
        behavior_(parse_split_behavior(reader, obj, path)),
        invert_(reader.bool_member(obj, path, "invert", false)) {}
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    split_pieces(pieces, [&](std::string_view text) {
      std::vector<Span> spans = pattern_.find_matches(text);
      if (invert_) {
        for (Span& span : spans) span.is_match = !span.is_match;
      }
      return apply_split_behavior(spans, behavior_);
    });
  }

 private:
  Pattern pattern_;
  SplitBehavior behavior_;
  bool invert_;
};

// GPT-2's byte-to-unicode table: printable Latin-1 bytes map to themselves, the other 68 bytes to
// U+0100.. in byte order, so every byte becomes a visible character the BPE vocabulary can hold.
const std::array<char32_t, 256>& byte_to_char() {
  static const std::array<char32_t, 256> table = [] {
    std::array<char32_t, 256> t{};
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      t[b] = printable ? static_cast<char32_t>(b) : next++;
    }
    return t;
  }();
  return table;
}

// The inverse of byte_to_char(), indexed by code point (all mapped code points are < 0x144).
const std::array<int16_t, 0x144>& char_to_byte() {
  static const std::array<int16_t, 0x144> table = [] {
    std::array<int16_t, 0x144> t{};
    t.fill(-1);
    for (int b = 0; b < 256; ++b) t[byte_to_char()[b]] = static_cast<int16_t>(b);
    return t;
  }();
  return table;
}

const std::array<std::string, 256>& byte_to_utf8() {
  static const std::array<std::string, 256> table = [] {
    std::array<std::string, 256> t;
    for (int b = 0; b < 256; ++b) append_utf8(t[b], byte_to_char()[b]);
    return t;
  }();
  return table;
}

class ByteLevelPreTokenizer final : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(const JsonReader& reader, const Json& obj, const std::string& path)
      : add_prefix_space_(reader.bool_member(obj, path, "add_prefix_space", true)) {
    if (reader.bool_member(obj, path, "use_regex", true)) {
      // GPT-2's word regex, hard-coded in the Rust ByteLevel pre-tokenizer.
      gpt2_regex_.emplace(reader, path,
                          "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|"
                          "\\s+(?!\\S)|\\s+",
                          false);
    }
  }
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    if (add_prefix_space_) {
      for (Piece& piece : pieces) {
        // (Built anew rather than insert(0, " "): GCC 12 at -O3 reports a false -Wrestrict
        // inside basic_string::insert.)
        if (!piece.text.starts_with(' ')) piece.text = ' ' + piece.text;
      }
    }
    if (gpt2_regex_) {
      split_pieces(pieces, [&](std::string_view text) {
        std::vector<std::pair<size_t, size_t>> ranges;
        size_t prev = 0;
        gpt2_regex_->for_each_match(text, [&](size_t begin, size_t end) {
          if (prev != begin) ranges.emplace_back(prev, begin);
          ranges.emplace_back(begin, end);
          prev = end;
        });
        if (prev != text.size()) ranges.emplace_back(prev, text.size());
        return ranges;
      });
    }
    const auto& table = byte_to_utf8();
    for (Piece& piece : pieces) {
      std::string mapped;
      mapped.reserve(piece.text.size() * 2);
      for (const char c : piece.text) mapped += table[static_cast<uint8_t>(c)];
      piece.text = std::move(mapped);
    }
  }

 private:
  bool add_prefix_space_;
  std::optional<Regex> gpt2_regex_;
};

enum class PrependScheme { kFirst, kNever, kAlways };

// Metaspace's prepend_scheme, with the legacy add_prefix_space: false meaning "never".
PrependScheme parse_prepend_scheme(const JsonReader& reader, const Json& obj,
                                   const std::string& path) {
  PrependScheme scheme = PrependScheme::kAlways;
  if (const Json* value = reader.optional(obj, path, "prepend_scheme")) {
    const std::string name = reader.string(*value, member_path(path, "prepend_scheme"));
    if (name == "first") {
      scheme = PrependScheme::kFirst;
    } else if (name == "never") {
      scheme = PrependScheme::kNever;
    } else if (name == "always") {
      scheme = PrependScheme::kAlways;
    } else {
      reader.fail_at(member_path(path, "prepend_scheme"),
                     "unknown prepend scheme \"{}\" (expected first, never or always)", name);
    }
  }
  if (!reader.bool_member(obj, path, "add_prefix_space", true)) {
    if (scheme != PrependScheme::kNever && reader.optional(obj, path, "prepend_scheme")) {
      reader.fail_at(member_path(path, "add_prefix_space"),
                     "add_prefix_space is false but prepend_scheme is not \"never\"");
    }
    scheme = PrependScheme::kNever;
  }
  return scheme;
}

class MetaspacePreTokenizer final : public PreTokenizer {
 public:
  MetaspacePreTokenizer(const JsonReader& reader, const Json& obj, const std::string& path)
      : scheme_(parse_prepend_scheme(reader, obj, path)),
        split_(reader.bool_member(obj, path, "split", true)) {
    append_utf8(replacement_, reader.character(reader.required(obj, path, "replacement"),
                                               member_path(path, "replacement")));
  }
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    const Pattern space(" ");
    for (Piece& piece : pieces) {
      piece.text = space.replace(piece.text, replacement_);
      const bool prepend = !piece.text.starts_with(replacement_) &&
                           (scheme_ == PrependScheme::kAlways ||
                            (scheme_ == PrependScheme::kFirst && piece.at_input_start));
      if (prepend) piece.text.insert(0, replacement_);
    }
    if (split_) {
      const Pattern delimiter(replacement_);
      split_pieces(pieces, [&](std::string_view text) {
        return apply_split_behavior(delimiter.find_matches(text), SplitBehavior::kMergedWithNext);
      });
    }
  }

 private:
  std::string replacement_;
  PrependScheme scheme_;
  bool split_;
};

std::unique_ptr<PreTokenizer> parse_pre_tokenizer(const JsonReader& reader, const Json& obj,
                                                  const std::string& path) {
  const std::string type = component_type(reader, obj, path);
  if (type == "Sequence") return std::make_unique<SequencePreTokenizer>(reader, obj, path);
  if (type == "Split") return std::make_unique<SplitPreTokenizer>(reader, obj, path);
  if (type == "ByteLevel") return std::make_unique<ByteLevelPreTokenizer>(reader, obj, path);
  if (type == "Metaspace") return std::make_unique<MetaspacePreTokenizer>(reader, obj, path);
  reader.fail_at(member_path(path, "type"),
                 "unsupported pre-tokenizer type \"{}\" (supported: Sequence, Split, ByteLevel, "
                 "Metaspace)",
                 type);
}

// ---------------------------------------------------------------------------------------------
// Decoders: turn the token strings of a decode into text, as a chain of string-list transforms.

class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual void decode_chain(std::vector<std::string>& tokens) const = 0;
};

std::unique_ptr<Decoder> parse_decoder(const JsonReader& reader, const Json& obj,
                                       const std::string& path);

class SequenceDecoder final : public Decoder {
 public:
  SequenceDecoder(const JsonReader& reader, const Json& obj, const std::string& path) {
    const std::string list_path = member_path(path, "decoders");
    const Json& list = reader.array(reader.required(obj, path, "decoders"), list_path);
    for (size_t i = 0; i < list.size(); ++i) {
      steps_.push_back(parse_decoder(reader, list[i], index_path(list_path, i)));
    }
  }
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (const auto& step : steps_) step->decode_chain(tokens);
  }

 private:
  std::vector<std::unique_ptr<Decoder>> steps_;
};

class ReplaceDecoder final : public Decoder {
 public:
  ReplaceDecoder(const JsonReader& reader, const Json& obj, const std::string& path)
      : pattern_(reader, reader.required(obj, path, "pattern"), member_path(path, "pattern")),
        content_(reader.string_member(obj, path, "content")) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (std::string& token : tokens) token = pattern_.replace(token, content_);
  }

 private:
  Pattern pattern_;
  std::string content_;
};

// Runs of "<0xNN>" tokens become their bytes; a run that is not valid UTF-8 becomes one U+FFFD
// per byte (Rust's rule; a JS TextDecoder would keep the valid parts instead).
class ByteFallbackDecoder final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::vector<std::string> out;
    out.reserve(tokens.size());
    std::string run;
    size_t run_len = 0;
    const auto flush_run = [&] {
      if (run_len == 0) return;
      if (is_valid_utf8(run)) {
        out.push_back(std::move(run));
      } else {
        for (size_t i = 0; i < run_len; ++i) out.emplace_back(kReplacementUtf8);
      }
      run.clear();
      run_len = 0;
    };
    for (std::string& token : tokens) {
      if (const std::optional<uint8_t> byte = parse_byte_token(token)) {
        run += static_cast<char>(*byte);
        ++run_len;
      } else {
        flush_run();
        out.push_back(std::move(token));
      }
    }
    flush_run();
    tokens = std::move(out);
  }

 private:
  static int hex_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  }
  static std::optional<uint8_t> parse_byte_token(std::string_view token) {
    if (token.size() != 6 || !token.starts_with("<0x") || token[5] != '>') return std::nullopt;
    const int hi = hex_value(token[3]);
    const int lo = hex_value(token[4]);
    if (hi < 0 || lo < 0) return std::nullopt;
    return static_cast<uint8_t>(hi * 16 + lo);
  }
};

class FuseDecoder final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string fused;
    for (const std::string& token : tokens) fused += token;
    tokens.assign(1, std::move(fused));
  }
};

// Removes up to `start` leading and `stop` trailing `content` characters from each token.
class StripDecoder final : public Decoder {
 public:
  StripDecoder(const JsonReader& reader, const Json& obj, const std::string& path)
      : content_(
            reader.character(reader.required(obj, path, "content"), member_path(path, "content"))),
        start_(count(reader, obj, path, "start")),
        stop_(count(reader, obj, path, "stop")) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (std::string& token : tokens) {
      std::vector<size_t> starts;  // byte offset of each character, then the end
      for (size_t i = 0; i < token.size(); i += char_len(token[i])) starts.push_back(i);
      starts.push_back(token.size());
      const size_t n_chars = starts.size() - 1;
      size_t first = 0;
      while (first < start_ && first < n_chars && decode_at(token, starts[first]) == content_) {
        ++first;
      }
      size_t last = n_chars;
      while (n_chars - last < stop_ && last > first &&
             decode_at(token, starts[last - 1]) == content_) {
        --last;
      }
      token = token.substr(starts[first], starts[last] - starts[first]);
    }
  }

 private:
  static size_t count(const JsonReader& reader, const Json& obj, const std::string& path,
                      std::string_view key) {
    const int64_t value = reader.integer(reader.required(obj, path, key), member_path(path, key));
    if (value < 0) reader.fail_at(member_path(path, key), "expected a count >= 0, got {}", value);
    return static_cast<size_t>(value);
  }
  char32_t content_;
  size_t start_;
  size_t stop_;
};

// Maps each token's characters back to bytes (a token with a character outside the byte table
// keeps its own UTF-8), then decodes all bytes at once, invalid parts becoming U+FFFD.
class ByteLevelDecoder final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    const auto& table = char_to_byte();
    std::string bytes;
    std::string token_bytes;
    for (const std::string& token : tokens) {
      token_bytes.clear();
      bool mapped = true;
      for (size_t i = 0; i < token.size() && mapped;) {
        const Utf8Step step = next_utf8(token, i);
        mapped = step.valid && step.cp < table.size() && table[step.cp] >= 0;
        if (mapped) token_bytes += static_cast<char>(table[step.cp]);
        i += step.len;
      }
      bytes += mapped ? token_bytes : token;
    }
    tokens.assign(1, sanitize_utf8(bytes));
  }
};

// The replacement character becomes a space, except in the first token where (unless the scheme
// is "never") every replacement character is dropped, not only a leading one.
class MetaspaceDecoder final : public Decoder {
 public:
  MetaspaceDecoder(const JsonReader& reader, const Json& obj, const std::string& path)
      : replacement_(reader.character(reader.required(obj, path, "replacement"),
                                      member_path(path, "replacement"))),
        scheme_(parse_prepend_scheme(reader, obj, path)) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (size_t t = 0; t < tokens.size(); ++t) {
      const bool drop = t == 0 && scheme_ != PrependScheme::kNever;
      std::string out;
      out.reserve(tokens[t].size());
      for (size_t i = 0; i < tokens[t].size();) {
        const size_t len = char_len(tokens[t][i]);
        if (decode_at(tokens[t], i) == replacement_) {
          if (!drop) out += ' ';
        } else {
          out.append(tokens[t], i, len);
        }
        i += len;
      }
      tokens[t] = std::move(out);
    }
  }

 private:
  char32_t replacement_;
  PrependScheme scheme_;
};

std::unique_ptr<Decoder> parse_decoder(const JsonReader& reader, const Json& obj,
                                       const std::string& path) {
  const std::string type = component_type(reader, obj, path);
  if (type == "Sequence") return std::make_unique<SequenceDecoder>(reader, obj, path);
  if (type == "Replace") return std::make_unique<ReplaceDecoder>(reader, obj, path);
  if (type == "ByteFallback") return std::make_unique<ByteFallbackDecoder>();
  if (type == "Fuse") return std::make_unique<FuseDecoder>();
  if (type == "Strip") return std::make_unique<StripDecoder>(reader, obj, path);
  if (type == "ByteLevel") return std::make_unique<ByteLevelDecoder>();
  if (type == "Metaspace") return std::make_unique<MetaspaceDecoder>(reader, obj, path);
  reader.fail_at(member_path(path, "type"),
                 "unsupported decoder type \"{}\" (supported: Sequence, Replace, ByteFallback, "
                 "Fuse, Strip, ByteLevel, Metaspace)",
                 type);
}

// ---------------------------------------------------------------------------------------------
// The BPE model.

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
template <typename Value>
using StringMap = std::unordered_map<std::string, Value, StringHash, std::equal_to<>>;

class Bpe {
 public:
  // `vocab` (model.vocab: token -> id) must outlive the model.
  Bpe(const JsonReader& reader, const Json& model, const std::string& path,
      const StringMap<int32_t>& vocab)
      : vocab_(vocab) {
    if (const Json* dropout = reader.optional(model, path, "dropout")) {
      if (!dropout->is_number() || dropout->get<double>() != 0.0) {
        reader.fail_at(member_path(path, "dropout"),
                       "BPE dropout {} is not supported (it randomizes encoding; use null)",
                       describe(*dropout));
      }
    }
    for (const std::string_view key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
      const Json* affix = reader.optional(model, path, key);
      if (affix != nullptr && !reader.string(*affix, member_path(path, key)).empty()) {
        reader.fail_at(member_path(path, key), "a non-empty {} is not supported", key);
      }
    }
    byte_fallback_ = reader.bool_member(model, path, "byte_fallback", false);
    fuse_unk_ = reader.bool_member(model, path, "fuse_unk", false);
    ignore_merges_ = reader.bool_member(model, path, "ignore_merges", false);
    if (const Json* unk = reader.optional(model, path, "unk_token")) {
      const std::string unk_token = reader.string(*unk, member_path(path, "unk_token"));
      const auto it = vocab_.find(unk_token);
      if (it == vocab_.end()) {
        reader.fail_at(member_path(path, "unk_token"), "\"{}\" is not in {}.vocab", unk_token,
                       path);
      }
      unk_id_ = it->second;
    }
    byte_ids_.fill(-1);
    for (int b = 0; b < 256; ++b) {
      const auto it = vocab_.find(fmt::format("<0x{:02X}>", b));
      if (it != vocab_.end()) byte_ids_[b] = it->second;
    }
    for (int c = 0; c < 128; ++c) {
      const auto it = vocab_.find(std::string(1, static_cast<char>(c)));
      ascii_ids_[c] = it == vocab_.end() ? -1 : it->second;
    }
    parse_merges(reader, reader.required(model, path, "merges"), member_path(path, "merges"));
    for (const auto& [token, id] : vocab_) {
      for (size_t i = 0, next = 0; i < token.size(); i = next) {
        next = i + char_len(token[i]);
        if (next < token.size()) {
          adjacent_pairs_.insert(char_pair_key(decode_at(token, i), decode_at(token, next)));
        }
      }
    }
  }

  // Appends the ids of one pre-tokenized word.
  void tokenize(std::string_view word, std::vector<int32_t>& out) const {
    if (word.empty()) return;
    if (ignore_merges_) {
      if (const auto it = vocab_.find(word); it != vocab_.end()) {
        out.push_back(it->second);
        return;
      }
    }
    if (word.size() < kMaxCachedWordBytes) {
      merge_cached(word, out);
      return;
    }
    // A long word (a whole segment when there is no pre-tokenizer, as in Mistral's files) is cut
    // where no merge can ever join the two sides: between characters a and b that are both
    // single-character tokens (so no byte fallback or unknown token is involved) and that are
    // adjacent in no vocabulary token. No merge result can then contain the pair, so the symbols
    // on each side merge exactly as they would alone (each side's merges keep their relative
    // order in the rank-then-position queue), and the pieces hit the word cache.
    size_t chunk_begin = 0;
    char32_t prev = 0;
    bool prev_in_vocab = false;
    for (size_t i = 0; i < word.size();) {
      const size_t len = char_len(word[i]);
      const char32_t cp = decode_at(word, i);
      const bool in_vocab = char_id(word.substr(i, len)) >= 0;
      if (prev_in_vocab && in_vocab && !adjacent_pairs_.contains(char_pair_key(prev, cp))) {
        merge_cached(word.substr(chunk_begin, i - chunk_begin), out);
        chunk_begin = i;
      }
      prev = cp;
      prev_in_vocab = in_vocab;
      i += len;
    }
    merge_cached(word.substr(chunk_begin), out);
  }

 private:
  static constexpr size_t kMaxCachedWordBytes = 256;
  static constexpr size_t kCacheCapacity = 10000;

  static uint64_t char_pair_key(char32_t a, char32_t b) { return (uint64_t{a} << 32) | b; }

  // merge_word() through the cache of short words.
  void merge_cached(std::string_view word, std::vector<int32_t>& out) const {
    const bool cacheable = word.size() < kMaxCachedWordBytes;
    if (cacheable) {
      const std::lock_guard lock(cache_mutex_);
      if (const auto it = cache_.find(word); it != cache_.end()) {
        out.insert(out.end(), it->second.begin(), it->second.end());
        return;
      }
    }
    const size_t first = out.size();
    merge_word(word, out);
    if (cacheable) {
      const std::lock_guard lock(cache_mutex_);
      // Like the Rust cache: once full, new words are simply not cached.
      if (cache_.size() < kCacheCapacity) {
        cache_.emplace(std::string(word), std::vector<int32_t>(out.begin() + first, out.end()));
      }
    }
  }

  struct Merge {
    uint32_t rank;  // position in model.merges: lower merges first
    int32_t new_id;
  };
  static uint64_t pair_key(int32_t left, int32_t right) {
    return (uint64_t{static_cast<uint32_t>(left)} << 32) | static_cast<uint32_t>(right);
  }

  void parse_merges(const JsonReader& reader, const Json& merges, const std::string& path) {
    reader.array(merges, path);
    merges_.reserve(merges.size());
    uint32_t rank = 0;
    for (size_t i = 0; i < merges.size(); ++i) {
      const std::string item_path = index_path(path, i);
      std::string left;
      std::string right;
      if (merges[i].is_string()) {
        // "a b"; "#version" lines of merges.txt are skipped and do not take a rank.
        const std::string line = merges[i].get<std::string>();
        if (line.starts_with("#version")) continue;
        const size_t space = line.find(' ');
        if (space == std::string::npos || line.find(' ', space + 1) != std::string::npos) {
          reader.fail_at(item_path, "expected two tokens separated by one space, got {}",
                         describe(merges[i]));
        }
        left = line.substr(0, space);
        right = line.substr(space + 1);
      } else if (merges[i].is_array() && merges[i].size() == 2) {
        left = reader.string(merges[i][0], index_path(item_path, 0));
        right = reader.string(merges[i][1], index_path(item_path, 1));
      } else {
        reader.fail_at(item_path, "expected two tokens, got {}", describe(merges[i]));
      }
      const int32_t left_id = lookup(reader, item_path, left);
      const int32_t right_id = lookup(reader, item_path, right);
      const int32_t new_id = lookup(reader, item_path, left + right);
      // A repeated pair keeps its last rank, as when Rust collects the merges into a map.
      merges_[pair_key(left_id, right_id)] = Merge{rank++, new_id};
    }
  }

  int32_t lookup(const JsonReader& reader, const std::string& path, const std::string& token) {
    const auto it = vocab_.find(token);
    if (it == vocab_.end()) {
      reader.fail_at(path, "{} is not in model.vocab", Json(token).dump());
    }
    return it->second;
  }

  int32_t char_id(std::string_view ch) const {
    if (ch.size() == 1) return ascii_ids_[static_cast<uint8_t>(ch[0])];
    const auto it = vocab_.find(ch);
    return it == vocab_.end() ? -1 : it->second;
  }

  // Rust's BPE::merge_word + Word::merge_all: one symbol per character (or per byte with byte
  // fallback, or an unknown token), then repeatedly merge the adjacent pair of lowest rank
  // (leftmost on ties) using a min-heap with lazy deletion: O(n log n) in the word length.
  void merge_word(std::string_view word, std::vector<int32_t>& out) const {
    struct Symbol {
      int32_t id;    // -1 once merged into its left neighbour
      int32_t prev;  // index of the previous live symbol, -1 at the start
      int32_t next;  // index of the next live symbol, -1 at the end
    };
    std::vector<Symbol> symbols;
    symbols.reserve(word.size());
    const auto add = [&](int32_t id) {
      const auto index = static_cast<int32_t>(symbols.size());
      symbols.push_back({id, index - 1, -1});
      if (index > 0) symbols[index - 1].next = index;
    };
    int32_t pending_unk = -1;  // an unknown token not yet added (extended by fuse_unk)
    for (size_t i = 0; i < word.size();) {
      const size_t len = char_len(word[i]);
      const std::string_view ch = word.substr(i, len);
      i += len;
      if (const int32_t id = char_id(ch); id >= 0) {
        if (pending_unk >= 0) add(pending_unk);
        pending_unk = -1;
        add(id);
        continue;
      }
      // Byte fallback does not flush a pending unknown token, so Rust emits it after the bytes;
      // kept for exactness (it needs a vocabulary with some byte tokens missing).
      if (byte_fallback_ && std::all_of(ch.begin(), ch.end(), [&](char b) {
            return byte_ids_[static_cast<uint8_t>(b)] >= 0;
          })) {
        for (const char b : ch) add(byte_ids_[static_cast<uint8_t>(b)]);
        continue;
      }
      if (unk_id_ < 0) continue;  // without an unk_token, Rust drops the character
      if (pending_unk >= 0 && !fuse_unk_) add(pending_unk);
      pending_unk = unk_id_;
    }
    if (pending_unk >= 0) add(pending_unk);

    struct Candidate {
      uint32_t rank;
      int32_t pos;  // index of the left symbol
      int32_t new_id;
      // std::priority_queue is a max-heap: the "largest" is the lowest rank, then leftmost.
      bool operator<(const Candidate& other) const {
        return rank != other.rank ? rank > other.rank : pos > other.pos;
      }
    };
    std::vector<Candidate> initial;
    initial.reserve(symbols.size());
    const auto find_merge = [&](int32_t left, int32_t right) -> const Merge* {
      const auto it = merges_.find(pair_key(symbols[left].id, symbols[right].id));
      return it == merges_.end() ? nullptr : &it->second;
    };
    for (int32_t i = 0; i + 1 < static_cast<int32_t>(symbols.size()); ++i) {
      if (const Merge* m = find_merge(i, i + 1)) initial.push_back({m->rank, i, m->new_id});
    }
    std::priority_queue<Candidate> queue(std::less<Candidate>{}, std::move(initial));
    while (!queue.empty()) {
      const Candidate top = queue.top();
      queue.pop();
      Symbol& left = symbols[top.pos];
      if (left.id < 0 || left.next < 0) continue;
      // Skip entries made stale by an earlier merge: the pair at `pos` must still merge to
      // `new_id`.
      const Merge* current = find_merge(top.pos, left.next);
      if (current == nullptr || current->new_id != top.new_id) continue;
      Symbol& right = symbols[left.next];
      left.id = top.new_id;
      right.id = -1;
      left.next = right.next;
      if (right.next >= 0) symbols[right.next].prev = top.pos;
      if (left.prev >= 0) {
        if (const Merge* m = find_merge(left.prev, top.pos)) {
          queue.push({m->rank, left.prev, m->new_id});
        }
      }
      if (left.next >= 0) {
        if (const Merge* m = find_merge(top.pos, left.next)) {
          queue.push({m->rank, top.pos, m->new_id});
        }
      }
    }
    for (int32_t i = symbols.empty() ? -1 : 0; i >= 0; i = symbols[i].next) {
      out.push_back(symbols[i].id);
    }
  }

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

// ---------------------------------------------------------------------------------------------
// Added tokens.

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

  void add(std::string pattern, size_t token) {
    auto& bucket = by_first_byte_[static_cast<uint8_t>(pattern[0])];
    bucket.push_back({std::move(pattern), token});
    std::stable_sort(bucket.begin(), bucket.end(), [](const Entry& a, const Entry& b) {
      return a.pattern.size() > b.pattern.size();
    });
    empty_ = false;
  }

  bool empty() const { return empty_; }

  std::optional<Match> find(std::string_view text, size_t from) const {
    for (size_t i = from; i < text.size(); ++i) {
      for (const Entry& entry : by_first_byte_[static_cast<uint8_t>(text[i])]) {
        if (text.substr(i).starts_with(entry.pattern)) {
          return Match{i, i + entry.pattern.size(), entry.token};
        }
      }
    }
    return std::nullopt;
  }

 private:
  struct Entry {
    std::string pattern;
    size_t token;
  };
  std::array<std::vector<Entry>, 256> by_first_byte_;
  bool empty_ = true;
};

// A piece of text between added tokens (token < 0) or an added token's range.
struct Segment {
  size_t begin;
  size_t end;
  int32_t added_id;  // -1 for ordinary text
};

// Rust's AddedVocabulary::find_matches: single_word tokens must not touch word characters,
// lstrip / rstrip tokens absorb the whitespace next to them.
std::vector<Segment> split_on_added_tokens(std::string_view text, const TokenMatcher& matcher,
                                           const std::vector<AddedToken>& tokens) {
  std::vector<Segment> segments;
  size_t start_offset = 0;
  for (size_t from = 0;;) {
    const std::optional<TokenMatcher::Match> match = matcher.find(text, from);
    if (!match) break;
    from = match->end;  // the next search continues after the match, even if it is discarded
    const AddedToken& token = tokens[match->token];
    size_t start = match->begin;
    size_t stop = match->end;
    if (token.single_word) {
      const bool word_before =
          start > 0 && is_word_char(decode_at(text, last_char_start(text.substr(0, start))));
      const bool word_after = stop < text.size() && is_word_char(decode_at(text, stop));
      if (word_before || word_after) continue;
    }
    if (token.lstrip) {
      size_t new_start = start;
      while (new_start > 0) {
        const size_t prev = last_char_start(text.substr(0, new_start));
        if (!is_white_space(decode_at(text, prev))) break;
        new_start = prev;
      }
      // The previous match may already have taken these spaces.
      start = std::max(new_start, start_offset);
    }
    if (token.rstrip) {
      while (stop < text.size() && is_white_space(decode_at(text, stop))) {
        stop += char_len(text[stop]);
      }
    }
    start = std::max(start, start_offset);
    if (start_offset < start) segments.push_back({start_offset, start, -1});
    segments.push_back({start, stop, token.id});
    start_offset = stop;
  }
  if (start_offset < text.size()) segments.push_back({start_offset, text.size(), -1});
  return segments;
}

// ---------------------------------------------------------------------------------------------
// Files.

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot open file", path.string());
  std::ostringstream content;
  content << in.rdbuf();
  if (in.bad()) fail("{}: read error", path.string());
  return content.str();
}

Json parse_json(std::string_view text, const std::string& origin) {
  try {
    return Json::parse(text);
  } catch (const Json::exception& e) {
    fail("{}: not valid JSON: {}", origin, e.what());
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------

struct Tokenizer::Impl {
  explicit Impl(std::string origin) : reader(std::move(origin)) {}

  void load(const Json& root);
  void parse_post_processor(const Json& obj, const std::string& path);
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
  std::unique_ptr<Decoder> decoder;  // may be null: tokens are joined with spaces
  std::vector<int32_t> prefix_ids;   // added before the text by the post-processor
  std::vector<int32_t> suffix_ids;   // added after the text by the post-processor
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
    parse_post_processor(*obj, "post_processor");
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
  if (bos < 0 && !prefix_ids.empty()) bos = prefix_ids.front();
}

int32_t Tokenizer::Impl::id_or_fail(const JsonReader& at, std::string_view path,
                                    const std::string& token) const {
  if (const auto it = added_ids.find(token); it != added_ids.end()) return it->second;
  if (const auto it = vocab.find(token); it != vocab.end()) return it->second;
  at.fail_at(path, "{} is not in the vocabulary", Json(token).dump());
}

// TemplateProcessing's "single" template becomes prefix_ids + text + suffix_ids; ByteLevel only
// trims offsets (which this tokenizer does not report); Sequence applies its steps in order.
void Tokenizer::Impl::parse_post_processor(const Json& obj, const std::string& path) {
  const std::string type = component_type(reader, obj, path);
  if (type == "ByteLevel") return;
  if (type == "Sequence") {
    const std::string list_path = member_path(path, "processors");
    const Json& list = reader.array(reader.required(obj, path, "processors"), list_path);
    for (size_t i = 0; i < list.size(); ++i)
      parse_post_processor(list[i], index_path(list_path, i));
    return;
  }
  if (type != "TemplateProcessing") {
    reader.fail_at(member_path(path, "type"),
                   "unsupported post-processor type \"{}\" (supported: TemplateProcessing, "
                   "ByteLevel, Sequence)",
                   type);
  }
  // special_tokens: name -> {"id": name, "ids": [...], "tokens": [...]}.
  const std::string specials_path = member_path(path, "special_tokens");
  const Json& specials = reader.object(reader.required(obj, path, "special_tokens"), specials_path);
  std::unordered_map<std::string, std::vector<int32_t>> special_ids;
  for (const auto& [name, entry] : specials.items()) {
    const std::string entry_path = key_path(specials_path, name);
    const std::string ids_path = member_path(entry_path, "ids");
    const Json& ids = reader.array(reader.required(entry, entry_path, "ids"), ids_path);
    std::vector<int32_t>& out = special_ids[name];
    for (size_t i = 0; i < ids.size(); ++i) {
      const int64_t id = reader.integer(ids[i], index_path(ids_path, i));
      if (id < 0 || id >= static_cast<int64_t>(id_to_token.size())) {
        reader.fail_at(index_path(ids_path, i), "id {} is not in the vocabulary", id);
      }
      out.push_back(static_cast<int32_t>(id));
    }
  }
  // Both templates must name only known special tokens; only "single" is used for encoding.
  std::vector<int32_t> prefix;
  std::vector<int32_t> suffix;
  for (const std::string_view which : {"single", "pair"}) {
    const std::string template_path = member_path(path, which);
    const Json* pieces = reader.optional(obj, path, which);
    if (pieces == nullptr) {
      if (which == "single") reader.fail_at(template_path, "missing");
      continue;
    }
    reader.array(*pieces, template_path);
    int sequences = 0;
    for (size_t i = 0; i < pieces->size(); ++i) {
      const std::string piece_path = index_path(template_path, i);
      const Json& piece = reader.object((*pieces)[i], piece_path);
      if (const Json* token = reader.optional(piece, piece_path, "SpecialToken")) {
        const std::string token_path = member_path(piece_path, "SpecialToken");
        const std::string name = reader.string_member(*token, token_path, "id");
        const auto it = special_ids.find(name);
        if (it == special_ids.end()) {
          reader.fail_at(member_path(token_path, "id"), "\"{}\" is not in {}", name, specials_path);
        }
        if (which == "single") {
          std::vector<int32_t>& target = sequences == 0 ? prefix : suffix;
          target.insert(target.end(), it->second.begin(), it->second.end());
        }
      } else if (const Json* sequence = reader.optional(piece, piece_path, "Sequence")) {
        const std::string sequence_path = member_path(piece_path, "Sequence");
        const std::string id = reader.string_member(*sequence, sequence_path, "id");
        if (id != "A" && id != "B") {
          reader.fail_at(member_path(sequence_path, "id"), "expected \"A\" or \"B\", got \"{}\"",
                         id);
        }
        ++sequences;
        if (which == "single" && (id != "A" || sequences > 1)) {
          reader.fail_at(sequence_path, "the single template must hold exactly one $A");
        }
      } else {
        reader.fail_at(piece_path, "expected a SpecialToken or a Sequence");
      }
    }
    if (which == "single" && sequences != 1) {
      reader.fail_at(template_path, "the single template must hold exactly one $A");
    }
  }
  // A later processor wraps the output of the earlier ones.
  prefix_ids.insert(prefix_ids.begin(), prefix.begin(), prefix.end());
  suffix_ids.insert(suffix_ids.end(), suffix.begin(), suffix.end());
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
  ids.reserve(text.size() / 3 + prefix_ids.size() + suffix_ids.size());
  if (add_special_tokens) ids.assign(prefix_ids.begin(), prefix_ids.end());
  for (const Segment& segment : split_on_added_tokens(text, raw_matcher, added_tokens)) {
    if (segment.added_id >= 0) {
      ids.push_back(segment.added_id);
    } else {
      encode_segment(std::string(text.substr(segment.begin, segment.end - segment.begin)),
                     segment.begin == 0, ids);
    }
  }
  if (add_special_tokens) ids.insert(ids.end(), suffix_ids.begin(), suffix_ids.end());
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
      impl.prefix_ids.clear();
      impl.suffix_ids.clear();
      if (add_bos) impl.prefix_ids.push_back(*bos_token);
      if (add_eos_flag) impl.suffix_ids.push_back(*eos_token);
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
