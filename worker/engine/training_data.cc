#include "worker/engine/training_data.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <numeric>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "common/image/transforms.h"
#include "common/synth/synth_dataset.h"
#include "common/util/csv.h"
#include "common/util/logging.h"
#include "common/util/sha256.h"
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
    if (spec.train().fe_weights().empty()) {
      d.fe_train = AllOf(d.fe);
    } else {
      ASSIGN_OR_RETURN(d.fe_train, WeightedFeDraw(d.fe, spec.train().fe_weights(),
                                                  spec.train().fe_weight_levels()));
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

std::string FeDrawDigest(const std::vector<int64_t>& fe_train, bool weighted) {
  if (!weighted) return "none";
  Sha256 hash;
  for (int64_t i : fe_train) {
    char bytes[8];
    for (int b = 0; b < 8; ++b)
      bytes[b] = static_cast<char>((static_cast<uint64_t>(i) >> (8 * b)) & 0xff);
    hash.Update(absl::string_view(bytes, sizeof(bytes)));
  }
  return hash.HexDigest();
}

absl::StatusOr<std::vector<int64_t>> WeightedFeDraw(const data::DatasetIndex& fe,
                                                    const std::string& path, int levels) {
  auto error = [](absl::StatusCode code, auto&&... parts) {
    return absl::Status(code, absl::StrCat("train.fe_weights: ", parts...));
  };
  if (levels < 2) return error(absl::StatusCode::kInvalidArgument, "levels ", levels, " < 2");
  auto table = ReadCsvTable(path);
  if (!table.ok()) return error(table.status().code(), table.status().message());
  const CsvTable& t = *table;
  if (t.header_line == 0) {
    return error(absl::StatusCode::kInvalidArgument, path,
                 ": empty (a weights CSV has a header with id and weight, then a row per sample)");
  }
  for (const char* name : {"id", "weight"}) {
    if (!t.column.count(name)) {
      return error(absl::StatusCode::kInvalidArgument, t.WhereHeader(), ": no '", name,
                   "' column (a weights CSV of a MAL run: weights/epoch_NNN.csv)");
    }
  }
  const size_t id_col = t.column.at("id"), weight_col = t.column.at("weight");
  const bool has_task = t.column.count("task") > 0;
  absl::flat_hash_map<std::string, std::pair<double, size_t>> weight;  // id -> weight, line
  for (size_t r = 0; r < t.rows.size(); ++r) {
    const std::vector<std::string>& fields = t.rows[r];
    if (fields.size() <= std::max(id_col, weight_col)) {
      return error(absl::StatusCode::kInvalidArgument, t.Where(r), ": ", fields.size(),
                   " fields, the header has ", t.header.size());
    }
    if (has_task && t.At(r, "task") != "fe") continue;  // an AU frame's row
    auto w = ParseDouble(fields[weight_col], "weight");
    if (!w.ok() || *w < 0) {
      return error(absl::StatusCode::kInvalidArgument, t.Where(r), ": weight '", fields[weight_col],
                   "' is not a finite number >= 0");
    }
    auto [at, added] = weight.emplace(fields[id_col], std::make_pair(*w, t.line[r]));
    if (!added) {
      return error(absl::StatusCode::kInvalidArgument, t.Where(r), ": id '", fields[id_col],
                   "' is listed twice (first on line ", at->second.second, ")");
    }
  }
  const size_t n = fe.samples.size();
  std::vector<double> w(n);
  std::vector<bool> has_row(n, false);
  std::vector<size_t> no_row;  // samples without a row
  for (size_t i = 0; i < n; ++i) {
    auto it = weight.find(fe.samples[i].id);
    if (it == weight.end()) {
      no_row.push_back(i);
      continue;
    }
    w[i] = it->second.first;
    has_row[i] = true;
  }
  // A MAL run writes no row for an image that does not decode (it was never weighted); the same
  // image here is left out of training again. An image without a row that decodes means the
  // weights are of other FE data. Stops at the first that decodes.
  std::string first_failure;
  for (size_t i : no_row) {
    absl::StatusOr<cv::Mat> decoded = image::DecodeImage(fe.samples[i].image);
    if (decoded.ok()) {
      return error(absl::StatusCode::kFailedPrecondition, path, " has no row for FE image '",
                   fe.samples[i].id, "' (", no_row.size(), " of the ", n,
                   " FE training images have none): use the weights of a run on the same FE data");
    }
    if (first_failure.empty()) first_failure = std::string(decoded.status().message());
  }
  if (!no_row.empty()) {
    LOG(WARNING) << "train.fe_weights: " << no_row.size() << " FE image(s) have no row in " << path
                 << " and do not decode (first: " << first_failure
                 << "): drawn once, and left out of their batches as in the run that wrote it";
  }
  const size_t ranked = n - no_row.size();
  if (weight.size() > ranked) {
    LOG(INFO) << "train.fe_weights: " << path << ": " << weight.size() - ranked
              << " row(s) name no FE training image of this data; ignored";
  }
  std::vector<size_t> rank;  // sample indexes with a row, lowest weight first
  for (size_t i = 0; i < n; ++i)
    if (has_row[i]) rank.push_back(i);
  std::stable_sort(rank.begin(), rank.end(), [&w](size_t a, size_t b) { return w[a] < w[b]; });
  std::vector<int> times(n, 1);
  for (size_t r = 0; r < ranked; ++r) times[rank[r]] = static_cast<int>(r * levels / ranked) + 1;
  std::vector<int64_t> draw;
  for (size_t i = 0; i < n; ++i) draw.insert(draw.end(), times[i], static_cast<int64_t>(i));
  LOG(INFO) << "train.fe_weights: " << n << " FE training images in " << levels
            << " levels by the weights of " << path << "; a pass over the FE data draws "
            << draw.size();
  return draw;
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
