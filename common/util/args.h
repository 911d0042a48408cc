#ifndef MAL_COMMON_UTIL_ARGS_H_
#define MAL_COMMON_UTIL_ARGS_H_

#include <initializer_list>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace mal::cli {

// Parsed command-line options of one command of malctl, mal-worker or mal-coordinator: `--name
// value`, `--name=value`, `-o value`, boolean `--flag`, and positionals. Unknown options are
// errors that name them. (Written by hand: Abseil's flags are process-global and have no
// subcommands; CLI11 (Debian's libcli11-dev), which has both, is the planned replacement.)
class Args {
 public:
  // `valued` and `flags` list the accepted long names (without dashes); `aliases` maps short
  // names ("o") to long ones ("output").
  static absl::StatusOr<Args> Parse(const std::vector<std::string>& argv,
                                    const std::set<std::string>& valued,
                                    const std::set<std::string>& flags,
                                    const std::map<std::string, std::string>& aliases = {});

  bool Has(const std::string& name) const { return values_.count(name) > 0; }
  std::string Get(const std::string& name, const std::string& fallback = "") const;
  absl::StatusOr<long> GetInt(const std::string& name, long fallback) const;
  absl::StatusOr<double> GetDouble(const std::string& name, double fallback) const;
  // Overwrites each target whose option was given; the first bad value is the error.
  absl::Status ReadInts(std::initializer_list<std::pair<const char*, int*>> targets) const;
  bool Flag(const std::string& name) const { return flags_.count(name) > 0; }
  const std::vector<std::string>& positional() const { return positional_; }

 private:
  std::map<std::string, std::string> values_;
  std::set<std::string> flags_;
  std::vector<std::string> positional_;
};

}  // namespace mal::cli

#endif  // MAL_COMMON_UTIL_ARGS_H_
