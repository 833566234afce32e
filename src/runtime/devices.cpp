#include "runtime/devices.h"

#include <charconv>
#include <map>

#include <fmt/format.h>

#include "core/error.h"

namespace ekva {

namespace {

std::map<std::string, DeviceSupport, std::less<>>& registry() {
  static std::map<std::string, DeviceSupport, std::less<>> r;
  return r;
}

const DeviceSupport& support_for(const DeviceSpec& spec) {
  const auto it = registry().find(spec.kind);
  if (it == registry().end())
    fail(
        "device {}: this build has no {} backend (it is built when the CUDA compiler, nvcc, is "
        "found at configure time); use --device cpu",
        spec.str(), spec.kind);
  return it->second;
}

// The support of a GPU spec whose device is there; throws naming what there is.
const DeviceSupport& present_device(const DeviceSpec& spec) {
  EKVA_CHECK(!spec.is_cpu(), "device support: cpu is not a device");
  const DeviceSupport& s = support_for(spec);
  const int n = s.device_count();
  if (spec.index >= n)
    fail("device {}: {}", spec.str(),
         n == 0 ? std::string("no CUDA device is present (or its driver is not loaded)")
                : fmt::format("there are only {} CUDA device(s), 0..{}", n, n - 1));
  return s;
}

}  // namespace

void register_device_support(std::string_view kind, DeviceSupport support) {
  registry()[std::string(kind)] = std::move(support);
}

DeviceSpec DeviceSpec::parse(std::string_view text) {
  DeviceSpec spec;
  if (text == "cpu") return spec;
  const std::string_view kind = text.substr(0, text.find(':'));
  if (kind != "cuda") fail("device '{}': expected cpu, cuda or cuda:N (N the GPU's index)", text);
  spec.kind = "cuda";
  if (kind.size() < text.size()) {
    const std::string_view n = text.substr(kind.size() + 1);
    const auto [end, ec] = std::from_chars(n.data(), n.data() + n.size(), spec.index);
    if (ec != std::errc() || end != n.data() + n.size() || spec.index < 0)
      fail("device '{}': expected cpu, cuda or cuda:N (N the GPU's index)", text);
  }
  return spec;
}

std::string DeviceSpec::str() const { return is_cpu() ? kind : fmt::format("{}:{}", kind, index); }

std::unique_ptr<Backend> open_device_backend(const DeviceSpec& spec) {
  return present_device(spec).make_backend(spec.index);
}

std::unique_ptr<KvCache> make_device_full_cache(const DeviceSpec& spec, Backend& backend,
                                                KvShape shape, int64_t capacity, DType kv_dtype) {
  return support_for(spec).make_full_cache(backend, shape, capacity, kv_dtype);
}

std::unique_ptr<OpTimer> make_device_op_timer(const DeviceSpec& spec, Backend& backend) {
  return support_for(spec).make_op_timer(backend);
}

Ceilings probe_device_ceilings(const DeviceSpec& spec, int runs) {
  return present_device(spec).probe(spec.index, runs);
}

std::unique_ptr<KvArenaMemory> make_device_arena_memory(const DeviceSpec& spec, Backend& backend) {
  return support_for(spec).make_arena_memory(backend);
}

}  // namespace ekva
