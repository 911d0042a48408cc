#ifndef MAL_COMMON_UTIL_RANDOM_H_
#define MAL_COMMON_UTIL_RANDOM_H_

#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace mal {

// A seeded generator whose every draw is defined here, not by the standard library, so folds,
// augmentation and synthetic data are identical on every platform for the same seed.
// Not thread-safe: give each thread (or each sample) its own, seeded with MixSeed.
class Rng {
 public:
  explicit Rng(uint64_t seed) : engine_(seed) {}

  uint64_t NextU64() { return engine_(); }
  // Uniform in [0, 1).
  double Uniform() { return static_cast<double>(engine_() >> 11) * 0x1.0p-53; }
  double Uniform(double low, double high) { return low + (high - low) * Uniform(); }
  // Uniform integer in [0, n), n > 0, without modulo bias.
  uint64_t Below(uint64_t n);
  // Uniform integer in [low, high] inclusive.
  int64_t IntIn(int64_t low, int64_t high) {
    return low + static_cast<int64_t>(Below(static_cast<uint64_t>(high - low) + 1));
  }
  bool Bernoulli(double p) { return Uniform() < p; }
  // Standard normal by Box-Muller.
  double Normal();
  double Normal(double mean, double stddev) { return mean + stddev * Normal(); }

  template <typename T>
  void Shuffle(std::vector<T>& v) {
    for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[Below(i)]);
  }

 private:
  std::mt19937_64 engine_;
  bool has_spare_ = false;
  double spare_ = 0.0;
};

// FNV-1a of the bytes: a hash that is the same on every platform (std::hash is not).
uint64_t StableHash(const std::string& text);

// Derives an independent seed from a base seed and a stream index (splitmix64 finaliser).
uint64_t MixSeed(uint64_t seed, uint64_t stream);

}  // namespace mal

#endif  // MAL_COMMON_UTIL_RANDOM_H_
