#include "model/tokenizer/pattern.h"

#include <algorithm>
#include <array>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

namespace ekva::tokenizer {
namespace {

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

std::string error_message(int code) {
  std::array<PCRE2_UCHAR, 256> buffer{};
  pcre2_get_error_message(code, buffer.data(), buffer.size());
  return reinterpret_cast<const char*>(buffer.data());
}

struct CodeFree {
  void operator()(pcre2_code* code) const { pcre2_code_free(code); }
};

}  // namespace

struct Regex::Compiled {
  std::unique_ptr<pcre2_code, CodeFree> code;
};

Regex::Regex(const JsonReader& reader, std::string_view path, std::string_view pattern,
             bool literal)
    : compiled_(std::make_unique<Compiled>()) {
  int error_code = 0;
  PCRE2_SIZE error_offset = 0;
  const std::string translated = literal ? std::string(pattern) : onig_to_pcre2(pattern);
  const uint32_t options = PCRE2_UTF | PCRE2_UCP | (literal ? PCRE2_LITERAL : 0);
  pcre2_compile_context* context = pcre2_compile_context_create(nullptr);
  pcre2_set_newline(context, PCRE2_NEWLINE_LF);
  compiled_->code.reset(pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()),
                                      translated.size(), options, &error_code, &error_offset,
                                      context));
  pcre2_compile_context_free(context);
  if (!compiled_->code) {
    // The offset is into the pattern PCRE2 saw, which differs after the \s rewrite.
    const std::string where = translated == pattern
                                  ? fmt::format("at offset {}", error_offset)
                                  : fmt::format("at offset {} of its PCRE2 form {}", error_offset,
                                                Json(translated).dump());
    reader.fail_at(path, "invalid regex {}: {} ({})", Json(std::string(pattern)).dump(),
                   error_message(error_code), where);
  }
  pcre2_jit_compile(compiled_->code.get(),
                    PCRE2_JIT_COMPLETE);  // without JIT, the interpreter runs
}

Regex::Regex(Regex&&) noexcept = default;
Regex& Regex::operator=(Regex&&) noexcept = default;
Regex::~Regex() = default;

std::vector<std::pair<size_t, size_t>> Regex::find_all(std::string_view subject) const {
  pcre2_code* code = compiled_->code.get();
  const std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> match_data(
      pcre2_match_data_create_from_pattern(code, nullptr), &pcre2_match_data_free);
  std::vector<std::pair<size_t, size_t>> matches;
  size_t pos = 0;
  size_t last_match_end = std::string_view::npos;
  while (pos <= subject.size()) {
    const int rc = pcre2_match(code, reinterpret_cast<PCRE2_SPTR>(subject.data()), subject.size(),
                               pos, PCRE2_NO_UTF_CHECK, match_data.get(), nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) fail("tokenizer: regex match failed: {}", error_message(rc));
    const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(match_data.get());
    const size_t begin = ovector[0];
    const size_t end = ovector[1];
    if (begin == end && end == last_match_end) {
      if (pos >= subject.size()) break;
      pos += char_len(subject[pos]);
      continue;
    }
    matches.emplace_back(begin, end);
    pos = end;
    last_match_end = end;
  }
  return matches;
}

// ---------------------------------------------------------------------------------------------

Pattern::Pattern(const JsonReader& reader, const Json& obj, const std::string& path) {
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

Pattern::Pattern(std::string literal) : literal_(std::move(literal)) {}

std::vector<Span> Pattern::find_matches(std::string_view text) const {
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
    for (const auto& [begin, end] : regex_->find_all(text)) on_match(begin, end);
  } else {
    for (size_t at = text.find(literal_); at != std::string_view::npos;
         at = text.find(literal_, at + literal_.size())) {
      on_match(at, at + literal_.size());
    }
  }
  if (prev != text.size()) spans.push_back({prev, text.size(), false});
  return spans;
}

std::string Pattern::replace(std::string_view text, std::string_view content) const {
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

// ---------------------------------------------------------------------------------------------

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

}  // namespace ekva::tokenizer
