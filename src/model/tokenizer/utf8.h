// UTF-8 for the tokenizer: decoding with the Unicode "maximal subpart" rule for ill-formed input
// (what WHATWG's decoder and Rust's from_utf8_lossy do), and the character classes the Rust
// `tokenizers` rules use. The small decoders are inline: BPE calls them once per character.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace ekva::tokenizer {

inline constexpr char32_t kReplacementChar = 0xFFFD;
inline constexpr std::string_view kReplacementUtf8 = "\xEF\xBF\xBD";

struct Utf8Step {
  char32_t cp;  // kReplacementChar when !valid
  int len;      // bytes consumed: the whole sequence, or the maximal invalid subpart (>= 1)
  bool valid;
};

// Decodes the sequence at s[i] following Unicode Table 3-7 (well-formed UTF-8); an ill-formed
// sequence consumes its maximal subpart, as WHATWG's decoder and Rust's from_utf8_lossy do.
inline Utf8Step next_utf8(std::string_view s, size_t i) {
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

// Byte length of the character starting with `lead` in a string known to be valid UTF-8.
inline size_t char_len(char lead) {
  const auto b = static_cast<uint8_t>(lead);
  return b < 0x80 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4;
}

// Decodes one character of a valid UTF-8 string.
inline char32_t decode_at(std::string_view s, size_t i) { return next_utf8(s, i).cp; }

// Start of the last character of a non-empty valid UTF-8 string.
inline size_t last_char_start(std::string_view s) {
  size_t i = s.size() - 1;
  while (i > 0 && (static_cast<uint8_t>(s[i]) & 0xC0) == 0x80) --i;
  return i;
}

bool is_valid_utf8(std::string_view s);

// Replaces each maximal invalid subpart by U+FFFD.
std::string sanitize_utf8(std::string_view s);

void append_utf8(std::string& out, char32_t cp);

// Rust's char::is_whitespace and regex \s: the White_Space property.
bool is_white_space(char32_t c);

// Rust regex \w (used by added tokens' single_word): Alphabetic, Mark, Decimal_Number,
// Connector_Punctuation, Join_Control.
bool is_word_char(char32_t c);

}  // namespace ekva::tokenizer
