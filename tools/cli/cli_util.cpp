#include "cli_util.h"

#include <fstream>
#include <sstream>

#include <fmt/format.h>

#include "core/error.h"
#include "core/xz_file.h"

namespace ekva::cli {

std::string human_bytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (bytes >= 1024.0 && u < 4) {
    bytes /= 1024.0;
    ++u;
  }
  return fmt::format("{:.{}f} {}", bytes, u == 0 ? 0 : 1, units[u]);
}

std::string read_prompt_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ekva::Error(fmt::format("{}: cannot open prompt file", path));
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

Ceilings ceilings_from_args(const std::string& probe, const std::string& hardware) {
  if (probe.empty() == hardware.empty())
    throw UsageError(
        "give the ceilings with --probe FILE (from ekva roofline probe) or --hardware NAME "
        "(ekva roofline hardware lists them)");
  return probe.empty() ? datasheet_ceilings(hardware) : Ceilings::load(probe);
}

void write_text_file(const std::string& path, const std::string& text, const char* what) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  out.close();
  if (!out) throw ekva::Error(fmt::format("{}: cannot write {}", path, what));
}

std::vector<nlohmann::json> read_jsonl(const std::string& path) {
  std::istringstream in(read_text_file(path));
  std::vector<nlohmann::json> out;
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    ++n;
    if (line.empty()) continue;
    try {
      out.push_back(nlohmann::json::parse(line));
    } catch (const nlohmann::json::exception& e) {
      fail("{}:{}: not valid JSON: {}", path, n, e.what());
    }
  }
  return out;
}

}  // namespace ekva::cli
