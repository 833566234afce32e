// The device fault word: how kernels report bad inputs they find (a token id outside
// the table) without a host round trip. A kernel that finds one claims the word with
// atomicCAS (the first fault of a stream of calls wins) and fills in the details; the
// host reads the word at its next synchronize point and throws an ekva::Error there.
#pragma once

#include <cstdint>

namespace ekva::cuda {

enum class FaultOp : int32_t { kNone = 0, kEmbeddingToken = 1 };

// In device memory, zeroed when armed and after every report.
struct DeviceFault {
  int32_t op;     // FaultOp; 0: no fault
  int32_t value;  // the offending value (the token id)
  int64_t index;  // where it was (the token's row)
  int64_t limit;  // the bound it broke (the table's rows)
};

}  // namespace ekva::cuda
