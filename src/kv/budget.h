// KV budgets as users state them: tokens per sequence, bytes, or a fraction of the
// full cache, turned into a number of KV entries (one entry = one token's K and V
// in one (layer, kv-head)) and checked against what is possible.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace ekva {

struct BudgetSpec {
  enum class Unit { kTokens, kBytes, kFraction };
  Unit unit = Unit::kFraction;
  double value = 1.0;

  // "2048" or "2048t" (tokens per sequence: entries per (layer, kv-head)),
  // "64MiB"/"500KB"/"1000000B" (bytes of K/V), "10%" or "0.1" (fraction of the full
  // cache). Throws ekva::Error for anything else or a negative value.
  static BudgetSpec parse(std::string_view text);
  std::string to_string() const;
};

struct BudgetShape {
  int n_layers = 0;
  int n_kv_heads = 0;
  int64_t entry_bytes = 0;        // K + V of one entry in one (layer, kv-head)
  int64_t sequence_tokens = 0;    // tokens of the sequence being compressed
  int64_t protected_entries = 0;  // sinks + recent window, summed over (layer, kv-head)
  // Byte budgets: entries' worth of bytes that partly filled blocks may hold beyond
  // the entries themselves (entry_bytes is then a block slot, metadata included).
  int64_t block_slack_entries = 0;
};

// Total entries the sequence may keep, summed over all (layer, kv-head),
// protected entries included (bytes: bytes / entry_bytes - block_slack_entries).
// Throws ekva::Error when the budget is negative, exceeds the full cache, or is
// smaller than the protected entries (naming the figures involved).
int64_t budget_entries(const BudgetSpec& spec, const BudgetShape& shape);

}  // namespace ekva
