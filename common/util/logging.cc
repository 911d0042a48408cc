#include "common/util/logging.h"

#include <cstdlib>

namespace mal {

void InitLogging(const char* argv0) {
  static bool initialised = false;
  if (initialised) return;
  initialised = true;
  FLAGS_logtostderr = true;
  if (const char* level = std::getenv("MAL_LOG_LEVEL")) FLAGS_minloglevel = std::atoi(level);
  google::InitGoogleLogging(argv0);
}

}  // namespace mal
