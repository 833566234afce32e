// Errors and checks. The library throws ekva::Error (a std::runtime_error) whose
// message names the file, tensor or field at fault; the CLI turns it into one line on
// stderr and a non-zero exit. EKVA_CHECK adds file:line for internal invariants.
#pragma once

#include <stdexcept>
#include <string>

#include <fmt/format.h>

#include "ekva/error.h"

namespace ekva {

template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
  throw Error(fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace ekva

#define EKVA_CHECK(cond, ...)                                                                    \
  do {                                                                                           \
    if (!(cond)) [[unlikely]]                                                                    \
      throw ::ekva::Error(fmt::format("{}:{}: check '{}' failed: {}", __FILE__, __LINE__, #cond, \
                                      fmt::format(__VA_ARGS__)));                                \
  } while (0)

#ifdef NDEBUG
#define EKVA_DCHECK(cond, ...) \
  do {                         \
  } while (0)
#else
#define EKVA_DCHECK(cond, ...) EKVA_CHECK(cond, __VA_ARGS__)
#endif
