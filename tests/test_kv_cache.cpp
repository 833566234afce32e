// The plain full cache: append per layer, views, lengths and exact bytes.
#include <gtest/gtest.h>

#include <cmath>

#include "ekva/error.h"
#include "kv/kv_cache.h"
#include "test_util.h"

namespace ekva {
namespace {

TEST(FullKvCache, AppendsAndViewsPerLayerAndHead) {
  const KvShape shape{2, 3, 8};
  FullKvCache cache(shape, 16);
  for (int step = 0; step < 3; ++step) {
    const int n = step == 0 ? 5 : 1;  // prefill of 5, then two decode steps
    std::vector<int32_t> pos(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i)
      pos[static_cast<size_t>(i)] = static_cast<int32_t>(cache.length() + i);
    for (int layer = 0; layer < shape.n_layers; ++layer) {
      const auto k = test::random_floats(static_cast<size_t>(n * 3 * 8), 10 * step + layer);
      const auto v = test::random_floats(k.size(), 100 + 10 * step + layer);
      cache.append(layer, pos, k.data(), v.data());
      std::vector<KvChunk> chunks;
      cache.view(layer, 2, chunks);
      ASSERT_EQ(chunks.size(), 1u);
      const KvChunk& c = chunks[0];
      const int64_t base = c.n - n;
      for (int t = 0; t < n; ++t) {
        EXPECT_EQ(c.positions[base + t], pos[static_cast<size_t>(t)]);
        for (int d = 0; d < 8; ++d) {
          EXPECT_EQ(c.k_at((base + t) * 8 + d), k[static_cast<size_t>((t * 3 + 2) * 8 + d)]);
          EXPECT_EQ(c.v_at((base + t) * 8 + d), v[static_cast<size_t>((t * 3 + 2) * 8 + d)]);
        }
      }
    }
  }
  EXPECT_EQ(cache.length(), 7);
  EXPECT_EQ(cache.bytes_used(),
            size_t{7} * 2 /*layers*/ * 3 /*heads*/ * 2 /*K,V*/ * 8 * sizeof(float));
  cache.clear();
  EXPECT_EQ(cache.length(), 0);
  EXPECT_EQ(cache.bytes_used(), 0u);
}

TEST(FullKvCache, StoresBf16RoundedToNearestAndCountsItsBytes) {
  const KvShape shape{1, 2, 16};
  FullKvCache cache(shape, 8, DType::kBF16);
  const auto k = test::random_floats(3 * 2 * 16, 1);
  const auto v = test::random_floats(k.size(), 2);
  const std::vector<int32_t> pos = {0, 1, 2};
  cache.append(0, pos, k.data(), v.data());
  std::vector<KvChunk> chunks;
  cache.view(0, 1, chunks);
  ASSERT_EQ(chunks.size(), 1u);
  EXPECT_EQ(chunks[0].dtype, DType::kBF16);
  for (int t = 0; t < 3; ++t) {
    for (int d = 0; d < 16; ++d) {
      const float want_k = bf16_to_f32(f32_to_bf16(k[static_cast<size_t>((t * 2 + 1) * 16 + d)]));
      EXPECT_EQ(chunks[0].k_at(t * 16 + d), want_k);
      // bf16 keeps 8 significant bits: within half a unit in the last place.
      EXPECT_NEAR(chunks[0].v_at(t * 16 + d), v[static_cast<size_t>((t * 2 + 1) * 16 + d)],
                  std::abs(v[static_cast<size_t>((t * 2 + 1) * 16 + d)]) / 256.f);
    }
  }
  EXPECT_EQ(cache.bytes_used(), size_t{3} * 2 /*heads*/ * 2 /*K,V*/ * 16 * 2 /*bf16*/);
  EXPECT_THROW(FullKvCache({1, 1, 4}, 3, DType::kF16), Error);
}

TEST(FullKvCache, RefusesToOverflowItsContext) {
  FullKvCache cache({1, 1, 4}, 3);
  std::vector<float> kv(16, 1.f);
  std::vector<int32_t> pos = {0, 1, 2, 3};
  try {
    cache.append(0, pos, kv.data(), kv.data());
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("exceed the context of 3"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace ekva
