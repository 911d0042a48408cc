#include "worker/engine/training_data.h"

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "common/synth/synth_dataset.h"
#include "common/util/status_macros.h"

namespace mal::engine {

namespace fs = std::filesystem;
using image::Batch;
using image::BatchLoader;

namespace {

constexpr int kPrefetch = 4;

// SynthFace is generated on first use, so a spec pointing at a fresh cache directory just works.
absl::Status EnsureSynthFace(const v1::DatasetSpec& spec) {
  if (spec.format() != "synthface" || fs::exists(spec.root())) return absl::OkStatus();
  synth::SynthOptions o;
  o.out = spec.root();
  auto made = synth::GenerateSynthFace(o);
  if (!made.ok() && !fs::exists(spec.root())) {  // another run may have made it meanwhile
    return absl::Status(made.status().code(),
                        absl::StrCat("generating SynthFace: ", made.status().message()));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<Data> LoadData(const v1::ExperimentSpec& spec, int fold_number) {
  Data d;
  const std::vector<int> aus(spec.data().aus().begin(), spec.data().aus().end());
  RETURN_IF_ERROR(EnsureSynthFace(spec.data().au()));
  auto au = data::LoadDataset(spec.data().au(), aus, data::DataRole::kAu);
  if (!au.ok())
    return absl::Status(au.status().code(), absl::StrCat("data.au: ", au.status().message()));
  d.au = std::move(*au);
  // An AU the dataset does not code (SynthFace has no AU99) would train on nothing and enter the
  // mean F1 as 0: refused, naming it.
  for (size_t c = 0; c < d.au.aus.size(); ++c) {
    const bool coded =
        std::any_of(d.au.samples.begin(), d.au.samples.end(),
                    [c](const data::Sample& s) { return s.au[c] != data::kAuUnknown; });
    if (!coded) {
      return absl::FailedPreconditionError(
          absl::StrCat("data.aus: AU", d.au.aus[c], " is not coded in any of the ",
                       d.au.samples.size(), " frames of ", spec.data().au().root(), " (format ",
                       spec.data().au().format(), "): leave it out of data.aus"));
    }
  }
  if (spec.method() != v1::STL) {
    RETURN_IF_ERROR(EnsureSynthFace(spec.data().fe()));
    auto fe = data::LoadDataset(spec.data().fe(), {}, data::DataRole::kFe);
    if (!fe.ok())
      return absl::Status(fe.status().code(), absl::StrCat("data.fe: ", fe.status().message()));
    d.fe = std::move(*fe);
    // Only samples with an expression label train the FE head.
    std::vector<data::Sample> labelled;
    for (auto& s : d.fe.samples) {
      if (s.expression >= 0) labelled.push_back(std::move(s));
    }
    d.fe.samples = std::move(labelled);
    if (d.fe.samples.empty()) {
      return absl::FailedPreconditionError(absl::StrCat("data.fe: ", spec.data().fe().root(),
                                                        ": no sample with an expression label"));
    }
  }
  data::FoldOptions fo;
  fo.protocol = spec.cv().protocol();
  fo.folds = spec.cv().folds();
  fo.seed = static_cast<uint64_t>(spec.cv().seed());
  fo.val_fraction = spec.mal().val_fraction();
  fo.val_split = spec.mal().val_split() == "subjects" ? data::FoldOptions::ValSplit::kSubjects
                                                      : data::FoldOptions::ValSplit::kFrames;
  if (fold_number == 0) {  // the final fit: every subject trains, nothing is held out for testing
    ASSIGN_OR_RETURN(d.fold, data::AllSubjectsFold(d.au, fo));
    if (d.fold.train.empty()) return absl::FailedPreconditionError("final fit: no training sample");
    d.val_rates = data::PositiveRates(d.au, d.fold.val);
    return d;
  }
  auto folds = data::MakeFolds(d.au, fo);
  if (!folds.ok()) return folds.status();
  if (fold_number < 1 || fold_number > static_cast<int>(folds->size())) {
    return absl::InvalidArgumentError(absl::StrCat("--fold: ", fold_number, " is not in 1..",
                                                   folds->size(), " (0: all subjects)"));
  }
  d.fold = (*folds)[fold_number - 1];
  if (d.fold.train.empty() || d.fold.test.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("fold ", fold_number, ": empty training or test part"));
  }
  d.val_rates = data::PositiveRates(d.au, d.fold.val);
  return d;
}

absl::StatusOr<std::unique_ptr<BatchLoader>> MakeLoader(const data::DatasetIndex& index,
                                                        std::vector<int64_t> samples, int batch,
                                                        LoaderKind kind,
                                                        const v1::ExperimentSpec& spec,
                                                        uint64_t seed) {
  BatchLoader::Options o;
  o.batch_size = batch;
  o.threads = spec.train().data_threads();
  o.prefetch = kPrefetch;
  o.shuffle = kind != LoaderKind::kEval;
  o.augment = kind == LoaderKind::kTrain;
  o.seed = seed;
  o.transform.resize = spec.model().resize();
  o.transform.crop = spec.model().input();
  o.transform.hflip = spec.train().hflip();
  return BatchLoader::Create(&index, std::move(samples), o);
}

std::vector<int64_t> AllOf(const data::DatasetIndex& index) {
  std::vector<int64_t> v(index.samples.size());
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<int64_t>(i);
  return v;
}

double LearningRate(const v1::TrainSpec& t, int epoch) {
  if (t.schedule() == "step")
    return t.lr() * std::pow(t.step_gamma(), (epoch - 1) / t.step_epochs());
  if (t.schedule() == "cosine") {
    return 0.5 * t.lr() * (1 + std::cos(M_PI * (epoch - 1) / std::max(1, t.epochs())));
  }
  return t.lr();
}

}  // namespace mal::engine
