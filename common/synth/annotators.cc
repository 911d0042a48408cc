#include "common/synth/annotators.h"

#include <algorithm>
#include <cmath>

namespace mal::synth {

const std::vector<int>& PrototypeAus(int expression) {
  static const std::vector<std::vector<int>> kPrototypes = {
      {},                 // neutral
      {6, 12},            // happiness
      {1, 4, 15},         // sadness
      {1, 2, 25, 26},     // surprise
      {1, 2, 4, 25},      // fear
      {9, 10, 17},        // disgust
      {4, 7, 23, 24},     // anger
  };
  static const std::vector<int> kNone;
  return expression >= 0 && expression < data::kNumExpressions ? kPrototypes[expression] : kNone;
}

Votes SimulateAnnotators(const std::array<double, kSynthAus.size()>& visible, int context,
                         int annotators, Rng& rng) {
  // Evidence score per expression: mean visible intensity of its prototype AUs, minus a penalty
  // for visible AUs that do not belong to it. Neutral scores high when nothing is visible.
  std::array<double, data::kNumExpressions> score{};
  double strongest = 0;
  for (double v : visible) strongest = std::max(strongest, v);
  for (int e = 0; e < data::kNumExpressions; ++e) {
    const std::vector<int>& proto = PrototypeAus(e);
    if (proto.empty()) {
      score[e] = 0.35 - 0.6 * strongest;
      continue;
    }
    double in = 0, out = 0;
    for (size_t k = 0; k < kSynthAus.size(); ++k) {
      const bool member = std::find(proto.begin(), proto.end(), kSynthAus[k]) != proto.end();
      (member ? in : out) += visible[k];
    }
    score[e] = in / proto.size() - 0.15 * out;
  }
  // Cues beyond the face's muscles (the scene, the body, the caption of an in-the-wild photo) pull
  // the votes towards the intended expression, the more so the less the face shows: an ambiguous
  // photo gets a label its face does not support, as in RAF-DB.
  if (context >= 0 && context < data::kNumExpressions) {
    score[context] += 0.15 + 0.25 * (1 - std::min(1.0, strongest));
  }
  // Less visible evidence, more guessing.
  const double noise = 0.08 + 0.3 * (1 - std::min(1.0, strongest));
  Votes v;
  for (int a = 0; a < annotators; ++a) {
    int best = 0;
    double best_value = -1e9;
    for (int e = 0; e < data::kNumExpressions; ++e) {
      const double value = score[e] + noise * rng.Normal();
      if (value > best_value) {
        best_value = value;
        best = e;
      }
    }
    ++v.counts[best];
  }
  v.label = static_cast<int>(std::max_element(v.counts.begin(), v.counts.end()) - v.counts.begin());
  v.consistency = annotators > 0 ? static_cast<double>(v.counts[v.label]) / annotators : 0;
  return v;
}

}  // namespace mal::synth
