#ifndef MAL_COMMON_UTIL_LOGGING_H_
#define MAL_COMMON_UTIL_LOGGING_H_

// Logging through glog (the library libtorch itself logs with). Call InitLogging once from main.

#include <glog/logging.h>

namespace mal {

// Logs go to stderr; MAL_LOG_LEVEL (0 info, 1 warning, 2 error) sets the threshold.
void InitLogging(const char* argv0);

}  // namespace mal

#endif  // MAL_COMMON_UTIL_LOGGING_H_
