// Helpers shared by the subcommands of the `ekva` command.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "ekva/error.h"
#include "roofline/hardware.h"

namespace ekva::cli {

// Bad command-line use that CLI11's checks cannot express (a missing either-or option): main
// prints "ekva: error: <what>" and exits with 2, the code of CLI11's own usage errors.
class UsageError : public ekva::Error {
 public:
  using ekva::Error::Error;
};

// "512 B", "1.5 GiB": binary units, one decimal above bytes.
std::string human_bytes(double bytes);

// The whole file as bytes; throws ekva::Error "<path>: cannot open prompt file".
std::string read_prompt_file(const std::string& path);

// One JSON object per line of a plain or .xz file (blank lines skipped); throws
// ekva::Error naming the file and line of a line that is not valid JSON.
std::vector<nlohmann::json> read_jsonl(const std::string& path);

// The ceilings of --probe FILE (ekva roofline probe) or --hardware NAME (the datasheet
// table); neither, or both, is a UsageError.
Ceilings ceilings_from_args(const std::string& probe, const std::string& hardware);

// Writes `text` to `path` (replacing it); throws ekva::Error "<path>: cannot write <what>".
void write_text_file(const std::string& path, const std::string& text, const char* what);

}  // namespace ekva::cli
