// Over 400 lines on purpose: the spec's three jobs on one message, YAML onto the proto field by
// field, the defaults, and ValidateSpec (a flat list of one check per field, long but without
// branches worth a function each).

#include "common/spec/spec.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/message.h>
#include <google/protobuf/reflection.h>
#include <google/protobuf/stubs/common.h>
#include <google/protobuf/util/json_util.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <utility>
#include <vector>

#include "absl/algorithm/container.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/spec/backbones.h"
#include "common/util/files.h"
#include "common/util/status_macros.h"

namespace mal {

namespace pb = google::protobuf;

namespace {

std::string Join(absl::string_view path, absl::string_view key) {
  return path.empty() ? std::string(key) : absl::StrCat(path, ".", key);
}

// Where the YAML being read came from: a file, and the `--set` overrides applied to its tree.
struct Source {
  absl::string_view file;
  std::vector<std::pair<std::string, std::string>> overrides;  // field path, "--set PATH=VALUE"

  // "where" for an error at field `path`, read from `node`: the override that set the path (or a
  // field above it), else "exp.yaml:12:3" (the file alone when the node has no position).
  std::string Where(absl::string_view path, const YAML::Node& node) const {
    for (auto it = overrides.rbegin(); it != overrides.rend(); ++it) {  // the last one wins
      const std::string& p = it->first;
      if (path == p ||
          (absl::StartsWith(path, p) && (path[p.size()] == '.' || path[p.size()] == '['))) {
        return it->second;
      }
    }
    const YAML::Mark m = node.Mark();
    if (m.line < 0) return std::string(file);
    return absl::StrCat(file, ":", m.line + 1, ":", m.column + 1);
  }
};

absl::Status FieldError(absl::string_view path, absl::string_view reason) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": ", reason));
}

// Sets one (non-repeated) or adds one (repeated) scalar value from text.
absl::Status SetScalar(pb::Message& msg, const pb::FieldDescriptor* f, absl::string_view text,
                       absl::string_view path) {
  const pb::Reflection* r = msg.GetReflection();
  const bool rep = f->is_repeated();
  const std::string t(absl::StripAsciiWhitespace(text));
  switch (f->cpp_type()) {
    case pb::FieldDescriptor::CPPTYPE_INT32: {
      int32_t v;
      if (!absl::SimpleAtoi(t, &v))
        return FieldError(path, absl::StrCat("'", t, "' is not an integer"));
      rep ? r->AddInt32(&msg, f, v) : r->SetInt32(&msg, f, v);
      return absl::OkStatus();
    }
    case pb::FieldDescriptor::CPPTYPE_INT64: {
      int64_t v;
      if (!absl::SimpleAtoi(t, &v))
        return FieldError(path, absl::StrCat("'", t, "' is not an integer"));
      rep ? r->AddInt64(&msg, f, v) : r->SetInt64(&msg, f, v);
      return absl::OkStatus();
    }
    case pb::FieldDescriptor::CPPTYPE_DOUBLE:
    case pb::FieldDescriptor::CPPTYPE_FLOAT: {
      double v;
      if (!absl::SimpleAtod(t, &v) || !std::isfinite(v)) {
        return FieldError(path, absl::StrCat("'", t, "' is not a finite number"));
      }
      if (v == 0) v = 0;  // -0 is 0: one zero in the spec, so choices 0 and -0 are one value
      if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_DOUBLE) {
        rep ? r->AddDouble(&msg, f, v) : r->SetDouble(&msg, f, v);
      } else {
        rep ? r->AddFloat(&msg, f, static_cast<float>(v))
            : r->SetFloat(&msg, f, static_cast<float>(v));
      }
      return absl::OkStatus();
    }
    case pb::FieldDescriptor::CPPTYPE_BOOL: {
      bool v;
      const std::string lower = absl::AsciiStrToLower(t);
      if (lower == "true" || lower == "yes" || lower == "on" || lower == "1") {
        v = true;
      } else if (lower == "false" || lower == "no" || lower == "off" || lower == "0") {
        v = false;
      } else {
        return FieldError(path, absl::StrCat("'", t, "' is not true or false"));
      }
      rep ? r->AddBool(&msg, f, v) : r->SetBool(&msg, f, v);
      return absl::OkStatus();
    }
    case pb::FieldDescriptor::CPPTYPE_STRING:
      rep ? r->AddString(&msg, f, t) : r->SetString(&msg, f, t);
      return absl::OkStatus();
    case pb::FieldDescriptor::CPPTYPE_ENUM: {
      const pb::EnumDescriptor* e = f->enum_type();
      std::vector<std::string> names;
      for (int i = 0; i < e->value_count(); ++i) {
        const pb::EnumValueDescriptor* v = e->value(i);
        if (v->number() == 0) continue;  // *_UNSPECIFIED is not a user choice
        names.push_back(absl::AsciiStrToLower(v->name()));
        if (absl::EqualsIgnoreCase(v->name(), t)) {
          rep ? r->AddEnumValue(&msg, f, v->number()) : r->SetEnumValue(&msg, f, v->number());
          return absl::OkStatus();
        }
      }
      return FieldError(path, absl::StrCat("'", t, "' is not one of ", absl::StrJoin(names, ", ")));
    }
    case pb::FieldDescriptor::CPPTYPE_UINT32:
    case pb::FieldDescriptor::CPPTYPE_UINT64:
    case pb::FieldDescriptor::CPPTYPE_MESSAGE:
      break;  // the spec has no unsigned fields
  }
  return FieldError(path, "expected a mapping, got a scalar");
}

absl::Status YamlToMessage(const YAML::Node& node, pb::Message& msg, absl::string_view path,
                           const Source& source);

