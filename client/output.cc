#include "client/output.h"

#include <google/protobuf/util/json_util.h>
#include <yaml-cpp/yaml.h>

#include <iostream>

namespace mal::cli {

namespace {

void Block(YAML::Node node) {
  if (node.IsMap() || node.IsSequence()) {
    node.SetStyle(YAML::EmitterStyle::Block);
    for (auto it = node.begin(); it != node.end(); ++it) Block(node.IsMap() ? it->second : *it);
  }
}

}  // namespace

std::string Json(const google::protobuf::Message& m, bool pretty) {
  std::string out;
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = pretty;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  (void)google::protobuf::util::MessageToJsonString(m, &out, options);
  if (pretty && !out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

std::string Yaml(const google::protobuf::Message& m) {
  // JSON is YAML: load it as such, then emit block style.
  YAML::Node node = YAML::Load(Json(m, false));
  Block(node);
  YAML::Emitter out;
  out << node;
  return std::string(out.c_str()) + "\n";
}

void PrintStructured(const std::string& format, const google::protobuf::Message& m) {
  if (format == "yaml") {
    std::cout << Yaml(m);
  } else {
    std::cout << Json(m) << "\n";
  }
}

}  // namespace mal::cli
