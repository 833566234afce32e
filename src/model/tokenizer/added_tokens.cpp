#include "model/tokenizer/added_tokens.h"

#include <algorithm>
#include <utility>

#include "model/tokenizer/utf8.h"

namespace ekva::tokenizer {

void TokenMatcher::add(std::string pattern, size_t token) {
  auto& bucket = by_first_byte_[static_cast<uint8_t>(pattern[0])];
  bucket.push_back({std::move(pattern), token});
  std::stable_sort(bucket.begin(), bucket.end(), [](const Entry& a, const Entry& b) {
    return a.pattern.size() > b.pattern.size();
  });
  empty_ = false;
}

std::optional<TokenMatcher::Match> TokenMatcher::find(std::string_view text, size_t from) const {
  for (size_t i = from; i < text.size(); ++i) {
    for (const Entry& entry : by_first_byte_[static_cast<uint8_t>(text[i])]) {
      if (text.substr(i).starts_with(entry.pattern)) {
        return Match{i, i + entry.pattern.size(), entry.token};
      }
    }
  }
  return std::nullopt;
}

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

}  // namespace ekva::tokenizer
