// Calibration profile JSON: written for people to read (one object per layer, expert
// and kv-head, curves on one line each) and read back with every field checked, so a
// hand-edited or foreign profile fails with the file, the field and the reason.
#include "kv/profile.h"

#include <algorithm>
#include <cmath>
#include <fstream>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/json_fields.h"

namespace ekva {

using nlohmann::json;
using nlohmann::ordered_json;

double CoverageCurve::mass_at(double fraction) const {
  EKVA_CHECK(!fraction_kept.empty() && fraction_kept.size() == mass_covered.size(),
             "coverage curve with {} / {} points", fraction_kept.size(), mass_covered.size());
  const double f = std::clamp(fraction, 0.0, 1.0);
  // First point strictly right of f; the segment [hi - 1, hi] holds f.
  const auto it = std::upper_bound(fraction_kept.begin(), fraction_kept.end(), f);
  if (it == fraction_kept.begin()) return mass_covered.front();
  if (it == fraction_kept.end()) return mass_covered.back();
  const auto hi = static_cast<size_t>(it - fraction_kept.begin());
  const double x0 = fraction_kept[hi - 1], x1 = fraction_kept[hi];
  const double y0 = mass_covered[hi - 1], y1 = mass_covered[hi];
  return y0 + (y1 - y0) * (f - x0) / (x1 - x0);
}

namespace {

// What the statistics mean, written into every profile for its readers.
constexpr const char* kNotes[][2] = {
    {"tags", "a key or query belongs to the expert its token's router ranks first in that layer"},
    {"protected tokens excluded",
     "for a query at position p, keys at positions < sink_tokens or > p - recent_window are "
     "protected (never evicted); the attention they receive is left out of mass_received, "
     "coverage and entries_fraction"},
    {"entries", "an entry is one key in one kv-head; expert and layer groups span all kv-heads"},
    {"entries_fraction", "share of the layer's evictable entries in the group"},
    {"mass_received",
     "share of the layer's attention mass on evictable entries (summed over queries and query "
     "heads) that the group's entries receive"},
    {"query_entropy",
     "mean over the group's queries and query heads of the entropy (nats) of the full attention "
     "row (all visible keys, protected ones included)"},
    {"coverage",
     "keeping the fraction_kept of a group's entries that receive the most mass covers "
     "mass_covered of its mass; per-sequence curves averaged with the group's mass as weight"},
    {"routing_top1_frequency", "share of tokens whose top-1 expert this is"},
    {"routing_topk_weight",
     "mean router weight of this expert over all tokens (0 if not in top-k)"},
};

ordered_json curve_json(const CoverageCurve& c) {
  ordered_json j;
  j["fraction_kept"] = c.fraction_kept;
  j["mass_covered"] = c.mass_covered;
  return j;
}

void put_group(ordered_json& j, const GroupStats& g) {
  j["entries_fraction"] = g.entries_fraction;
  j["mass_received"] = g.mass_received;
  j["query_entropy"] = g.query_entropy;
  j["coverage"] = curve_json(g.coverage);
}

// Statistics with 6 significant digits (plenty for allocation, and short to read);
// everything else as nlohmann writes it.
std::string scalar_text(const ordered_json& j) {
  if (!j.is_number_float()) return j.dump();
  const auto x = j.get<double>();
  EKVA_CHECK(std::isfinite(x), "profile statistic {} is not finite", x);
  return fmt::format("{:.6g}", x);
}

// nlohmann's dump(2) puts each array element on a line of its own, a 36-point curve
// on 36 lines; here arrays of numbers stay on one line and only objects and arrays
// of objects are broken up.
void write_pretty(const ordered_json& j, int indent, std::string& out) {
  const auto nested = [](const ordered_json& a) {
    return std::any_of(a.begin(), a.end(), [](const ordered_json& e) { return e.is_structured(); });
  };
  if (j.is_object() && !j.empty()) {
    out += "{\n";
    size_t i = 0;
    for (const auto& [key, value] : j.items()) {
      out.append(static_cast<size_t>(indent + 2), ' ');
      out += ordered_json(key).dump() + ": ";
      write_pretty(value, indent + 2, out);
      out += ++i < j.size() ? ",\n" : "\n";
    }
    out.append(static_cast<size_t>(indent), ' ');
    out += '}';
  } else if (j.is_array() && nested(j)) {
    out += "[\n";
    for (size_t i = 0; i < j.size(); ++i) {
      out.append(static_cast<size_t>(indent + 2), ' ');
      write_pretty(j[i], indent + 2, out);
      out += i + 1 < j.size() ? ",\n" : "\n";
    }
    out.append(static_cast<size_t>(indent), ' ');
    out += ']';
  } else if (j.is_array()) {
    out += '[';
    for (size_t i = 0; i < j.size(); ++i) out += (i > 0 ? ", " : "") + scalar_text(j[i]);
    out += ']';
  } else {
    out += scalar_text(j);
  }
}

using Reader = JsonFields;

CoverageCurve read_curve(const Reader& r, const json& obj, const std::string& path) {
  const json& c = r.field(obj, path, "coverage");
  const std::string cpath = Reader::join(path, "coverage");
  const json& fraction = r.field(c, cpath, "fraction_kept");
  const json& mass = r.field(c, cpath, "mass_covered");
  const std::string fname = Reader::join(cpath, "fraction_kept");
  const std::string mname = Reader::join(cpath, "mass_covered");
  if (!fraction.is_array() || fraction.size() < 2)
    r.bad("field '{}' must be an array of at least 2 numbers", fname);
  if (!mass.is_array() || mass.size() != fraction.size())
    r.bad("field '{}' must be an array of {} numbers, like fraction_kept", mname, fraction.size());
  CoverageCurve curve;
  for (size_t i = 0; i < fraction.size(); ++i) {
    const double x = r.number(fraction[i], fmt::format("{}[{}]", fname, i), 0.0, 1.0);
    const double y = r.number(mass[i], fmt::format("{}[{}]", mname, i), 0.0, 1.0);
    if (i > 0 && !(x > curve.fraction_kept.back()))
      r.bad("field '{}' must increase: {} at index {} follows {}", fname, x, i,
            curve.fraction_kept.back());
    if (i > 0 && y < curve.mass_covered.back())
      r.bad("field '{}' decreases at index {} ({} after {}); a coverage curve never decreases",
            mname, i, y, curve.mass_covered.back());
    curve.fraction_kept.push_back(static_cast<float>(x));
    curve.mass_covered.push_back(static_cast<float>(y));
  }
  if (curve.fraction_kept.front() != 0.f || curve.fraction_kept.back() != 1.f)
    r.bad("field '{}' must run from 0 to 1", fname);
  if (curve.mass_covered.front() != 0.f || curve.mass_covered.back() != 1.f)
    r.bad("field '{}' must run from 0 to 1", mname);
  return curve;
}

void read_group(const Reader& r, const json& obj, const std::string& path, int64_t context,
                GroupStats& g) {
  if (!obj.is_object()) r.bad("field '{}' must be an object", path);
  g.entries_fraction = r.number(obj, path, "entries_fraction", 0.0, 1.0);
  g.mass_received = r.number(obj, path, "mass_received", 0.0, 1.0);
  // An attention row over at most `context` keys has at most log(context) nats.
  g.query_entropy =
      r.number(obj, path, "query_entropy", 0.0, std::log(static_cast<double>(context)) + 1e-4);
  g.coverage = read_curve(r, obj, path);
}

// Shares of one layer's groups sum to one (up to the 6 digits they are written with).
// `share` is a pointer to a double member of Group or of its base GroupStats.
template <typename Group, typename Share>
void check_sum(const Reader& r, const std::vector<Group>& groups, Share share,
               const std::string& path, const char* name) {
  double sum = 0;
  for (const Group& g : groups) sum += g.*share;
  if (std::abs(sum - 1.0) > 1e-3) r.bad("'{}' of '{}' sums to {}, not 1", name, path, sum);
}

}  // namespace

void CalibrationProfile::save(const std::filesystem::path& path) const {
  ordered_json j;
  j["version"] = version;
  j["architecture"] = architecture;
  j["n_layers"] = n_layers;
  j["n_kv_heads"] = n_kv_heads;
  j["n_experts"] = n_experts;
  j["head_dim"] = head_dim;
  j["tokens"] = tokens;
  j["sequences"] = sequences;
  j["context"] = context;
  j["data"] = data;
  for (const auto& [key, value] :
       {std::pair{"commit", &commit}, {"machine", &machine}, {"created", &created}})
    if (!value->empty()) j[key] = *value;
  ordered_json notes = ordered_json::object();
  for (const auto& [key, text] : kNotes) notes[key] = text;
  j["notes"] = std::move(notes);
  ordered_json layers_json = ordered_json::array();
  for (size_t l = 0; l < layers.size(); ++l) {
    const LayerStats& L = layers[l];
    ordered_json lj;
    lj["layer"] = l;
    lj["moe"] = L.moe;
    ordered_json experts_json = ordered_json::array();
    for (size_t e = 0; e < L.experts.size(); ++e) {
      const ExpertStats& s = L.experts[e];
      ordered_json ej;
      ej["expert"] = e;
      ej["routing_top1_frequency"] = s.routing_top1_frequency;
      ej["routing_topk_weight"] = s.routing_topk_weight;
      put_group(ej, s);
      experts_json.push_back(std::move(ej));
    }
    lj["experts"] = std::move(experts_json);
    ordered_json heads_json = ordered_json::array();
    for (size_t h = 0; h < L.heads.size(); ++h) {
      ordered_json hj;
      hj["kv_head"] = h;
      put_group(hj, L.heads[h]);
      heads_json.push_back(std::move(hj));
    }
    lj["heads"] = std::move(heads_json);
    if (!L.head_retrieval.empty()) lj["head_retrieval"] = L.head_retrieval;
    ordered_json all;
    put_group(all, L.all);
    lj["all"] = std::move(all);
    layers_json.push_back(std::move(lj));
  }
  j["layers"] = std::move(layers_json);

  std::string text;
  write_pretty(j, 0, text);
  text += '\n';
  std::ofstream out(path, std::ios::binary);
  if (!out) fail("{}: cannot open for writing", path.string());
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  out.close();
  if (!out) fail("{}: write failed", path.string());
}

CalibrationProfile CalibrationProfile::load(const std::filesystem::path& path,
                                            const KvModelShape& model) {
  const Reader r(path.string());
  const json j = read_json_file(path, "calibration profile");
  if (!j.is_object()) r.bad("not a calibration profile (a JSON object)");

  CalibrationProfile p;
  // Version first: another version may lay out everything else differently.
  p.version = static_cast<int>(r.integer(j, "", "version", 0, 1 << 30));
  if (p.version != kVersion)
    r.bad("version {} is not supported (this build reads version {})", p.version, kVersion);

  // The model it was made for, before any statistics.
  p.architecture = r.string(j, "", "architecture");
  if (p.architecture != model.architecture)
    r.bad("made for {}, the model is {}", p.architecture, model.architecture);
  constexpr int64_t kMaxDim = int64_t{1} << 20;
  p.n_layers = static_cast<int>(r.integer(j, "", "n_layers", 1, kMaxDim));
  if (p.n_layers != model.n_layers)
    r.bad("made for {} layers, the model has {}", p.n_layers, model.n_layers);
  p.n_kv_heads = static_cast<int>(r.integer(j, "", "n_kv_heads", 1, kMaxDim));
  if (p.n_kv_heads != model.n_kv_heads)
    r.bad("made for {} kv-heads, the model has {}", p.n_kv_heads, model.n_kv_heads);
  p.n_experts = static_cast<int>(r.integer(j, "", "n_experts", 0, kMaxDim));
  if (p.n_experts != model.n_experts)
    r.bad("made for {} experts, the model has {}", p.n_experts, model.n_experts);
  p.head_dim = static_cast<int>(r.integer(j, "", "head_dim", 1, kMaxDim));
  if (p.head_dim != model.head_dim)
    r.bad("made for head_dim {}, the model has {}", p.head_dim, model.head_dim);

  constexpr int64_t kMaxCount = int64_t{1} << 50;
  p.tokens = r.integer(j, "", "tokens", 1, kMaxCount);
  p.sequences = r.integer(j, "", "sequences", 1, p.tokens);
  p.context = r.integer(j, "", "context", 1, p.tokens);
  p.data = r.string(j, "", "data");
  for (const auto& [key, value] :
       {std::pair{"commit", &p.commit}, {"machine", &p.machine}, {"created", &p.created}})
    if (j.contains(key)) *value = r.string(j, "", key);  // optional: provenance

  const json& layers_json = r.array(j, "", "layers", static_cast<size_t>(p.n_layers));
  p.layers.resize(static_cast<size_t>(p.n_layers));
  for (int l = 0; l < p.n_layers; ++l) {
    const json& lj = layers_json[static_cast<size_t>(l)];
    const std::string lpath = fmt::format("layers[{}]", l);
    LayerStats& L = p.layers[static_cast<size_t>(l)];
    if (r.integer(lj, lpath, "layer", 0, kMaxDim) != l)
      r.bad("field '{}.layer' must be {} (layers are listed in order)", lpath, l);
    L.moe = r.boolean(lj, lpath, "moe");
    if (L.moe != model.is_moe_layer(l))
      r.bad("made for a {} layer {}, the model's layer {} is {}", L.moe ? "MoE" : "dense", l, l,
            model.is_moe_layer(l) ? "MoE" : "dense");

    const size_t n_experts = L.moe ? static_cast<size_t>(p.n_experts) : 0;
    const json& experts_json = r.array(lj, lpath, "experts", n_experts);
    L.experts.resize(n_experts);
    for (size_t e = 0; e < n_experts; ++e) {
      const std::string epath = fmt::format("{}.experts[{}]", lpath, e);
      const json& ej = experts_json[e];
      ExpertStats& s = L.experts[e];
      read_group(r, ej, epath, p.context, s);
      if (r.integer(ej, epath, "expert", 0, kMaxDim) != static_cast<int64_t>(e))
        r.bad("field '{}.expert' must be {} (experts are listed in order)", epath, e);
      s.routing_top1_frequency = r.number(ej, epath, "routing_top1_frequency", 0.0, 1.0);
      s.routing_topk_weight = r.number(ej, epath, "routing_topk_weight", 0.0, 1.0);
    }

    const json& heads_json = r.array(lj, lpath, "heads", static_cast<size_t>(p.n_kv_heads));
    L.heads.resize(static_cast<size_t>(p.n_kv_heads));
    for (size_t h = 0; h < L.heads.size(); ++h) {
      const std::string hpath = fmt::format("{}.heads[{}]", lpath, h);
      read_group(r, heads_json[h], hpath, p.context, L.heads[h]);
      if (r.integer(heads_json[h], hpath, "kv_head", 0, kMaxDim) != static_cast<int64_t>(h))
        r.bad("field '{}.kv_head' must be {} (kv-heads are listed in order)", hpath, h);
    }
    if (lj.contains("head_retrieval")) {  // optional: --retrieval-heads
      const std::string rpath = lpath + ".head_retrieval";
      const json& hr = r.array(lj, lpath, "head_retrieval", static_cast<size_t>(p.n_kv_heads));
      for (size_t h = 0; h < hr.size(); ++h)
        L.head_retrieval.push_back(r.number(hr[h], fmt::format("{}[{}]", rpath, h), 0.0, 1.0));
    }
    read_group(r, r.field(lj, lpath, "all"), lpath + ".all", p.context, L.all);
    if (std::abs(L.all.mass_received - 1.0) > 1e-3 || std::abs(L.all.entries_fraction - 1.0) > 1e-3)
      r.bad("field '{}.all' must have mass_received and entries_fraction 1", lpath);

    if (L.moe) {
      check_sum(r, L.experts, &GroupStats::mass_received, lpath + ".experts", "mass_received");
      check_sum(r, L.experts, &GroupStats::entries_fraction, lpath + ".experts",
                "entries_fraction");
      check_sum(r, L.experts, &ExpertStats::routing_top1_frequency, lpath + ".experts",
                "routing_top1_frequency");
    }
    check_sum(r, L.heads, &GroupStats::mass_received, lpath + ".heads", "mass_received");
    check_sum(r, L.heads, &GroupStats::entries_fraction, lpath + ".heads", "entries_fraction");
  }
  return p;
}

}  // namespace ekva
