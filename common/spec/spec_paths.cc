#include "common/spec/spec_paths.h"

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace mal {

namespace fs = std::filesystem;

namespace {

// `path` made absolute against nothing (relative is an error upstream) and normalised;
// symbolic links resolved (as far as the path exists) when `resolve_links`.
fs::path Normal(const fs::path& path, bool resolve_links) {
  fs::path p = path.lexically_normal();
  if (resolve_links) {
    std::error_code ec;
    fs::path real = fs::weakly_canonical(p, ec);
    if (!ec) p = real;
  }
  // "/data/" and "/data" are the same directory.
  if (!p.has_filename() && p.has_parent_path() && p != p.root_path()) p = p.parent_path();
  return p;
}

bool Under(const fs::path& path, const fs::path& root) {
  auto p = path.begin();
  for (auto r = root.begin(); r != root.end(); ++r, ++p) {
    if (p == path.end() || *p != *r) return false;
  }
  return true;
}

}  // namespace

absl::StatusOr<std::vector<std::string>> NormalizeDataRoots(const std::vector<std::string>& roots,
                                                            bool resolve_links) {
  std::vector<std::string> out;
  for (const std::string& root : roots) {
    if (root.empty() || root[0] != '/') {
      return absl::InvalidArgumentError(
          absl::StrCat("--data-root '", root, "': must be an absolute directory"));
    }
    if (resolve_links) {
      std::error_code ec;
      if (!fs::is_directory(root, ec)) {
        return absl::InvalidArgumentError(
            absl::StrCat("--data-root ", root, ": not an existing directory"));
      }
    }
    out.push_back(Normal(root, resolve_links).string());
  }
  return out;
}

absl::Status CheckSpecPaths(const v1::ExperimentSpec& spec, const std::vector<std::string>& roots,
                            bool resolve_links) {
  if (roots.empty()) return absl::OkStatus();
  auto check = [&](const std::string& field, const fs::path& path) -> absl::Status {
    const fs::path p = Normal(path, resolve_links);
    for (const std::string& root : roots) {
      if (Under(p, fs::path(root))) return absl::OkStatus();
    }
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": ", path.string(),
                     resolve_links && p != path.lexically_normal()
                         ? absl::StrCat(" (resolves to ", p.string(), ")")
                         : std::string(),
                     " is outside the data roots (", absl::StrJoin(roots, ", "), ")"));
  };
  auto absolute = [&](const std::string& field, const std::string& path) -> absl::Status {
    if (path.empty() || path[0] != '/') {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ": '", path, "' must be an absolute path when data roots are set"));
    }
    return check(field, path);
  };
  const std::pair<const char*, const v1::DatasetSpec*> datasets[] = {
      {"data.au", spec.data().has_au() ? &spec.data().au() : nullptr},
      {"data.fe", spec.data().has_fe() ? &spec.data().fe() : nullptr}};
  for (const auto& [name, d] : datasets) {
    if (d == nullptr) continue;
    const std::string prefix = name;
    if (absl::Status s = absolute(prefix + ".root", d->root()); !s.ok()) return s;
    const std::pair<const char*, const std::string*> inside[] = {
        {".images", &d->images()},
        {".manifest", &d->manifest()},
        {".distribution", &d->distribution()}};
    for (const auto& [field, value] : inside) {
      if (value->empty()) continue;
      const fs::path p = (*value)[0] == '/' ? fs::path(*value) : fs::path(d->root()) / *value;
      if (absl::Status s = check(prefix + field, p); !s.ok()) return s;
    }
  }
  if (!spec.model().pretrained().empty()) {
    if (absl::Status s = absolute("model.pretrained", spec.model().pretrained()); !s.ok()) return s;
  }
  if (!spec.train().fe_weights().empty()) {
    if (absl::Status s = absolute("train.fe_weights", spec.train().fe_weights()); !s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace mal
