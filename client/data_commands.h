#ifndef MAL_CLIENT_DATA_COMMANDS_H_
#define MAL_CLIENT_DATA_COMMANDS_H_

#include <string>
#include <vector>

namespace mal::cli {

// `malctl data inspect ...` and `malctl data synth ...`: local, no server. Return the exit code;
// output goes to stdout, errors to stderr.
int RunDataInspect(const std::vector<std::string>& args);
int RunDataSynth(const std::vector<std::string>& args);

}  // namespace mal::cli

#endif  // MAL_CLIENT_DATA_COMMANDS_H_
