// Stand-in for src/core/error.h in the standalone CUDA build (bench/cuda/): the same
// ekva::fail and EKVA_CHECK, formatting "{}" fields with iostreams instead of fmt, so
// the plan and the reference compile on GPU machines that lack the fmt package.
#pragma once

#include <sstream>
#include <string>
#include <string_view>

#include "ekva/error.h"

namespace ekva::shim {

inline void format_to(std::ostringstream& os, std::string_view f) { os << f; }

// Each "{...}" field takes the next argument (format specs are ignored).
template <typename T, typename... Rest>
void format_to(std::ostringstream& os, std::string_view f, const T& first, const Rest&... rest) {
  const size_t open = f.find('{');
  if (open == std::string_view::npos) {
    os << f;
    return;
  }
  const size_t close = f.find('}', open);
  os << f.substr(0, open) << first;
  format_to(os, close == std::string_view::npos ? std::string_view{} : f.substr(close + 1),
            rest...);
}

template <typename... Args>
std::string format(std::string_view f, const Args&... args) {
  std::ostringstream os;
  format_to(os, f, args...);
  return os.str();
}

}  // namespace ekva::shim

namespace ekva {
template <typename... Args>
[[noreturn]] void fail(std::string_view format, const Args&... args) {
  throw Error(shim::format(format, args...));
}
}  // namespace ekva

#define EKVA_CHECK(cond, ...)                                                                      \
  do {                                                                                             \
    if (!(cond)) [[unlikely]]                                                                      \
      throw ::ekva::Error(::ekva::shim::format("{}:{}: check '{}' failed: {}", __FILE__, __LINE__, \
                                               #cond, ::ekva::shim::format(__VA_ARGS__)));         \
  } while (0)
#define EKVA_DCHECK(cond, ...) \
  do {                         \
  } while (0)
