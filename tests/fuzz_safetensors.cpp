// libFuzzer target: arbitrary bytes as a safetensors file. Every input must either
// parse into tensors that lie inside the file, or throw ekva::Error; never crash.
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "ekva/error.h"
#include "model/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const int fd = memfd_create("fuzz.safetensors", 0);
  if (fd < 0 || ftruncate(fd, 0) != 0) return 0;
  if (size > 0 && pwrite(fd, data, size, 0) != static_cast<ssize_t>(size)) return 0;
  const std::string path = "/proc/self/fd/" + std::to_string(fd);
  try {
    const auto file = ekva::SafetensorsFile::open(path);
    // Touch every tensor's first and last byte: they must be inside the map.
    volatile std::byte sink{};
    for (const auto& [name, info] : file->tensors()) {
      if (info.nbytes > 0) {
        sink = info.data[0];
        sink = info.data[info.nbytes - 1];
      }
    }
    (void)sink;
  } catch (const ekva::Error&) {
  }
  return 0;
}