absl::Status YamlToField(const YAML::Node& value, pb::Message& msg, const pb::FieldDescriptor* f,
                         absl::string_view path, const Source& source) {
  const pb::Reflection* r = msg.GetReflection();
  if (value.IsNull()) return absl::OkStatus();  // `key:` with nothing: leave the default
  if (f->is_map()) {
    if (!value.IsMap())
      return FieldError(path, absl::StrCat("expected a mapping (", source.Where(path, value), ")"));
    const pb::FieldDescriptor* key_f = f->message_type()->map_key();
    const pb::FieldDescriptor* val_f = f->message_type()->map_value();
    for (const auto& kv : value) {
      const std::string key = kv.first.as<std::string>();
      pb::Message* entry = r->AddMessage(&msg, f);
      entry->GetReflection()->SetString(entry, key_f, key);
      const std::string sub = Join(path, key);
      if (val_f->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE) {
        RETURN_IF_ERROR(YamlToMessage(
            kv.second, *entry->GetReflection()->MutableMessage(entry, val_f), sub, source));
      } else {
        RETURN_IF_ERROR(YamlToField(kv.second, *entry, val_f, sub, source));
      }
    }
    return absl::OkStatus();
  }
  if (f->is_repeated()) {
    std::vector<YAML::Node> items;
    if (value.IsSequence()) {
      for (const auto& item : value) items.push_back(item);
    } else if (value.IsScalar()) {
      items.push_back(value);  // `aus: 12` is a list of one
    } else {
      return FieldError(path, absl::StrCat("expected a list (", source.Where(path, value), ")"));
    }
    for (size_t i = 0; i < items.size(); ++i) {
      const std::string sub = absl::StrCat(path, "[", i, "]");
      if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE) {
        RETURN_IF_ERROR(YamlToMessage(items[i], *r->AddMessage(&msg, f), sub, source));
      } else if (!items[i].IsScalar()) {
        return FieldError(sub,
                          absl::StrCat("expected a scalar (", source.Where(sub, items[i]), ")"));
      } else if (absl::Status s = SetScalar(msg, f, items[i].Scalar(), sub); !s.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat(s.message(), " (", source.Where(sub, items[i]), ")"));
      }
    }
    return absl::OkStatus();
  }
  if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE) {
    return YamlToMessage(value, *r->MutableMessage(&msg, f), path, source);
  }
  if (!value.IsScalar()) {
    return FieldError(path, absl::StrCat("expected a scalar (", source.Where(path, value), ")"));
  }
  absl::Status s = SetScalar(msg, f, value.Scalar(), path);
  if (!s.ok())
    return absl::InvalidArgumentError(
        absl::StrCat(s.message(), " (", source.Where(path, value), ")"));
  return s;
}

absl::Status YamlToMessage(const YAML::Node& node, pb::Message& msg, absl::string_view path,
                           const Source& source) {
  if (node.IsNull()) return absl::OkStatus();
  if (!node.IsMap()) {
    return FieldError(path.empty() ? "spec" : path,
                      absl::StrCat("expected a mapping (", source.Where(path, node), ")"));
  }
  const pb::Descriptor* d = msg.GetDescriptor();
  std::set<std::string> seen;
  for (const auto& kv : node) {
    const std::string key = kv.first.as<std::string>();
    const std::string sub = Join(path, key);
    const pb::FieldDescriptor* f = d->FindFieldByName(key);
    if (f == nullptr && key == "<<") {
      return FieldError(
          sub, absl::StrCat("YAML merge keys (<<) are not supported (", source.Where(sub, kv.first),
                            "): write the fields out, or alias a whole value"));
    }
    if (f == nullptr) {
      std::vector<std::string> known;
      for (int i = 0; i < d->field_count(); ++i) known.push_back(d->field(i)->name());
      return FieldError(sub, absl::StrCat("unknown field (", source.Where(sub, kv.first),
                                          "); known: ", absl::StrJoin(known, ", ")));
    }
    if (!seen.insert(key).second) {
      return FieldError(sub, absl::StrCat("given twice (", source.Where(sub, kv.first), ")"));
    }
    RETURN_IF_ERROR(YamlToField(kv.second, msg, f, sub, source));
  }
  return absl::OkStatus();
}

// --- validation helpers ---

bool OneOf(const std::string& v, std::initializer_list<const char*> options) {
  for (const char* o : options)
    if (v == o) return true;
  return false;
}

std::string List(std::initializer_list<const char*> options) {
  return absl::StrJoin(options, ", ");
}

#define MAL_CHECK_FIELD(cond, path, reason)       \
  do {                                            \
    if (!(cond)) return FieldError(path, reason); \
  } while (0)

absl::Status ValidateDataset(const v1::DatasetSpec& d, const std::string& path, bool au) {
  const std::initializer_list<const char*> au_formats = {"bp4d", "disfa", "gft", "csv",
                                                         "synthface"};
  const std::initializer_list<const char*> fe_formats = {"rafdb", "affectnet", "csv", "synthface"};
  MAL_CHECK_FIELD(!d.format().empty(), path + ".format", "required");
  MAL_CHECK_FIELD(
      OneOf(d.format(), au ? au_formats : fe_formats), path + ".format",
      absl::StrCat("'", d.format(), "' is not one of ", au ? List(au_formats) : List(fe_formats)));
  MAL_CHECK_FIELD(!d.root().empty(), path + ".root", "required");
  MAL_CHECK_FIELD(OneOf(d.split(), {"", "train", "test", "all"}), path + ".split",
                  "must be train, test or all");
  MAL_CHECK_FIELD(OneOf(d.unknown_au(), {"", "mask", "drop"}), path + ".unknown_au",
                  "must be mask or drop");
  return absl::OkStatus();
}

