#include "core/xz_file.h"

#include <lzma.h>

#include <array>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>

#include "core/error.h"

namespace ekva {
namespace {

struct FileCloser {
  void operator()(std::FILE* f) const { std::fclose(f); }
};
using File = std::unique_ptr<std::FILE, FileCloser>;

struct LzmaEnd {
  void operator()(lzma_stream* s) const { lzma_end(s); }
};

using Chunk = std::array<uint8_t, 1 << 16>;

// Fills buf from the file; fewer bytes than buf holds means the file has ended.
size_t read_chunk(std::FILE* file, Chunk& buf, const std::filesystem::path& path) {
  const size_t n = std::fread(buf.data(), 1, buf.size(), file);
  if (std::ferror(file)) fail("{}: cannot read: {}", path.string(), std::strerror(errno));
  return n;
}

// lzma_code's failures in words. LZMA_BUF_ERROR under LZMA_FINISH means the input
// ended inside a stream.
const char* xz_cause(lzma_ret ret) {
  switch (ret) {
    case LZMA_FORMAT_ERROR:
      return "not xz data";
    case LZMA_OPTIONS_ERROR:
      return "unsupported xz options";
    case LZMA_DATA_ERROR:
      return "corrupt xz data";
    case LZMA_BUF_ERROR:
      return "truncated xz data";
    case LZMA_MEM_ERROR:
      return "out of memory";
    default:
      return "xz decoder error";
  }
}

std::string read_plain(std::FILE* file, const std::filesystem::path& path) {
  std::string text;
  Chunk buf;
  size_t n = 0;
  do {
    n = read_chunk(file, buf, path);
    text.append(reinterpret_cast<const char*>(buf.data()), n);
  } while (n == buf.size());
  return text;
}

std::string decompress_xz(std::FILE* file, const std::filesystem::path& path) {
  lzma_stream stream = LZMA_STREAM_INIT;
  // No memory limit: the files are the project's own. LZMA_CONCATENATED decodes every
  // stream in the file, as xz -d does; the decoder then learns where the input ends
  // only from LZMA_FINISH, sent with the last chunk.
  const lzma_ret started = lzma_stream_decoder(&stream, UINT64_MAX, LZMA_CONCATENATED);
  if (started != LZMA_OK)
    fail("{}: cannot start the xz decoder: {}", path.string(), xz_cause(started));
  const std::unique_ptr<lzma_stream, LzmaEnd> decoder(&stream);

  std::string text;
  Chunk in, out;
  lzma_action action = LZMA_RUN;
  while (true) {
    if (stream.avail_in == 0 && action == LZMA_RUN) {
      stream.next_in = in.data();
      stream.avail_in = read_chunk(file, in, path);
      if (stream.avail_in < in.size()) action = LZMA_FINISH;
    }
    stream.next_out = out.data();
    stream.avail_out = out.size();
    const lzma_ret ret = lzma_code(&stream, action);
    text.append(reinterpret_cast<const char*>(out.data()), out.size() - stream.avail_out);
    if (ret == LZMA_STREAM_END) return text;
    if (ret != LZMA_OK) fail("{}: {}", path.string(), xz_cause(ret));
  }
}

}  // namespace

std::string read_text_file(const std::filesystem::path& path) {
  const File file(std::fopen(path.c_str(), "rb"));
  if (!file) fail("{}: cannot open: {}", path.string(), std::strerror(errno));
  return path.extension() == ".xz" ? decompress_xz(file.get(), path) : read_plain(file.get(), path);
}

}  // namespace ekva
