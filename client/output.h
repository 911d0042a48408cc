#ifndef MAL_CLIENT_OUTPUT_H_
#define MAL_CLIENT_OUTPUT_H_

// malctl's structured output (`-o json` / `-o yaml`): proto messages with the .proto field names,
// every field printed (zeros and empty lists too, so scripts see a stable shape).

#include <string>

#include "google/protobuf/message.h"

namespace mal::cli {

// The choices of every command's -o/--output: table (people; "text" is accepted for it), json,
// yaml. csv where a command has a table worth a spreadsheet (results).
inline constexpr const char* kTable = "table";
// JSON; one line unless `pretty`.
std::string Json(const google::protobuf::Message& message, bool pretty = true);
// The same tree as block-style YAML (ends with a newline).
std::string Yaml(const google::protobuf::Message& message);
// Prints `message` to stdout as `format` ("json" or "yaml").
void PrintStructured(const std::string& format, const google::protobuf::Message& message);

}  // namespace mal::cli

#endif  // MAL_CLIENT_OUTPUT_H_
