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

// Per AU, the threshold in {0.05, 0.10, ..., 0.95} with the best F1 (as AuF1 counts it) of
// `probs` against `labels` where `mask` is 1 (all n x num_aus, row-major). Ties go to the threshold
// closest to 0.5; an AU without a known positive keeps 0.5.
std::vector<double> TuneThresholds(const std::vector<float>& probs,
                                   const std::vector<float>& labels, const std::vector<float>& mask,
                                   int num_aus);

// Spearman's rank correlation (average ranks for ties); 0 for fewer than 2 points or no variance.
double SpearmanCorrelation(const std::vector<double>& x, const std::vector<double>& y);

// The q-quantile (0..1) of `values` by linear interpolation; `values` need not be sorted.
double Quantile(std::vector<double> values, double q);

}  // namespace mal

#endif  // MAL_COMMON_METRICS_AU_METRICS_H_
