// `ekva roofline probe --device cuda`: the GPU's ceilings measured with CUDA events on a
// stream of the probe's own: the read rate (cuda::measure_read_ceiling, the figure every
// GPU benchmark divides by), the device-to-device copy rate (bytes read + written), the
// dense bf16 matrix rate through cuBLAS (bf16 inputs, f32 accumulation and output, the
// engine's GEMM; square problems, the largest rate kept), and the cost of one small
// kernel launch. Over the datasheet row of the part when the name matches one.
#pragma once

#include "roofline/hardware.h"

namespace ekva::cuda {

// Throws ekva::Error when there is no such device or a CUDA call fails.
Ceilings probe_device(int device, int runs);

}  // namespace ekva::cuda
