#include "core/dtype.h"

#include <array>
#include <utility>

namespace ekva {

namespace {
constexpr std::array<std::pair<DType, std::string_view>, 10> kNames{{
    {DType::kF32, "F32"},
    {DType::kF16, "F16"},
    {DType::kBF16, "BF16"},
    {DType::kF64, "F64"},
    {DType::kI64, "I64"},
    {DType::kI32, "I32"},
    {DType::kI16, "I16"},
    {DType::kI8, "I8"},
    {DType::kU8, "U8"},
    {DType::kBool, "BOOL"},
}};
}  // namespace

std::string_view dtype_name(DType t) {
  for (const auto& [dtype, name] : kNames)
    if (dtype == t) return name;
  return "?";
}

std::optional<DType> dtype_from_name(std::string_view name) {
  for (const auto& [dtype, n] : kNames)
    if (n == name) return dtype;
  return std::nullopt;
}

}  // namespace ekva
