#include "server/core/searcher.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/data/folds.h"
#include "common/spec/spec.h"
#include "common/util/random.h"
#include "common/util/status_macros.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"

namespace mal::server {

namespace {

// Four significant digits, what a person reports and exactly what the trial trains with; more
// where four would round the draw out of [lo, hi] (0.99995 of [0.9999, 0.99999] is not 1).
std::string Format(double v, double lo, double hi) {
  char buf[32];
  for (int digits = 4; digits <= 17; ++digits) {
    std::snprintf(buf, sizeof buf, "%.*g", digits, v);
    const double back = std::strtod(buf, nullptr);
    if (back >= lo && back <= hi) break;
  }
  return buf;
}

std::vector<std::string> GridValues(const v1::ParamDomain& d) {
  std::vector<std::string> out(d.choice().begin(), d.choice().end());
  if (d.int_uniform_size() == 2) {
    for (int64_t v = d.int_uniform(0); v <= d.int_uniform(1); ++v) out.push_back(absl::StrCat(v));
  }
  return out;
}

std::string Draw(const v1::ParamDomain& d, Rng& rng) {
  if (d.choice_size() > 0) return d.choice(static_cast<int>(rng.Below(d.choice_size())));
  if (d.int_uniform_size() == 2) return absl::StrCat(rng.IntIn(d.int_uniform(0), d.int_uniform(1)));
  if (d.log_uniform_size() == 2) {
    return Format(std::exp(rng.Uniform(std::log(d.log_uniform(0)), std::log(d.log_uniform(1)))),
                  d.log_uniform(0), d.log_uniform(1));
  }
  return Format(rng.Uniform(d.uniform(0), d.uniform(1)), d.uniform(0), d.uniform(1));
}

}  // namespace

int64_t TrialCount(const v1::ExperimentSpec& spec) {
  const v1::SearchSpec& s = spec.search();
  if (s.space().empty()) return 1;
  if (s.algorithm() != "grid") return std::max(0, s.trials());
  int64_t total = 1;
  for (const auto& [key, d] : s.space()) {
    int64_t n = d.choice_size();
    if (d.int_uniform_size() == 2) {
      // In long double: hi - lo + 1 of two int64s may not fit in one.
      const long double span = static_cast<long double>(d.int_uniform(1)) - d.int_uniform(0) + 1;
      n += span <= 0 ? 0 : span > 1e15L ? int64_t{1} << 50 : static_cast<int64_t>(span);
    }
    // Saturating at 2^50, which reads "over 10^15" (a product just under it would be a number).
    constexpr int64_t kCap = int64_t{1} << 50;
    total = n == 0 ? 0 : total > kCap / n ? kCap : total * n;
  }
  return total;
}

absl::StatusOr<std::vector<TrialPlan>> ExpandTrials(const v1::ExperimentSpec& spec) {
  const v1::SearchSpec& s = spec.search();
  // Counted before anything is built: a grid over a huge integer range is refused in
  // microseconds, not after allocating it.
  if (const int64_t n = TrialCount(spec); n > kMaxTrials) {
    return absl::InvalidArgumentError(
        absl::StrCat(s.algorithm() == "grid" ? "search.space: the grid has " : "search.trials: ",
                     n >= (int64_t{1} << 50) ? "over 10^15" : absl::StrCat(n),
                     " trials, over the limit of ", kMaxTrials));
  }
  std::vector<std::string> keys;
  for (const auto& [key, domain] : s.space()) keys.push_back(key);
  std::sort(keys.begin(), keys.end());
  std::vector<TrialPlan> plans;
  if (keys.empty()) {
    plans.push_back(TrialPlan{0, {}, spec.seed()});
  } else if (s.algorithm() == "grid") {
    std::vector<std::vector<std::string>> values;
    size_t total = 1;
    for (const auto& k : keys) {
      values.push_back(GridValues(s.space().at(k)));
      total *= values.back().size();
    }
    for (size_t t = 0; t < total; ++t) {
      TrialPlan p{static_cast<int>(t), {}, spec.seed()};
      size_t rest = t;
      for (size_t k = keys.size(); k-- > 0;) {
        p.params[keys[k]] = values[k][rest % values[k].size()];
        rest /= values[k].size();
      }
      plans.push_back(std::move(p));
    }
  } else {
    for (int t = 0; t < s.trials(); ++t) {
      TrialPlan p{t, {}, spec.seed()};
      Rng rng(MixSeed(static_cast<uint64_t>(spec.seed()), 0x5ea7c4 + static_cast<uint64_t>(t)));
      for (const auto& k : keys) p.params[k] = Draw(s.space().at(k), rng);
      plans.push_back(std::move(p));
    }
  }
  for (const TrialPlan& p : plans) {
    auto trial_spec = TrialSpec(spec, p);
    if (!trial_spec.ok()) {
      std::vector<std::string> values;  // the combination that fails, as the trial got it
      for (const auto& [key, value] : p.params) values.push_back(absl::StrCat(key, "=", value));
      return absl::InvalidArgumentError(absl::StrCat("trial ", p.trial, " (",
                                                     absl::StrJoin(values, ", "),
                                                     "): ", trial_spec.status().message()));
    }
  }
  return plans;
}

absl::StatusOr<v1::ExperimentSpec> TrialSpec(const v1::ExperimentSpec& spec,
                                             const TrialPlan& plan) {
  v1::ExperimentSpec out = spec;
  out.clear_search();
  ApplyDefaults(out);
  for (const auto& [path, value] : plan.params) RETURN_IF_ERROR(SetFieldByPath(out, path, value));
  out.set_seed(plan.seed);
  RETURN_IF_ERROR(ValidateSpec(out));
  return out;
}

absl::StatusOr<std::vector<TrialPlan>> CheckExperimentSize(const v1::ExperimentSpec& spec) {
  const int64_t folds = static_cast<int64_t>(FoldNumbers(spec).size());
  // Over kMaxTrials, ExpandTrials says so (in those terms, without building anything).
  if (const int64_t trials = TrialCount(spec);
      trials <= kMaxTrials && trials * folds > kMaxRunsPerExperiment) {
    return absl::InvalidArgumentError(absl::StrCat("search, cv: ", trials, " trials x ", folds,
                                                   " folds is over ", kMaxRunsPerExperiment,
                                                   " fold runs"));
  }
  return ExpandTrials(spec);
}

std::vector<int> FoldNumbers(const v1::ExperimentSpec& spec) {
  if (spec.cv().only_size() > 0) return {spec.cv().only().begin(), spec.cv().only().end()};
  std::string protocol = spec.cv().protocol();
  if (protocol.empty()) protocol = data::DefaultProtocol(spec.data().au().format());
  const int n = protocol == "kfold" ? spec.cv().folds() : (protocol == "official" ? 1 : 3);
  std::vector<int> out;
  for (int f = 1; f <= n; ++f) out.push_back(f);
  return out;
}

std::string ParamsToJson(const std::map<std::string, std::string>& params) {
  google::protobuf::Struct s;
  for (const auto& [k, v] : params) (*s.mutable_fields())[k].set_string_value(v);
  std::string out;
  (void)google::protobuf::util::MessageToJsonString(s, &out);
  return out;
}

absl::StatusOr<std::map<std::string, std::string>> ParamsFromJson(const std::string& json) {
  std::map<std::string, std::string> out;
  if (json.empty()) return out;
  google::protobuf::Struct s;
  auto st = google::protobuf::util::JsonStringToMessage(json, &s);
  if (!st.ok()) return absl::DataLossError(absl::StrCat("trial params: ", st.ToString()));
  for (const auto& [k, v] : s.fields()) out[k] = v.string_value();
  return out;
}

}  // namespace mal::server
