// Whole-file text reads that see through xz compression. The evaluation sets are
// stored as .jsonl.xz (about a seventh of their size) so the repository stays small
// enough to copy to a GPU machine; every reader opens them through this.
#pragma once

#include <filesystem>
#include <string>

namespace ekva {

// The file's bytes, decompressed when its name ends in ".xz" (every stream of a
// concatenated .xz file, one after the other); read as they are otherwise. Throws
// ekva::Error naming the file and the cause: it cannot be opened or read, or its xz
// data is not xz, corrupt or truncated.
std::string read_text_file(const std::filesystem::path& path);

}  // namespace ekva
