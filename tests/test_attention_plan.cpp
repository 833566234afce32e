// The attention planner: every (query, kv-head) covered exactly once by items of
// bounded size, long lists split, short ones packed into tasks, enough tasks to
// fill the threads whatever the length distribution (Zipf-skewed, empty lists,
// one huge list), and attention by any plan equal to the reference.
#include <gtest/gtest.h>

#include <numeric>
#include <random>

#include "cpu/kernels.h"
#include "ops/attention_plan.h"
#include "test_util.h"

namespace ekva {
namespace {

struct Problem {
  std::vector<std::vector<KvChunk>> lists;
  std::vector<int32_t> q_seq;
  AttentionParams p;
};

// Lists of the given lengths (chunks with null data: the planner reads lengths only).
Problem problem(const std::vector<int64_t>& lengths, int64_t kv_heads, int64_t queries_per_seq) {
  Problem pr;
  const auto S = static_cast<int64_t>(lengths.size()) / kv_heads;
  for (const int64_t n : lengths) {
    pr.lists.emplace_back();
    for (int64_t b = 0; b < n; b += 97)
      pr.lists.back().push_back({nullptr, nullptr, nullptr, std::min<int64_t>(97, n - b)});
  }
  for (int64_t s = 0; s < S; ++s)
    for (int64_t t = 0; t < queries_per_seq; ++t) pr.q_seq.push_back(static_cast<int32_t>(s));
  pr.p.n_queries = static_cast<int64_t>(pr.q_seq.size());
  pr.p.n_heads = kv_heads * 4;
  pr.p.n_kv_heads = kv_heads;
  pr.p.head_dim = 64;
  pr.p.q_seq = pr.q_seq.data();
  pr.p.n_seqs = S;
  return pr;
}

void check_invariants(const Problem& pr, const AttentionPlan& plan, const AttentionPlanOptions& o) {
  const int64_t KH = pr.p.n_kv_heads;
  ASSERT_EQ(static_cast<int64_t>(plan.merge_begin.size()), pr.p.n_queries * KH + 1);
  EXPECT_GE(plan.item_entries, o.min_item_entries);
  for (int64_t t = 0; t < pr.p.n_queries; ++t) {
    for (int64_t h = 0; h < KH; ++h) {
      int64_t n = 0;
      for (const KvChunk& c :
           pr.lists[static_cast<size_t>(pr.q_seq[static_cast<size_t>(t)] * KH + h)])
        n += c.n;
      const int64_t i0 = plan.merge_begin[static_cast<size_t>(t * KH + h)];
      const int64_t i1 = plan.merge_begin[static_cast<size_t>(t * KH + h) + 1];
      ASSERT_GE(i1 - i0, 1) << "every (query, kv-head) has an item";
      int64_t next = 0;
      for (int64_t i = i0; i < i1; ++i) {
        const AttentionWorkItem& it = plan.items[static_cast<size_t>(i)];
        EXPECT_EQ(it.query, t);
        EXPECT_EQ(it.kv_head, h);
        EXPECT_EQ(it.begin, next) << "items tile the list in order";
        EXPECT_LE(it.end - it.begin, plan.item_entries);
        next = it.end;
      }
      EXPECT_EQ(next, n);
    }
  }
  ASSERT_GE(plan.n_tasks(), 1);
  EXPECT_EQ(plan.task_begin.front(), 0);
  EXPECT_EQ(plan.task_begin.back(), static_cast<int64_t>(plan.items.size()));
  for (int64_t k = 0; k < plan.n_tasks(); ++k) {
    const int64_t a = plan.task_begin[static_cast<size_t>(k)],
                  b = plan.task_begin[static_cast<size_t>(k) + 1];
    ASSERT_LT(a, b);
    int64_t work = 0;
    for (int64_t i = a; i < b; ++i)
      work += plan.items[static_cast<size_t>(i)].end - plan.items[static_cast<size_t>(i)].begin;
    if (b - a > 1) {
      EXPECT_LE(work, plan.item_entries) << "packed tasks stay within the bound";
    }
  }
}

TEST(AttentionPlan, CoversSkewedEmptyAndHugeListsWithBoundedItems) {
  std::mt19937 rng(5);
  const AttentionPlanOptions o{.min_tasks = 16, .min_item_entries = 64};
  // Zipf over 8 experts x 8 kv-heads x 6 sequences, some empty, one huge.
  std::vector<int64_t> lengths;
  for (int i = 0; i < 6 * 8; ++i)
    lengths.push_back(static_cast<int64_t>(4000.0 / (1 + rng() % 8)) * (rng() % 5 != 0));
  lengths[7] = 100000;
  const Problem pr = problem(lengths, 8, 1);
  const AttentionPlan plan = plan_attention(pr.p, pr.lists, o);
  check_invariants(pr, plan, o);
  EXPECT_GE(plan.n_tasks(), o.min_tasks);
  // The huge list is split into many items; short neighbours share tasks.
  const int64_t huge_items = plan.merge_begin[8] - plan.merge_begin[7];
  EXPECT_GE(huge_items, 100000 / plan.item_entries);
  EXPECT_LT(plan.n_tasks(), static_cast<int64_t>(plan.items.size()));
}

TEST(AttentionPlan, DecodeOfOneShortSequenceAndPrefillRows) {
  for (const auto& [lengths, kv_heads, queries] :
       {std::tuple<std::vector<int64_t>, int64_t, int64_t>{{5, 0}, 2, 1},
        {{0}, 1, 3},
        {{300, 301, 0, 7}, 2, 13}}) {
    const Problem pr = problem(lengths, kv_heads, queries);
    const AttentionPlanOptions o{};
    check_invariants(pr, plan_attention(pr.p, pr.lists, o), o);
  }
}

TEST(AttentionPlan, AnyPlanGivesTheReferenceOutput) {
  // The same problem under very different plans (one item per list, items of 64,
  // of 1) attends to the same result.
  const int64_t D = 32, KH = 2, G = 3, S = 3;
  const std::vector<int64_t> n = {700, 0, 33, 1500, 1, 260};
  std::vector<std::vector<float>> k, v;
  std::vector<std::vector<int32_t>> pos;
  std::vector<std::vector<KvChunk>> lists;
  for (size_t i = 0; i < n.size(); ++i) {
    k.push_back(test::random_floats(static_cast<size_t>(std::max<int64_t>(n[i], 1) * D), 10 + i));
    v.push_back(test::random_floats(k.back().size(), 20 + i));
    pos.emplace_back(static_cast<size_t>(n[i]));
    std::iota(pos.back().begin(), pos.back().end(), 0);
    lists.emplace_back();
    for (int64_t b = 0; b < n[i]; b += 50)
      lists.back().push_back(
          {&k.back()[static_cast<size_t>(b * D)], &v.back()[static_cast<size_t>(b * D)],
           &pos.back()[static_cast<size_t>(b)], std::min<int64_t>(50, n[i] - b)});
  }
  const std::vector<int32_t> q_seq = {0, 1, 2, 2};
  const std::vector<int32_t> q_pos = {699, 1499, 258, 259};
  const auto q = test::random_floats(q_seq.size() * KH * G * D, 3);
  AttentionParams p{static_cast<int64_t>(q_seq.size()),
                    KH * G,
                    KH,
                    D,
                    0.2f,
                    0,
                    q.data(),
                    q_pos.data(),
                    nullptr,
                    q_seq.data(),
                    S};
  std::vector<float> want(q.size());
  p.out = want.data();
  ref::attention(p, lists);
  ThreadPool pool(3);
  for (const AttentionPlanOptions& o :
       {AttentionPlanOptions{.min_tasks = 1, .min_item_entries = 100000},
        AttentionPlanOptions{.min_tasks = 64, .min_item_entries = 64},
        AttentionPlanOptions{.min_tasks = 100000, .min_item_entries = 1}}) {
    std::vector<float> got(q.size(), NAN);
    p.out = got.data();
    cpu::attention(p, lists, plan_attention(p, lists, o), pool);
    EXPECT_LT(test::rel_error(got.data(), want.data(), got.size()), 2e-6) << o.min_item_entries;
  }
}

TEST(AttentionPlan, RejectsAPlanForAnotherProblem) {
  const Problem a = problem({10, 10}, 2, 1), b = problem({10, 10, 10, 10}, 2, 1);
  const AttentionPlan plan = plan_attention(a.p, a.lists);
  ThreadPool pool(1);
  std::vector<float> out(static_cast<size_t>(b.p.n_queries * b.p.n_heads * b.p.head_dim));
  AttentionParams p = b.p;
  p.out = out.data();
  test::expect_error([&] { cpu::attention(p, b.lists, plan, pool); },
                     {"the plan is for another problem"});
}

}  // namespace
}  // namespace ekva
