#ifndef MAL_COMMON_METRICS_AU_METRICS_H_
#define MAL_COMMON_METRICS_AU_METRICS_H_

#include <cstdint>
#include <vector>

namespace mal {

// Per-AU F1 as the AU literature reports it: TP/FP/FN accumulated over a whole test fold,
// prediction = probability >= threshold, unknown labels excluded; the mean over AUs.
// Not thread-safe.
class AuF1 {
 public:
  explicit AuF1(int num_aus, double threshold = 0.5);

  // `probs`, `labels`, `mask`: n x num_aus, row-major; mask 0 = unknown label.
  void Add(const float* probs, const float* labels, const float* mask, int64_t n);

  // F1 of one AU in [0, 1]; 0 when the AU has no positive and no predicted positive.
  double F1(int au_slot) const;
  std::vector<double> PerAu() const;
  double Mean() const;
  int64_t tp(int k) const { return tp_[k]; }
  int64_t fp(int k) const { return fp_[k]; }
  int64_t fn(int k) const { return fn_[k]; }

 private:
  int num_aus_;
  double threshold_;
  std::vector<int64_t> tp_, fp_, fn_;
};

// Spearman's rank correlation (average ranks for ties); 0 for fewer than 2 points or no variance.
double SpearmanCorrelation(const std::vector<double>& x, const std::vector<double>& y);

// The q-quantile (0..1) of `values` by linear interpolation; `values` need not be sorted.
double Quantile(std::vector<double> values, double q);

}  // namespace mal

#endif  // MAL_COMMON_METRICS_AU_METRICS_H_
