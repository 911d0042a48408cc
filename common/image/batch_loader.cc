#include "common/image/batch_loader.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/util/progress.h"
#include "common/util/random.h"

namespace mal::image {

absl::StatusOr<std::unique_ptr<BatchLoader>> BatchLoader::Create(const data::DatasetIndex* index,
                                                                 std::vector<int64_t> samples,
                                                                 Options options) {
  if (index == nullptr) return absl::InvalidArgumentError("batch loader: no dataset index");
  if (options.batch_size < 1) return absl::InvalidArgumentError("batch loader: batch_size < 1");
  if (options.threads < 1) return absl::InvalidArgumentError("batch loader: threads < 1");
  if (options.prefetch < 1) return absl::InvalidArgumentError("batch loader: prefetch < 1");
  if (options.transform.crop < 1 || options.transform.crop > options.transform.resize) {
    return absl::InvalidArgumentError(absl::StrCat("batch loader: crop ", options.transform.crop,
                                                   " must be in 1..resize (",
                                                   options.transform.resize, ")"));
  }
  for (int64_t i : samples) {
    if (i < 0 || i >= static_cast<int64_t>(index->samples.size())) {
      return absl::OutOfRangeError(absl::StrCat("batch loader: sample index ", i, " out of range"));
    }
  }
  return std::unique_ptr<BatchLoader>(new BatchLoader(index, std::move(samples), options));
}

BatchLoader::BatchLoader(const data::DatasetIndex* index, std::vector<int64_t> samples,
                         Options options)
    : index_(index), samples_(std::move(samples)), options_(options) {
  for (int i = 0; i < options_.threads; ++i) workers_.emplace_back([this] { WorkerLoop(); });
}

BatchLoader::~BatchLoader() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  for (std::thread& t : workers_) t.join();
}

int64_t BatchLoader::batches_per_epoch() const {
  const int64_t n = static_cast<int64_t>(samples_.size());
  return options_.drop_last ? n / options_.batch_size
                            : (n + options_.batch_size - 1) / options_.batch_size;
}

void BatchLoader::StartEpoch(int64_t epoch, int64_t first_batch) {
  auto order = std::make_shared<std::vector<int64_t>>(samples_);
  if (options_.shuffle) {
    Rng rng(MixSeed(options_.seed, static_cast<uint64_t>(epoch)));
    rng.Shuffle(*order);
  }
  absl::MutexLock lock(&mu_);
  ++generation_;
  epoch_ = epoch;
  order_ = std::move(order);
  end_ = batches_per_epoch();
  next_to_build_ = std::clamp<int64_t>(first_batch, 0, end_);
  next_to_return_ = next_to_build_;
  ready_.clear();
}

bool BatchLoader::NextReady() const {
  return stop_ || order_ == nullptr || next_to_return_ >= end_ ||
         ready_.count(next_to_return_) > 0;
}

bool BatchLoader::WorkAvailable() const {
  return stop_ ||
         (order_ != nullptr && next_to_build_ < end_ &&
          next_to_build_ < next_to_return_ + options_.prefetch);
}

std::optional<Batch> BatchLoader::Next() {
  absl::MutexLock lock(&mu_);
  while (true) {
    mu_.Await(absl::Condition(this, &BatchLoader::NextReady));
    if (stop_ || order_ == nullptr || next_to_return_ >= end_) return std::nullopt;
    auto it = ready_.find(next_to_return_);
    Batch batch = std::move(it->second);
    ready_.erase(it);
    ++next_to_return_;
    if (batch.size == 0) {
      carried_failures_.insert(carried_failures_.end(), batch.failures.begin(),
                               batch.failures.end());
      continue;
    }
    if (!carried_failures_.empty()) {
      batch.failures.insert(batch.failures.begin(), carried_failures_.begin(),
                            carried_failures_.end());
      carried_failures_.clear();
    }
    NoteProgress();  // the consumer took a batch: the run moves (a stall watchdog reads this)
    return batch;
  }
}

std::vector<std::string> BatchLoader::TakeFailures() {
  absl::MutexLock lock(&mu_);
  return std::exchange(carried_failures_, {});
}

void BatchLoader::WorkerLoop() {
  while (true) {
    int64_t generation, epoch, number;
    std::shared_ptr<const std::vector<int64_t>> order;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(this, &BatchLoader::WorkAvailable));
      if (stop_) return;
      generation = generation_;
      epoch = epoch_;
      order = order_;
      number = next_to_build_++;
    }
    Batch batch = Build(epoch, number, *order);
    absl::MutexLock lock(&mu_);
    if (generation == generation_) ready_.emplace(number, std::move(batch));
  }
}

Batch BatchLoader::Build(int64_t epoch, int64_t number, const std::vector<int64_t>& order) {
  const size_t begin = static_cast<size_t>(number) * options_.batch_size;
  const size_t end = std::min(order.size(), begin + options_.batch_size);
  const int crop = options_.transform.crop;
  const size_t per_image = 3 * static_cast<size_t>(crop) * crop;
  const size_t n_aus = index_->aus.size();
  Batch b;
  b.number = number;
  b.height = b.width = crop;
  b.images.resize((end - begin) * per_image);
  for (size_t pos = begin; pos < end; ++pos) {
    const int64_t sample_index = order[pos];
    const data::Sample& s = index_->samples[sample_index];
    auto decoded = DecodeImage(s.image);
    if (!decoded.ok()) {
      failed_images_.fetch_add(1);
      b.failures.emplace_back(decoded.status().message());
      continue;
    }
    // One generator per (epoch, position): the augmentation does not depend on which thread ran.
    Rng rng(MixSeed(options_.seed ^ 0xA5A5A5A5ULL,
                    (static_cast<uint64_t>(epoch) << 32) + static_cast<uint64_t>(pos)));
    try {
      TransformToTensor(CropBox(*decoded, s.box), options_.transform,
                        options_.augment ? &rng : nullptr, b.images.data() + b.size * per_image);
    } catch (const cv::Exception& e) {
      failed_images_.fetch_add(1);
      b.failures.push_back(absl::StrCat(s.image, ": cannot transform: ", e.what()));
      continue;
    }
    b.samples.push_back(sample_index);
    for (size_t k = 0; k < n_aus; ++k) {
      const int8_t v = k < s.au.size() ? s.au[k] : data::kAuUnknown;
      b.au_labels.push_back(v == data::kAuPresent ? 1.f : 0.f);
      b.au_mask.push_back(v == data::kAuUnknown ? 0.f : 1.f);
    }
    b.expressions.push_back(s.expression);
    b.consistency.push_back(s.consistency);
    ++b.size;
  }
  b.images.resize(b.size * per_image);
  return b;
}

}  // namespace mal::image