absl::Status ValidateDomain(const v1::ExperimentSpec& spec, const std::string& key,
                            const v1::ParamDomain& d, const std::string& algorithm) {
  const std::string path = absl::StrCat("search.space.", key);
  // What differs between trials is how a model is trained; the data, the folds, the search and the
  // experiment's own fields are one for all its trials (each trial's seed comes from the
  // experiment's: a searched seed was overwritten, and a searched final_fit never ran).
  MAL_CHECK_FIELD(key == "method" || absl::StartsWith(key, "model.") ||
                      absl::StartsWith(key, "train.") || absl::StartsWith(key, "mal."),
                  path,
                  "not searchable: the same for every trial of an experiment (search method, "
                  "model.*, train.* or mal.*; repeat the experiment for other seeds or data)");
  MAL_CHECK_FIELD(key != "train.device" && key != "train.threads", path,
                  "not searchable: the worker that runs a trial sets it (mal-worker --devices, "
                  "--threads)");
  auto field = ResolveFieldPath(spec, key);
  if (!field.ok()) return FieldError(path, field.status().message());
  const pb::FieldDescriptor* f = *field;
  MAL_CHECK_FIELD(!f->is_repeated() && f->cpp_type() != pb::FieldDescriptor::CPPTYPE_MESSAGE, path,
                  "only single scalar fields can be searched");
  const int set = (d.uniform_size() > 0) + (d.log_uniform_size() > 0) + (d.int_uniform_size() > 0) +
                  (d.choice_size() > 0);
  MAL_CHECK_FIELD(set == 1, path, "give exactly one of uniform, log_uniform, int_uniform, choice");
  const bool numeric = f->cpp_type() == pb::FieldDescriptor::CPPTYPE_DOUBLE ||
                       f->cpp_type() == pb::FieldDescriptor::CPPTYPE_FLOAT;
  const bool integral = f->cpp_type() == pb::FieldDescriptor::CPPTYPE_INT32 ||
                        f->cpp_type() == pb::FieldDescriptor::CPPTYPE_INT64;
  if (d.uniform_size() > 0) {
    MAL_CHECK_FIELD(numeric, path, "uniform needs a floating-point field");
    MAL_CHECK_FIELD(d.uniform_size() == 2 && d.uniform(0) < d.uniform(1), path,
                    "uniform needs [low, high] with low < high");
  }
  if (d.log_uniform_size() > 0) {
    MAL_CHECK_FIELD(numeric, path, "log_uniform needs a floating-point field");
    MAL_CHECK_FIELD(
        d.log_uniform_size() == 2 && d.log_uniform(0) > 0 && d.log_uniform(0) < d.log_uniform(1),
        path, "log_uniform needs 0 < low < high");
  }
  if (d.int_uniform_size() > 0) {
    MAL_CHECK_FIELD(integral, path, "int_uniform needs an integer field");
    MAL_CHECK_FIELD(d.int_uniform_size() == 2 && d.int_uniform(0) <= d.int_uniform(1), path,
                    "int_uniform needs [low, high] with low <= high");
  }
  // Every value the search can assign must make a valid spec: try the choices and the bounds.
  std::vector<std::pair<std::string, std::string>> probes;  // (path, value)
  for (int i = 0; i < d.choice_size(); ++i) {
    probes.emplace_back(absl::StrCat(path, ".choice[", i, "]"), d.choice(i));
  }
  for (int i = 0; i < d.uniform_size(); ++i) {
    probes.emplace_back(absl::StrCat(path, ".uniform[", i, "]"), absl::StrCat(d.uniform(i)));
  }
  for (int i = 0; i < d.log_uniform_size(); ++i) {
    probes.emplace_back(absl::StrCat(path, ".log_uniform[", i, "]"),
                        absl::StrCat(d.log_uniform(i)));
  }
  for (int i = 0; i < d.int_uniform_size(); ++i) {
    probes.emplace_back(absl::StrCat(path, ".int_uniform[", i, "]"),
                        absl::StrCat(d.int_uniform(i)));
  }
  std::map<std::string, int> choices;  // a trial spec's bytes -> the choice that gives it
  for (size_t i = 0; i < probes.size(); ++i) {
    const auto& [probe_path, value] = probes[i];
    v1::ExperimentSpec probe = spec;
    probe.mutable_search()->clear_space();
    absl::Status s = SetFieldByPath(probe, key, value);
    if (s.ok()) s = ValidateSpec(probe);
    if (!s.ok()) return FieldError(probe_path, s.message());
    // The same value twice ("0.1" and "1e-1", "adam" twice) would train the same trial twice.
    if (static_cast<int>(i) < d.choice_size()) {
      const auto [at, added] = choices.emplace(probe.SerializeAsString(), static_cast<int>(i));
      MAL_CHECK_FIELD(added, probe_path,
                      absl::StrCat("'", value, "' is the value of choice[", at->second,
                                   "] again: each trial would run twice"));
    }
  }
  if (algorithm == "grid") {
    MAL_CHECK_FIELD(d.choice_size() > 0 || d.int_uniform_size() > 0, path,
                    "grid search needs choice or int_uniform (a finite set)");
  }
  return absl::OkStatus();
}

}  // namespace

namespace {

// node[parts[i]][parts[i + 1]]... = value below the map `node`, making maps on the way and
// replacing nodes rather than assigning through them: yaml-cpp's `node[key] = value`, like any
// assignment of one Node variable to another, writes into the node it refers to, which an alias
// (`lr: *m`) may share with its anchor, so an override of one field would change the other. Maps
// on the way are copied shallowly (their other entries, and their positions for errors, stay
// shared); every node assigned here is fresh.
void SetYamlPath(YAML::Node node, const std::vector<std::string>& parts, size_t i,
                 const YAML::Node& value) {
  const std::string& key = parts[i];
  if (i + 1 == parts.size()) {
    node.remove(key);
    node[key] = value;
    return;
  }
  YAML::Node copy(YAML::NodeType::Map);
  const YAML::Node old = node[key];
  if (old.IsMap()) {
    for (const auto& kv : old) copy[kv.first] = kv.second;
  }
  SetYamlPath(copy, parts, i + 1, value);
  node.remove(key);
  node[key] = copy;
}

// Applies one "a.b.c=VALUE" to the YAML tree `root`, and notes it in `source`.
absl::Status ApplyOverride(YAML::Node& root, const std::string& override, Source& source) {
  const size_t eq = override.find('=');
  if (eq == std::string::npos || eq == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--set ", override, ": write FIELD.PATH=VALUE, e.g. train.lr=0.01"));
  }
  const std::string path = override.substr(0, eq);
  if (auto field = ResolveFieldPath(v1::ExperimentSpec::default_instance(), path); !field.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--set ", override, ": ", field.status().message()));
  }
  YAML::Node value;
  try {
    value = YAML::Load(override.substr(eq + 1));
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("--set ", override, ": ", e.msg));
  }
  if (!root.IsMap()) root = YAML::Node(YAML::NodeType::Map);
  const std::vector<std::string> parts = absl::StrSplit(path, '.');
  SetYamlPath(root, parts, 0, value);
  source.overrides.emplace_back(path, absl::StrCat("--set ", override));
  return absl::OkStatus();
}

// The node a field path of an error names ("train.lr", "cv.only[1]", "search.space.train.lr.choice
// [2]"; map keys may hold dots, spaces and brackets: "search.space.train lr", a search key
// "train.lr[0]"); nullopt when the field was not written (a default, or a field that another one
// requires: "data.fe" for method mal).
std::optional<YAML::Node> FindNode(const YAML::Node& node, const std::vector<std::string>& parts,
                                   size_t i) {
  if (i == parts.size()) return node;
  if (!node.IsMap()) return std::nullopt;
  for (size_t j = parts.size(); j > i; --j) {  // the longest key first
    const std::string whole = absl::StrJoin(parts.begin() + i, parts.begin() + j, ".");
    // "key[k]": element k of the sequence under "key"; failing that, a map key with brackets.
    std::vector<std::pair<std::string, std::optional<size_t>>> readings;
    if (const size_t open = whole.find('['); open != std::string::npos && whole.back() == ']') {
      size_t k = 0;
      if (absl::SimpleAtoi(whole.substr(open + 1, whole.size() - open - 2), &k))
        readings.emplace_back(whole.substr(0, open), k);
    }
    readings.emplace_back(whole, std::nullopt);
    for (const auto& [key, index] : readings) {
      const YAML::Node child = node[key];
      if (!child.IsDefined()) continue;
      YAML::Node at = child;
      if (index) {
        if (!child.IsSequence() || *index >= child.size()) continue;
        at = child[*index];
      }
      if (auto deeper = FindNode(at, parts, j)) return deeper;
    }
  }
  return std::nullopt;  // not written (a default, or a field another one requires)
}

