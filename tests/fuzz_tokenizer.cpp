// libFuzzer target: arbitrary bytes as a tokenizer.json. Every input must either load, then
// encode, decode and stream-decode a fixed text, or throw ekva::Error; never crash.
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "ekva/error.h"
#include "model/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const ekva::Tokenizer tokenizer = ekva::Tokenizer::from_json_string(
        std::string_view(reinterpret_cast<const char*>(data), size), "fuzz.json");
    // Spaces, a newline, a special-looking token, non-ASCII and an invalid byte.
    const std::vector<int32_t> ids = tokenizer.encode("Hello  world!\n<s>ab\xC3\xA9 12\xFF", true);
    static_cast<void>(tokenizer.decode(ids, true));
    ekva::StreamDecoder stream(tokenizer);
    for (const int32_t id : ids) static_cast<void>(stream.push(id));
    static_cast<void>(stream.flush());
  } catch (const ekva::Error&) {
  }
  return 0;
}
