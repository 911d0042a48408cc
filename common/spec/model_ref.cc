#include "common/spec/model_ref.h"

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace mal {

namespace {

constexpr size_t kMaxNameLength = 128, kMaxAliasLength = 64;

absl::Status CheckName(absl::string_view name, absl::string_view text) {
  if (name.empty() || name.size() > kMaxNameLength) {
    return absl::InvalidArgumentError(absl::StrCat("model \"", text, "\": the name must have 1 to ",
                                                   kMaxNameLength, " characters"));
  }
  for (char c : name) {
    if (!absl::ascii_isalnum(c) && c != '-' && c != '_' && c != '.') {
      return absl::InvalidArgumentError(
          absl::StrCat("model \"", text,
                       "\": a name has letters, digits, '-', '_' and '.' only (write NAME, "
                       "NAME:VERSION or NAME@ALIAS)"));
    }
  }
  if (name[0] == '.') {
    return absl::InvalidArgumentError(
        absl::StrCat("model \"", text, "\": a name cannot start with '.'"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckModelAlias(absl::string_view alias) {
  bool digits_only = true;
  for (char c : alias) {
    if (!absl::ascii_isalnum(c) && c != '-' && c != '_') {
      return absl::InvalidArgumentError(
          absl::StrCat("alias \"", alias, "\": use letters, digits, '-' and '_' only"));
    }
    digits_only = digits_only && absl::ascii_isdigit(c);
  }
  if (alias.empty() || alias.size() > kMaxAliasLength) {
    return absl::InvalidArgumentError(
        absl::StrCat("alias \"", alias, "\": 1 to ", kMaxAliasLength, " characters"));
  }
  if (digits_only) {
    return absl::InvalidArgumentError(
        absl::StrCat("alias \"", alias, "\": all digits reads as a version; use NAME:VERSION"));
  }
  if (alias == "latest") {
    return absl::InvalidArgumentError(
        "alias \"latest\" is reserved: NAME@latest is the newest version");
  }
  return absl::OkStatus();
}

absl::StatusOr<ModelRef> ParseModelRef(absl::string_view text) {
  const absl::string_view full = text;
  ModelRef ref;
  const size_t at = text.find('@'), colon = text.find(':');
  if (at != absl::string_view::npos && colon != absl::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model \"", full, "\": give a version (NAME:VERSION) or an alias (NAME@ALIAS), not both"));
  }
  if (colon != absl::string_view::npos) {
    int version = 0;
    if (!absl::SimpleAtoi(text.substr(colon + 1), &version) || version < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("model \"", full, "\": the version after ':' must be a positive integer"));
    }
    ref.version = version;
    text = text.substr(0, colon);
  } else if (at != absl::string_view::npos) {
    const absl::string_view alias = text.substr(at + 1);
    if (alias != "latest") {
      if (absl::Status s = CheckModelAlias(alias); !s.ok()) {
        return absl::InvalidArgumentError(absl::StrCat("model \"", full, "\": ", s.message()));
      }
      ref.alias = std::string(alias);
    }
    text = text.substr(0, at);
  }
  if (absl::Status s = CheckName(text, full); !s.ok()) return s;
  ref.name = std::string(text);
  return ref;
}

std::string ModelRef::ToString() const {
  if (version > 0) return absl::StrCat(name, ":", version);
  if (!alias.empty()) return absl::StrCat(name, "@", alias);
  return name;
}

}  // namespace mal
