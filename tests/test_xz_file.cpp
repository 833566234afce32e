// read_text_file: plain files as they are, .xz files decompressed (several streams
// and chunks of input and output), and one error naming the file for a missing file
// and for xz data that is not xz, corrupt or truncated.
#include <gtest/gtest.h>

#include <lzma.h>

#include <filesystem>
#include <random>
#include <string>

#include "core/xz_file.h"
#include "test_util.h"

namespace ekva {
namespace {

using test::expect_error;

// Random lowercase lines: about 5 bits a byte after compression, so 300 KB of text
// crosses the reader's 64 KiB chunks both as xz input and as text.
std::string random_text(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> letter('a', 'z');
  std::string s(n, '\n');
  for (size_t i = 0; i < n; ++i)
    if (i % 81 != 80) s[i] = static_cast<char>(letter(rng));
  return s;
}

std::string xz(const std::string& text) {
  std::string out(lzma_stream_buffer_bound(text.size()), '\0');
  size_t n = 0;
  const lzma_ret ret = lzma_easy_buffer_encode(
      6, LZMA_CHECK_CRC64, nullptr, reinterpret_cast<const uint8_t*>(text.data()), text.size(),
      reinterpret_cast<uint8_t*>(out.data()), &n, out.size());
  EXPECT_EQ(ret, LZMA_OK);
  out.resize(n);
  return out;
}

class XzFile : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = test::temp_dir("xz_file"); }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::filesystem::path write(const std::string& name, const std::string& bytes) {
    const auto p = dir_ / name;
    test::write_file(p, bytes);
    return p;
  }
  std::filesystem::path dir_;
};

TEST_F(XzFile, ReadsAPlainFileAsItIs) {
  const std::string text = random_text(300'000, 1) + "caf\xc3\xa9\n";
  EXPECT_EQ(read_text_file(write("a.jsonl", text)), text);
  EXPECT_EQ(read_text_file(write("empty.jsonl", "")), "");
}

TEST_F(XzFile, DecompressesAnXzFile) {
  const std::string text = random_text(300'000, 2);
  const std::string packed = xz(text);
  ASSERT_GT(packed.size(), 2u << 16) << "the input should span several chunks";
  EXPECT_EQ(read_text_file(write("a.jsonl.xz", packed)), text);
  EXPECT_EQ(read_text_file(write("empty.jsonl.xz", xz(""))), "");
}

TEST_F(XzFile, DecompressesConcatenatedStreams) {
  const std::string a = random_text(1000, 3), b = random_text(70'000, 4);
  EXPECT_EQ(read_text_file(write("ab.xz", xz(a) + xz(b))), a + b);
}

TEST_F(XzFile, TruncatedXzNamesTheFile) {
  const std::string packed = xz(random_text(300'000, 5));
  for (const size_t keep : {packed.size() / 2, packed.size() - 1}) {
    const auto p = write("cut.jsonl.xz", packed.substr(0, keep));
    expect_error([&] { read_text_file(p); }, {p.string(), "truncated xz data"});
  }
  const auto empty = write("empty.xz", "");
  expect_error([&] { read_text_file(empty); }, {empty.string(), "truncated xz data"});
}

TEST_F(XzFile, CorruptXzNamesTheFile) {
  std::string packed = xz(random_text(300'000, 6));
  packed[packed.size() / 2] ^= 0x55;
  const auto p = write("bad.jsonl.xz", packed);
  expect_error([&] { read_text_file(p); }, {p.string(), "corrupt xz data"});
  const auto plain = write("plain.jsonl.xz", "{\"not\": \"xz\"}\n");
  expect_error([&] { read_text_file(plain); }, {plain.string(), "not xz data"});
}

TEST_F(XzFile, MissingFileNamesTheFile) {
  const auto p = dir_ / "missing.jsonl.xz";
  expect_error([&] { read_text_file(p); }, {p.string(), "cannot open", "No such file"});
}

}  // namespace
}  // namespace ekva
