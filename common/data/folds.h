#ifndef MAL_COMMON_DATA_FOLDS_H_
#define MAL_COMMON_DATA_FOLDS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/data/sample.h"

namespace mal::data {

struct FoldOptions {
  // standard (BP4D/DISFA published 3-fold lists), official (the samples' train/test split),
  // kfold (`folds` folds over sorted subjects, shuffled with `seed`). Empty = DefaultProtocol.
  std::string protocol;
  int folds = 3;
  uint64_t seed = 1;
  // Share of each training subject's samples reserved for the meta validation set (kFrames), or
  // share of the training subjects reserved whole (kSubjects; at least 2).
  double val_fraction = 0.02;
  // How the reserve is drawn (spec field mal.val_split): kFrames, the paper's (docs/mal.md: "about
  // 2% of D_au, sampled uniformly from each subject"), or kSubjects, an extension: whole subjects,
  // so that the meta validation loss scores identities the network does not train on.
  enum class ValSplit { kFrames, kSubjects };
  ValSplit val_split = ValSplit::kFrames;
};

// One subject-independent split. Indices point into DatasetIndex::samples, in ascending order.
struct Fold {
  int number = 0;  // 1-based
  std::vector<std::string> train_subjects;
  std::vector<std::string> test_subjects;
  std::vector<int64_t> train;  // training part minus the validation reserve
  std::vector<int64_t> val;    // the validation reserve (FoldOptions::val_split)
  // kSubjects: the training subjects whose every sample is in `val` (they stay in train_subjects).
  std::vector<std::string> val_subjects;
  std::vector<int64_t> test;
};

// standard for bp4d, disfa and synthface; official for gft; kfold otherwise.
std::string DefaultProtocol(const std::string& format);

// The published subject lists of the standard 3-fold protocol: part 1..3 of "bp4d" or "disfa".
const std::vector<std::vector<std::string>>& StandardParts(const std::string& dataset);

// A pure function of (index, options): the same inputs give the same folds on every machine.
// Errors: InvalidArgument for an unknown protocol or val_fraction outside [0, 1);
// FailedPrecondition when val_split is kSubjects and a fold has fewer than 3 training subjects
// with samples (2 for the reserve, 1 to train).
absl::StatusOr<std::vector<Fold>> MakeFolds(const DatasetIndex& index, const FoldOptions& options);

// The final fit's "fold 0": every subject trains (minus the same validation reserve as in the
// folds: per-subject frames, or with kSubjects the subjects that rank first by the seed), no test
// part. Errors as MakeFolds, and FailedPrecondition when no sample has a subject id.
absl::StatusOr<Fold> AllSubjectsFold(const DatasetIndex& index, const FoldOptions& options);
// Per AU of `index.aus`: positives / known labels over `samples` (0 where no label is known).
std::vector<double> PositiveRates(const DatasetIndex& index, const std::vector<int64_t>& samples);

}  // namespace mal::data

#endif  // MAL_COMMON_DATA_FOLDS_H_
