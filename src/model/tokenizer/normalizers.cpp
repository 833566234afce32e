#include "model/tokenizer/normalizers.h"

#include <utility>
#include <vector>

#include <unicode/bytestream.h>
#include <unicode/errorcode.h>
#include <unicode/normalizer2.h>

#include "model/tokenizer/pattern.h"

namespace ekva::tokenizer {
namespace {

class SequenceNormalizer final : public Normalizer {
 public:
  SequenceNormalizer(const JsonReader& reader, const Json& obj, const std::string& path) {
    const std::string list_path = member_path(path, "normalizers");
    const Json& list = reader.array(reader.required(obj, path, "normalizers"), list_path);
    for (size_t i = 0; i < list.size(); ++i) {
      steps_.push_back(parse_normalizer(reader, list[i], index_path(list_path, i)));
    }
  }
  void normalize(std::string& text) const override {
    for (const auto& step : steps_) step->normalize(text);
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> steps_;
};

// Prepends only to a non-empty segment (so "" stays "" and "<s>" alone gets no "▁").
class PrependNormalizer final : public Normalizer {
 public:
  explicit PrependNormalizer(std::string prepend) : prepend_(std::move(prepend)) {}
  void normalize(std::string& text) const override {
    if (!text.empty()) text.insert(0, prepend_);
  }

 private:
  std::string prepend_;
};

class ReplaceNormalizer final : public Normalizer {
 public:
  ReplaceNormalizer(const JsonReader& reader, const Json& obj, const std::string& path)
      : pattern_(reader, reader.required(obj, path, "pattern"), member_path(path, "pattern")),
        content_(reader.string_member(obj, path, "content")) {}
  void normalize(std::string& text) const override { text = pattern_.replace(text, content_); }

 private:
  Pattern pattern_;
  std::string content_;
};

// NFC / NFD / NFKC / NFKD through ICU.
class UnicodeNormalizer final : public Normalizer {
 public:
  UnicodeNormalizer(const JsonReader& reader, const std::string& path, const std::string& form) {
    icu::ErrorCode status;
    if (form == "NFC") normalizer_ = icu::Normalizer2::getNFCInstance(status);
    if (form == "NFD") normalizer_ = icu::Normalizer2::getNFDInstance(status);
    if (form == "NFKC") normalizer_ = icu::Normalizer2::getNFKCInstance(status);
    if (form == "NFKD") normalizer_ = icu::Normalizer2::getNFKDInstance(status);
    if (status.isFailure() || normalizer_ == nullptr) {
      reader.fail_at(path, "ICU has no {} normalizer: {}", form, status.errorName());
    }
  }
  void normalize(std::string& text) const override {
    icu::ErrorCode status;
    if (normalizer_->isNormalizedUTF8(text, status) && status.isSuccess()) return;
    std::string out;
    icu::StringByteSink<std::string> sink(&out, static_cast<int32_t>(text.size()));
    normalizer_->normalizeUTF8(0, text, sink, nullptr, status);
    if (status.isFailure()) fail("tokenizer: ICU normalization failed: {}", status.errorName());
    text = std::move(out);
  }

 private:
  const icu::Normalizer2* normalizer_ = nullptr;
};

}  // namespace

std::unique_ptr<Normalizer> parse_normalizer(const JsonReader& reader, const Json& obj,
                                             const std::string& path) {
  const std::string type = component_type(reader, obj, path);
  if (type == "Sequence") return std::make_unique<SequenceNormalizer>(reader, obj, path);
  if (type == "Prepend") {
    return std::make_unique<PrependNormalizer>(reader.string_member(obj, path, "prepend"));
  }
  if (type == "Replace") return std::make_unique<ReplaceNormalizer>(reader, obj, path);
  if (type == "NFC" || type == "NFD" || type == "NFKC" || type == "NFKD") {
    return std::make_unique<UnicodeNormalizer>(reader, path, type);
  }
  reader.fail_at(member_path(path, "type"),
                 "unsupported normalizer type \"{}\" (supported: Sequence, Prepend, Replace, NFC, "
                 "NFD, NFKC, NFKD)",
                 type);
}

}  // namespace ekva::tokenizer
