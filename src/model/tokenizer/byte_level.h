// GPT-2's byte-to-unicode table, shared by the ByteLevel pre-tokenizer (bytes -> visible
// characters) and the ByteLevel decoder (characters -> bytes).
#pragma once

#include <array>
#include <cstdint>
#include <string>

namespace ekva::tokenizer {

// The UTF-8 of the character each byte maps to: printable Latin-1 bytes map to themselves, the
// other 68 bytes to U+0100.. in byte order, so every byte becomes a visible character the BPE
// vocabulary can hold.
const std::array<std::string, 256>& byte_to_utf8();

// The inverse, indexed by code point (all mapped code points are < 0x144); -1 for a code point
// no byte maps to.
const std::array<int16_t, 0x144>& char_to_byte();

}  // namespace ekva::tokenizer
