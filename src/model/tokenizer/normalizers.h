// Normalizers: transform one segment of text (the text between added tokens) before it is
// pre-tokenized. Supported: Sequence, Prepend, Replace, NFC, NFD, NFKC, NFKD.
#pragma once

#include <memory>
#include <string>

#include "model/tokenizer/json_reader.h"

namespace ekva::tokenizer {

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual void normalize(std::string& text) const = 0;
};

// The normalizer described by `obj` (found at `path` in the file); throws ekva::Error naming the
// path for an unsupported type or a bad field.
std::unique_ptr<Normalizer> parse_normalizer(const JsonReader& reader, const Json& obj,
                                             const std::string& path);

}  // namespace ekva::tokenizer
