#include "model/tokenizer/decoders.h"

#include <cstdint>
#include <optional>
#include <string_view>
#include <utility>

#include "model/tokenizer/byte_level.h"
#include "model/tokenizer/pattern.h"
#include "model/tokenizer/pre_tokenizers.h"
#include "model/tokenizer/utf8.h"

namespace ekva::tokenizer {
namespace {

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

}  // namespace

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

}  // namespace ekva::tokenizer
