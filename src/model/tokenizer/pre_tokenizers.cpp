#include "model/tokenizer/pre_tokenizers.h"

#include <optional>
#include <string_view>
#include <utility>

#include "model/tokenizer/byte_level.h"
#include "model/tokenizer/pattern.h"
#include "model/tokenizer/utf8.h"

namespace ekva::tokenizer {
namespace {

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
        for (const auto& [begin, end] : gpt2_regex_->find_all(text)) {
          if (prev != begin) ranges.emplace_back(prev, begin);
          ranges.emplace_back(begin, end);
          prev = end;
        }
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

}  // namespace

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

}  // namespace ekva::tokenizer