// "exp.yaml:12:3", "--set train.lr=-1" or "exp.yaml" for the field `path` of a validation error.
std::string Locate(const YAML::Node& root, const Source& source, absl::string_view path) {
  const std::optional<YAML::Node> node = FindNode(root, absl::StrSplit(path, '.'), 0);
  return source.Where(path, node ? *node : YAML::Node());
}

// "given twice" for a key repeated in a map of the file, with its position, before overrides
// are applied: an override rebuilds the maps on its path, which would merge the repetition away
// (and with it a value of the file). Only as deep as a spec goes.
absl::Status CheckNoRepeatedKeys(const YAML::Node& node, const Source& source,
                                 const std::string& path, int depth = 0) {
  if (depth > 8) return absl::OkStatus();
  if (node.IsSequence()) {
    for (size_t i = 0; i < node.size(); ++i) {
      RETURN_IF_ERROR(
          CheckNoRepeatedKeys(node[i], source, absl::StrCat(path, "[", i, "]"), depth + 1));
    }
    return absl::OkStatus();
  }
  if (!node.IsMap()) return absl::OkStatus();
  std::set<std::string> seen;
  for (const auto& kv : node) {
    if (!kv.first.IsScalar()) continue;  // refused by the reading itself, naming the field
    const std::string sub = Join(path, kv.first.Scalar());
    if (!seen.insert(kv.first.Scalar()).second) {
      return FieldError(sub, absl::StrCat("given twice (", source.Where(sub, kv.first), ")"));
    }
    RETURN_IF_ERROR(CheckNoRepeatedKeys(kv.second, source, sub, depth + 1));
  }
  return absl::OkStatus();
}

// Reads `yaml` (one document) with `overrides` applied onto a spec; `root` and `source` keep the
// tree and where its parts came from, to place later errors.
absl::StatusOr<v1::ExperimentSpec> ParseTree(absl::string_view yaml,
                                             const std::vector<std::string>& overrides,
                                             Source& source, YAML::Node& root);

}  // namespace

namespace {

// InvalidArgument naming the line of a second YAML document in `yaml`: a line that starts with
// '---' (then a space, a tab or its end) after content, or content after a '...' line.
absl::Status CheckOneYamlDocument(absl::string_view yaml, absl::string_view source) {
  auto marker = [](absl::string_view line, absl::string_view m) {
    return absl::StartsWith(line, m) &&
           (line.size() == 3 || line[3] == ' ' || line[3] == '\t' || line[3] == '\r');
  };
  bool content = false, ended = false;
  int number = 0;
  for (absl::string_view line : absl::StrSplit(yaml, '\n')) {
    ++number;
    const absl::string_view text = absl::StripLeadingAsciiWhitespace(line);
    const bool start = marker(line, "---"), end = marker(line, "...");
    if ((start && content) || (ended && !start && !end && !text.empty() && text[0] != '#')) {
      return absl::InvalidArgumentError(absl::StrCat(
          source, ":", number, ": a second YAML document: a spec file holds one experiment"));
    }
    ended = ended || end;
    if (!start && !end && !text.empty() && text[0] != '#' && text[0] != '%') content = true;
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<v1::ExperimentSpec> ParseSpecYaml(absl::string_view yaml, absl::string_view source) {
  return ParseSpecYaml(yaml, source, {});
}

absl::StatusOr<v1::ExperimentSpec> ParseSpecYaml(absl::string_view yaml, absl::string_view source,
                                                 const std::vector<std::string>& overrides) {
  Source where{source, {}};
  YAML::Node root;
  return ParseTree(yaml, overrides, where, root);
}

namespace {

absl::StatusOr<v1::ExperimentSpec> ParseTree(absl::string_view yaml,
                                             const std::vector<std::string>& overrides,
                                             Source& where, YAML::Node& root) {
  const absl::string_view source = where.file;
  // yaml-cpp's Load reads the first document and ignores the rest, and its LoadAll never returns
  // on some inputs (a lone ',' line; found by the spec_yaml fuzzer): a second document is found by
  // its marker instead, a '---' (or content after '...') at the start of a line, which YAML allows
  // nowhere else (it ends any scalar).
  RETURN_IF_ERROR(CheckOneYamlDocument(yaml, source));
  try {
    root = YAML::Load(std::string(yaml));
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ":", e.mark.line + 1, ":", e.mark.column + 1, ": ", e.msg));
  }
  if (!overrides.empty()) RETURN_IF_ERROR(CheckNoRepeatedKeys(root, where, ""));
  for (const std::string& o : overrides) RETURN_IF_ERROR(ApplyOverride(root, o, where));
  v1::ExperimentSpec spec;
  try {
    RETURN_IF_ERROR(YamlToMessage(root, spec, "", where));
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", e.what()));
  }
  return spec;
}

}  // namespace

absl::StatusOr<v1::ExperimentSpec> LoadSpecFile(const std::string& path) {
  return LoadSpecFile(path, {});
}

absl::StatusOr<v1::ExperimentSpec> LoadSpecFile(const std::string& path,
                                                const std::vector<std::string>& overrides) {
  // Far above any real spec (the parsed spec may have 1 MiB); /dev/zero or a huge file is refused
  // before it is read into memory.
  constexpr int64_t kMaxSpecFileBytes = 16 << 20;
  ASSIGN_OR_RETURN(std::string text, ReadFile(path, kMaxSpecFileBytes));
  v1::ExperimentSpec spec;
  Source where{path, {}};
  YAML::Node root;  // stays empty for the proto form
  if (absl::EndsWith(path, kSpecProtoSuffix)) {
    if (!overrides.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": --set applies to YAML specs only"));
    }
    // The coordinator's own form (written by the worker daemon): no YAML in between.
    if (!spec.ParseFromString(text)) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": not a serialized mal.v1.ExperimentSpec"));
    }
  } else {
    ASSIGN_OR_RETURN(spec, ParseTree(text, overrides, where, root));
  }
  ApplyDefaults(spec);
  absl::Status s = ValidateSpec(spec);
  if (!s.ok()) {
    // "FIELD: reason": placed at the field's line, or at the --set that gave it.
    const absl::string_view message = s.message();
    const size_t colon = message.find(": ");
    const absl::string_view field = message.substr(0, colon);
    // A message without a field (or whose text before ": " is none) is placed at the file
    // alone: Locate finds no node for it.
    const std::string at =
        colon == absl::string_view::npos ? std::string(path) : Locate(root, where, field);
    return absl::InvalidArgumentError(absl::StrCat(at, ": ", message));
  }
  return spec;
}

