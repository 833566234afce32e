#include "model/tokenizer/bpe.h"

#include <algorithm>
#include <queue>

#include "model/tokenizer/utf8.h"

namespace ekva::tokenizer {

Bpe::Bpe(const JsonReader& reader, const Json& model, const std::string& path,
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
      reader.fail_at(member_path(path, "unk_token"), "\"{}\" is not in {}.vocab", unk_token, path);
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

void Bpe::tokenize(std::string_view word, std::vector<int32_t>& out) const {
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

void Bpe::merge_cached(std::string_view word, std::vector<int32_t>& out) const {
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

void Bpe::parse_merges(const JsonReader& reader, const Json& merges, const std::string& path) {
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

int32_t Bpe::lookup(const JsonReader& reader, const std::string& path, const std::string& token) {
  const auto it = vocab_.find(token);
  if (it == vocab_.end()) {
    reader.fail_at(path, "{} is not in model.vocab", Json(token).dump());
  }
  return it->second;
}

int32_t Bpe::char_id(std::string_view ch) const {
  if (ch.size() == 1) return ascii_ids_[static_cast<uint8_t>(ch[0])];
  const auto it = vocab_.find(ch);
  return it == vocab_.end() ? -1 : it->second;
}

// Rust's BPE::merge_word + Word::merge_all: one symbol per character (or per byte with byte
// fallback, or an unknown token), then repeatedly merge the adjacent pair of lowest rank
// (leftmost on ties) using a min-heap with lazy deletion: O(n log n) in the word length.
void Bpe::merge_word(std::string_view word, std::vector<int32_t>& out) const {
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

}  // namespace ekva::tokenizer
