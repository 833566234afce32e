// Decoders: turn the token strings of a decode into text, as a chain of string-list transforms.
// Supported: Sequence, Replace, ByteFallback, Fuse, Strip, ByteLevel, Metaspace.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "model/tokenizer/json_reader.h"

namespace ekva::tokenizer {

class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual void decode_chain(std::vector<std::string>& tokens) const = 0;
};

// The decoder described by `obj` (found at `path` in the file); throws ekva::Error naming the
// path for an unsupported type or a bad field.
std::unique_ptr<Decoder> parse_decoder(const JsonReader& reader, const Json& obj,
                                       const std::string& path);

}  // namespace ekva::tokenizer