void ResolveSpecPaths(v1::ExperimentSpec& spec, const std::string& base_dir) {
  auto fix = [&](std::string* p) {
    if (!p->empty() && (*p)[0] != '/') {
      *p = (std::filesystem::path(base_dir) / *p).lexically_normal().string();
    }
  };
  if (spec.data().has_au()) fix(spec.mutable_data()->mutable_au()->mutable_root());
  if (spec.data().has_fe()) fix(spec.mutable_data()->mutable_fe()->mutable_root());
  if (spec.has_model()) fix(spec.mutable_model()->mutable_pretrained());
}

void ApplyDefaults(v1::ExperimentSpec& spec) {
  if (spec.method() == v1::METHOD_UNSPECIFIED) spec.set_method(v1::MAL);
  if (!spec.has_seed()) spec.set_seed(1);
  if (!spec.has_max_restarts()) spec.set_max_restarts(3);
  if (!spec.has_priority()) spec.set_priority(0);

  v1::CvSpec& cv = *spec.mutable_cv();
  // {folds: 5} alone means kfold; otherwise the format's protocol (data::DefaultProtocol, which
  // a test holds this equal to). Filled in here so that applying defaults twice changes nothing.
  if (cv.protocol().empty()) {
    const std::string& f = spec.data().au().format();
    cv.set_protocol(cv.has_folds()                                      ? "kfold"
                    : (f == "bp4d" || f == "disfa" || f == "synthface") ? "standard"
                    : f == "gft"                                        ? "official"
                                                                        : "kfold");
  }
  if (!cv.has_folds()) cv.set_folds(3);
  if (!cv.has_seed()) cv.set_seed(spec.seed());

  v1::ModelSpec& m = *spec.mutable_model();
  if (m.backbone().empty()) m.set_backbone("resnet34");
  if (!m.has_input()) m.set_input(m.backbone() == "small_cnn" ? 96 : 224);
  // 224 -> 256, as the paper; in 64 bits, since validation (after defaults) has not yet refused an
  // absurd input (the spec_proto fuzzer found input * 8 overflowing an int).
  if (!m.has_resize()) {
    m.set_resize(static_cast<int32_t>(std::clamp<int64_t>(int64_t{m.input()} * 8 / 7,
                                                          std::numeric_limits<int32_t>::min(),
                                                          std::numeric_limits<int32_t>::max())));
  }
  // Where on the face a feature was seen matters for AUs (docs/spec.md); the ResNets keep
  // torchvision's global pooling, which ImageNet-pretrained weights were trained with.
  if (!m.has_feature_grid()) m.set_feature_grid(m.backbone() == "small_cnn" ? 2 : 1);

  v1::TrainSpec& t = *spec.mutable_train();
  if (!t.has_epochs()) t.set_epochs(30);
  if (!t.has_batch_au()) t.set_batch_au(64);
  if (!t.has_batch_fe()) t.set_batch_fe(64);
  if (!t.has_lr()) t.set_lr(1e-3);
  if (!t.has_momentum()) t.set_momentum(0.9);
  if (!t.has_weight_decay()) t.set_weight_decay(5e-4);
  if (t.schedule().empty()) t.set_schedule("constant");
  if (!t.has_step_epochs()) t.set_step_epochs(10);
  if (!t.has_step_gamma()) t.set_step_gamma(0.1);
  if (!t.has_fe_lambda()) t.set_fe_lambda(1.0);
  if (!t.has_hflip()) t.set_hflip(true);
  if (!t.has_threads()) t.set_threads(0);
  if (!t.has_data_threads()) t.set_data_threads(2);
  if (t.device().empty()) t.set_device("cpu");
  if (!t.has_checkpoint_every()) t.set_checkpoint_every(500);
  if (!t.has_log_every()) t.set_log_every(50);
  if (!t.has_max_iterations()) t.set_max_iterations(0);
  if (t.au_pos_weight().empty()) t.set_au_pos_weight("inverse_frequency");
  if (t.bn_stats().empty()) t.set_bn_stats("au");
  if (t.precision().empty()) t.set_precision("fp32");
  if (!t.has_channels_last()) t.set_channels_last(false);
  if (!t.has_oom_retries()) t.set_oom_retries(0);
  if (!t.has_fe_weight_levels()) t.set_fe_weight_levels(3);

  v1::MalSpec& mal = *spec.mutable_mal();
  if (mal.mode().empty()) mal.set_mode("exact");
  if (!mal.has_meta_lr()) mal.set_meta_lr(1e-3);
  if (mal.meta_optimizer().empty()) mal.set_meta_optimizer("adam");
  if (mal.meta_schedule().empty()) mal.set_meta_schedule("follow");
  if (mal.au_weighting().empty()) mal.set_au_weighting("sample");
  if (mal.task_balance().empty()) mal.set_task_balance("meta");
  if (!mal.has_meta_interval()) mal.set_meta_interval(1);
  if (!mal.has_val_fraction()) mal.set_val_fraction(0.02);
  if (mal.val_split().empty()) mal.set_val_split("frames");
  if (!mal.has_lookahead_steps()) mal.set_lookahead_steps(1);
  if (!mal.has_val_batch()) mal.set_val_batch(256);
  if (!mal.has_fd_epsilon()) mal.set_fd_epsilon(1e-3);
  if (mal.exact_method().empty()) mal.set_exact_method("jvp");
  if (!mal.has_joint_forward()) mal.set_joint_forward(false);
  if (!mal.has_task_bias()) mal.set_task_bias(true);
  if (!mal.has_center_features()) mal.set_center_features(true);
  if (!mal.has_label_aware()) mal.set_label_aware(false);
  if (!mal.has_loss_input()) mal.set_loss_input(false);
  if (mal.val_pos_weight().empty()) mal.set_val_pos_weight("inverse_frequency");

  v1::SearchSpec& s = *spec.mutable_search();
  if (s.algorithm().empty()) s.set_algorithm("random");
  if (!s.has_trials()) s.set_trials(1);
  if (!s.has_concurrent()) s.set_concurrent(1);
  if (s.metric().empty()) s.set_metric("mean_f1");
}

