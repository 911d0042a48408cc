// libFuzzer target: a spec sent as a proto (any bytes a client can put in SubmitExperiment),
// through the same defaults, validation, search size and expansion as the YAML path.

#include <cstddef>
#include <cstdint>

#include "common/spec/spec.h"
#include "mal/v1/spec.pb.h"
#include "server/core/searcher.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > (1 << 16)) return 0;
  mal::v1::ExperimentSpec spec;
  if (!spec.ParseFromArray(data, static_cast<int>(size))) return 0;
  mal::ApplyDefaults(spec);
  if (!mal::ValidateSpec(spec).ok()) return 0;
  if (mal::server::TrialCount(spec) <= 64) (void)mal::server::ExpandTrials(spec);
  (void)mal::SpecToJson(spec);
  return 0;
}
