#include "kv/budget.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <charconv>
#include <cmath>

#include "core/error.h"

namespace ekva {

namespace {

constexpr std::string_view kExpected =
    "expected tokens (2048 or 2048t), bytes (64MiB, 500KB, 1000000B) or a fraction of the "
    "full cache (10% or 0.1)";

struct ByteUnit {
  std::string_view name;  // as to_string writes it; parse matches it case-insensitively
  double bytes;
};
// Largest first, so to_string picks the largest unit that divides a byte count exactly.
constexpr std::array<ByteUnit, 9> kByteUnits = {{{"TiB", 1099511627776.0},
                                                 {"TB", 1e12},
                                                 {"GiB", 1073741824.0},
                                                 {"GB", 1e9},
                                                 {"MiB", 1048576.0},
                                                 {"MB", 1e6},
                                                 {"KiB", 1024.0},
                                                 {"KB", 1e3},
                                                 {"B", 1.0}}};

bool equal_ignoring_case(std::string_view a, std::string_view b) {
  return std::equal(a.begin(), a.end(), b.begin(), b.end(), [](char x, char y) {
    return std::tolower(static_cast<unsigned char>(x)) ==
           std::tolower(static_cast<unsigned char>(y));
  });
}

std::string_view trimmed(std::string_view s) {
  const auto space = [](char c) { return std::isspace(static_cast<unsigned char>(c)) != 0; };
  while (!s.empty() && space(s.front())) s.remove_prefix(1);
  while (!s.empty() && space(s.back())) s.remove_suffix(1);
  return s;
}

// "{:.10g}": enough digits that parse(to_string(spec)) gives the value back for the
// figures people write (12.5%, 1.5GiB), without float noise (0.07 * 100).
std::string number(double v) { return fmt::format("{:.10g}", v); }

}  // namespace

BudgetSpec BudgetSpec::parse(std::string_view text) {
  const std::string_view s = trimmed(text);
  // The number: digits, '.', exponent and sign; from_chars does not take a leading '+'.
  double value = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
  if (ec != std::errc() || !std::isfinite(value)) fail("budget '{}': {}", text, kExpected);
  const std::string_view number_text(s.data(), static_cast<size_t>(end - s.data()));
  const std::string_view unit = trimmed(s.substr(number_text.size()));
  if (value < 0) fail("budget '{}': must not be negative", text);

  if (unit.empty()) {
    // A whole number is tokens ("2048"); one with a point or exponent is a fraction ("0.1").
    const bool whole = number_text.find_first_not_of("0123456789") == std::string_view::npos;
    return whole ? BudgetSpec{Unit::kTokens, value} : BudgetSpec{Unit::kFraction, value};
  }
  if (unit == "%") return {Unit::kFraction, value / 100.0};
  if (equal_ignoring_case(unit, "t")) {
    if (value != std::floor(value)) fail("budget '{}': tokens must be a whole number", text);
    return {Unit::kTokens, value};
  }
  for (const ByteUnit& u : kByteUnits)
    if (equal_ignoring_case(unit, u.name)) return {Unit::kBytes, value * u.bytes};
  fail("budget '{}': unknown unit '{}'; {}", text, unit, kExpected);
}

std::string BudgetSpec::to_string() const {
  switch (unit) {
    case Unit::kTokens:
      return number(value) + "t";
    case Unit::kFraction:
      return number(value * 100.0) + "%";
    case Unit::kBytes:
      for (const ByteUnit& u : kByteUnits)
        if (value >= u.bytes && std::fmod(value, u.bytes) == 0)
          return number(value / u.bytes) + std::string(u.name);
      return number(value) + "B";
  }
  fail("budget: unknown unit {}", static_cast<int>(unit));
}

int64_t budget_entries(const BudgetSpec& spec, const BudgetShape& shape) {
  if (shape.n_layers <= 0 || shape.n_kv_heads <= 0)
    fail("budget: shape needs positive n_layers and n_kv_heads (got {}, {})", shape.n_layers,
         shape.n_kv_heads);
  if (shape.sequence_tokens < 0 || shape.protected_entries < 0)
    fail("budget: sequence_tokens ({}) and protected_entries ({}) must not be negative",
         shape.sequence_tokens, shape.protected_entries);
  // [n_layers, n_kv_heads, sequence_tokens] entries when nothing is evicted.
  const int64_t per_token = int64_t{shape.n_layers} * shape.n_kv_heads;
  const int64_t full = shape.sequence_tokens * per_token;
  if (shape.protected_entries > full)
    fail("budget: {} protected entries exceed the full cache of {} entries",
         shape.protected_entries, full);
  const std::string name = spec.to_string();
  if (!std::isfinite(spec.value)) fail("budget {}: not a finite number", name);
  if (spec.value < 0) fail("budget {} is negative", name);

  // Compared before converting, so a huge figure cannot overflow int64.
  int64_t entries = 0;
  switch (spec.unit) {
    case BudgetSpec::Unit::kTokens:
      if (spec.value > static_cast<double>(shape.sequence_tokens))
        fail("budget {} exceeds the full cache of {} tokens per (layer, kv-head)", name,
             shape.sequence_tokens);
      entries = static_cast<int64_t>(spec.value) * per_token;
      break;
    case BudgetSpec::Unit::kBytes: {
      if (shape.entry_bytes <= 0)
        fail("budget {}: entry_bytes must be positive, got {}", name, shape.entry_bytes);
      const double full_bytes = static_cast<double>(full) * static_cast<double>(shape.entry_bytes);
      if (spec.value > full_bytes)
        fail("budget {} exceeds the full cache of {} entries of {} bytes", name, full,
             shape.entry_bytes);
      entries = static_cast<int64_t>(spec.value / static_cast<double>(shape.entry_bytes));
      if (shape.block_slack_entries > 0) {
        if (entries - shape.block_slack_entries < shape.protected_entries)
          fail(
              "budget {}: {} entries of {} bytes, less the {} that partly filled blocks may hold, "
              "is below the {} protected entries (sinks + recent window)",
              name, entries, shape.entry_bytes, shape.block_slack_entries, shape.protected_entries);
        entries -= shape.block_slack_entries;
      }
      break;
    }
    case BudgetSpec::Unit::kFraction:
      if (spec.value > 1.0) fail("budget {} exceeds the full cache", name);
      entries = static_cast<int64_t>(spec.value * static_cast<double>(full));
      break;
  }
  if (entries < shape.protected_entries)
    fail("budget {}: {} entries is below the {} protected entries (sinks + recent window)", name,
         entries, shape.protected_entries);
  return entries;
}

}  // namespace ekva