// Checks that hold for every field of every message, whichever path the spec came by (a YAML
// file, or a proto straight to the coordinator): numbers finite, enum values known, strings short
// and free of control characters (NUL, newline ...), lists short. `prefix` is the field path so
// far.
namespace {
constexpr size_t kMaxString = 4096;

// A string field (or a map key, `what` "key '...' "): bounded, printable, UTF-8.
absl::Status CheckString(const std::string& v, const std::string& at, const std::string& what) {
  MAL_CHECK_FIELD(v.size() <= kMaxString, at,
                  absl::StrCat(what, v.size(), " characters, at most ", kMaxString));
  for (char c : v) {
    MAL_CHECK_FIELD(static_cast<unsigned char>(c) >= 0x20 && c != 0x7f, at,
                    absl::StrCat(what, "contains a control character (NUL, newline, tab ...)"));
  }
  // Protobuf's own check: a string field that is not UTF-8 cannot be sent (it failed later as a
  // bare serialisation error).
  MAL_CHECK_FIELD(pb::internal::IsStructurallyValidUTF8(v.data(), static_cast<int>(v.size())), at,
                  absl::StrCat(what, "is not valid UTF-8 (save the file as UTF-8)"));
  return absl::OkStatus();
}

absl::Status CheckEveryField(const pb::Message& m, const std::string& prefix) {
  constexpr size_t kMaxList = 1000;
  const pb::Reflection* r = m.GetReflection();
  std::vector<const pb::FieldDescriptor*> fields;
  r->ListFields(m, &fields);
  for (const pb::FieldDescriptor* f : fields) {
    const std::string path = prefix.empty() ? f->name() : absl::StrCat(prefix, ".", f->name());
    const int n = f->is_repeated() ? r->FieldSize(m, f) : 1;
    MAL_CHECK_FIELD(static_cast<size_t>(n) <= kMaxList, path,
                    absl::StrCat(n, " entries, at most ", kMaxList));
    for (int i = 0; i < n; ++i) {
      const std::string at =
          f->is_repeated() && !f->is_map() ? absl::StrCat(path, "[", i, "]") : path;
      switch (f->cpp_type()) {
        case pb::FieldDescriptor::CPPTYPE_DOUBLE:
        case pb::FieldDescriptor::CPPTYPE_FLOAT: {
          const double v =
              f->cpp_type() == pb::FieldDescriptor::CPPTYPE_DOUBLE
                  ? (f->is_repeated() ? r->GetRepeatedDouble(m, f, i) : r->GetDouble(m, f))
                  : (f->is_repeated() ? r->GetRepeatedFloat(m, f, i) : r->GetFloat(m, f));
          MAL_CHECK_FIELD(std::isfinite(v), at, "must be a finite number");
          break;
        }
        case pb::FieldDescriptor::CPPTYPE_ENUM: {
          const int v = f->is_repeated() ? r->GetRepeatedEnumValue(m, f, i) : r->GetEnumValue(m, f);
          MAL_CHECK_FIELD(f->enum_type()->FindValueByNumber(v) != nullptr, at,
                          absl::StrCat(v, " is not a known value"));
          break;
        }
        case pb::FieldDescriptor::CPPTYPE_STRING: {
          const std::string v =
              f->is_repeated() ? r->GetRepeatedString(m, f, i) : r->GetString(m, f);
          RETURN_IF_ERROR(CheckString(v, at, ""));
          break;
        }
        case pb::FieldDescriptor::CPPTYPE_MESSAGE: {
          const pb::Message& sub =
              f->is_repeated() ? r->GetRepeatedMessage(m, f, i) : r->GetMessage(m, f);
          // A map entry: name the path by its key (search.space.train.lr).
          std::string sub_path = at;
          if (f->is_map()) {
            const pb::FieldDescriptor* key = sub.GetDescriptor()->FindFieldByName("key");
            const std::string key_text = sub.GetReflection()->GetString(sub, key);
            // The key itself, named by the map (a key too long to print is not printed).
            const bool printable = key_text.size() <= 64 && absl::c_all_of(key_text, [](char c) {
                                     return c >= 0x20 && c < 0x7f;
                                   });
            RETURN_IF_ERROR(CheckString(
                key_text, path, printable ? absl::StrCat("key '", key_text, "': ") : "a key: "));
            sub_path = absl::StrCat(path, ".", key_text);
            const pb::FieldDescriptor* value = sub.GetDescriptor()->FindFieldByName("value");
            if (value->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE) {
              RETURN_IF_ERROR(
                  CheckEveryField(sub.GetReflection()->GetMessage(sub, value), sub_path));
            }
            break;
          }
          RETURN_IF_ERROR(CheckEveryField(sub, sub_path));
          break;
        }
        default:
          break;
      }
    }
  }
  return absl::OkStatus();
}
}  // namespace

