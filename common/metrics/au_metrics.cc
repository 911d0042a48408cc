#include "common/metrics/au_metrics.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace mal {

AuF1::AuF1(int num_aus, double threshold)
    : num_aus_(num_aus), threshold_(threshold), tp_(num_aus), fp_(num_aus), fn_(num_aus) {}

void AuF1::Add(const float* probs, const float* labels, const float* mask, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    for (int k = 0; k < num_aus_; ++k) {
      const int64_t j = i * num_aus_ + k;
      if (mask[j] == 0) continue;
      const bool predicted = probs[j] >= threshold_;
      const bool actual = labels[j] > 0.5f;
      tp_[k] += predicted && actual;
      fp_[k] += predicted && !actual;
      fn_[k] += !predicted && actual;
    }
  }
}

double AuF1::F1(int k) const {
  const double denom = 2.0 * tp_[k] + fp_[k] + fn_[k];
  return denom > 0 ? 2.0 * tp_[k] / denom : 0.0;
}

std::vector<double> AuF1::PerAu() const {
  std::vector<double> out(num_aus_);
  for (int k = 0; k < num_aus_; ++k) out[k] = F1(k);
  return out;
}

double AuF1::Mean() const {
  if (num_aus_ == 0) return 0;
  const std::vector<double> f = PerAu();
  return std::accumulate(f.begin(), f.end(), 0.0) / num_aus_;
}

namespace {

std::vector<double> Ranks(const std::vector<double>& v) {
  std::vector<size_t> order(v.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return v[a] < v[b]; });
  std::vector<double> ranks(v.size());
  for (size_t i = 0; i < order.size();) {
    size_t j = i;
    while (j + 1 < order.size() && v[order[j + 1]] == v[order[i]]) ++j;
    const double rank = 0.5 * (i + j) + 1;
    for (size_t k = i; k <= j; ++k) ranks[order[k]] = rank;
    i = j + 1;
  }
  return ranks;
}

}  // namespace

double SpearmanCorrelation(const std::vector<double>& x, const std::vector<double>& y) {
  const size_t n = std::min(x.size(), y.size());
  if (n < 2) return 0;
  const std::vector<double> rx = Ranks({x.begin(), x.begin() + n});
  const std::vector<double> ry = Ranks({y.begin(), y.begin() + n});
  const double mx = std::accumulate(rx.begin(), rx.end(), 0.0) / n;
  const double my = std::accumulate(ry.begin(), ry.end(), 0.0) / n;
  double sxy = 0, sxx = 0, syy = 0;
  for (size_t i = 0; i < n; ++i) {
    sxy += (rx[i] - mx) * (ry[i] - my);
    sxx += (rx[i] - mx) * (rx[i] - mx);
    syy += (ry[i] - my) * (ry[i] - my);
  }
  return sxx > 0 && syy > 0 ? sxy / std::sqrt(sxx * syy) : 0;
}

double Quantile(std::vector<double> values, double q) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const double pos = std::clamp(q, 0.0, 1.0) * (values.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(pos));
  const size_t hi = std::min(lo + 1, values.size() - 1);
  return values[lo] + (pos - lo) * (values[hi] - values[lo]);
}

std::vector<double> TuneThresholds(const std::vector<float>& probs,
                                   const std::vector<float>& labels, const std::vector<float>& mask,
                                   int num_aus) {
  const int64_t n = num_aus > 0 ? static_cast<int64_t>(probs.size()) / num_aus : 0;
  std::vector<double> best(static_cast<size_t>(std::max(num_aus, 0)), 0.5);
  for (int k = 0; k < num_aus; ++k) {
    double best_f1 = -1;
    bool any_positive = false;
    for (int step = 1; step <= 19; ++step) {
      const double t = 0.05 * step;
      int64_t tp = 0, fp = 0, fn = 0;
      for (int64_t i = 0; i < n; ++i) {
        const size_t at = static_cast<size_t>(i * num_aus + k);
        if (mask[at] == 0) continue;
        const bool truth = labels[at] > 0.5f, predicted = probs[at] >= t;
        any_positive = any_positive || truth;
        tp += truth && predicted;
        fp += !truth && predicted;
        fn += truth && !predicted;
      }
      const double f1 = tp == 0 ? 0 : 2.0 * tp / (2.0 * tp + fp + fn);
      if (f1 > best_f1 + 1e-12 ||
          (std::abs(f1 - best_f1) <= 1e-12 && std::abs(t - 0.5) < std::abs(best[k] - 0.5))) {
        best_f1 = f1;
        best[static_cast<size_t>(k)] = t;
      }
    }
    if (!any_positive) best[static_cast<size_t>(k)] = 0.5;
  }
  return best;
}

}  // namespace mal
