// KV budgets: every way users state one parses to the right unit and value and prints
// back to a form that parses to the same; budget_entries turns each unit into entries;
// every impossible budget fails with a message naming the figures.
#include <gtest/gtest.h>

#include <cmath>
#include <initializer_list>
#include <string>

#include <fmt/format.h>

#include "ekva/error.h"
#include "kv/budget.h"

#include "test_util.h"

namespace ekva {
namespace {

using Unit = BudgetSpec::Unit;

using test::expect_error;

void expect_spec(std::string_view text, Unit unit, double value) {
  const BudgetSpec spec = BudgetSpec::parse(text);
  EXPECT_EQ(spec.unit, unit) << text;
  EXPECT_DOUBLE_EQ(spec.value, value) << text;
}

TEST(BudgetSpec, ParsesTokens) {
  expect_spec("2048", Unit::kTokens, 2048);
  expect_spec("2048t", Unit::kTokens, 2048);
  expect_spec("2048T", Unit::kTokens, 2048);
  expect_spec(" 2048 t ", Unit::kTokens, 2048);
  expect_spec("0", Unit::kTokens, 0);
  expect_spec("2048.0t", Unit::kTokens, 2048);
}

TEST(BudgetSpec, ParsesBytes) {
  expect_spec("1000000B", Unit::kBytes, 1e6);
  expect_spec("500KB", Unit::kBytes, 5e5);
  expect_spec("3MB", Unit::kBytes, 3e6);
  expect_spec("2GB", Unit::kBytes, 2e9);
  expect_spec("1TB", Unit::kBytes, 1e12);
  expect_spec("2KiB", Unit::kBytes, 2048);
  expect_spec("64MiB", Unit::kBytes, 64.0 * 1024 * 1024);
  expect_spec("1.5GiB", Unit::kBytes, 1.5 * 1024 * 1024 * 1024);
  expect_spec("1TiB", Unit::kBytes, 1024.0 * 1024 * 1024 * 1024);
  expect_spec("64mib", Unit::kBytes, 64.0 * 1024 * 1024);
  expect_spec("64 MiB", Unit::kBytes, 64.0 * 1024 * 1024);
}

TEST(BudgetSpec, ParsesFractions) {
  expect_spec("10%", Unit::kFraction, 0.1);
  expect_spec("12.5%", Unit::kFraction, 0.125);
  expect_spec("100%", Unit::kFraction, 1.0);
  expect_spec("0%", Unit::kFraction, 0.0);
  expect_spec("0.1", Unit::kFraction, 0.1);
  expect_spec(".25", Unit::kFraction, 0.25);
  expect_spec("1.0", Unit::kFraction, 1.0);
  // Parsing does not know the cache; budget_entries rejects what exceeds it.
  expect_spec("120%", Unit::kFraction, 1.2);
}

TEST(BudgetSpec, PrintsAndParsesBack) {
  EXPECT_EQ((BudgetSpec{Unit::kTokens, 2048}).to_string(), "2048t");
  EXPECT_EQ((BudgetSpec{Unit::kFraction, 0.1}).to_string(), "10%");
  EXPECT_EQ((BudgetSpec{Unit::kFraction, 0.07}).to_string(), "7%");
  EXPECT_EQ((BudgetSpec{Unit::kFraction, 0.125}).to_string(), "12.5%");
  EXPECT_EQ((BudgetSpec{Unit::kBytes, 64.0 * 1024 * 1024}).to_string(), "64MiB");
  EXPECT_EQ((BudgetSpec{Unit::kBytes, 5e5}).to_string(), "500KB");
  EXPECT_EQ((BudgetSpec{Unit::kBytes, 1536}).to_string(), "1536B");
  EXPECT_EQ((BudgetSpec{Unit::kBytes, 0}).to_string(), "0B");
  for (const char* text :
       {"2048", "7t", "64MiB", "500KB", "1.5GiB", "1000001B", "10%", "0.3", "12.5%", "100%", "0"}) {
    const BudgetSpec spec = BudgetSpec::parse(text);
    const BudgetSpec back = BudgetSpec::parse(spec.to_string());
    EXPECT_EQ(back.unit, spec.unit) << text << " -> " << spec.to_string();
    EXPECT_DOUBLE_EQ(back.value, spec.value) << text << " -> " << spec.to_string();
  }
}

TEST(BudgetSpec, RejectsWhatItCannotRead) {
  for (const char* text : {"abc", "", "  ", "%", "t", "nan", "inf", "+5", "MiB"})
    expect_error([&] { BudgetSpec::parse(text); },
                 {fmt::format("budget '{}': expected tokens", text), "(10% or 0.1)"});
  expect_error([] { BudgetSpec::parse("12x"); }, {"budget '12x'", "unknown unit 'x'", "expected"});
  expect_error([] { BudgetSpec::parse("64 Mb/s"); }, {"unknown unit 'Mb/s'"});
  expect_error([] { BudgetSpec::parse("-5"); }, {"budget '-5': must not be negative"});
  expect_error([] { BudgetSpec::parse("-10%"); }, {"budget '-10%': must not be negative"});
  expect_error([] { BudgetSpec::parse("2048.5t"); },
               {"budget '2048.5t': tokens must be a whole number"});
}

// 4 layers x 2 kv-heads, 1000 tokens: 8000 entries of 512 bytes; 36 protected tokens
// (4 sinks + 32 recent) per (layer, kv-head).
BudgetShape shape() {
  return {.n_layers = 4,
          .n_kv_heads = 2,
          .entry_bytes = 512,
          .sequence_tokens = 1000,
          .protected_entries = 4 * 2 * 36};
}

TEST(BudgetEntries, EveryUnit) {
  const auto entries = [](const char* text) {
    return budget_entries(BudgetSpec::parse(text), shape());
  };
  EXPECT_EQ(entries("500"), 500 * 8);
  EXPECT_EQ(entries("1000t"), 8000);
  EXPECT_EQ(entries("1MiB"), 2048);
  EXPECT_EQ(entries("1000000B"), 1953);  // whole entries only
  EXPECT_EQ(entries("4096000B"), 8000);  // the full cache exactly
  EXPECT_EQ(entries("50%"), 4000);
  EXPECT_EQ(entries("0.1"), 800);
  EXPECT_EQ(entries("100%"), 8000);
  EXPECT_EQ(entries("36t"), 288);  // exactly the protected entries
}

// Byte budgets of a paged cache leave room for the partly filled blocks: 31 slots
// per (layer, kv-head) at 32-entry blocks.
TEST(BudgetEntries, BytesLeaveRoomForPartlyFilledBlocks) {
  BudgetShape s = shape();
  s.block_slack_entries = 31 * 8;
  EXPECT_EQ(budget_entries(BudgetSpec::parse("1MiB"), s), 2048 - 248);
  EXPECT_EQ(budget_entries(BudgetSpec::parse("500t"), s), 4000);  // tokens: entries, not bytes
  expect_error([&] { budget_entries(BudgetSpec::parse("256KiB"), s); },
               {"budget 256KiB: 512 entries of 512 bytes, less the 248 that partly filled blocks "
                "may hold, is below the 288 protected entries"});
}

TEST(BudgetEntries, ErrorsNameTheFigures) {
  const auto entries = [](const BudgetSpec& spec, BudgetShape s = shape()) {
    return budget_entries(spec, s);
  };
  expect_error([&] { entries(BudgetSpec::parse("120%")); }, {"budget 120% exceeds the full cache"});
  expect_error([&] { entries(BudgetSpec::parse("1001t")); },
               {"budget 1001t exceeds the full cache of 1000 tokens per (layer, kv-head)"});
  expect_error([&] { entries(BudgetSpec::parse("4096001B")); },
               {"budget 4096001B exceeds the full cache", "8000 entries of 512 bytes"});
  expect_error([&] { entries(BudgetSpec::parse("30t")); },
               {"budget 30t: 240 entries is below the 288 protected entries (sinks + recent "
                "window)"});
  expect_error([&] { entries(BudgetSpec::parse("1KiB")); },
               {"budget 1KiB: 2 entries is below the 288 protected entries"});
  expect_error([&] { entries({Unit::kTokens, -1}); }, {"budget -1t is negative"});
  expect_error([&] { entries({Unit::kFraction, -0.5}); }, {"budget -50% is negative"});
  expect_error([&] { entries({Unit::kBytes, std::nan("")}); }, {"not a finite number"});

  BudgetShape s = shape();
  s.n_layers = 0;
  expect_error([&] { entries(BudgetSpec::parse("10%"), s); },
               {"positive n_layers and n_kv_heads", "got 0, 2"});
  s = shape();
  s.entry_bytes = 0;
  expect_error([&] { entries(BudgetSpec::parse("1MiB"), s); },
               {"entry_bytes must be positive, got 0"});
  s = shape();
  s.protected_entries = 9000;
  expect_error([&] { entries(BudgetSpec::parse("10%"), s); },
               {"9000 protected entries exceed the full cache of 8000 entries"});
  s = shape();
  s.sequence_tokens = -1;
  expect_error([&] { entries(BudgetSpec::parse("10%"), s); },
               {"sequence_tokens (-1)", "must not be negative"});
}

}  // namespace
}  // namespace ekva