// Long on purpose: one check per field, in the proto's order, each naming its field path.
absl::Status ValidateSpec(const v1::ExperimentSpec& spec) {
  constexpr size_t kMaxSpecBytes = 1 << 20;
  MAL_CHECK_FIELD(spec.ByteSizeLong() <= kMaxSpecBytes, "spec",
                  absl::StrCat(spec.ByteSizeLong(), " bytes, at most ", kMaxSpecBytes));
  RETURN_IF_ERROR(CheckEveryField(spec, ""));
  MAL_CHECK_FIELD(!spec.name().empty(), "name", "required");
  MAL_CHECK_FIELD(spec.name().size() <= 128, "name", "at most 128 characters");
  for (char c : spec.name()) {
    MAL_CHECK_FIELD(absl::ascii_isalnum(c) || c == '-' || c == '_' || c == '.', "name",
                    "use letters, digits, '-', '_' and '.' only");
  }
  // It names the registered model (NAME:VERSION), whose references refuse a leading '.' (and a
  // name like '..' would be a path outside the registry's directories).
  MAL_CHECK_FIELD(spec.name()[0] != '.', "name",
                  absl::StrCat("'", spec.name(), "' cannot start with '.'"));
  MAL_CHECK_FIELD(spec.has_data() && spec.data().has_au(), "data.au", "required");
  RETURN_IF_ERROR(ValidateDataset(spec.data().au(), "data.au", /*au=*/true));
  if (spec.method() != v1::STL) {
    MAL_CHECK_FIELD(spec.data().has_fe(), "data.fe",
                    "required for method mtl and mal (the auxiliary expression data)");
  }
  if (spec.data().has_fe()) RETURN_IF_ERROR(ValidateDataset(spec.data().fe(), "data.fe", false));
  std::set<int> aus;
  for (int i = 0; i < spec.data().aus_size(); ++i) {
    const int au = spec.data().aus(i);
    const std::string path = absl::StrCat("data.aus[", i, "]");
    MAL_CHECK_FIELD(au >= 1 && au <= 99, path, absl::StrCat(au, " is not an AU number 1..99"));
    MAL_CHECK_FIELD(aus.insert(au).second, path, absl::StrCat("AU", au, " listed twice"));
  }

  const v1::CvSpec& cv = spec.cv();
  MAL_CHECK_FIELD(OneOf(cv.protocol(), {"", "standard", "official", "kfold"}), "cv.protocol",
                  absl::StrCat("'", cv.protocol(), "' is not one of standard, official, kfold"));
  MAL_CHECK_FIELD(cv.folds() >= 2 && cv.folds() <= 100, "cv.folds", "must be in 2..100");
  const int n_folds = cv.protocol() == "kfold" ? cv.folds() : (cv.protocol() == "official" ? 1 : 3);
  std::set<int> only;
  for (int i = 0; i < cv.only_size(); ++i) {
    MAL_CHECK_FIELD(cv.only(i) >= 1 && cv.only(i) <= n_folds, absl::StrCat("cv.only[", i, "]"),
                    absl::StrCat("fold ", cv.only(i), " is not in 1..", n_folds));
    MAL_CHECK_FIELD(only.insert(cv.only(i)).second, absl::StrCat("cv.only[", i, "]"),
                    absl::StrCat("fold ", cv.only(i), " listed twice"));
  }

  const v1::ModelSpec& m = spec.model();
  MAL_CHECK_FIELD(
      absl::c_linear_search(Backbones(), m.backbone()), "model.backbone",
      absl::StrCat("'", m.backbone(), "' is not one of ", absl::StrJoin(Backbones(), ", ")));
  MAL_CHECK_FIELD(m.input() >= 32 && m.input() <= 1024, "model.input", "must be in 32..1024");
  MAL_CHECK_FIELD(m.resize() >= m.input() && m.resize() <= 2048, "model.resize",
                  "must be at least model.input and at most 2048");
  {
    const int cells = std::max(1, LastFeatureMapSide(m.backbone(), m.input()));
    MAL_CHECK_FIELD(m.feature_grid() >= 1 && m.feature_grid() <= std::min(4, cells),
                    "model.feature_grid",
                    absl::StrCat("must be in 1..", std::min(4, cells), " (the last feature map of ",
                                 m.backbone(), " at input ", m.input(), " px is ", cells, " x ",
                                 cells, ", at most 4 x 4 cells)"));
  }

  const v1::TrainSpec& t = spec.train();
  MAL_CHECK_FIELD(t.epochs() >= 1 && t.epochs() <= 10000, "train.epochs", "must be in 1..10000");
  MAL_CHECK_FIELD(t.batch_au() >= 1 && t.batch_au() <= 65536, "train.batch_au",
                  "must be in 1..65536");
  MAL_CHECK_FIELD(t.batch_fe() >= 1 && t.batch_fe() <= 65536, "train.batch_fe",
                  "must be in 1..65536");
  MAL_CHECK_FIELD(t.lr() > 0, "train.lr", "must be > 0");
  MAL_CHECK_FIELD(t.momentum() >= 0 && t.momentum() < 1, "train.momentum", "must be in [0, 1)");
  MAL_CHECK_FIELD(t.weight_decay() >= 0, "train.weight_decay", "must be >= 0");
  MAL_CHECK_FIELD(OneOf(t.schedule(), {"constant", "step", "cosine"}), "train.schedule",
                  "must be constant, step or cosine");
  MAL_CHECK_FIELD(t.step_epochs() >= 1 && t.step_epochs() <= 10000, "train.step_epochs",
                  "must be in 1..10000");
  MAL_CHECK_FIELD(t.step_gamma() > 0 && t.step_gamma() <= 1, "train.step_gamma",
                  "must be in (0, 1]");
  MAL_CHECK_FIELD(t.fe_lambda() >= 0, "train.fe_lambda", "must be >= 0");
  MAL_CHECK_FIELD(t.threads() >= 0 && t.threads() <= 1024, "train.threads",
                  "must be in 0..1024 (0 = all cores)");
  MAL_CHECK_FIELD(t.data_threads() >= 1 && t.data_threads() <= 256, "train.data_threads",
                  "must be in 1..256");
  long ordinal = 0;
  MAL_CHECK_FIELD(t.device() == "cpu" || t.device() == "cuda" ||
                      (absl::StartsWith(t.device(), "cuda:") &&
                       absl::SimpleAtoi(t.device().substr(5), &ordinal) && ordinal >= 0),
                  "train.device", absl::StrCat("'", t.device(), "' is not cpu, cuda or cuda:N"));
  MAL_CHECK_FIELD(t.checkpoint_every() >= 1, "train.checkpoint_every", "must be at least 1");
  MAL_CHECK_FIELD(t.log_every() >= 1, "train.log_every", "must be at least 1");
  MAL_CHECK_FIELD(t.max_iterations() >= 0, "train.max_iterations", "must be >= 0");
  MAL_CHECK_FIELD(OneOf(t.au_pos_weight(), {"none", "inverse_frequency"}), "train.au_pos_weight",
                  absl::StrCat("'", t.au_pos_weight(), "' is not one of none, inverse_frequency"));
  MAL_CHECK_FIELD(OneOf(t.bn_stats(), {"au", "all"}), "train.bn_stats",
                  absl::StrCat("'", t.bn_stats(), "' is not one of au, all"));
  MAL_CHECK_FIELD(t.oom_retries() >= 0 && t.oom_retries() <= 16, "train.oom_retries",
                  "must be in 0..16 (each retry halves the batches)");
  MAL_CHECK_FIELD(t.fe_weights().empty() || spec.method() != v1::STL, "train.fe_weights",
                  "STL trains no FE task: set it with method mtl or mal");
  MAL_CHECK_FIELD(t.fe_weight_levels() >= 2 && t.fe_weight_levels() <= 20, "train.fe_weight_levels",
                  "must be in 2..20");
  MAL_CHECK_FIELD(OneOf(t.precision(), {"fp32", "bf16-mixed"}), "train.precision",
                  absl::StrCat("'", t.precision(), "' is not one of fp32, bf16-mixed"));
  // Its step (fd_epsilon of |r| on the parameters) is near bf16's resolution of about 4e-3: in
  // the small-CNN probe of docs/gpu.md its bf16 meta-gradient's cosine to fp32's was 0.85, against
  // 0.998 for exact and heads_only.
  MAL_CHECK_FIELD(!(spec.method() == v1::MAL && t.precision() == "bf16-mixed" &&
                    spec.mal().mode() == "finite_difference"),
                  "train.precision",
                  "bf16-mixed cannot be used with mal.mode finite_difference (its finite "
                  "difference step is near bfloat16's resolution): use mal.mode exact or "
                  "heads_only, or precision fp32");

  const v1::MalSpec& mal = spec.mal();
  MAL_CHECK_FIELD(
      OneOf(mal.mode(), {"exact", "finite_difference", "heads_only"}), "mal.mode",
      absl::StrCat("'", mal.mode(), "' is not one of exact, finite_difference, heads_only"));
  MAL_CHECK_FIELD(mal.meta_lr() > 0, "mal.meta_lr", "must be > 0");
  MAL_CHECK_FIELD(OneOf(mal.meta_schedule(), {"constant", "follow"}), "mal.meta_schedule",
                  absl::StrCat("'", mal.meta_schedule(), "' is not one of constant, follow"));
  MAL_CHECK_FIELD(
      OneOf(mal.au_weighting(), {"sample", "task", "task_in_base_step"}), "mal.au_weighting",
      absl::StrCat("'", mal.au_weighting(), "' is not one of sample, task, task_in_base_step"));
  MAL_CHECK_FIELD(
      OneOf(mal.task_balance(), {"meta", "fixed_in_base_step"}), "mal.task_balance",
      absl::StrCat("'", mal.task_balance(), "' is not one of meta, fixed_in_base_step"));
  MAL_CHECK_FIELD(OneOf(mal.meta_optimizer(), {"adam", "sgd"}), "mal.meta_optimizer",
                  "must be adam or sgd");
  MAL_CHECK_FIELD(mal.meta_interval() >= 1, "mal.meta_interval", "must be at least 1");
  MAL_CHECK_FIELD(mal.val_fraction() > 0 && mal.val_fraction() <= 0.5, "mal.val_fraction",
                  "must be in (0, 0.5]");
  MAL_CHECK_FIELD(OneOf(mal.val_split(), {"frames", "subjects"}), "mal.val_split",
                  absl::StrCat("'", mal.val_split(), "' is not one of frames, subjects"));
  MAL_CHECK_FIELD(mal.val_batch() >= 1 && mal.val_batch() <= 65536, "mal.val_batch",
                  "must be in 1..65536");
  MAL_CHECK_FIELD(mal.fd_epsilon() > 0, "mal.fd_epsilon", "must be > 0");
  MAL_CHECK_FIELD(OneOf(mal.exact_method(), {"jvp", "vjp"}), "mal.exact_method",
                  "must be jvp or vjp");
  MAL_CHECK_FIELD(mal.lookahead_steps() >= 1 && mal.lookahead_steps() <= 16, "mal.lookahead_steps",
                  "must be in 1..16");
  MAL_CHECK_FIELD(mal.lookahead_steps() == 1 || mal.mode() == "finite_difference" ||
                      (mal.mode() == "exact" && mal.exact_method() == "jvp"),
                  "mal.lookahead_steps",
                  absl::StrCat("more than 1 step needs mal.mode exact with exact_method jvp, or "
                               "finite_difference (mode ",
                               mal.mode(), ", exact_method ", mal.exact_method(), ")"));
  MAL_CHECK_FIELD(
      OneOf(mal.val_pos_weight(), {"inverse_frequency", "sqrt", "none"}), "mal.val_pos_weight",
      absl::StrCat("'", mal.val_pos_weight(), "' is not one of inverse_frequency, sqrt, none"));

  const v1::SearchSpec& s = spec.search();
  MAL_CHECK_FIELD(OneOf(s.algorithm(), {"grid", "random"}), "search.algorithm",
                  "must be grid or random");
  MAL_CHECK_FIELD(s.trials() >= 1 && s.trials() <= 10000, "search.trials", "must be in 1..10000");
  MAL_CHECK_FIELD(s.concurrent() >= 1 && s.concurrent() <= 10000, "search.concurrent",
                  "must be in 1..10000");
  MAL_CHECK_FIELD(s.space_size() <= 64, "search.space", "at most 64 searched fields");
  MAL_CHECK_FIELD(s.metric() == "mean_f1", "search.metric", "only mean_f1 is supported");
  std::vector<std::string> keys;
  for (const auto& [key, domain] : s.space()) keys.push_back(key);
  std::sort(keys.begin(), keys.end());  // report the first problem deterministically
  for (const std::string& key : keys) {
    RETURN_IF_ERROR(ValidateDomain(spec, key, s.space().at(key), s.algorithm()));
  }
  MAL_CHECK_FIELD(spec.max_restarts() >= 0 && spec.max_restarts() <= 100, "max_restarts",
                  "must be in 0..100");
  MAL_CHECK_FIELD(spec.priority() >= -1000 && spec.priority() <= 1000, "priority",
                  "must be in -1000..1000");
  return absl::OkStatus();
}

