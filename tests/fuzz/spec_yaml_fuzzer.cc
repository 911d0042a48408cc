// libFuzzer target: the YAML spec path (ParseSpecYaml, then what the coordinator does with a
// submitted spec: defaults, validation, the search size, the trial expansion when small).
// Built with clang -fsanitize=fuzzer by deploy/fuzz.sh; replayed over its corpus by ctest.

#include <cstddef>
#include <cstdint>
#include <string>

#include "common/spec/spec.h"
#include "server/core/searcher.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > (1 << 16)) return 0;
  const std::string yaml(reinterpret_cast<const char*>(data), size);
  auto spec = mal::ParseSpecYaml(yaml, "fuzz.yaml");
  if (!spec.ok()) return 0;
  mal::ApplyDefaults(*spec);
  if (!mal::ValidateSpec(*spec).ok()) return 0;
  if (mal::server::TrialCount(*spec) <= 64) (void)mal::server::ExpandTrials(*spec);
  return 0;
}