absl::StatusOr<const pb::FieldDescriptor*> ResolveFieldPath(const pb::Message& message,
                                                            absl::string_view path) {
  const pb::Descriptor* d = message.GetDescriptor();
  const pb::FieldDescriptor* f = nullptr;
  std::vector<std::string> parts = absl::StrSplit(path, '.');
  for (size_t i = 0; i < parts.size(); ++i) {
    if (d == nullptr) {
      const std::string above = absl::StrJoin(parts.begin(), parts.begin() + i, ".");
      if (f != nullptr && f->is_map()) {
        return absl::InvalidArgumentError(absl::StrCat("'", above,
                                                       "' is a map: set it whole, e.g. ", above,
                                                       "={train.lr: {log_uniform: [1e-4, 1e-2]}}"));
      }
      return absl::InvalidArgumentError(
          absl::StrCat("'", path, "' goes below '", above, "', which is ",
                       f != nullptr && f->is_repeated() ? "a list" : "a scalar"));
    }
    f = d->FindFieldByName(parts[i]);
    if (f == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("'", path, "' is not a spec field ('", parts[i], "' unknown)"));
    }
    d = f->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE && !f->is_repeated()
            ? f->message_type()
            : nullptr;
  }
  return f;
}

absl::Status SetFieldByPath(pb::Message& message, absl::string_view path, absl::string_view value) {
  std::vector<std::string> parts = absl::StrSplit(path, '.');
  pb::Message* msg = &message;
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    const pb::FieldDescriptor* f = msg->GetDescriptor()->FindFieldByName(parts[i]);
    if (f == nullptr || f->cpp_type() != pb::FieldDescriptor::CPPTYPE_MESSAGE || f->is_repeated()) {
      return absl::InvalidArgumentError(absl::StrCat("'", path, "' is not a spec field"));
    }
    msg = msg->GetReflection()->MutableMessage(msg, f);
  }
  const pb::FieldDescriptor* f = msg->GetDescriptor()->FindFieldByName(parts.back());
  if (f == nullptr || f->is_repeated() || f->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE) {
    return absl::InvalidArgumentError(absl::StrCat("'", path, "' is not a scalar spec field"));
  }
  return SetScalar(*msg, f, value, path);
}

std::string SpecToJson(const v1::ExperimentSpec& spec) {
  std::string out;
  pb::util::JsonPrintOptions options;
  options.add_whitespace = true;
  options.preserve_proto_field_names = true;
  (void)pb::util::MessageToJsonString(spec, &out, options);
  return out;
}

}  // namespace mal
